/* test_quantizer.c: the uniform affine quantizer against closed forms and the upstream
   fixture: round half to even, the 'max' and 'mse' initialisations (the fixture's w_delta /
   w_zero_point and W_int), the fake-quant op's straight-through gradients on hand-computed
   cases (inside, outside, both clamp ends), TALSQ tables (only the active entry gets a
   gradient), encode/decode, errors, and bit-identical results across thread counts. */
#include "testutil.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qalora/quantizer.h"
#include "util/rng.h"
#include "util/threads.h"

static const float TOL_HAND = 1e-6f;  // hand-computed gradients of float32 values

/* ---- rounding --------------------------------------------------------------------- */

static void test_round_half_even(void **state) {
    const float x[] = {2.5f, 3.5f, -2.5f, 0.5f, 1.5f, -0.5f, -1.5f};
    const float want[] = {2.0f, 4.0f, -2.0f, 0.0f, 2.0f, 0.0f, -2.0f};  // roundf would give 3, 4, -3, 1, 2, -1, -2
    const uint8_t want_lv[] = {10, 12, 6, 8, 10, 8, 6};
    float d = 1.0f, z = 8.0f, y[7];
    Quantizer q;
    quantizer_setup(&q, QUANT_UNIFORM, 4, 0, 1, &d, &z, NULL, NULL);
    quantizer_fake(&q, y, x, 7, 0);
    for (int i = 0; i < 7; i++) assert_float_equal(y[i], want[i], 0.0f);
    quant_uniform_fake(y, x, 7, d, z, 15);
    for (int i = 0; i < 7; i++) assert_float_equal(y[i], want[i], 0.0f);
    uint8_t lv[7];
    quantizer_encode(&q, lv, x, 7, 0);
    for (int i = 0; i < 7; i++) assert_int_equal(lv[i], want_lv[i]);
}

/* ---- initialisation ------------------------------------------------------------- */

static void test_init_max(void **state) {
    // five channels of 4 values; 4 bits unless noted
    const float w[5][4] = {
        {-1.0f, 0.5f, 2.0f, 0.0f},    // x_min -1, x_max 2: Δ = 3/15, z = 5
        {0.5f, 1.5f, 1.0f, 0.25f},    // positive only: x_min clipped to 0, z = 0
        {-3.0f, -1.5f, -0.1f, -2.0f}, // negative only: x_max clipped to 0, z = 15
        {0.0f, 0.0f, 0.0f, 0.0f},     // empty range: Δ floored at 1e-8, z = 0
        {-0.4f, 0.6f, 0.1f, 0.2f},    // Δ = 1/15, z = round(6.0) = 6
    };
    float d[5], z[5];
    Quantizer q;
    Err e = {0};
    quantizer_setup(&q, QUANT_UNIFORM, 4, 1, 5, d, z, NULL, NULL);
    assert_int_equal(quantizer_fit(&q, &w[0][0], 20, QUANT_INIT_MAX, -1, &e), 0);
    assert_float_equal(d[0], (float)(3.0 / 15.0), 0.0f);
    assert_float_equal(z[0], 5.0f, 0.0f);
    assert_float_equal(d[1], (float)(1.5 / 15.0), 0.0f);
    assert_float_equal(z[1], 0.0f, 0.0f);
    assert_float_equal(d[2], (float)(3.0 / 15.0), 0.0f);
    assert_float_equal(z[2], 15.0f, 0.0f);
    assert_float_equal(d[3], 1e-8f, 0.0f);
    assert_float_equal(z[3], 0.0f, 0.0f);
    double d4 = ((double)0.6f - (double)-0.4f) / 15.0;
    assert_float_equal(d[4], (float)d4, 0.0f);
    assert_float_equal(z[4], (float)nearbyint((double)0.4f / d4), 0.0f);
    assert_float_equal(z[4], 6.0f, 0.0f);

    // z ties round half to even: [-1.25, 0.25] at 2 bits: Δ = 0.5, -x_min/Δ = 2.5 -> 2
    const float t[2] = {-1.25f, 0.25f};
    float dt, zt;
    quant_uniform_fit_max(t, 2, 2, &dt, &zt);
    assert_float_equal(dt, 0.5f, 0.0f);
    assert_float_equal(zt, 2.0f, 0.0f);
    // 8 bits: Δ = 3/255, z = round(85) = 85
    quant_uniform_fit_max(w[0], 4, 8, &dt, &zt);
    assert_float_equal(dt, (float)(3.0 / 255.0), 0.0f);
    assert_float_equal(zt, 85.0f, 0.0f);
}

