/* export_int.c: how an export layer runs (export_int.h): the integer path (quantize to u8,
   im2col, int_gemm, rescale) and the float reference path. */
#include "qalora/export_int.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "autograd/ops/gemm_util.h"
#include "qalora/int_gemm.h"
#include "qalora/pack.h"

// Elements one thread quantizes per work item.
#define QUANT_CHUNK 4096

/* ---- load time ----------------------------------------------------------------------- */

int export_layer_prepare(ExportLayer *L, const uint8_t *levels, const float *w_delta, const float *w_zero, Err *e) {
    ModelLayer *l = L->layer;
    int co = l->weight.shape[0];
    size_t K = l->weight.n / (size_t)co;
    L->cout = co;
    L->K = (int)K;
    L->K4 = (int)((K + 3) / 4);
    L->cbits = pack_container_bits(L->w_bits);
    L->wc = L->cbits == 8 ? 128 : 0;
    size_t kp = (size_t)L->K4 * 4;
    L->row_bytes = pack_size(kp, L->cbits);
    L->wpack = malloc((size_t)co * L->row_bytes);
    L->w_delta = malloc((size_t)co * sizeof(float));
    L->w_zero = malloc((size_t)co * sizeof(float));
    L->zoff = malloc((size_t)co * sizeof(int32_t));
    L->rsum = malloc((size_t)co * sizeof(int32_t));
    uint8_t *row = malloc(kp);
    if (!L->wpack || !L->w_delta || !L->w_zero || !L->zoff || !L->rsum || !row) {
        free(row);
        return err_set(e, ERR_NOMEM, "out of memory loading layer '%s'", l->name);
    }
    memcpy(L->w_delta, w_delta, (size_t)co * sizeof(float));
    memcpy(L->w_zero, w_zero, (size_t)co * sizeof(float));
    // The int32 sums must not overflow: bound |D| + |zoff| S + |z_a| |R| per channel (S <=
    // 255 K) in double; zero points far outside the level range get the float path.
    double amax = (double)((1 << L->a_bits) - 1), zamax = 0;
    int pad_ok = 1;
    for (int i = 0; i < L->entries; i++) {
        double z = fabs((double)L->a_zero[i]);
        zamax = z > zamax ? z : zamax;
        if (L->a_zero[i] < 0.0f || L->a_zero[i] > (float)amax) pad_ok = 0;
    }
    int ok = l->kind == LAYER_LINEAR || l->kind == LAYER_CONV2D;
    if (l->kind == LAYER_CONV2D && l->pad > 0 && !pad_ok) ok = 0;  // padding needs the level z_a
    L->wmax = 0;
    for (int o = 0; o < co; o++) {
        const uint8_t *q = levels + (size_t)o * K;
        double wz = (double)w_zero[o];
        if (fabs(wz) > (double)(1 << 20)) {
            ok = 0;
            wz = 0;
        }
        long long r = 0;
        for (size_t k = 0; k < K; k++) {
            row[k] = q[k];
            r += (long long)q[k] - (long long)wz;
            int v = abs((int)q[k] - L->wc);
            L->wmax = v > L->wmax ? v : L->wmax;
        }
        for (size_t k = K; k < kp; k++) row[k] = (uint8_t)L->wc;  // stored as 0
        pack_ints(L->wpack + (size_t)o * L->row_bytes, row, kp, L->cbits);
        double zo = wz - L->wc;
        double bound = (double)kp * 255.0 * 128.0 + fabs(zo) * 255.0 * (double)K + zamax * fabs((double)r);
        if (bound >= 2147483647.0 || fabs((double)r) >= 2147483647.0) ok = 0;
        L->zoff[o] = ok ? (int32_t)zo : 0;
        L->rsum[o] = ok ? (int32_t)r : 0;
    }
    free(row);
    L->int_ok = ok;
    return 0;
}

void export_layer_release(ExportLayer *L) {
    free(L->a_delta);
    free(L->a_zero);
    free(L->wpack);
    free(L->w_delta);
    free(L->w_zero);
    free(L->zoff);
    free(L->rsum);
}

size_t export_layer_level_bytes(const ExportLayer *L) { return (size_t)L->cout * L->row_bytes; }

size_t export_layer_scale_bytes(const ExportLayer *L) {
    return (size_t)L->cout * (2 * sizeof(float) + 2 * sizeof(int32_t));
}

