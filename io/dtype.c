#include "io/dtype.h"

#include <math.h>
#include <string.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "tensor files are little-endian; this host is not");
_Static_assert(DT_COUNT == 10, "dtype tables below out of step with DType");

// Indexed by DType. The names are safetensors' (torch's storage types map onto them in ckpt).
static const char *const dtype_names[DT_COUNT] = {"F32", "F16", "BF16", "F64", "I64",
                                                  "I32", "I16", "I8",   "U8",  "BOOL"};
static const size_t dtype_sizes[DT_COUNT] = {4, 2, 2, 8, 8, 4, 2, 1, 1, 1};

const char *dtype_name(DType t) { return (t >= 0 && t < DT_COUNT) ? dtype_names[t] : "?"; }

size_t dtype_size(DType t) { return (t >= 0 && t < DT_COUNT) ? dtype_sizes[t] : 0; }

int dtype_is_float(DType t) { return t == DT_F32 || t == DT_F16 || t == DT_BF16 || t == DT_F64; }

int dtype_from_name(const char *name) {
    for (int i = 0; i < DT_COUNT; i++)
        if (!strcmp(name, dtype_names[i])) return i;
    return -1;
}

static float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f32_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0) {
        // zero or subnormal: mant * 2^-24, exact in float32
        float v = ldexpf((float)mant, -24);
        return sign ? -v : v;
    }
    if (exp == 31) return bits_to_f32(sign | 0x7f800000u | (mant << 13));  // inf, NaN (quiet bit kept)
    return bits_to_f32(sign | ((exp + 112) << 23) | (mant << 13));         // rebias 15 -> 127
}

uint16_t f32_to_f16(float f) {
    uint32_t u = f32_to_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    if (isnan(f)) return sign | 0x7e00;
    float a = fabsf(f);
    if (a >= 65520.0f) return sign | 0x7c00;  // rounds to inf (65504 is the largest half)
    if (a < 0x1p-14f) {
        // subnormal range: the value in units of 2^-24, rounded to nearest even by rintf
        return sign | (uint16_t)rintf(a * 0x1p24f);
    }
    uint32_t au = u & 0x7fffffffu;
    uint32_t exp = (au >> 23) - 112, mant = au & 0x7fffff;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fff;  // the 13 bits dropped
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;  // carry may move into the exponent: still right
    return sign | (uint16_t)h;
}

float bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }

uint16_t f32_to_bf16(float f) {
    uint32_t u = f32_to_bits(f);
    if (isnan(f)) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fff + ((u >> 16) & 1);  // round to nearest even
    return (uint16_t)(u >> 16);
}

void dtype_to_f32(float *dst, const void *src, DType t, size_t n) {
    const unsigned char *s = src;
    switch (t) {
    case DT_F32:
        if (n) memmove(dst, s, n * 4);
        break;
    case DT_F16:
        for (size_t i = 0; i < n; i++) { uint16_t v; memcpy(&v, s + 2 * i, 2); dst[i] = f16_to_f32(v); }
        break;
    case DT_BF16:
        for (size_t i = 0; i < n; i++) { uint16_t v; memcpy(&v, s + 2 * i, 2); dst[i] = bf16_to_f32(v); }
        break;
    case DT_F64:
        for (size_t i = 0; i < n; i++) { double v; memcpy(&v, s + 8 * i, 8); dst[i] = (float)v; }
        break;
    case DT_I64:
        for (size_t i = 0; i < n; i++) { int64_t v; memcpy(&v, s + 8 * i, 8); dst[i] = (float)v; }
        break;
    case DT_I32:
        for (size_t i = 0; i < n; i++) { int32_t v; memcpy(&v, s + 4 * i, 4); dst[i] = (float)v; }
        break;
    case DT_I16:
        for (size_t i = 0; i < n; i++) { int16_t v; memcpy(&v, s + 2 * i, 2); dst[i] = (float)v; }
        break;
    case DT_I8:
        for (size_t i = 0; i < n; i++) dst[i] = (float)(int8_t)s[i];
        break;
    case DT_U8:
        for (size_t i = 0; i < n; i++) dst[i] = (float)s[i];
        break;
    case DT_BOOL:
        for (size_t i = 0; i < n; i++) dst[i] = s[i] ? 1.0f : 0.0f;
        break;
    default:
        break;
    }
}