static void test_init_mse_closed_form(void **state) {
    float d, z;
    // integers 0..3 at 2 bits: the full range (i = 0) is exact, score 0, nothing beats it
    const float a[4] = {0.0f, 1.0f, 2.0f, 3.0f};
    quant_uniform_fit_mse(a, 4, 2, NULL, &d, &z);
    assert_float_equal(d, 1.0f, 0.0f);
    assert_float_equal(z, 0.0f, 0.0f);
    // 1..4: 'mse' does NOT clip the range at 0 (z = -1 keeps it exact), 'max' does
    const float b[4] = {1.0f, 2.0f, 3.0f, 4.0f};
    quant_uniform_fit_mse(b, 4, 2, NULL, &d, &z);
    assert_float_equal(d, 1.0f, 0.0f);
    assert_float_equal(z, -1.0f, 0.0f);
    quant_uniform_fit_max(b, 4, 2, &d, &z);
    assert_float_equal(d, (float)(4.0 / 3.0), 0.0f);
    assert_float_equal(z, 0.0f, 0.0f);
    // one outlier at 1 over 1000 values spread on [0, 0.5): the full range costs
    // ~1000 (1/6)^2.4 / 3.4 ~ 3.9, half of it ~0.76 + 0.5^2.4 ~ 0.95: shrinking wins (i > 0)
    float c[1001];
    for (int i = 0; i < 1000; i++) c[i] = (float)i / 2000.0f;
    c[1000] = 1.0f;
    quant_uniform_fit_mse(c, 1001, 2, NULL, &d, &z);
    assert_true(d < 0.9f / 3.0f);
    // a constant slice falls back to the 'max' fit
    const float k[3] = {0.5f, 0.5f, 0.5f};
    quant_uniform_fit_mse(k, 3, 4, NULL, &d, &z);
    assert_float_equal(d, (float)(0.5 / 15.0), 0.0f);
    assert_float_equal(z, 0.0f, 0.0f);
}

// The mse search with other settings (quant.mse_candidates / mse_shrink / mse_norm) against a
// direct search in double: every candidate's range and score written out from the definition
// (quantizer.h), the first best kept. The implementation's pick must score the best (to float
// rounding of its sums) and differ from the reference settings' pick on these data.
static void test_init_mse_settings(void **state) {
    enum { N = 3000, K = 37 };
    static float x[N];
    Rng r;
    rng_seed(&r, 5, 0);
    rng_normal_fill(&r, x, N);
    for (int i = 0; i < N; i += 97) x[i] *= 6.0f;  // tails, so shrinking pays
    const QKindParams kp = {.mse_steps = K, .mse_shrink = 0.02, .mse_p = 2.0};
    const int bits = 3, qmax = 7;
    float xmin = x[0], xmax = x[0];
    for (int i = 1; i < N; i++) {
        xmin = x[i] < xmin ? x[i] : xmin;
        xmax = x[i] > xmax ? x[i] : xmax;
    }
    double score[K], best = INFINITY;
    float cd[K];
    for (int k = 0; k < K; k++) {
        float s = (float)(1.0 - k * 0.02), lo = xmin * s, hi = xmax * s;
        float d = (hi - lo) / (float)qmax, z = rintf(-lo / d);
        double acc = 0;
        for (int i = 0; i < N; i++) {
            float u = rintf(x[i] / d) + z;
            u = u < 0 ? 0 : (u > qmax ? (float)qmax : u);
            acc += pow(fabs((double)x[i] - (double)((u - z) * d)), 2.0);
        }
        score[k] = acc / N;
        cd[k] = d;
        best = score[k] < best ? score[k] : best;
    }
    float d, z, d80, z80;
    quant_uniform_fit_mse(x, N, bits, &kp, &d, &z);
    int pick = -1;
    for (int k = 0; k < K; k++)
        if (cd[k] == d) pick = k;
    assert_true(pick > 0);  // shrunk, and one of this search's candidates
    assert_true(score[pick] <= best * (1 + 1e-6));
    quant_uniform_fit_mse(x, N, bits, NULL, &d80, &z80);  // the reference's 80 / 0.01 / 2.4
    assert_true(d80 != d);
}