// One packed row as s8 weights q - c (K4*4 of them).
static void unpack_row_s8(int8_t *dst, const uint8_t *src, int K4, int cbits, int wc) {
    size_t kp = (size_t)K4 * 4;
    if (cbits == 4) {
        for (size_t i = 0; i < kp / 2; i++) {
            dst[2 * i] = (int8_t)(src[i] & 15);
            dst[2 * i + 1] = (int8_t)(src[i] >> 4);
        }
    } else if (cbits == 2) {
        for (size_t i = 0; i < kp / 4; i++) {
            uint8_t b = src[i];
            dst[4 * i] = (int8_t)(b & 3);
            dst[4 * i + 1] = (int8_t)((b >> 2) & 3);
            dst[4 * i + 2] = (int8_t)((b >> 4) & 3);
            dst[4 * i + 3] = (int8_t)(b >> 6);
        }
    } else {
        for (size_t i = 0; i < kp; i++) dst[i] = (int8_t)((int)src[i] - wc);
    }
}

void export_layer_dequant(const ExportLayer *L, float *w) {
    size_t kp = (size_t)L->K4 * 4;
    int8_t *row = malloc(kp);
    if (!row) return;
    for (int o = 0; o < L->cout; o++) {
        unpack_row_s8(row, L->wpack + (size_t)o * L->row_bytes, L->K4, L->cbits, L->wc);
        for (int k = 0; k < L->K; k++)
            w[(size_t)o * L->K + k] = ((float)(row[k] + L->wc) - L->w_zero[o]) * L->w_delta[o];
    }
    free(row);
}

/* ---- the float path ------------------------------------------------------------------ */

// fake_quant(x) with the table entry, then the FP op on W_eff (dequantized into the arena).
static Tensor *float_forward(Ctx *c, ModelLayer *l, ExportLayer *q, Tensor *x, int entry) {
    Tensor *xq = t_fake_quant(c, x, &q->aq, entry);
    Tensor *w = tensor_new(c, l->weight.ndim, l->weight.shape);
    if (!xq || !w) return NULL;
    int8_t *row = ctx_alloc(c, (size_t)q->K4 * 4);
    if (!row) return NULL;
    for (int o = 0; o < q->cout; o++) {
        unpack_row_s8(row, q->wpack + (size_t)o * q->row_bytes, q->K4, q->cbits, q->wc);
        for (int k = 0; k < q->K; k++)
            w->data[(size_t)o * q->K + k] = ((float)(row[k] + q->wc) - q->w_zero[o]) * q->w_delta[o];
    }
    Tensor *b = l->bias.data ? &l->bias : NULL;
    if (l->kind == LAYER_LINEAR) return t_linear(c, xq, w, b);
    return t_conv2d(c, xq, w, b, l->stride, l->pad);
}

/* ---- the integer path ---------------------------------------------------------------- */

// Levels of n activations, in parallel chunks.
static void quantize(IntGemmKind k, uint8_t *xq, const float *x, size_t n, float delta, float zero, int qmax) {
    size_t chunks = (n + QUANT_CHUNK - 1) / QUANT_CHUNK;
#pragma omp parallel for schedule(static) if (n >= GEMM_OMP_MIN_WORK)
    for (size_t i = 0; i < chunks; i++) {
        size_t a = i * QUANT_CHUNK, len = n - a < QUANT_CHUNK ? n - a : QUANT_CHUNK;
        int_quant_u8(k, xq + a, x + a, len, delta, zero, qmax);
    }
}

/* rows (K4*4, ld) u8: row r = (ci, ki, kj) holds xq[g, ci, oh s - p + ki, ow s - p + kj] in
   column g P + oh Wo + ow, pad where that falls outside; rows past K are 0. */
static void im2col_u8(uint8_t *rows, size_t ld, const uint8_t *xq, int N, int C, int H, int W, int kh, int kw,
                      int s, int p, int Ho, int Wo, int Kp, uint8_t pad) {
    int K = C * kh * kw;
    size_t P = (size_t)Ho * Wo;
#pragma omp parallel for schedule(static) collapse(2) if ((size_t)Kp * ld >= GEMM_OMP_MIN_WORK)
    for (int r = 0; r < Kp; r++) {
        for (int g = 0; g < N; g++) {
            uint8_t *dst = rows + (size_t)r * ld + (size_t)g * P;
            if (r >= K) {
                memset(dst, 0, P);
                continue;
            }
            int ci = r / (kh * kw), ki = (r / kw) % kh, kj = r % kw;
            const uint8_t *xp = xq + ((size_t)g * C + ci) * H * W;
            for (int oh = 0; oh < Ho; oh++) {
                int ih = oh * s - p + ki;
                uint8_t *d = dst + (size_t)oh * Wo;
                if (ih < 0 || ih >= H) {
                    memset(d, pad, (size_t)Wo);
                    continue;
                }
                const uint8_t *xr = xp + (size_t)ih * W;
                for (int ow = 0; ow < Wo; ow++) {
                    int iw = ow * s - p + kj;
                    d[ow] = iw >= 0 && iw < W ? xr[iw] : pad;
                }
            }
        }
    }
}

