/* test_token_quant.c: dynamic per-token activation quantization (qalora/token_quant.h) against
   independent references:
   - forward: every token quantized by the uniform kind's kernel (checked against the upstream
     EfficientDM fixtures in test_qalora) with the token's (Δ_t, z_t) computed here from the
     definition; bit-equal. At α = 1 no value is off by more than the token's step s_t.
   - backward: dx and dα against the same kernel's backward per token (dα = Σ_t s_t dΔ_t);
     only the active table entry gets a gradient.
   - the integer levels (the export's operands) decode to the forward's values bit for bit;
   - a conv input (N, C, H, W) gives the bits of a linear input (N·H·W, C) holding the same tokens;
   - the op's outputs and gradients do not depend on the thread count;
   - calibration: 'max' gives 1, 'mse' the best candidate of the grid (scored here by the forward);
   - a layer refuses per-token ranges with a non-uniform activation kind. */
#include "testutil.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qalora/qlayer.h"
#include "qalora/token_quant.h"

// The token's step and zero point by the definition (token_quant.h), in float as the kernels.
static void token_params(const float *v, size_t C, float alpha, int bits, float *s, float *d, float *z) {
    float lo = 0.0f, hi = 0.0f;
    for (size_t c = 0; c < C; c++) {
        if (v[c] < lo) lo = v[c];
        if (v[c] > hi) hi = v[c];
    }
    *s = (hi - lo) / (float)((1 << bits) - 1);
    if (*s > 0.0f) {
        *d = alpha * *s;
        *z = rintf(-lo / *s);
    } else {
        *s = 0.0f, *d = 1.0f, *z = 0.0f;
    }
}

// Reference forward and backward over (outer, C, inner) data, token by token through a
// one-entry uniform quantizer: y, dx (zeroed here) and the returned dα.
static double reference(float *y, float *dx, const float *dy, const float *x, size_t outer, size_t C, size_t inner,
                        float alpha, int bits) {
    float *v = malloc(C * sizeof(float)), *g = malloc(C * sizeof(float)), *q = malloc(C * sizeof(float));
    float *gx = malloc(C * sizeof(float));
    double da = 0.0;
    for (size_t o = 0; o < outer; o++)
        for (size_t p = 0; p < inner; p++) {
            for (size_t c = 0; c < C; c++) {
                v[c] = x[(o * C + c) * inner + p];
                g[c] = dy ? dy[(o * C + c) * inner + p] : 0.0f;
            }
            float s, d, z, dd = 0.0f, dz = 0.0f;
            token_params(v, C, alpha, bits, &s, &d, &z);
            Quantizer uq;
            quantizer_setup(&uq, QUANT_UNIFORM, bits, 0, 1, &d, &z, NULL, NULL);
            quantizer_fake(&uq, q, v, C, 0);
            memset(gx, 0, C * sizeof(float));
            if (dy) quantizer_fake_backward(&uq, gx, &dd, &dz, g, v, C, 0);
            da += (double)s * (double)dd;
            for (size_t c = 0; c < C; c++) {
                y[(o * C + c) * inner + p] = q[c];
                if (dx) dx[(o * C + c) * inner + p] = gx[c];
            }
        }
    free(v);
    free(g);
    free(q);
    free(gx);
    return da;
}

// x (outer, C, inner) ~ N(0, 1), with token 1 all zeros and token 2 all positive (a SiLU
// output's side).
static float *make_input(size_t outer, size_t C, size_t inner, uint64_t seed) {
    size_t n = outer * C * inner;
    float *x = malloc(n * sizeof(float));
    Rng r;
    rng_seed(&r, seed, 0);
    rng_normal_fill(&r, x, n);
    for (size_t c = 0; c < C; c++) {
        size_t t1 = inner > 1 ? 1 : 0, o1 = inner > 1 ? 0 : 1;  // token 1: pixel 1 of image 0, or row 1
        x[(o1 * C + c) * inner + t1] = 0.0f;
        size_t t2 = inner > 2 ? 2 : 0, o2 = inner > 2 ? 0 : 2;
        x[(o2 * C + c) * inner + t2] = fabsf(x[(o2 * C + c) * inner + t2]);
    }
    return x;
}

