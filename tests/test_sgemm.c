/* test_sgemm.c: gemm_rm's single-thread kernels (autograd/ops/gemm_util.h): OpenBLAS and
   effdm's AVX-512 kernel (sgemm_avx512.c).
   - Each kernel this CPU runs against a plain double-precision triple loop: the four
     transpose cases, sizes around every block edge of the AVX-512 kernel (micro-tile 12 x
     32, depth block 256, row block 144, column block 1024), leading dimensions wider than
     the matrix (the padding must stay untouched), alpha and beta, and beta = 0 over a C
     full of NaN (BLAS semantics: C is not read).
   - The AVX-512 kernel is bit-identical for 1, 2 and 3 threads, inside a parallel region,
     and to one call of the kernel over the whole product (any cut of C into parts gives
     the same bits): what MPI ranks and --resume rely on.
   - EFFDM_SGEMM: a bad value and a kernel the CPU lacks are refused with a message. */
#include "testutil.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops/gemm_util.h"
#include "util/threads.h"

static float *falloc(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    assert_non_null(p);
    return p;
}

static const float PAD = 12345.0f;  // sentinel in the leading-dimension padding of C

typedef struct {
    int ta, tb, M, N, K, pad;
    float alpha, beta;
} Case;

typedef struct {
    float *A, *B, *C;
    int lda, ldb, ldc;
} Operands;

static Operands operands_new(const Case *k, Rng *r) {
    Operands o;
    int ar = k->ta ? k->K : k->M, ac = k->ta ? k->M : k->K;  // A as stored
    int br = k->tb ? k->N : k->K, bc = k->tb ? k->K : k->N;
    o.lda = ac + k->pad;
    o.ldb = bc + k->pad;
    o.ldc = k->N + k->pad;
    o.A = falloc((size_t)ar * o.lda);
    o.B = falloc((size_t)br * o.ldb);
    o.C = falloc((size_t)k->M * o.ldc);
    rng_normal_fill(r, o.A, (size_t)ar * o.lda);
    rng_normal_fill(r, o.B, (size_t)br * o.ldb);
    for (int i = 0; i < k->M; i++)
        for (int j = 0; j < o.ldc; j++)
            o.C[(size_t)i * o.ldc + j] = j >= k->N ? PAD : k->beta == 0.0f ? NAN : 2.0f * rng_uniform(r) - 1.0f;
    return o;
}

static void operands_free(Operands *o) {
    free(o->A);
    free(o->B);
    free(o->C);
}

static double opa(const Case *k, const Operands *o, int i, int p) {
    return k->ta ? o->A[(size_t)p * o->lda + i] : o->A[(size_t)i * o->lda + p];
}
static double opb(const Case *k, const Operands *o, int p, int j) {
    return k->tb ? o->B[(size_t)j * o->ldb + p] : o->B[(size_t)p * o->ldb + j];
}

// gemm_rm with the current kernel against the double loop: every element within
// 4 K eps of sum |a b| (float rounding of a K-term sum), plus the beta C term's rounding.
static void check_case(const Case *k, Rng *r) {
    Operands o = operands_new(k, r);
    float *c0 = falloc((size_t)k->M * o.ldc);
    memcpy(c0, o.C, (size_t)k->M * o.ldc * sizeof(float));
    gemm_rm(k->ta, k->tb, k->M, k->N, k->K, k->alpha, o.A, o.lda, o.B, o.ldb, k->beta, o.C, o.ldc);
    for (int i = 0; i < k->M; i++)
        for (int j = 0; j < o.ldc; j++) {
            float got = o.C[(size_t)i * o.ldc + j];
            if (j >= k->N) {
                if (got != PAD) fail_msg("%s: padding C[%d][%d] written", gemm_kernel_name(gemm_kernel_get()), i, j);
                continue;
            }
            double s = 0, sa = 0;
            for (int p = 0; p < k->K; p++) {
                double t = opa(k, &o, i, p) * opb(k, &o, p, j);
                s += t;
                sa += fabs(t);
            }
            double want = k->alpha * s, cb = 0;
            if (k->beta != 0.0f) {
                cb = (double)k->beta * c0[(size_t)i * o.ldc + j];
                want += cb;
            }
            double tol = 4.0 * (k->K + 2) * 1.2e-7 * (fabs(k->alpha) * sa + fabs(cb)) + 1e-30;
            if (!(fabs(got - want) <= tol))
                fail_msg("%s ta=%d tb=%d %dx%dx%d alpha=%g beta=%g: C[%d][%d] = %.9g, want %.9g (tol %.3g)",
                         gemm_kernel_name(gemm_kernel_get()), k->ta, k->tb, k->M, k->N, k->K, k->alpha, k->beta, i,
                         j, got, want, tol);
        }
    free(c0);
    operands_free(&o);
}

