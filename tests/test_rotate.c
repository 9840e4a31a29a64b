/* test_rotate.c: the block-Hadamard rotation (qalora/rotate.h) against independent references:
   - rotate_block against the definition (largest power of two <= max dividing c);
   - rotate_apply against the explicit matrix, built here in double by Sylvester's recursion
     H_2n = [[H_n, H_n], [H_n, -H_n]] / √2, applied per block to (n_vec, c, p) data; applying
     it twice gives the input back;
   - t_rotate's backward against central differences (gradcheck), conv and linear layouts;
   - a rotated QLayer: its weight is the naive PTQ of W Hᵀ (W Hᵀ by the explicit matrix),
     unrotated back to ~W at 8 bits; its output at W8A8 is the FP layer's (H is orthogonal);
     on an input with one outlier channel its W4A4 output is closer to FP than the unrotated
     layer's (the point of the rotation). */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qalora/qlayer.h"
#include "qalora/rotate.h"

static const double TOL_APPLY = 1e-6;     // float butterflies against the double matrix
static const double TOL_GRADCHECK = 1e-3; // a linear map: FD exact up to float
static const double TOL_W8A8 = 2e-2;      // 8-bit weights and activations against FP

// The b x b normalised Sylvester-Hadamard matrix (row-major) by recursion, in double.
static double *hadamard(int b) {
    double *h = malloc((size_t)b * b * sizeof *h);
    assert_non_null(h);
    h[0] = 1.0;
    for (int n = 1; n < b; n *= 2)
        for (int i = n - 1; i >= 0; i--)
            for (int j = n - 1; j >= 0; j--) {
                double v = h[i * n + j] / sqrt(2.0);
                h[i * 2 * n + j] = v;
                h[i * 2 * n + j + n] = v;
                h[(i + n) * 2 * n + j] = v;
                h[(i + n) * 2 * n + j + n] = -v;
            }
    return h;
}

// y (n_vec, c, p) = blockdiag(H_b) x along c, in double.
static void rotate_ref(double *y, const float *x, size_t n_vec, int c, size_t p, int b) {
    double *h = hadamard(b);
    for (size_t v = 0; v < n_vec; v++)
        for (int i = 0; i < c; i++)
            for (size_t k = 0; k < p; k++) {
                int blk = i / b * b;
                double s = 0;
                for (int j = 0; j < b; j++) s += h[(i - blk) * b + j] * x[(v * c + (size_t)(blk + j)) * p + k];
                y[(v * c + (size_t)i) * p + k] = s;
            }
    free(h);
}

static void test_block(void **state) {
    assert_int_equal(rotate_block(64, 64), 64);
    assert_int_equal(rotate_block(192, 64), 64);
    assert_int_equal(rotate_block(96, 64), 32);
    assert_int_equal(rotate_block(320, 16), 16);
    assert_int_equal(rotate_block(4, 64), 4);
    assert_int_equal(rotate_block(6, 64), 2);
    assert_int_equal(rotate_block(3, 64), 0);   // odd: no block of 2
    assert_int_equal(rotate_block(64, 1), 0);   // off
    assert_int_equal(rotate_block(64, 0), 0);
    assert_int_equal(rotate_block(64, 48), 32); // the largest power of two <= 48
}