static void check_against_reference(size_t outer, size_t C, size_t inner, float alpha, int bits) {
    size_t n = outer * C * inner;
    float *x = make_input(outer, C, inner, 7 + bits), *dy = malloc(n * sizeof(float));
    float *y = malloc(n * sizeof(float)), *yr = malloc(n * sizeof(float));
    float *dx = calloc(n, sizeof(float)), *dxr = malloc(n * sizeof(float));
    Rng r;
    rng_seed(&r, 99, 0);
    rng_normal_fill(&r, dy, n);
    token_quant_fake(y, x, outer, C, inner, alpha, bits, NULL);
    double da = token_quant_backward(dx, dy, x, outer, C, inner, alpha, bits, NULL);
    double dar = reference(yr, dxr, dy, x, outer, C, inner, alpha, bits);
    assert_memory_equal(y, yr, n * sizeof(float));
    assert_memory_equal(dx, dxr, n * sizeof(float));
    print_message("  (%zu, %zu, %zu) alpha %.2f W%d: dalpha %.9g, reference %.9g\n", outer, C, inner, alpha, bits, da,
                  dar);
    assert_true(fabs(da - dar) <= 1e-5 * fabs(dar) + 1e-6);
    assert_true(fabs(dar) > 1e-3);  // a real gradient, not a zero compared with a zero
    // the zero token stays zero
    size_t z0 = inner > 1 ? 1 : C;
    assert_true(y[z0] == 0.0f);
    free(x);
    free(dy);
    free(y);
    free(yr);
    free(dx);
    free(dxr);
}

static void test_reference(void **state) {
    check_against_reference(2, 5, 12, 0.93f, 4);  // conv layout
    check_against_reference(7, 9, 1, 0.81f, 4);   // linear layout
    check_against_reference(3, 16, 6, 1.0f, 3);
    check_against_reference(3, 8, 6, 0.7f, 8);
}

// At α = 1 every value is within the token's step s_t of itself (rounding plus the zero
// point's rounding), and the step is far below the token's range.
static void test_error_bound(void **state) {
    size_t outer = 4, C = 32, inner = 9, n = outer * C * inner;
    float *x = make_input(outer, C, inner, 3), *y = malloc(n * sizeof(float)), v[32];
    token_quant_fake(y, x, outer, C, inner, 1.0f, 4, NULL);
    for (size_t o = 0; o < outer; o++)
        for (size_t p = 0; p < inner; p++) {
            for (size_t c = 0; c < C; c++) v[c] = x[(o * C + c) * inner + p];
            float s, d, z;
            token_params(v, C, 1.0f, 4, &s, &d, &z);
            for (size_t c = 0; c < C; c++) assert_true(fabsf(y[(o * C + c) * inner + p] - v[c]) <= s * 1.0001f);
        }
    free(x);
    free(y);
}

// The integer levels decode to the forward's values bit for bit: (level - z_t) Δ_t, slices at
// a stride with zero-filled padding (the export's operands).
static void test_levels(void **state) {
    size_t outer = 3, C = 10, inner = 7, slice = C * inner, ld = slice + 5, n = outer * slice;
    float *x = make_input(outer, C, inner, 13), *y = malloc(n * sizeof(float));
    float *d = malloc(outer * inner * sizeof(float)), *z = malloc(outer * inner * sizeof(float));
    uint8_t *q = malloc(outer * ld);
    memset(q, 0xAB, outer * ld);
    x[5] = NAN;  // NaN: level 0, as the static quantizer's integers
    token_quant_fake(y, x, outer, C, inner, 0.9f, 4, NULL);
    token_quant_levels(q, ld, d, z, x, outer, C, inner, 0.9f, 4);
    for (size_t o = 0; o < outer; o++) {
        for (size_t i = 0; i < slice; i++) {
            size_t t = o * inner + i % inner;
            uint8_t l = q[o * ld + i];
            assert_true(l <= 15);
            if (o == 0 && i == 5) {
                assert_int_equal(l, 0);
                continue;
            }
            assert_true(((float)l - z[t]) * d[t] == y[o * slice + i]);
        }
        for (size_t i = slice; i < ld; i++) assert_int_equal(q[o * ld + i], 0);
    }
    free(x);
    free(y);
    free(d);
    free(z);
    free(q);
}

