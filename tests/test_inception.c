/* test_inception.c: pytorch-fid's FID Inception (eval/inception.h) against the upstream
   outputs in shared/fixtures/fid/inception (random fp16 weights with the real file's
   names and shapes; see that folder's README). The fixture folder is too large for the
   repo: when it is absent the parity test prints "skipped: fixture not present" (the one
   allowed skip). The same fixture checks the batch split on several threads. The bilinear
   resize is also checked against closed forms. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "autograd/ops/gemm_util.h"
#include "eval/inception.h"
#include "io/npy.h"
#include "util/threads.h"

#define FIXTURE_DIR SHARED_DIR "/fixtures/fid/inception"

static const double TOL_OUT = 1e-4;    // pool3, logits: fixtures README
static const double TOL_BLOCK = 1e-4;  // Mixed_* block outputs (debugging aids, same bar)

static int fixture_present(void) {
    struct stat st;
    return stat(FIXTURE_DIR "/inception_random_fp16.pth", &st) == 0;
}

static NpyArray load(const char *name) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", FIXTURE_DIR, name);
    NpyArray a;
    Err e = {0};
    if (npy_read(p, &a, &e)) {
        print_error("%s\n", e.msg);
        fail();
    }
    return a;
}

typedef struct {
    const char *names[4];
    double err[4];
    int seen[4];
} Taps;

static void tap(void *user, const char *block, const Tensor *out) {
    Taps *t = user;
    for (int i = 0; i < 4; i++) {
        if (strcmp(block, t->names[i]) != 0) continue;
        char f[64];
        snprintf(f, sizeof f, "act_299_%s.npy", block);
        NpyArray ref = load(f);
        assert_int_equal(ref.n, out->n);
        t->err[i] = rel_l2(out->data, ref.data, ref.n);
        t->seen[i] = 1;
        print_message("  %-9s rel L2 %.3g\n", block, t->err[i]);
        npy_free(&ref);
    }
}

static void check_case(Inception *net, Ctx *c, const char *input, const char *pool_name, const char *logit_name,
                       int with_taps) {
    NpyArray x = load(input), pool = load(pool_name), logits = load(logit_name);
    assert_int_equal(x.ndim, 4);
    int N = x.shape[0];
    float *p = malloc((size_t)N * INCEPTION_FEATURES * sizeof(float));
    float *l = malloc((size_t)N * INCEPTION_CLASSES * sizeof(float));
    float *sp = malloc((size_t)N * INCEPTION_SPATIAL_DIM * sizeof(float));
    Taps t = {{"Mixed_5b", "Mixed_6a", "Mixed_6e", "Mixed_7c"}, {0}, {0}};
    Err e = {0};
    print_message("%s:\n", input);
    size_t used = c->arena.used;
    if (inception_forward(net, c, x.data, N, x.shape[2], x.shape[3], p, l, sp, with_taps ? tap : NULL, &t, &e))
        print_error("%s\n", e.msg);
    assert_int_equal(e.code, 0);
    assert_int_equal(c->arena.used, used);
    print_message("  pool3 rel L2 %.3g, logits rel L2 %.3g\n", rel_l2(p, pool.data, pool.n), rel_l2(l, logits.data, logits.n));
    assert_int_equal(pool.n, (size_t)N * INCEPTION_FEATURES);
    assert_int_equal(logits.n, (size_t)N * INCEPTION_CLASSES);
    assert_rel_l2(p, pool.data, pool.n, TOL_OUT);
    assert_rel_l2(l, logits.data, logits.n, TOL_OUT);
    if (with_taps) {
        for (int i = 0; i < 4; i++) {
            assert_true(t.seen[i]);
            assert_true(t.err[i] <= TOL_BLOCK);
        }
        // sFID features: the first 7 channels of Mixed_6e (768, 17, 17) of each image
        NpyArray m6e = load("act_299_Mixed_6e.npy");
        for (int n = 0; n < N; n++)
            assert_rel_l2(sp + (size_t)n * INCEPTION_SPATIAL_DIM, m6e.data + (size_t)n * 768 * 17 * 17,
                          INCEPTION_SPATIAL_DIM, TOL_BLOCK);
        npy_free(&m6e);
    }
    free(p);
    free(l);
    free(sp);
    npy_free(&x);
    npy_free(&pool);
    npy_free(&logits);
}

/* The batch split (inception_forward on several threads): 5 images, the fixture's first
   three times then its second twice (so no two parts see the same images), in parts of
   2, 2 and 1 on 2 threads. Each image's outputs match the fixture's, and
   those of the unsplit forward on one thread: bit for bit with the AVX-512 GEMM kernel
   (its sums do not depend on how many images a GEMM spans), within 1e-6 with OpenBLAS. */
