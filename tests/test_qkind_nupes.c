/* test_qkind_nupes.c: the nupes quantizer kind (qalora/qkind_nupes.c) against independent
   references:
   - forward against a naive double loop of the formula (per channel and per table entry),
     on data built 0.1 away from rounding boundaries in the warped domain;
   - at a = 1 it is the uniform kind bit for bit: fake, encode, decode, and every gradient;
   - decode(encode(x)) == fake(x) bit for bit (integer zero points): the export's contract;
   - d/dΔ, d/dz, d/da against central differences of the straight-through surrogate
       s(x, Δ, z, a) = p⁻¹((clamp(p(x)/Δ + r + z, 0, L) - z) Δ),  r = round(p₀(x)/Δ₀) - p₀(x)/Δ₀ frozen
     (p the power map sign(x)|x|^a), which equals q at the evaluation point; d/dx is the
     identity inside the clamp range and 0 outside (checked as such);
   - the decode's gradient (QALoRA's base path: levels fixed, a smooth function of Δ, z, a)
     against central differences of the decode itself;
   - the fit: on bell-shaped (Laplace) weights at 3 bits it picks a < 1 with a smaller
     reconstruction error than the uniform kind's; on uniformly distributed values it is never
     worse than the uniform kind (a = 1 is on the searched grid). */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qalora/qkind.h"
#include "qalora/quantizer.h"
#include "util/threads.h"

static const double TOL_VALUE = 1e-5;  // |ours - naive| / max(|naive|, Δ): float powf against double pow
static const double TOL_FD = 2e-4;     // gradient sums against central differences (float kernels)
static const double FD_STEP = 1e-4;    // relative (Δ, a) or absolute (z)

static double normal(Rng *r) {
    float v;
    rng_normal_fill(r, &v, 1);
    return v;
}

static double warp_d(double x, double a) { return copysign(pow(fabs(x), a), x); }
static double unwarp_d(double v, double a) { return copysign(pow(fabs(v), 1.0 / a), v); }

static double naive_q(double x, double d, double z, double a, int qmax) {
    double u = nearbyint(warp_d(x, a) / d) + z;
    u = u < 0 ? 0 : (u > qmax ? qmax : u);
    return unwarp_d((u - z) * d, a);
}

static double surrogate(double x, double d, double z, double a, int qmax, double r) {
    double u = warp_d(x, a) / d + r + z;
    u = u < 0 ? 0 : (u > qmax ? qmax : u);
    return unwarp_d((u - z) * d, a);
}

// x with p(x)/Δ = level + f, |f| <= 0.4, level != 0 (v = 0 is where ln|v| is not defined),
// round(p(x)/Δ) + z = l in 1 .. 2^b - 2 (an integer z at a clamp end is not differentiable in z);
// every 5th value is pushed outside the clamp range (above or below).
static float make_x(Rng *r, double d, double z, double a, int qmax, int i) {
    double lv;
    if (i % 5 == 4) lv = (i % 10 == 4) ? qmax - z + 2.0 + 3.0 * rng_uniform(r) : -z - 2.0 - 3.0 * rng_uniform(r);
    else {
        int l;
        do l = 1 + (int)rng_below(r, (uint32_t)qmax - 1); while (l == (int)z);
        lv = (double)l - z;
    }
    double f = 0.8 * rng_uniform(r) - 0.4;
    return (float)unwarp_d((lv + f) * d, a);
}