// The per-token conv's word operand: byte c % 4 of word (c / 4, p) is channel c's level minus
// z_t, and (byte) Δ_t is the forward's value bit for bit; bytes past C are 0; T sums the bytes.
// C = 10 leaves a half-filled last word; a NaN's level is 0 (its byte -z_t).
static void test_words(void **state) {
    size_t outer = 3, C = 10, inner = 7, C4 = 3, n = outer * C * inner;
    float *x = make_input(outer, C, inner, 17), *y = malloc(n * sizeof(float));
    float *d = malloc(outer * inner * sizeof(float)), *z = malloc(outer * inner * sizeof(float));
    uint32_t *w = malloc(outer * C4 * inner * sizeof(uint32_t));
    int32_t *T = malloc(outer * inner * sizeof(int32_t));
    memset(w, 0xAB, outer * C4 * inner * sizeof(uint32_t));
    x[inner + 2] = NAN;  // image 0, channel 1, token 2
    token_quant_fake(y, x, outer, C, inner, 0.9f, 4, NULL);
    token_quant_words(w, T, d, z, x, outer, C, inner, 0.9f, 4);
    for (size_t o = 0; o < outer; o++)
        for (size_t p = 0; p < inner; p++) {
            size_t t = o * inner + p;
            int32_t sum = 0;
            for (size_t c = 0; c < C4 * 4; c++) {
                int v = (int8_t)(uint8_t)(w[(o * C4 + c / 4) * inner + p] >> (8 * (c % 4)));
                if (c >= C) {
                    assert_int_equal(v, 0);
                    continue;
                }
                sum += v;
                assert_true(v + z[t] >= 0.0f && v + z[t] <= 15.0f);
                if (o == 0 && c == 1 && p == 2) assert_true((float)v == -z[t]);
                else assert_true((float)v * d[t] == y[(o * C + c) * inner + p]);
            }
            assert_int_equal(T[t], sum);
        }
    free(x), free(y), free(d), free(z), free(w), free(T);
}

// (N, C, H, W) against the same tokens as rows of a linear input (N·H·W, C).
static void test_layouts(void **state) {
    size_t N = 2, C = 12, P = 10, n = N * C * P;
    float *x = make_input(N, C, P, 5), *dy = malloc(n * sizeof(float)), *xt = malloc(n * sizeof(float));
    float *dyt = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float)), *yt = malloc(n * sizeof(float));
    float *dx = calloc(n, sizeof(float)), *dxt = calloc(n, sizeof(float));
    Rng r;
    rng_seed(&r, 11, 0);
    rng_normal_fill(&r, dy, n);
    for (size_t o = 0; o < N; o++)
        for (size_t c = 0; c < C; c++)
            for (size_t p = 0; p < P; p++) {
                xt[(o * P + p) * C + c] = x[(o * C + c) * P + p];
                dyt[(o * P + p) * C + c] = dy[(o * C + c) * P + p];
            }
    token_quant_fake(y, x, N, C, P, 0.9f, 4, NULL);
    token_quant_fake(yt, xt, N * P, C, 1, 0.9f, 4, NULL);
    double da = token_quant_backward(dx, dy, x, N, C, P, 0.9f, 4, NULL);
    double dat = token_quant_backward(dxt, dyt, xt, N * P, C, 1, 0.9f, 4, NULL);
    for (size_t o = 0; o < N; o++)
        for (size_t c = 0; c < C; c++)
            for (size_t p = 0; p < P; p++) {
                assert_true(yt[(o * P + p) * C + c] == y[(o * C + c) * P + p]);
                assert_true(dxt[(o * P + p) * C + c] == dx[(o * C + c) * P + p]);
            }
    assert_true(da == dat);  // tokens in the same order, each summed over its channels in order
    free(x);
    free(dy);
    free(xt);
    free(dyt);
    free(y);
    free(yt);
    free(dx);
    free(dxt);
}

/* ---- the op: entries, threads ------------------------------------------------------ */

static float g_delta[3] = {1.0f, 0.85f, 0.95f}, g_zero[3], g_ddelta[3], g_dzero[3];

static float *run_op(int threads, size_t *len) {
    omp_set_num_threads(threads);
    Ctx *c = test_ctx_static();
    Rng r;
    rng_seed(&r, 21, 0);
    Quantizer q;
    memset(g_ddelta, 0, sizeof g_ddelta);
    memset(g_dzero, 0, sizeof g_dzero);
    quantizer_setup(&q, QUANT_UNIFORM, 4, 0, 3, g_delta, g_zero, g_ddelta, g_dzero);
    Tensor *x = test_tensor_normal(c, 4, (int[]){4, 64, 16, 16}, &r);  // 65536 values: threaded
    x->requires_grad = 1;
    Tensor *y = t_fake_quant_token(c, x, &q, 1, 1);
    assert_non_null(y);
    float *out = test_backward_outputs(c, y, &r, (Tensor *const[]){x, &q.delta}, 2, len);
    ctx_free(c);
    omp_set_num_threads(2);
    // only the active entry's α got a gradient, the zero points none
    assert_true(g_ddelta[1] != 0.0f && g_ddelta[0] == 0.0f && g_ddelta[2] == 0.0f);
    assert_true(g_dzero[0] == 0.0f && g_dzero[1] == 0.0f && g_dzero[2] == 0.0f);
    return out;
}