/* A (col4, K4 groups of n columns) from rows (K4*4, n): A[(g n + j) 4 + i] = rows[4g + i][j]. */
static void interleave4(uint8_t *A, const uint8_t *rows, int K4, size_t n) {
#pragma omp parallel for schedule(static) if ((size_t)K4 * n * 4 >= GEMM_OMP_MIN_WORK)
    for (int g = 0; g < K4; g++) {
        const uint8_t *r0 = rows + (size_t)4 * g * n, *r1 = r0 + n, *r2 = r1 + n, *r3 = r2 + n;
        uint8_t *d = A + (size_t)g * n * 4;
        size_t j = 0;
#if defined(__SSE2__)
        // two rounds of unpacking: bytes of rows (0,1) and (2,3) into pairs, pairs into quads
        for (; j + 16 <= n; j += 16) {
            __m128i a = _mm_loadu_si128((const __m128i *)(r0 + j)), b = _mm_loadu_si128((const __m128i *)(r1 + j));
            __m128i c = _mm_loadu_si128((const __m128i *)(r2 + j)), e = _mm_loadu_si128((const __m128i *)(r3 + j));
            __m128i ab0 = _mm_unpacklo_epi8(a, b), ab1 = _mm_unpackhi_epi8(a, b);
            __m128i ce0 = _mm_unpacklo_epi8(c, e), ce1 = _mm_unpackhi_epi8(c, e);
            _mm_storeu_si128((__m128i *)(d + 4 * j), _mm_unpacklo_epi16(ab0, ce0));
            _mm_storeu_si128((__m128i *)(d + 4 * j + 16), _mm_unpackhi_epi16(ab0, ce0));
            _mm_storeu_si128((__m128i *)(d + 4 * j + 32), _mm_unpacklo_epi16(ab1, ce1));
            _mm_storeu_si128((__m128i *)(d + 4 * j + 48), _mm_unpackhi_epi16(ab1, ce1));
        }
#endif
        for (; j < n; j++) {
            d[4 * j] = r0[j];
            d[4 * j + 1] = r1[j];
            d[4 * j + 2] = r2[j];
            d[4 * j + 3] = r3[j];
        }
    }
}

/* Ws (cout + 1, K4*4) s8: the layer's rows, then a row of ones over the real K (its GEMM
   row is S[n], the column sums of the activation levels). */
static int8_t *weights_s8(Ctx *c, const ExportLayer *q) {
    size_t kp = (size_t)q->K4 * 4;
    int8_t *Ws = ctx_alloc(c, (size_t)(q->cout + 1) * kp);
    if (!Ws) return NULL;
    for (int o = 0; o < q->cout; o++)
        unpack_row_s8(Ws + (size_t)o * kp, q->wpack + (size_t)o * q->row_bytes, q->K4, q->cbits, q->wc);
    int8_t *ones = Ws + (size_t)q->cout * kp;
    for (size_t k = 0; k < kp; k++) ones[k] = k < (size_t)q->K ? 1 : 0;
    return Ws;
}

// int_gemm of Ws against A (n columns) into Cm (cout + 1, n) int32 from the arena.
static int32_t *gemm(Ctx *c, const ExportLayer *q, const uint8_t *A, size_t n) {
    int8_t *Ws = weights_s8(c, q);
    int32_t *Cm = ctx_alloc(c, (size_t)(q->cout + 1) * n * sizeof(int32_t));
    if (!Ws || !Cm) return NULL;
    int_gemm(q->model->kernel, Cm, n, Ws, (size_t)q->K4 * 4, A, n, q->cout + 1, (int)n, q->K4,
             q->wmax > 1 ? q->wmax : 1);
    return Cm;
}