static void test_fake_naive(void **state) {
    Rng r;
    rng_seed(&r, 31, 0);
    const int bits[] = {2, 3, 4, 8};
    for (int bi = 0; bi < 4; bi++) {
        int qmax = (1 << bits[bi]) - 1;
        enum { CO = 5 };
        const size_t K = 37;
        float d[CO], z[CO], a[CO], x[CO * 37], y[CO * 37];
        for (int o = 0; o < CO; o++) {
            d[o] = 0.02f + 0.1f * rng_uniform(&r);
            z[o] = (float)(qmax / 2);
            a[o] = 0.4f + 0.12f * (float)o;  // 0.4 .. 0.88
        }
        for (int o = 0; o < CO; o++)
            for (size_t j = 0; j < K; j++) x[o * K + j] = make_x(&r, d[o], z[o], a[o], qmax, (int)j);
        Quantizer q;
        quantizer_setup(&q, QUANT_NUPES, bits[bi], 1, CO, d, z, NULL, NULL);
        quantizer_setup_param(&q, a, NULL);
        quantizer_fake(&q, y, x, CO * K, 0);
        for (int o = 0; o < CO; o++)
            for (size_t j = 0; j < K; j++) {
                double ref = naive_q(x[o * K + j], d[o], z[o], a[o], qmax);
                double err = fabs(y[o * K + j] - ref) / fmax(fabs(ref), d[o]);
                if (err > TOL_VALUE)
                    fail_msg("%d bits, channel %d element %zu: %.9g, naive %.9g", bits[bi], o, j, y[o * K + j], ref);
            }
        // layer-wise: a 3-entry table, entry 2, a real zero point, 3 chunks and a tail
        const size_t N = 3 * 4096 + 77;
        float td[3] = {0.3f, 0.05f, 0.07f}, tz[3] = {1.0f, 2.0f, (float)qmax / 3.0f + 0.3f}, ta[3] = {1, 0.5f, 0.6f};
        float *xl = malloc(N * sizeof(float)), *yl = malloc(N * sizeof(float));
        for (size_t i = 0; i < N; i++) xl[i] = make_x(&r, td[2], rint(tz[2]), ta[2], qmax, (int)i);
        quantizer_setup(&q, QUANT_NUPES, bits[bi], 0, 3, td, tz, NULL, NULL);
        quantizer_setup_param(&q, ta, NULL);
        quantizer_fake(&q, yl, xl, N, 2);
        for (size_t i = 0; i < N; i++) {
            double ref = naive_q(xl[i], td[2], tz[2], ta[2], qmax);
            if (fabs(yl[i] - ref) / fmax(fabs(ref), td[2]) > TOL_VALUE)
                fail_msg("%d bits, table entry 2, element %zu: %.9g, naive %.9g", bits[bi], i, yl[i], ref);
        }
        free(xl);
        free(yl);
    }
}

// At a = 1 every kernel is the uniform kind's, bit for bit (boundaries, clamp ends included).
static void test_exponent_one_is_uniform(void **state) {
    Rng r;
    rng_seed(&r, 32, 0);
    enum { CO = 4 };
    const size_t K = 301, n = CO * K;
    float d[CO], z[CO], one[CO], x[CO * 301], dy[CO * 301];
    for (int o = 0; o < CO; o++) {
        d[o] = 0.01f + 0.05f * rng_uniform(&r);
        z[o] = (float)rng_below(&r, 8);
        one[o] = 1.0f;
    }
    for (size_t i = 0; i < n; i++) {
        x[i] = (float)(0.6 * normal(&r));
        dy[i] = 2.0f * rng_uniform(&r) - 1.0f;
    }
    x[0] = 0.5f * d[0];  // a rounding tie
    for (int layer_wise = 0; layer_wise < 2; layer_wise++) {
        Quantizer u, v;
        int cw = !layer_wise, nq = cw ? CO : 1;
        quantizer_setup(&u, QUANT_UNIFORM, 3, cw, nq, d, z, NULL, NULL);
        quantizer_setup(&v, QUANT_NUPES, 3, cw, nq, d, z, NULL, NULL);
        quantizer_setup_param(&v, one, NULL);
        float yu[CO * 301], yv[CO * 301], dxu[CO * 301] = {0}, dxv[CO * 301] = {0};
        float ddu[CO] = {0}, dzu[CO] = {0}, ddv[CO] = {0}, dzv[CO] = {0}, dav[CO] = {0};
        quantizer_fake(&u, yu, x, n, 0);
        quantizer_fake(&v, yv, x, n, 0);
        assert_memory_equal(yu, yv, sizeof yu);
        quantizer_fake_backward(&u, dxu, ddu, dzu, dy, x, n, 0);
        quantizer_fake_backward_all(&v, dxv, ddv, dzv, dav, dy, x, n, 0);
        assert_memory_equal(dxu, dxv, sizeof dxu);
        assert_memory_equal(ddu, ddv, sizeof ddu);
        assert_memory_equal(dzu, dzv, sizeof dzu);
        uint8_t lu[CO * 301], lv[CO * 301];
        quantizer_encode(&u, lu, x, n, 0);
        quantizer_encode(&v, lv, x, n, 0);
        assert_memory_equal(lu, lv, sizeof lu);
        quantizer_decode(&u, yu, lu, n, 0);
        quantizer_decode(&v, yv, lv, n, 0);
        assert_memory_equal(yu, yv, sizeof yu);
        memset(ddu, 0, sizeof ddu), memset(ddv, 0, sizeof ddv), memset(dzu, 0, sizeof dzu), memset(dzv, 0, sizeof dzv);
        quantizer_decode_backward(&u, ddu, dzu, NULL, dy, lu, n, 0);
        quantizer_decode_backward(&v, ddv, dzv, dav, dy, lv, n, 0);
        assert_memory_equal(ddu, ddv, sizeof ddu);
        assert_memory_equal(dzu, dzv, sizeof dzu);
    }
}