static void check_apply(size_t n_vec, int c, size_t p, int b) {
    Rng r;
    rng_seed(&r, 5 + (uint64_t)b, 0);
    size_t n = n_vec * (size_t)c * p;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    double *ref = malloc(n * sizeof *ref);
    rng_normal_fill(&r, x, n);
    memcpy(y, x, n * sizeof *y);
    rotate_apply(y, n_vec, c, p, b);
    rotate_ref(ref, x, n_vec, c, p, b);
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (y[i] - ref[i]) * (y[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    if (sqrt(num / den) > TOL_APPLY) fail_msg("b %d, c %d, p %zu: rel L2 %.3g", b, c, p, sqrt(num / den));
    rotate_apply(y, n_vec, c, p, b);  // H H = I
    assert_rel_l2(y, x, n, TOL_APPLY);
    free(x);
    free(y);
    free(ref);
}

static void test_apply(void **state) {
    check_apply(3, 24, 5, 8);    // conv planes, 3 blocks per vector
    check_apply(2, 64, 1, 64);   // linear rows, one block
    check_apply(1, 6, 7, 2);
    check_apply(40, 192, 9, 64); // large enough for the threaded loop
    check_apply(3, 32, 100, 32); // planes in tiles, the last one short
    check_apply(70, 128, 1, 64); // gathered columns, the last tile short
    check_apply(2, 8192, 1, 4096); // the largest block: one column per tile
}

static Tensor *f_rotate(Ctx *c, Tensor *const *in, void *user) { return t_rotate(c, in[0], *(int *)user, 8); }

static void test_gradcheck(void **state) {
    Ctx *c = test_ctx_new((size_t)1 << 24);
    Rng r;
    rng_seed(&r, 3, 0);
    Tensor *x = tensor_new4(c, 2, 16, 3, 3), *xl = tensor_new2(c, 5, 24);
    rng_normal_fill(&r, x->data, x->n);
    rng_normal_fill(&r, xl->data, xl->n);
    x->requires_grad = xl->requires_grad = 1;
    int conv = 1, lin = 0;
    gradcheck(f_rotate, &x, 1, &conv, (GradcheckOpts){.eps = 1e-2, .tol = TOL_GRADCHECK});
    gradcheck(f_rotate, &xl, 1, &lin, (GradcheckOpts){.eps = 1e-2, .tol = TOL_GRADCHECK});
    // a block that does not divide the channels is refused
    ctx_reset(c);
    Tensor *bad = tensor_new4(c, 1, 12, 2, 2);
    assert_null(t_rotate(c, bad, 1, 8));
    assert_int_equal(c->err.code, ERR_SHAPE);
    test_ctx_delete(c);
}

/* ---- a rotated layer ------------------------------------------------------------------ */

// A conv2d layer (cout, cin, 3x3, pad 1) with N(0, 0.2²) weights and N(0, 1) bias.
static void conv_layer(ModelLayer *l, int cout, int cin, Rng *r) {
    memset(l, 0, sizeof *l);
    l->kind = LAYER_CONV2D;
    snprintf(l->name, sizeof l->name, "input_blocks.1.0.in_layers.2");
    int ws[4] = {cout, cin, 3, 3}, bs[1] = {cout};
    size_t nw = (size_t)cout * cin * 9;
    float *w = malloc(nw * sizeof *w), *b = malloc((size_t)cout * sizeof *b);
    rng_normal_fill(r, w, nw);
    rng_normal_fill(r, b, (size_t)cout);
    for (size_t i = 0; i < nw; i++) w[i] *= 0.2f;
    tensor_init_param(&l->weight, w, NULL, 4, ws);
    tensor_init_param(&l->bias, b, NULL, 1, bs);
    l->stride = 1;
    l->pad = 1;
}

// The per-channel 'max' naive PTQ of w (cout, k), round half to even, in double (as test_qalora).
static void naive_ptq_ref(float *y, const double *w, int cout, size_t k, int bits) {
    int L = (1 << bits) - 1;
    for (int o = 0; o < cout; o++) {
        double lo = 0, hi = 0;
        for (size_t j = 0; j < k; j++) lo = fmin(lo, w[o * k + j]), hi = fmax(hi, w[o * k + j]);
        float delta = (float)((hi - lo) / L), z = (float)nearbyint(-lo / ((hi - lo) / L));
        for (size_t j = 0; j < k; j++) {
            float v = nearbyintf((float)w[o * k + j] / delta) + z;
            v = v < 0 ? 0 : (v > L ? (float)L : v);
            y[o * k + j] = (v - z) * delta;
        }
    }
}

// The layer's output on x with rotation block rot (0: none) at w_bits / a_bits, rank 0,
// calibrated on x itself ('mse' activation range).
static float *qlayer_out(ModelLayer *l, Tensor *x, int rot, int w_bits, int a_bits, QLayer *keep) {
    QLayerConfig cfg;
    qlayer_config_defaults(&cfg);
    cfg.w_bits = w_bits;
    cfg.a_bits = a_bits;
    cfg.rank = 0;
    cfg.n_entries = 1;
    cfg.rotate_block = rot;
    QLayer q;
    Rng r;
    rng_seed(&r, 1, 0);
    Err e = {0};
    assert_int_equal(qlayer_init(&q, l, &cfg, NULL, NULL, &r, &e), 0);
    assert_int_equal(q.rot, rot);
    Ctx *c = test_ctx_new((size_t)1 << 26);
    ctx_set_grad(c, 0);
    q.calib = QCALIB_FIT;
    Tensor *y = qlayer_forward(c, &q, x);
    assert_non_null(y);
    float *out = malloc(y->n * sizeof *out);
    memcpy(out, y->data, y->n * sizeof *out);
    test_ctx_delete(c);
    if (keep) *keep = q;
    else qlayer_free(&q);
    return out;
}

static void test_layer(void **state) {
    Rng r;
    rng_seed(&r, 9, 0);
    const int cout = 8, cin = 32, rot = 16;
    ModelLayer l;
    conv_layer(&l, cout, cin, &r);
    Ctx *c = test_ctx_new((size_t)1 << 24);
    Tensor *x = tensor_new4(c, 2, cin, 5, 5);
    rng_normal_fill(&r, x->data, x->n);
    // the FP output
    Tensor *yfp = t_conv2d(c, x, &l.weight, &l.bias, 1, 1);
    assert_non_null(yfp);

    // the weight: naive PTQ of W Hᵀ (= W H, H symmetric), W H by the explicit matrix per tap
    QLayer q;
    float *y8 = qlayer_out(&l, x, rot, 8, 8, &q);
    size_t k = (size_t)cin * 9, nw = l.weight.n;
    double *wr = malloc(nw * sizeof *wr);
    rotate_ref(wr, l.weight.data, (size_t)cout, cin, 9, rot);
    float *ref = malloc(nw * sizeof *ref), *weff = malloc(nw * sizeof *weff);
    naive_ptq_ref(ref, wr, cout, k, 8);
    qlayer_effective_weight(&q, weff);
    int off = 0;  // entries on a rounding boundary (the double W H against the float butterflies)
    for (size_t i = 0; i < nw; i++) off += fabsf(weff[i] - ref[i]) > 1e-6f * (1.0f + fabsf(ref[i]));
    assert_true(off <= 2);
    // back in the layer's basis it is ~W (8 bits); in the rotated basis it is not
    double rot_err = rel_l2(weff, l.weight.data, nw);
    qlayer_weight_unrotate(&q, weff);
    double back_err = rel_l2(weff, l.weight.data, nw);
    print_message("  W8: rel L2 to W %.3g unrotated, %.3g in the rotated basis\n", back_err, rot_err);
    assert_true(back_err < 1e-2 && rot_err > 0.5);
    qlayer_free(&q);
    // W8A8: the output is the FP layer's up to 8-bit rounding
    assert_rel_l2(y8, yfp->data, yfp->n, TOL_W8A8);

    // one input channel with a 20x range: at W4A4 the rotated layer is closer to FP
    for (size_t i = 0; i < x->n; i++)
        if ((i / 25) % cin == 3) x->data[i] *= 20.0f;
    Tensor *yfp2 = t_conv2d(c, x, &l.weight, &l.bias, 1, 1);
    float *y0 = qlayer_out(&l, x, 0, 4, 4, NULL), *yr = qlayer_out(&l, x, rot, 4, 4, NULL);
    double e0 = rel_l2(y0, yfp2->data, yfp2->n), er = rel_l2(yr, yfp2->data, yfp2->n);
    print_message("  W4A4 with an outlier channel: rel L2 to FP %.3g unrotated, %.3g rotated (block %d)\n", e0, er,
                  rot);
    assert_true(er < 0.75 * e0);
    free(y0);
    free(yr);
    free(y8);
    free(wr);
    free(ref);
    free(weff);
    test_ctx_delete(c);
    free(l.weight.data);
    free(l.bias.data);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_block), cmocka_unit_test(test_apply), cmocka_unit_test(test_gradcheck),
        cmocka_unit_test(test_layer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