// The fixture's w_delta / w_zero_point come from the upstream 'mse' init on W (4 bits,
// channel-wise); W_int = clamp(round(W/Δ) + z, 0, 15).
static void check_fixture_mse(const char *prefix) {
    Ctx *c = test_ctx_new((size_t)1 << 22);
    char p[128];
    snprintf(p, sizeof p, "parity/qalora/%sW.npy", prefix);
    Tensor *W = test_load_npy(c, p);
    snprintf(p, sizeof p, "parity/qalora/%sw_delta.npy", prefix);
    Tensor *dref = test_load_npy(c, p);
    snprintf(p, sizeof p, "parity/qalora/%sw_zero_point.npy", prefix);
    Tensor *zref = test_load_npy(c, p);
    snprintf(p, sizeof p, "parity/qalora/%sW_int.npy", prefix);
    Tensor *iref = test_load_npy(c, p);
    int n = W->shape[0];
    float *d = calloc((size_t)n, sizeof(float)), *z = calloc((size_t)n, sizeof(float));
    Quantizer q;
    Err e = {0};
    quantizer_setup(&q, QUANT_UNIFORM, 4, 1, n, d, z, NULL, NULL);
    assert_int_equal(quantizer_fit(&q, W->data, W->n, QUANT_INIT_MSE, -1, &e), 0);
    for (int o = 0; o < n; o++) {
        assert_float_equal(d[o], dref->data[o], 0.0f);
        assert_float_equal(z[o], zref->data[o], 0.0f);
    }
    uint8_t *lv = malloc(W->n);
    quantizer_encode(&q, lv, W->data, W->n, 0);
    for (size_t i = 0; i < W->n; i++) assert_float_equal((float)lv[i], iref->data[i], 0.0f);
    // decode(encode(W)) is the fake-quantized W (integer zero points)
    float *y1 = malloc(W->n * sizeof(float)), *y2 = malloc(W->n * sizeof(float));
    quantizer_decode(&q, y1, lv, W->n, 0);
    quantizer_fake(&q, y2, W->data, W->n, 0);
    for (size_t i = 0; i < W->n; i++) assert_float_equal(y1[i], y2[i], 0.0f);
    free(y1);
    free(y2);
    free(lv);
    free(d);
    free(z);
    test_ctx_delete(c);
}

static void test_init_mse_fixture(void **state) {
    check_fixture_mse("conv_");
    check_fixture_mse("linear_");
}

/* ---- the op's gradients --------------------------------------------------------- */