// decode(encode(x)) == fake(x) bit for bit with integer zero points; pack/unpack round trip.
static void test_levels_roundtrip(void **state) {
    Rng r;
    rng_seed(&r, 33, 0);
    for (int bits = 2; bits <= 8; bits++) {
        enum { CO = 3 };
        const size_t K = 211, n = CO * K;
        float d[CO] = {0.01f, 0.03f, 0.2f}, z[CO] = {1, 3, 0}, a[CO] = {0.45f, 0.7f, 0.95f};
        float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float)), *yd = malloc(n * sizeof(float));
        uint8_t *lv = malloc(n), *back = malloc(n);
        for (size_t i = 0; i < n; i++) x[i] = (float)(0.3 * normal(&r));
        Quantizer q;
        quantizer_setup(&q, QUANT_NUPES, bits, 1, CO, d, z, NULL, NULL);
        quantizer_setup_param(&q, a, NULL);
        quantizer_fake(&q, y, x, n, 0);
        quantizer_encode(&q, lv, x, n, 0);
        quantizer_decode(&q, yd, lv, n, 0);
        assert_memory_equal(y, yd, n * sizeof(float));
        const QKindOps *ops = quantizer_ops(&q);
        uint8_t *pk = malloc(ops->packed_size(&q, n));
        ops->pack(&q, pk, lv, n);
        ops->unpack(&q, back, pk, n);
        assert_memory_equal(lv, back, n);
        free(x), free(y), free(yd), free(lv), free(back), free(pk);
    }
}

// loss = Σ G_i s(x_i) over the slice (s with r frozen at the evaluation point).
static double loss(const float *x, const float *G, size_t n, double d, double z, double a, int qmax, const double *r) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += G[i] * surrogate(x[i], d, z, a, qmax, r[i]);
    return s;
}

static void check_fd(const char *what, double got, double fd, double scale) {
    if (fabs(got - fd) > TOL_FD * scale) fail_msg("%s: %.9g, central difference %.9g", what, got, fd);
}

