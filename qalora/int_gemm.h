/* int_gemm.h: the integer kernels of the exported model (export_int.c): u8 activations times
   s8 weights with int32 accumulation, and the float -> u8 activation quantizer they read.

       IntGemmKind k = int_gemm_best();                    // vnni > avx2 > ref on this CPU
       int_quant_u8(k, xq, x, n, delta, zero, qmax);       // levels of the activations
       int_gemm(k, C, ldc, W, ldw, A, lda, M, N, K4, wmax); // C = W A, exact int32

   Layouts (all row-major, sizes in elements):
     W  (M, ldw)  int8: row m holds the K4*4 weights of output m (pad with 0 past the real K).
     A  "col4": the (K4*4, N) u8 matrix with every 4 consecutive rows interleaved, so column n
        of k-group g is 4 bytes at A + (g*lda + n)*4: A[(g*lda + n)*4 + kk] = a[4g + kk][n].
        This is what one 32-bit lane of vpdpbusd (and of maddubs + madd) sums over.
     C  (M, ldc)  int32: C[m][n] = sum_k W[m][k] a[k][n], exactly (no saturation, any variant),
        as long as the true sums fit int32 (K4*4 * 255 * 128 < 2^31: K < 65000).
   Variants: REF (portable C, the twin the others are tested against), AVX2 (maddubs +
   madd: u8 x s8 pairs saturate at 16 bits, so operands whose sums of 4 products can pass
   32767 take a widening 16-bit path), VNNI (AVX-512 vpdpbusd, 16 columns per instruction). The SIMD variants are
   compiled with target attributes and chosen at run time, so the binary runs on any x86-64.
   Threads: int_gemm splits (column block, row block) tiles over OpenMP; call it outside a
   parallel region.
*/
#ifndef EFFDM_INT_GEMM_H
#define EFFDM_INT_GEMM_H

#include <stddef.h>
#include <stdint.h>

typedef enum { INT_GEMM_REF, INT_GEMM_AVX2, INT_GEMM_VNNI, INT_GEMM_COUNT } IntGemmKind;

// "ref", "avx2", "vnni".
const char *int_gemm_name(IntGemmKind k);
// 1 when this CPU (and build) can run variant k.
int int_gemm_supported(IntGemmKind k);
// The fastest supported variant.
IntGemmKind int_gemm_best(void);

// C (M, ldc) = W (M, ldw) x A (col4, K4 groups, N columns, lda >= N); wmax >= max |W|,
// amax >= max A: they select the AVX2 path (maddubs when 4 amax wmax <= 32767, widening
// otherwise).
void int_gemm(IntGemmKind k, int32_t *C, size_t ldc, const int8_t *W, size_t ldw, const uint8_t *A, size_t lda,
              int M, int N, int K4, int wmax, int amax);
// The portable variant itself (single-threaded over the given tile), the reference of the tests.
void int_gemm_ref(int32_t *C, size_t ldc, const int8_t *W, size_t ldw, const uint8_t *A, size_t lda, int M, int N,
                  int K4);
// q[i] = clamp(rint(x[i] / delta) + zero, 0, qmax) as bytes: the level t_fake_quant uses
// (x / Δ divided, not multiplied by 1/Δ; round half to even; zero an integer; NaN -> 0).
// Serial: the caller splits the work.
void int_quant_u8(IntGemmKind k, uint8_t *q, const float *x, size_t n, float delta, float zero, int qmax);

// q[i] = tab[c(x[i])], c(x) = #{l < nb : x >= bound[l]} (bound ascending; NaN: code 0): an
// activation's code by the thresholds of a level-table kind and its u8 operand (export_int.h
// "level tables"). nb + 1 entries in tab. Serial: the caller splits the work.
void int_lut_u8(IntGemmKind k, uint8_t *q, const float *x, size_t n, const float *bound, int nb, const uint8_t *tab);