// 2 bits (levels 0..3), Δ = 0.5, z = 1.25 (a real zero point, as trained activations have):
//   x = 0.7:  x/Δ = 1.4,  u = 1 + 1.25 = 2.25 inside:  q = 0.5,    dΔ = 1 - 1.4 = -0.4, dz = 0
//   x = 100:  u = 201.25 > 3, clamped to 3:            q = 0.875,  dΔ = 3 - 1.25 = 1.75, dz = -0.5
//   x = -100: u = -198.75 < 0, clamped to 0:           q = -0.625, dΔ = 0 - 1.25 = -1.25, dz = -0.5
//   x = -0.6: x/Δ = -1.2, u = -1 + 1.25 = 0.25 inside: q = -0.5,   dΔ = -1 + 1.2 = 0.2, dz = 0
// With dy = (1, 2, 3, 4): dx = (1, 0, 0, 4), dΔ = -0.4 + 3.5 - 3.75 + 0.8 = 0.15, dz = -2.5.
static void test_op_gradients_hand(void **state) {
    Ctx *c = test_ctx_new((size_t)1 << 20);
    float d[3] = {9.0f, 0.5f, 9.0f}, z[3] = {9.0f, 1.25f, 9.0f}, dd[3] = {0}, dz[3] = {0};
    Quantizer q;
    quantizer_setup(&q, QUANT_UNIFORM, 2, 0, 3, d, z, dd, dz);  // a 3-entry table, entry 1 active
    Tensor *x = tensor_from(c, (const float[]){0.7f, 100.0f, -100.0f, -0.6f}, 1, (int[]){4});
    x->requires_grad = 1;
    Tensor *y = t_fake_quant(c, x, &q, 1);
    assert_non_null(y);
    const float want[4] = {0.5f, 0.875f, -0.625f, -0.5f};
    for (int i = 0; i < 4; i++) assert_float_equal(y->data[i], want[i], TOL_HAND);
    assert_int_equal(tape_backward(c, y, (const float[]){1, 2, 3, 4}), 0);
    const float wdx[4] = {1, 0, 0, 4};
    for (int i = 0; i < 4; i++) assert_float_equal(x->grad[i], wdx[i], 0.0f);
    assert_float_equal(dd[1], 0.15f, TOL_HAND);
    assert_float_equal(dz[1], -2.5f, TOL_HAND);
    for (int k = 0; k < 3; k += 2) {  // the inactive entries
        assert_float_equal(dd[k], 0.0f, 0.0f);
        assert_float_equal(dz[k], 0.0f, 0.0f);
    }

    // both clamp ends pass the gradient: u = 0 and u = 3 exactly (Δ = 0.5, z = 1)
    ctx_reset(c);
    float d1 = 0.5f, z1 = 1.0f, dd1 = 0, dz1 = 0;
    quantizer_setup(&q, QUANT_UNIFORM, 2, 0, 1, &d1, &z1, &dd1, &dz1);
    x = tensor_from(c, (const float[]){-0.5f, 1.0f, -0.76f, 1.26f}, 1, (int[]){4});  // u = 0, 3, -1, 4
    x->requires_grad = 1;
    y = t_fake_quant(c, x, &q, 0);
    assert_int_equal(tape_backward(c, y, (const float[]){1, 1, 1, 1}), 0);
    const float wdx2[4] = {1, 1, 0, 0};
    for (int i = 0; i < 4; i++) assert_float_equal(x->grad[i], wdx2[i], 0.0f);
    // dΔ: inside (round - x/Δ) = 0 + 0, outside clamp - z = (0 - 1) + (3 - 1); dz = -2 Δ
    assert_float_equal(dd1, 1.0f, TOL_HAND);
    assert_float_equal(dz1, -1.0f, TOL_HAND);

    // channel-wise: rows are channels, each channel sums its own gradient
    ctx_reset(c);
    float dc[2] = {0.5f, 0.5f}, zc[2] = {1.25f, 1.25f}, ddc[2] = {0}, dzc[2] = {0};
    quantizer_setup(&q, QUANT_UNIFORM, 2, 1, 2, dc, zc, ddc, dzc);
    x = tensor_from(c, (const float[]){0.7f, 100.0f, -100.0f, -0.6f}, 2, (int[]){2, 2});
    y = t_fake_quant(c, x, &q, 0);
    assert_int_equal(tape_backward(c, y, (const float[]){1, 2, 3, 4}), 0);
    assert_float_equal(ddc[0], -0.4f + 3.5f, TOL_HAND);
    assert_float_equal(ddc[1], -3.75f + 0.8f, TOL_HAND);
    assert_float_equal(dzc[0], -1.0f, TOL_HAND);
    assert_float_equal(dzc[1], -1.5f, TOL_HAND);
    assert_null(x->grad);  // x needs no gradient: none allocated
    test_ctx_delete(c);
}

static void test_op_errors(void **state) {
    Ctx *c = test_ctx_new((size_t)1 << 20);
    float d[3] = {1, 1, 1}, z[3] = {0, 0, 0};
    Quantizer q;
    quantizer_setup(&q, QUANT_UNIFORM, 4, 1, 3, d, z, NULL, NULL);
    Tensor *x = tensor_zeros(c, 2, (int[]){2, 5});
    assert_null(t_fake_quant(c, x, &q, 0));
    assert_int_equal(c->err.code, ERR_SHAPE);
    ctx_reset(c);
    x = tensor_zeros(c, 2, (int[]){2, 5});
    quantizer_setup(&q, QUANT_UNIFORM, 4, 0, 3, d, z, NULL, NULL);
    assert_null(t_fake_quant(c, x, &q, 3));
    assert_int_equal(c->err.code, ERR_VALUE);
    assert_null(t_fake_quant(c, NULL, &q, 0));  // NULL propagates

    Err e = {0};
    float bad[2] = {1.0f, NAN};
    assert_int_equal(quantizer_fit(&q, bad, 2, QUANT_INIT_MSE, 0, &e), ERR_VALUE);
    assert_non_null(strstr(e.msg, "index 1"));
    memset(&e, 0, sizeof e);
    quantizer_setup(&q, QUANT_UNIFORM, 4, 1, 3, d, z, NULL, NULL);
    assert_int_equal(quantizer_fit(&q, d, 2, QUANT_INIT_MAX, -1, &e), ERR_VALUE);  // 2 values, 3 channels
    memset(&e, 0, sizeof e);
    quantizer_setup(&q, QUANT_UNIFORM, 9, 1, 1, d, z, NULL, NULL);
    assert_int_equal(quantizer_fit(&q, d, 2, QUANT_INIT_MAX, -1, &e), ERR_VALUE);
    test_ctx_delete(c);
}

/* ---- tables, zero points -------------------------------------------------------- */

