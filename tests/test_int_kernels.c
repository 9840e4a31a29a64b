/* test_int_kernels.c: the integer kernels of the exported model (qalora/int_gemm.h).
   Every variant this CPU runs (ref, avx2, vnni) against a naive int32 loop over the plain
   (K, N) matrices, bit for bit: 2-, 4- and 8-bit weights (8 bits is the AVX2 widening
   path), 4- and 8-bit activations, sizes that are not multiples of any vector or tile width,
   a leading dimension wider than N. The activation quantizer of each variant against the
   fake-quant level (quant_uniform_fake) on halfway points, clamped values and NaN. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qalora/int_gemm.h"
#include "qalora/quantizer.h"

// (v - c) of a b-bit level as the runtime stores it: c = 0 up to 4 bits, 128 at 8 bits.
static int8_t weight_value(Rng *r, int bits) {
    int q = (int)rng_below(r, 1u << bits);
    return (int8_t)(bits > 4 ? q - 128 : q);
}

// C = W a over plain matrices W (M, K), a (K, N): the definition.
static void naive(int32_t *C, const int8_t *W, const uint8_t *a, int M, int N, int K) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            int32_t s = 0;
            for (int k = 0; k < K; k++) s += (int32_t)W[(size_t)m * K + k] * a[(size_t)k * N + n];
            C[(size_t)m * N + n] = s;
        }
}

static void check_case(int M, int N, int K, int w_bits, int a_bits, Rng *r) {
    int K4 = (K + 3) / 4;
    size_t ldw = (size_t)K4 * 4 + 4, lda = (size_t)N + 3, ldc = (size_t)N + 5;
    int8_t *W = calloc((size_t)M * K, 1), *Wp = calloc((size_t)M * ldw, 1);
    uint8_t *a = malloc((size_t)K * N), *A = calloc((size_t)K4 * lda * 4, 1);
    int32_t *ref = malloc((size_t)M * N * sizeof(int32_t)), *C = malloc((size_t)M * ldc * sizeof(int32_t));
    int wmax = 0;
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++) {
            int8_t v = weight_value(r, w_bits);
            W[(size_t)m * K + k] = Wp[(size_t)m * ldw + k] = v;
            wmax = abs(v) > wmax ? abs(v) : wmax;
        }
    for (int k = 0; k < K; k++)
        for (int n = 0; n < N; n++) {
            uint8_t v = (uint8_t)rng_below(r, 1u << a_bits);
            if (k % 7 == 0 && n % 3 == 0) v = (uint8_t)((1 << a_bits) - 1);  // extremes: saturation would show
            a[(size_t)k * N + n] = v;
            A[((size_t)(k / 4) * lda + n) * 4 + k % 4] = v;
        }
    naive(ref, W, a, M, N, K);
    for (int kind = 0; kind < INT_GEMM_COUNT; kind++) {
        if (!int_gemm_supported((IntGemmKind)kind)) continue;
        memset(C, 0x5A, (size_t)M * ldc * sizeof(int32_t));
        int_gemm((IntGemmKind)kind, C, ldc, Wp, ldw, A, lda, M, N, K4, wmax);
        for (int m = 0; m < M; m++) {
            if (memcmp(C + (size_t)m * ldc, ref + (size_t)m * N, (size_t)N * sizeof(int32_t)) != 0)
                fail_msg("%s: W%d A%d M=%d N=%d K=%d: row %d differs", int_gemm_name((IntGemmKind)kind), w_bits,
                         a_bits, M, N, K, m);
            // nothing written past the N columns of a row
            assert_int_equal(C[(size_t)m * ldc + N], 0x5A5A5A5A);
        }
    }
    free(W);
    free(Wp);
    free(a);
    free(A);
    free(ref);
    free(C);
}

static void test_gemm_variants(void **state) {
    Rng r;
    rng_seed(&r, 42, 0);
    const int shapes[][3] = {{1, 1, 1}, {5, 7, 3}, {17, 33, 61}, {33, 100, 291}, {65, 130, 577}, {4, 64, 8},
                             {129, 1024, 288}};
    const int wb[] = {2, 4, 8}, ab[] = {4, 8};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 2; j++) check_case(shapes[s][0], shapes[s][1], shapes[s][2], wb[i], ab[j], &r);
    for (int kind = 0; kind < INT_GEMM_COUNT; kind++)
        print_message("  %s: %s\n", int_gemm_name((IntGemmKind)kind),
                      int_gemm_supported((IntGemmKind)kind) ? "checked" : "not supported here");
}

static void test_quant_variants(void **state) {
    const size_t n = 1003;
    float *x = malloc(n * sizeof(float)), *fq = malloc(n * sizeof(float));
    uint8_t *q = malloc(n);
    Rng r;
    rng_seed(&r, 7, 0);
    const float delta = 0.0625f;
    const int bits[] = {4, 8};
    const float zeros[] = {0.0f, 5.0f, 130.0f};
    for (int bi = 0; bi < 2; bi++)
        for (int zi = 0; zi < 3; zi++) {
            int qmax = (1 << bits[bi]) - 1;
            float z = zeros[zi] > (float)qmax ? (float)qmax : zeros[zi];
            rng_normal_fill(&r, x, n);
            for (size_t i = 0; i < n; i++) x[i] *= 4.0f;
            for (size_t i = 0; i < 40; i++) x[i] = ((float)i - 20.0f + 0.5f) * delta;  // halfway points
            x[50] = NAN;
            x[51] = 1e30f;
            x[52] = -1e30f;
            quant_uniform_fake(fq, x, n, delta, z, qmax);
            for (int kind = 0; kind < INT_GEMM_COUNT; kind++) {
                if (!int_gemm_supported((IntGemmKind)kind)) continue;
                int_quant_u8((IntGemmKind)kind, q, x, n, delta, z, qmax);
                for (size_t i = 0; i < n; i++) {
                    if (i == 50) {
                        assert_int_equal(q[i], 0);  // NaN -> level 0 (the fake-quant output is NaN)
                        continue;
                    }
                    float back = ((float)q[i] - z) * delta;
                    if (back != fq[i])
                        fail_msg("%s: A%d z=%g: x[%zu]=%g: level %d, fake quant %g", int_gemm_name((IntGemmKind)kind),
                                 bits[bi], z, i, x[i], q[i], fq[i]);
                }
            }
        }
    free(x);
    free(fq);
    free(q);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_variants),
        cmocka_unit_test(test_quant_variants),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