static void test_grads_fd(void **state) {
    Rng r;
    rng_seed(&r, 34, 0);
    const int bits[] = {3, 4};
    const float exps[] = {0.45f, 0.7f, 1.0f};
    for (int bi = 0; bi < 2; bi++)
        for (int ai = 0; ai < 6; ai++) {
            int qmax = (1 << bits[bi]) - 1;
            const size_t n = 400;
            // a real zero point (activations while training: every value computes its own level's
            // terms), then an integer one (weights: the per-slice level table)
            float d = 0.03f, z = (float)(qmax / 3) + (ai < 3 ? 0.25f : 0.0f), a = exps[ai % 3];
            float *x = malloc(n * sizeof(float)), *G = malloc(n * sizeof(float)), *dx = calloc(n, sizeof(float));
            double *rr = malloc(n * sizeof(double));
            for (size_t i = 0; i < n; i++) {
                x[i] = make_x(&r, d, rint(z), a, qmax, (int)i);
                G[i] = 2.0f * rng_uniform(&r) - 1.0f;
                double s = warp_d(x[i], a) / d;
                rr[i] = nearbyint(s) - s;
            }
            Quantizer q;
            float dd = 0, dz = 0, da = 0;
            quantizer_setup(&q, QUANT_NUPES, bits[bi], 0, 1, &d, &z, NULL, NULL);
            quantizer_setup_param(&q, &a, NULL);
            quantizer_fake_backward_all(&q, dx, &dd, &dz, &da, G, x, n, 0);
            double hd = FD_STEP * d, hz = FD_STEP, ha = FD_STEP * a, scale = 0;
            for (size_t i = 0; i < n; i++) scale += fabs(G[i]);
            double fd_d = (loss(x, G, n, d + hd, z, a, qmax, rr) - loss(x, G, n, d - hd, z, a, qmax, rr)) / (2 * hd);
            double fd_z = (loss(x, G, n, d, z + hz, a, qmax, rr) - loss(x, G, n, d, z - hz, a, qmax, rr)) / (2 * hz);
            double fd_a = (loss(x, G, n, d, z, a + ha, qmax, rr) - loss(x, G, n, d, z, a - ha, qmax, rr)) / (2 * ha);
            print_message("  W%d a %.2f z %.2f: dΔ %.6g (fd %.6g) dz %.6g (fd %.6g) da %.6g (fd %.6g)\n", bits[bi], a, z, dd,
                          fd_d, dz, fd_z, da, fd_a);
            check_fd("dΔ", dd, fd_d, scale);
            check_fd("dz", dz, fd_z, scale * d);
            check_fd("da", da, fd_a, scale * d);
            for (size_t i = 0; i < n; i++) {  // straight through inside, nothing outside
                double u = nearbyint(warp_d(x[i], a) / d) + z;
                int inside = u >= 0 && u <= qmax;
                assert_true(dx[i] == (inside ? G[i] : 0.0f));
            }
            free(x), free(G), free(dx), free(rr);
        }
}

// The decode with levels fixed is smooth in (Δ, z, a): its gradient against its own central differences.
static void test_decode_grads_fd(void **state) {
    Rng r;
    rng_seed(&r, 35, 0);
    const size_t n = 300;
    uint8_t lv[300];
    float G[300];
    for (size_t i = 0; i < n; i++) {
        lv[i] = (uint8_t)rng_below(&r, 16);
        if (lv[i] == 6) lv[i] = 7;  // not the zero level: ln|v| is defined
        G[i] = 2.0f * rng_uniform(&r) - 1.0f;
    }
    float d = 0.04f, z = 6.0f, a = 0.6f, dd = 0, dz = 0, da = 0;
    Quantizer q;
    quantizer_setup(&q, QUANT_NUPES, 4, 1, 1, &d, &z, NULL, NULL);
    quantizer_setup_param(&q, &a, NULL);
    quantizer_decode_backward(&q, &dd, &dz, &da, G, lv, n, 0);
    double f[6], h[3] = {FD_STEP * d, FD_STEP, FD_STEP * a}, scale = 0;
    for (int k = 0; k < 6; k++) {
        double dk = d + (k / 2 == 0) * (k % 2 ? -h[0] : h[0]), zk = z + (k / 2 == 1) * (k % 2 ? -h[1] : h[1]);
        double ak = a + (k / 2 == 2) * (k % 2 ? -h[2] : h[2]);
        f[k] = 0;
        for (size_t i = 0; i < n; i++) f[k] += G[i] * unwarp_d(((double)lv[i] - zk) * dk, ak);
    }
    for (size_t i = 0; i < n; i++) scale += fabs(G[i]);
    check_fd("decode dΔ", dd, (f[0] - f[1]) / (2 * h[0]), scale);
    check_fd("decode dz", dz, (f[2] - f[3]) / (2 * h[1]), scale * d);
    check_fd("decode da", da, (f[4] - f[5]) / (2 * h[2]), scale * d);
}