static void check_split(Inception *net, Ctx *c) {
    NpyArray x = load("x32.npy"), pool = load("pool3_32.npy"), logits = load("logits_32.npy");
    const int n0 = x.shape[0], N = 5, H = x.shape[2], W = x.shape[3];
    int src[5] = {0, 0, 0, 1, 1};  // image i is the fixture's src[i] (n0 = 2)
    assert_int_equal(n0, 2);
    size_t per = (size_t)3 * H * W;
    float *xs = malloc((size_t)N * per * sizeof(float));
    float *p[2], *l[2];
    for (int i = 0; i < N; i++) memcpy(xs + (size_t)i * per, x.data + (size_t)src[i] * per, per * sizeof(float));
    int prev = threads_get();
    for (int run = 0; run < 2; run++) {  // run 0: one thread, whole batch; run 1: two threads, split
        p[run] = malloc((size_t)N * INCEPTION_FEATURES * sizeof(float));
        l[run] = malloc((size_t)N * INCEPTION_CLASSES * sizeof(float));
        threads_set(run ? 2 : 1);
        Err e = {0};
        size_t used = c->arena.used;
        if (inception_forward(net, c, xs, N, H, W, p[run], l[run], NULL, NULL, NULL, &e)) print_error("%s\n", e.msg);
        assert_int_equal(e.code, 0);
        assert_int_equal(c->arena.used, used);
    }
    threads_set(prev);
    for (int i = 0; i < N; i++) {
        assert_rel_l2(p[1] + (size_t)i * INCEPTION_FEATURES, pool.data + (size_t)src[i] * INCEPTION_FEATURES,
                      INCEPTION_FEATURES, TOL_OUT);
        assert_rel_l2(l[1] + (size_t)i * INCEPTION_CLASSES, logits.data + (size_t)src[i] * INCEPTION_CLASSES,
                      INCEPTION_CLASSES, TOL_OUT);
    }
    double d = rel_l2(p[1], p[0], (size_t)N * INCEPTION_FEATURES);
    print_message("split (3 parts, 2 threads) vs whole batch (1 thread): pool3 rel L2 %.3g\n", d);
    if (gemm_kernel_get() == GEMM_KERNEL_AVX512) {
        assert_memory_equal(p[1], p[0], (size_t)N * INCEPTION_FEATURES * sizeof(float));
        assert_memory_equal(l[1], l[0], (size_t)N * INCEPTION_CLASSES * sizeof(float));
    } else {
        assert_true(d <= 1e-6);
    }
    for (int run = 0; run < 2; run++) {
        free(p[run]);
        free(l[run]);
    }
    free(xs);
    npy_free(&x);
    npy_free(&pool);
    npy_free(&logits);
}

static void test_inception_parity(void **state) {
    if (!fixture_present()) {
        print_message("skipped: fixture not present (%s)\n", FIXTURE_DIR);
        skip();
    }
    Inception *net;
    Err e = {0};
    if (inception_load(&net, FIXTURE_DIR "/inception_random_fp16.pth", &e)) print_error("%s\n", e.msg);
    assert_int_equal(e.code, 0);
    Ctx c;
    assert_int_equal(ctx_init(&c, (size_t)8 << 30, &e), 0);
    check_case(net, &c, "x299.npy", "pool3_299.npy", "logits_299.npy", 1);
    check_case(net, &c, "x32.npy", "pool3_32.npy", "logits_32.npy", 0);
    check_split(net, &c);
    print_message("peak arena %.1f MiB for 2 images\n", c.arena.peak / 1048576.0);
    ctx_free(&c);
    inception_free(net);
}

// A file without the Inception tensors is a named error.
static void test_inception_missing_tensor(void **state) {
    Inception *net = NULL;
    Err e = {0};
    assert_int_equal(inception_load(&net, TEST_DATA_DIR "/../../models/zoo/fmnist-ldm/judge.ckpt", &e), ERR_KEY);
    assert_null(net);
    assert_non_null(strstr(e.msg, "Conv2d_1a_3x3.conv.weight"));
}

// F.interpolate(bilinear, align_corners=False): [0, 1] (W 2) -> 4 columns: source
// coordinates -0.25 (clamped to 0), 0.25, 0.75, 1.25 (index 1, no right neighbour).
static void test_resize_closed_form(void **state) {
    float x[2] = {0, 1}, y[4];
    inception_resize_bilinear(x, 1, 1, 1, 2, y, 1, 4);
    float want[4] = {0, 0.25f, 0.75f, 1};
    for (int i = 0; i < 4; i++) assert_true(fabsf(y[i] - want[i]) < 1e-7f);
    // same size: identity; downsampling by 2: the mean of each 2x2 block
    float img[16], out[16];
    for (int i = 0; i < 16; i++) img[i] = (float)(i * i % 7);
    inception_resize_bilinear(img, 1, 1, 4, 4, out, 4, 4);
    assert_memory_equal(img, out, sizeof img);
    inception_resize_bilinear(img, 1, 1, 4, 4, out, 2, 2);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            float m = (img[(2 * i) * 4 + 2 * j] + img[(2 * i) * 4 + 2 * j + 1] + img[(2 * i + 1) * 4 + 2 * j] +
                       img[(2 * i + 1) * 4 + 2 * j + 1]) / 4;
            assert_true(fabsf(out[i * 2 + j] - m) < 1e-6f);
        }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resize_closed_form),
        cmocka_unit_test(test_inception_missing_tensor),
        cmocka_unit_test(test_inception_parity),
    };
    return cmocka_run_group_tests_name("inception", tests, NULL, NULL);
}