static void test_op_threads(void **state) { assert_thread_deterministic(run_op); }

static void test_op_refusals(void **state) {
    Ctx *c = test_ctx_static();
    Rng r;
    rng_seed(&r, 2, 0);
    Quantizer q;
    quantizer_setup(&q, QUANT_UNIFORM, 4, 0, 3, g_delta, g_zero, NULL, NULL);
    Tensor *x = test_tensor_normal(c, 2, (int[]){3, 8}, &r);
    assert_null(t_fake_quant_token(c, x, &q, 3, 0));
    assert_has(c->err.msg, "entry 3 of a 3-entry table");
    c->err = (Err){0};
    Tensor *v = test_tensor_normal(c, 1, (int[]){8}, &r);
    assert_null(t_fake_quant_token(c, v, &q, 0, 1));
    assert_int_equal(c->err.code, ERR_SHAPE);
    ctx_free(c);
}

/* ---- calibration ------------------------------------------------------------------- */

static double score(const float *x, size_t outer, size_t C, size_t inner, float alpha, float p) {
    size_t n = outer * C * inner;
    float *y = malloc(n * sizeof(float));
    token_quant_fake(y, x, outer, C, inner, alpha, 4, NULL);
    double s = 0;
    for (size_t i = 0; i < n; i++) s += pow(fabs((double)x[i] - (double)y[i]), p);
    free(y);
    return s;
}

static void test_fit(void **state) {
    // Laplace tokens of 256 channels: at 4 bits the best range clips the tails
    size_t outer = 3, C = 256, inner = 4, n = outer * C * inner;
    float *x = malloc(n * sizeof(float));
    Rng r;
    rng_seed(&r, 8, 0);
    for (size_t i = 0; i < n; i++) {
        float u = rng_uniform(&r) - 0.5f;
        x[i] = (u < 0 ? 1.0f : -1.0f) * logf(1.0f - 2.0f * fabsf(u) + 1e-7f);
    }
    assert_true(token_quant_fit(x, outer, C, inner, 4, QUANT_INIT_MAX, NULL) == 1.0f);
    QKindParams kp = {.mse_steps = 40, .mse_shrink = 0.02, .mse_p = 2.0};
    float a = token_quant_fit(x, outer, C, inner, 4, QUANT_INIT_MSE, &kp);
    print_message("  fitted alpha %.3f\n", a);
    assert_true(a < 1.0f && a > 0.2f);
    double best = score(x, outer, C, inner, a, 2.0f);
    for (int i = 0; i < 40; i++) {
        float ai = (float)(1.0 - 0.02 * i);
        assert_true(best <= score(x, outer, C, inner, ai, 2.0f));
    }
    free(x);
}

// A layer refuses per-token ranges with nupes activations, naming both.
static void test_layer_refuses_kind(void **state) {
    Rng r;
    rng_seed(&r, 1, 0);
    Tensor *w = test_param_new(2, (int[]){4, 8}, 0, &r, 1.0f);
    ModelLayer l = {.kind = LAYER_LINEAR};
    snprintf(l.name, sizeof l.name, "proj");
    l.weight = *w;
    QLayerConfig qc;
    qlayer_config_defaults(&qc);
    qc.a_token = 1;
    qc.a_kind = QUANT_NUPES;
    size_t np, ng;
    Err e = {0};
    assert_int_equal(qlayer_sizes(&l, &qc, &np, &ng, &e), ERR_VALUE);
    assert_has(e.msg, "'proj'");
    assert_has(e.msg, "nupes");
    qc.a_kind = QUANT_UNIFORM;
    assert_int_equal(qlayer_sizes(&l, &qc, &np, &ng, &e), 0);
    test_param_free(w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference), cmocka_unit_test(test_error_bound), cmocka_unit_test(test_levels),
        cmocka_unit_test(test_words),
        cmocka_unit_test(test_layouts),
        cmocka_unit_test(test_op_threads), cmocka_unit_test(test_op_refusals), cmocka_unit_test(test_fit),
        cmocka_unit_test(test_layer_refuses_kind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