static void test_against_loop(void **state) {
    Rng r;
    rng_seed(&r, 5, 0);
    // sizes on both sides of the AVX-512 kernel's blocks: micro-tile 12 x 32, depth 256,
    // row block 144, column block 1024
    static const int dims[][3] = {{1, 1, 1},     {12, 32, 256},  {13, 33, 257}, {11, 31, 255}, {7, 45, 3},
                                  {145, 40, 20}, {25, 1030, 9},  {40, 70, 600}, {1, 300, 64},  {300, 1, 64},
                                  {64, 64, 576}, {150, 100, 300}};
    static const float ab[][2] = {{1.0f, 0.0f}, {0.5f, 1.0f}, {-2.0f, 0.25f}};
    int prev = threads_get();
    for (int kern = GEMM_KERNEL_BLAS; kern <= GEMM_KERNEL_AVX512; kern++) {
        if (!gemm_kernel_supported((GemmKernel)kern)) {
            print_message("kernel %s: not supported on this CPU\n", gemm_kernel_name((GemmKernel)kern));
            continue;
        }
        gemm_kernel_set((GemmKernel)kern);
        int n = 0;
        for (int threads = 1; threads <= 2; threads++) {
            threads_set(threads);
            for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
                for (int t = 0; t < 4; t++) {
                    Case k = {t & 1, t >> 1, dims[d][0], dims[d][1], dims[d][2], (int)(d % 3) * 5,
                              ab[(d + t) % 3][0], ab[(d + t) % 3][1]};
                    check_case(&k, &r);
                    n++;
                }
        }
        print_message("kernel %s: %d products checked\n", gemm_kernel_name((GemmKernel)kern), n);
    }
    threads_set(prev);
    char msg[160];
    assert_int_equal(gemm_kernel_init(msg, sizeof msg), 0);
}

// One product with the AVX-512 kernel, C starting from c_init.
static float *own_product(const Case *k, const Operands *o, const float *c_init, int how) {
    size_t nc = (size_t)k->M * o->ldc;
    float *c = falloc(nc);
    memcpy(c, c_init, nc * sizeof(float));
    if (how == 0) {  // one kernel call over the whole product
        assert_true(sgemm_avx512_tile(k->ta, k->tb, k->M, k->N, k->K, k->alpha, o->A, o->lda, o->B, o->ldb, k->beta,
                                      c, o->ldc));
    } else if (how == 4) {  // gemm_rm inside a parallel region: each thread its own product
        float *c2 = falloc(nc);
        memcpy(c2, c_init, nc * sizeof(float));
        float *cs[2] = {c, c2};
#pragma omp parallel num_threads(2)
        {
            int t = omp_get_thread_num();
            if (t < 2)
                gemm_rm(k->ta, k->tb, k->M, k->N, k->K, k->alpha, o->A, o->lda, o->B, o->ldb, k->beta, cs[t],
                        o->ldc);
        }
        assert_memory_equal(c, c2, nc * sizeof(float));
        free(c2);
    } else {  // gemm_rm on 1, 2, 3 threads
        threads_set(how);
        gemm_rm(k->ta, k->tb, k->M, k->N, k->K, k->alpha, o->A, o->lda, o->B, o->ldb, k->beta, c, o->ldc);
    }
    return c;
}

static void test_own_kernel_bits(void **state) {
    if (!gemm_kernel_supported(GEMM_KERNEL_AVX512)) {
        print_message("no AVX-512F on this CPU: the kernel cannot run here\n");
        return;
    }
    Rng r;
    rng_seed(&r, 9, 0);
    int prev = threads_get();
    gemm_kernel_set(GEMM_KERNEL_AVX512);
    // long sides split into per-thread parts along N, then along M; depth over 2 blocks
    static const Case cases[] = {{0, 0, 64, 2000, 300, 3, 1.0f, 1.0f},
                                 {1, 1, 700, 40, 520, 0, 0.5f, 0.0f},
                                 {0, 1, 100, 100, 100, 1, 1.0f, 0.0f}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const Case *k = &cases[i];
        Operands o = operands_new(k, &r);
        float *whole = own_product(k, &o, o.C, 0);
        for (int how = 1; how <= 4; how++) {
            float *c = own_product(k, &o, o.C, how);
            assert_memory_equal(c, whole, (size_t)k->M * o.ldc * sizeof(float));
            free(c);
        }
        free(whole);
        operands_free(&o);
    }
    threads_set(prev);
    char msg[160];
    assert_int_equal(gemm_kernel_init(msg, sizeof msg), 0);
}

static void test_env(void **state) {
    char msg[160];
    const char *old = getenv("EFFDM_SGEMM");
    char *saved = old ? strdup(old) : NULL;
    setenv("EFFDM_SGEMM", "fast", 1);
    assert_int_equal(gemm_kernel_init(msg, sizeof msg), -1);
    assert_non_null(strstr(msg, "EFFDM_SGEMM 'fast'"));
    setenv("EFFDM_SGEMM", "blas", 1);
    assert_int_equal(gemm_kernel_init(msg, sizeof msg), 0);
    assert_int_equal(gemm_kernel_get(), GEMM_KERNEL_BLAS);
    setenv("EFFDM_SGEMM", "avx512", 1);
    if (gemm_kernel_supported(GEMM_KERNEL_AVX512)) {
        assert_int_equal(gemm_kernel_init(msg, sizeof msg), 0);
        assert_int_equal(gemm_kernel_get(), GEMM_KERNEL_AVX512);
    } else {
        assert_int_equal(gemm_kernel_init(msg, sizeof msg), -1);
        assert_non_null(strstr(msg, "AVX-512F"));
    }
    unsetenv("EFFDM_SGEMM");
    assert_int_equal(gemm_kernel_init(msg, sizeof msg), 0);
    assert_int_equal(gemm_kernel_get(),
                     gemm_kernel_supported(GEMM_KERNEL_AVX512) ? GEMM_KERNEL_AVX512 : GEMM_KERNEL_BLAS);
    if (saved) {
        setenv("EFFDM_SGEMM", saved, 1);
        assert_int_equal(gemm_kernel_init(msg, sizeof msg), 0);
        free(saved);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_loop),
        cmocka_unit_test(test_own_kernel_bits),
        cmocka_unit_test(test_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