static Tensor *int_conv(Ctx *c, ModelLayer *l, ExportLayer *q, Tensor *x, float da, int za) {
    if (x->ndim != 4 || x->shape[1] * l->weight.shape[2] * l->weight.shape[3] != q->K) {
        err_set(&c->err, ERR_SHAPE, "export layer '%s': input of %d dims, %d channels for %d weights per output",
                l->name, x->ndim, x->ndim > 1 ? x->shape[1] : 0, q->K);
        return NULL;
    }
    int N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    int kh = l->weight.shape[2], kw = l->weight.shape[3], s = l->stride, p = l->pad;
    int Ho = (H + 2 * p - kh) / s + 1, Wo = (W + 2 * p - kw) / s + 1;
    size_t P = (size_t)Ho * Wo, n = (size_t)N * P;
    if (Ho < 1 || Wo < 1 || n > INT_MAX) {
        err_set(&c->err, ERR_SHAPE, "export layer '%s': %dx%d input gives no output or too many", l->name, H, W);
        return NULL;
    }
    Tensor *y = tensor_new4(c, N, q->cout, Ho, Wo);
    if (!y) return NULL;
    size_t mark = arena_mark(&c->arena);
    int Kp = q->K4 * 4;
    uint8_t *xq = ctx_alloc(c, x->n), *rows = ctx_alloc(c, (size_t)Kp * n), *A = ctx_alloc(c, (size_t)Kp * n);
    if (!xq || !rows || !A) return NULL;
    quantize(q->model->kernel, xq, x->data, x->n, da, (float)za, (1 << q->a_bits) - 1);
    im2col_u8(rows, n, xq, N, C, H, W, kh, kw, s, p, Ho, Wo, Kp, (uint8_t)za);
    interleave4(A, rows, q->K4, n);
    int32_t *Cm = gemm(c, q, A, n);
    if (!Cm) return NULL;
    const int32_t *S = Cm + (size_t)q->cout * n;
    const float *bias = l->bias.data;
    int co = q->cout;
#pragma omp parallel for schedule(static) collapse(2) if ((size_t)co * n >= GEMM_OMP_MIN_WORK)
    for (int g = 0; g < N; g++) {
        for (int o = 0; o < co; o++) {
            const int32_t *d = Cm + (size_t)o * n + (size_t)g * P, *sg = S + (size_t)g * P;
            float *yr = y->data + ((size_t)g * co + o) * P;
            float sc = da * q->w_delta[o], b = bias ? bias[o] : 0.0f;
            int32_t zo = q->zoff[o], zr = za * q->rsum[o];
            for (size_t i = 0; i < P; i++) yr[i] = (float)(d[i] - zo * sg[i] - zr) * sc + b;
        }
    }
    arena_release(&c->arena, mark);
    return y;
}

static Tensor *int_linear(Ctx *c, ModelLayer *l, ExportLayer *q, Tensor *x, float da, int za) {
    int in = q->K, co = q->cout;
    if (x->ndim < 1 || x->shape[x->ndim - 1] != in) {
        err_set(&c->err, ERR_SHAPE, "export layer '%s': input's last dim is not %d", l->name, in);
        return NULL;
    }
    size_t n = x->n / (size_t)in;  // rows
    if (n > INT_MAX) {
        err_set(&c->err, ERR_SHAPE, "export layer '%s': more than INT_MAX rows", l->name);
        return NULL;
    }
    int shape[TENSOR_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = co;
    Tensor *y = tensor_new(c, x->ndim, shape);
    if (!y) return NULL;
    size_t mark = arena_mark(&c->arena);
    int K4 = q->K4;
    uint8_t *xq = ctx_alloc(c, x->n), *A = ctx_alloc(c, (size_t)K4 * 4 * n);
    if (!xq || !A) return NULL;
    quantize(q->model->kernel, xq, x->data, x->n, da, (float)za, (1 << q->a_bits) - 1);
    // A[(g n + r) 4 + i] = xq[r, 4g + i]: each row's 4-level groups become one column
#pragma omp parallel for schedule(static) if ((size_t)K4 * 4 * n >= GEMM_OMP_MIN_WORK)
    for (size_t r = 0; r < n; r++) {
        const uint8_t *src = xq + r * (size_t)in;
        for (int g = 0; g < K4; g++) {
            uint8_t *d = A + ((size_t)g * n + r) * 4;
            for (int i = 0; i < 4; i++) d[i] = 4 * g + i < in ? src[4 * g + i] : 0;
        }
    }
    int32_t *Cm = gemm(c, q, A, n);
    if (!Cm) return NULL;
    const int32_t *S = Cm + (size_t)co * n;
    const float *bias = l->bias.data;
#pragma omp parallel for schedule(static) if ((size_t)co * n >= GEMM_OMP_MIN_WORK)
    for (size_t r = 0; r < n; r++) {
        float *yr = y->data + r * co;
        for (int o = 0; o < co; o++) {
            int32_t v = Cm[(size_t)o * n + r] - q->zoff[o] * S[r] - za * q->rsum[o];
            yr[o] = (float)v * (da * q->w_delta[o]) + (bias ? bias[o] : 0.0f);
        }
    }
    arena_release(&c->arena, mark);
    return y;
}

Tensor *export_layer_forward(Ctx *c, ModelLayer *l, Tensor *x) {
    ExportLayer *q = l->quant;
    if (!x) return NULL;
    int entry = (q->special || q->aq.n == 1) ? 0 : q->model->entry;
    if (q->model->use_float || !q->int_ok) return float_forward(c, l, q, x, entry);
    float da = q->aq.delta.data[entry];
    int za = (int)q->aq.zero.data[entry];
    if (l->kind == LAYER_LINEAR) return int_linear(c, l, q, x, da, za);
    return int_conv(c, l, q, x, da, za);
}
