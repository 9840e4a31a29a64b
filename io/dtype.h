/* dtype.h: element types of tensor files and their conversion to float32.

       float x = f16_to_f32(0x3c00);            // 1.0f
       dtype_to_f32(dst, src, DT_BF16, n);      // n little-endian bf16 values -> float32

   All stored data is little-endian (PyTorch zip and safetensors both are); values are
   loaded through memcpy, so src needs no alignment. float16 keeps subnormals, infinities
   and NaN (payload bits are not preserved, the sign is); bfloat16 is the top half of a
   float32 and converts exactly. Integer and bool elements convert to the nearest float.
   dtype_name (declared in io/weights.h) and dtype_size are defined here.
   Limitations: big-endian hosts are not supported (static_assert below in dtype.c).
*/
#ifndef EFFDM_DTYPE_H
#define EFFDM_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#include "io/weights.h"

// Bytes per element (DT_BOOL: 1); 0 for an invalid value.
size_t dtype_size(DType t);
// 1 for F32, F16, BF16, F64 (the types whose values may be NaN/Inf), else 0.
int dtype_is_float(DType t);
// The DType for a safetensors dtype name ("F32", "BF16", ...), or -1 when not one of ours.
int dtype_from_name(const char *name);

// IEEE binary16 -> binary32 (exact, including subnormals, +-inf and NaN).
float f16_to_f32(uint16_t h);
// binary32 -> binary16, round to nearest even; overflow gives +-inf, NaN stays NaN.
uint16_t f32_to_f16(float f);
// bfloat16 -> binary32 (exact).
float bf16_to_f32(uint16_t h);
// binary32 -> bfloat16, round to nearest even; NaN stays NaN.
uint16_t f32_to_bf16(float f);

// Converts n elements of type t at src (little-endian, any alignment) to float32 in dst.
void dtype_to_f32(float *dst, const void *src, DType t, size_t n);

#endif