static double sq_err(const Quantizer *q, const float *x, size_t n) {
    float *y = malloc(n * sizeof(float));
    quantizer_fake(q, y, x, n, 0);
    double s = 0;
    for (size_t i = 0; i < n; i++) s += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
    free(y);
    return s;
}

static void test_fit(void **state) {
    Rng r;
    rng_seed(&r, 36, 0);
    enum { CO = 8 };
    const size_t K = 576, n = CO * K;
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {  // Laplace(0, 0.05): bell-shaped, long tails
        double u = rng_uniform(&r) - 0.5;
        x[i] = (float)(-0.05 * copysign(log(1 - 2 * fabs(u) + 1e-12), u));
    }
    float du[CO], zu[CO], dn[CO], zn[CO], an[CO];
    Quantizer u, v;
    Err e = {0};
    for (int how = 0; how < 2; how++) {
        QuantInit init = how ? QUANT_INIT_MSE : QUANT_INIT_MAX;
        quantizer_setup(&u, QUANT_UNIFORM, 3, 1, CO, du, zu, NULL, NULL);
        quantizer_setup(&v, QUANT_NUPES, 3, 1, CO, dn, zn, NULL, NULL);
        quantizer_setup_param(&v, an, NULL);
        assert_int_equal(quantizer_fit(&u, x, n, init, -1, &e), 0);
        assert_int_equal(quantizer_fit(&v, x, n, init, -1, &e), 0);
        double eu = sq_err(&u, x, n), en = sq_err(&v, x, n);
        print_message("  Laplace weights, W3 %s: uniform error %.5g, nupes %.5g (a = %.2f %.2f ...)\n",
                      how ? "mse" : "max", eu, en, an[0], an[1]);
        assert_true(en < eu);
        for (int o = 0; o < CO; o++) assert_true(an[o] < 1.0f && an[o] >= 0.4f - 1e-6f);
    }
    // flat data: a = 1 is on the searched grid, so the fit is never worse than the uniform kind's
    for (size_t i = 0; i < n; i++) x[i] = (float)(2.0 * rng_uniform(&r) - 1.0);
    assert_int_equal(quantizer_fit(&u, x, n, QUANT_INIT_MAX, -1, &e), 0);
    assert_int_equal(quantizer_fit(&v, x, n, QUANT_INIT_MAX, -1, &e), 0);
    print_message("  flat weights, W3 max: uniform error %.5g, nupes %.5g (a = %.2f %.2f ...)\n", sq_err(&u, x, n),
                  sq_err(&v, x, n), an[0], an[1]);
    assert_true(sq_err(&v, x, n) <= sq_err(&u, x, n));
    // layer-wise: one fit copied into every entry of a fresh table (exponent included)
    float td[4], tz[4], ta[4];
    quantizer_setup(&v, QUANT_NUPES, 4, 0, 4, td, tz, NULL, NULL);
    quantizer_setup_param(&v, ta, NULL);
    for (size_t i = 0; i < n; i++) x[i] = (float)fabs(0.5 * normal(&r));  // post-activation-like
    assert_int_equal(quantizer_fit(&v, x, n, QUANT_INIT_MSE, -1, &e), 0);
    for (int k = 1; k < 4; k++) assert_true(ta[k] == ta[0] && td[k] == td[0] && tz[k] == tz[0]);
    free(x);
}

int main(void) {
    threads_set(0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fake_naive),
        cmocka_unit_test(test_exponent_one_is_uniform),
        cmocka_unit_test(test_levels_roundtrip),
        cmocka_unit_test(test_grads_fd),
        cmocka_unit_test(test_decode_grads_fd),
        cmocka_unit_test(test_fit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