/* The per-token conv's GEMM (export_int.c int_conv_token): the sums of every kernel tap
   (G k-groups = 4G channels) exact in int32, then rescaled per column and tap in float:
       Y[m][n] = scale[m] Σ_t E[t][n] (kz[m] Z[t][n] + Σ_{g < G, i < 4} Wu[m][4(tG + g) + i] a_{tG+g,i}[n]) + bias[m]
   over t = 0 .. taps - 1 in order, f = fma(float(sum_t), E[t][n], f), then fma(scale, f, bias):
   the same float operations in every variant, so the variants agree bit for bit.
   The operands' roles are int_gemm's swapped: Wu (M, ldw) u8 is the broadcast operand, A the
   s8 col4 operand (levels minus the pixel's zero point, int_conv_token), so amax bounds |A|:
   <= 64 keeps AVX2's maddubs pairs (2 * 255 * 64) inside s16; above it the kernel is not
   available (int_gemm_taps_ok). E and Z are (taps, lde); bias may be NULL.
   The N columns are images of P columns each (P divides N): column g P + i of row m is written
   at Y[g ldimg + m ldy + i], so a conv's output lands in its (images, M, P) layout directly
   (one image: P = N, ldimg unused). side: NULL, or the side table below. */
// 1 when int_gemm_taps handles activations of magnitude up to amax.
int int_gemm_taps_ok(int amax);
/* A weight kind's side table (export_int.h: easyquant's outliers) as int_gemm_taps adds it: row m
   has n entries at kpos[m n ..] (positions k in the row: group k / 4, byte k % 4 of A; tap
   k / cp) with coefficients coef[m n ..], and each adds, in entry order after the row's value,
       Y[m][j] += coef E[tap][j] a_k[j]
   (as float: (coef E) a, then the add). Done on each tile while its A columns are in cache. */
typedef struct {
    const int32_t *kpos;
    const float *coef;
    int n, cp;
} IntTapsSide;
void int_gemm_taps(IntGemmKind k, float *Y, size_t ldy, size_t ldimg, int P, const uint8_t *Wu, size_t ldw,
                   const int32_t *kz, const int8_t *A, size_t lda, const int32_t *Z, const float *E, size_t lde,
                   const float *scale, const float *bias, int M, int N, int taps, int G, const IntTapsSide *side);
// The portable variant (single-threaded over the given tile), the reference of the tests.
void int_gemm_taps_ref(float *Y, size_t ldy, const uint8_t *Wu, size_t ldw, const int32_t *kz, const int8_t *A,
                       size_t lda, const int32_t *Z, const float *E, size_t lde, const float *scale, const float *bias,
                       int M, int N, int taps, int G);

/* Variant entry points (int_gemm_avx2.c, int_gemm_vnni.c); call through int_gemm. Each
   handles one tile serially. */
void int_gemm_avx2_tile(int32_t *C, size_t ldc, const int8_t *W, size_t ldw, const uint8_t *A, size_t lda, int M,
                        int N, int K4, int wide);
void int_gemm_vnni_tile(int32_t *C, size_t ldc, const int8_t *W, size_t ldw, const uint8_t *A, size_t lda, int M,
                        int N, int K4);
void int_gemm_taps_avx2_tile(float *Y, size_t ldy, const uint8_t *Wu, size_t ldw, const int32_t *kz, const int8_t *A,
                             size_t lda, const int32_t *Z, const float *E, size_t lde, const float *scale,
                             const float *bias, int M, int N, int taps, int G);
void int_gemm_taps_vnni_tile(float *Y, size_t ldy, const uint8_t *Wu, size_t ldw, const int32_t *kz, const int8_t *A,
                             size_t lda, const int32_t *Z, const float *E, size_t lde, const float *scale,
                             const float *bias, int M, int N, int taps, int G);
void int_quant_u8_avx2(uint8_t *q, const float *x, size_t n, float delta, float zero, int qmax);
void int_lut_u8_avx2(uint8_t *q, const float *x, size_t n, const float *bound, int nb, const uint8_t *tab);

#endif