static void test_table_fit_and_round_zero(void **state) {
    float d[4] = {0}, z[4] = {0};
    Quantizer q;
    Err e = {0};
    quantizer_setup(&q, QUANT_UNIFORM, 4, 0, 4, d, z, NULL, NULL);
    const float x[4] = {-1.0f, 0.5f, 2.0f, 0.0f};
    assert_int_equal(quantizer_fit(&q, x, 4, QUANT_INIT_MAX, -1, &e), 0);  // every entry
    for (int k = 0; k < 4; k++) assert_float_equal(d[k], (float)(3.0 / 15.0), 0.0f);
    const float x2[2] = {0.0f, 1.5f};
    assert_int_equal(quantizer_fit(&q, x2, 2, QUANT_INIT_MAX, 2, &e), 0);  // entry 2 only
    assert_float_equal(d[2], 0.1f, 0.0f);
    assert_float_equal(d[1], (float)(3.0 / 15.0), 0.0f);
    z[0] = 2.5f;
    z[1] = 3.5f;
    z[2] = -2.5f;
    z[3] = 7.49f;
    quantizer_round_zero(&q);
    assert_float_equal(z[0], 2.0f, 0.0f);
    assert_float_equal(z[1], 4.0f, 0.0f);
    assert_float_equal(z[2], -2.0f, 0.0f);
    assert_float_equal(z[3], 7.0f, 0.0f);
}

/* ---- determinism ------------------------------------------------------------------ */

typedef struct {
    float *y, *dx;
    float dd, dz, fd, fz;
} RunOut;

static void run_big(const float *x, const float *g, size_t n, RunOut *o) {
    float d = 0.03f, z = 7.3f;
    Quantizer q;
    quantizer_setup(&q, QUANT_UNIFORM, 4, 0, 1, &d, &z, NULL, NULL);
    o->dd = o->dz = 0;
    memset(o->dx, 0, n * sizeof(float));
    quantizer_fake(&q, o->y, x, n, 0);
    quantizer_fake_backward(&q, o->dx, &o->dd, &o->dz, g, x, n, 0);
    Err e = {0};
    assert_int_equal(quantizer_fit(&q, x, n, QUANT_INIT_MSE, 0, &e), 0);
    o->fd = d;
    o->fz = z;
}

static void test_thread_determinism(void **state) {
    size_t n = 300001;  // many chunks and a ragged tail
    float *x = malloc(n * sizeof(float)), *g = malloc(n * sizeof(float));
    Rng r;
    rng_seed(&r, 3, 0);
    rng_normal_fill(&r, x, n);
    rng_normal_fill(&r, g, n);
    RunOut a = {malloc(n * sizeof(float)), malloc(n * sizeof(float))};
    RunOut b = {malloc(n * sizeof(float)), malloc(n * sizeof(float))};
    int prev = threads_get();
    threads_set(1);
    run_big(x, g, n, &a);
    threads_set(prev > 1 ? prev : 2);
    run_big(x, g, n, &b);
    threads_set(prev);
    assert_memory_equal(a.y, b.y, n * sizeof(float));
    assert_memory_equal(a.dx, b.dx, n * sizeof(float));
    assert_memory_equal(&a.dd, &b.dd, sizeof(float));
    assert_memory_equal(&a.dz, &b.dz, sizeof(float));
    assert_memory_equal(&a.fd, &b.fd, sizeof(float));
    assert_memory_equal(&a.fz, &b.fz, sizeof(float));
    assert_true(a.dz != 0.0f);  // the data reaches outside the range: both gradient branches ran
    float sd, sz;  // the serial single-slice fit sums the same chunks in the same order
    quant_uniform_fit_mse(x, n, 4, NULL, &sd, &sz);
    assert_memory_equal(&sd, &a.fd, sizeof(float));
    assert_memory_equal(&sz, &a.fz, sizeof(float));
    free(a.y);
    free(a.dx);
    free(b.y);
    free(b.dx);
    free(x);
    free(g);
}

int main(void) {
    threads_set(0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_half_even),
        cmocka_unit_test(test_init_max),
        cmocka_unit_test(test_init_mse_closed_form),
        cmocka_unit_test(test_init_mse_settings),
        cmocka_unit_test(test_init_mse_fixture),
        cmocka_unit_test(test_op_gradients_hand),
        cmocka_unit_test(test_op_errors),
        cmocka_unit_test(test_table_fit_and_round_zero),
        cmocka_unit_test(test_thread_determinism),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
