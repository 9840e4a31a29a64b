/* test_qkind.c: the quantizer-kind table (qalora/qkind.h) and its rows against independent
   references: every row complete (no NULL function, a name, n_param in range), names unique
   and found by lookup; the uniform row's fake-quant forward against a naive double loop
   (round half to even, clamp, per channel or per table entry) on random data of odd
   sizes; its gradients (input STE, LSQ step and zero point) against central finite
   differences; its encode/decode/pack round trips for 2, 3, 4 and 8 bits and decode's
   gradient (the QALoRA base path's) against central differences.

   Finite differences. The fake quantizer is flat almost everywhere in x, so its
   straight-through gradients are the exact derivative of the reference's surrogate
   (quant_layer.py round_ste: round(v) = v + detach(round(v) - v)):
       s(x, Δ, z) = (clamp(x/Δ + r + z, 0, L) - z) · Δ,   r = round(x0/Δ0) - x0/Δ0 frozen
   which equals q at the evaluation point. Every gradient is checked against central
   differences of s, and where q itself is differentiable in a parameter (d/dΔ outside the
   clamp range, d/dz everywhere) against those of q too. The data is built away from the
   points where either is not differentiable: x/Δ at least 0.1 from a rounding boundary,
   round(x/Δ) + z at least 0.6 from both clamp ends. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/dtype.h"
#include "qalora/qkind.h"
#include "qalora/quantizer.h"
#include "util/threads.h"

static const double TOL_VALUE = 1e-6;  // |ours - naive| / max(|naive|, Δ): one float rounding of (l - z)·Δ
static const double TOL_FD = 1e-5;     // gradient sums vs central differences (both in double but the float sums)
static const double FD_REL_STEP = 1e-4;  // finite-difference step, relative to the parameter (Δ) or absolute (x, z)
static const float FRAC_MAX = 0.4f;    // x/Δ = level + f, |f| <= FRAC_MAX: 0.1 from a rounding boundary
static const double CLAMP_GAP = 0.6;   // round(x/Δ) + z stays this far from 0 and 2^b - 1
static const int BITS[] = {2, 3, 4, 8};
#define N_BITS ((int)(sizeof BITS / sizeof BITS[0]))

/* ---- the table ---------------------------------------------------------------------- */

static void test_table_complete(void **state) {
    for (int k = 0; k < QUANT_KIND_COUNT; k++) {
        const QKindOps *o = qkind_get((QuantKind)k);
        assert_non_null(o);
        assert_non_null(o->name);
        assert_true(o->name[0] != '\0');
        assert_string_equal(o->name, QKIND_NAMES[k]);
        assert_string_equal(quant_kind_name((QuantKind)k), o->name);
        assert_true(o->n_param >= 0 && o->n_param <= QKIND_MAX_PARAM);
        assert_true(o->affine == 0 || o->affine == 1);
        assert_true(o->side == 0 || o->side == 1);
        assert_true(o->weight_only == 0 || o->weight_only == 1);
        assert_non_null(o->fit);
        assert_non_null(o->fake);
        assert_non_null(o->backward);
        assert_non_null(o->encode);
        assert_non_null(o->decode);
        assert_non_null(o->decode_backward);
        assert_non_null(o->packed_size);
        assert_non_null(o->pack);
        assert_non_null(o->unpack);
        assert_non_null(o->side_count);
        assert_true(qkind_valid(k));
    }
    assert_false(qkind_valid(-1));
    assert_false(qkind_valid(QUANT_KIND_COUNT));
    assert_string_equal(quant_kind_name(QUANT_KIND_COUNT), "?");
    assert_ptr_equal(qkind_get(QUANT_UNIFORM), &QKIND_UNIFORM_OPS);
    Quantizer q;
    float d = 1, z = 0;
    quantizer_setup(&q, QUANT_UNIFORM, 4, 0, 1, &d, &z, NULL, NULL);
    assert_ptr_equal(quantizer_ops(&q), &QKIND_UNIFORM_OPS);
}

static void test_names_unique_and_found(void **state) {
    char list[512];
    qkind_list(list, sizeof list);
    for (int k = 0; k < QUANT_KIND_COUNT; k++) {
        for (int j = k + 1; j < QUANT_KIND_COUNT; j++) assert_true(strcmp(QKIND_NAMES[k], QKIND_NAMES[j]) != 0);
        QuantKind f = QUANT_KIND_COUNT;
        assert_int_equal(qkind_find(QKIND_NAMES[k], &f), 0);
        assert_int_equal(f, k);
        assert_non_null(strstr(list, QKIND_NAMES[k]));
    }
    QuantKind f = QUANT_UNIFORM;
    assert_int_equal(qkind_find("Uniform", &f), ERR_VALUE);  // names are exact
    assert_int_equal(qkind_find("", &f), ERR_VALUE);
    assert_int_equal(qkind_find(NULL, &f), ERR_VALUE);
    char want[512] = "";
    for (int k = 0; k < QUANT_KIND_COUNT; k++)
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s%s", k ? ", " : "", QKIND_NAMES[k]);
    assert_string_equal(qkind_list(list, sizeof list), want);
    char tiny[3];
    qkind_list(tiny, sizeof tiny);  // truncated, still a string
    assert_int_equal(strlen(tiny), 2);
}

/* ---- data away from the kinks -------------------------------------------------------- */

// x = (m + f) Δ with an integer level m and |f| <= FRAC_MAX, m + z away from the clamp
// ends by CLAMP_GAP; about a fifth of the values outside the range (both sides).
static void fill_slice(Rng *r, float *x, size_t n, float delta, float zero, int qmax) {
    for (size_t i = 0; i < n; i++) {
        double u;
        int m;
        do {
            m = (int)floor((double)(rng_uniform(r) * (float)(qmax + 8))) - 4 - (int)lrint(zero);
            u = m + (double)zero;
        } while (fabs(u) < CLAMP_GAP || fabs(u - qmax) < CLAMP_GAP);
        float f = FRAC_MAX * (2.0f * rng_uniform(r) - 1.0f);
        x[i] = ((float)m + f) * delta;
        // the float product can land anywhere near (m + f) Δ: keep it unless it moved a level
        double v = (double)x[i] / (double)delta;
        if (fabs(v - m) > 0.45) x[i] = (float)m * delta;
    }
}

// q(x) in double: round half to even (nearbyint), clamp, per entry.
static double naive_q(double x, double delta, double zero, int qmax) {
    double u = nearbyint(x / delta) + zero;
    u = u < 0 ? 0 : (u > qmax ? qmax : u);
    return (u - zero) * delta;
}

// The straight-through surrogate s of the top comment, with r frozen at (x0, Δ0).
static double surrogate(double x, double delta, double zero, int qmax, double r) {
    double u = x / delta + r + zero;
    u = u < 0 ? 0 : (u > qmax ? qmax : u);
    return (u - zero) * delta;
}

static void check_close(double ours, double ref, double scale, const char *what, int bits, size_t i) {
    double err = fabs(ours - ref) / (fabs(ref) > scale ? fabs(ref) : scale);
    if (err > TOL_VALUE) fail_msg("%s, %d bits, element %zu: %.9g, naive %.9g", what, bits, i, ours, ref);
}

/* ---- forward against the naive loop -------------------------------------------------- */

// Channel-wise (a 7 x 3 x 3 x 5 weight: 7 channels of 45) and layer-wise (a 3-entry table,
// entry 1, real z; 3 chunks and a ragged tail), each bit width.
static void test_uniform_fake_naive(void **state) {
    Rng r;
    rng_seed(&r, 11, 0);
    for (int b = 0; b < N_BITS; b++) {
        int bits = BITS[b], qmax = (1 << bits) - 1;
        enum { CO = 7, K = 45 };
        float x[CO * K], y[CO * K], y2[CO * K], d[CO], z[CO];
        for (int o = 0; o < CO; o++) {
            d[o] = 0.01f + 0.2f * rng_uniform(&r);
            z[o] = (float)rng_below(&r, (uint32_t)qmax + 1);
            fill_slice(&r, x + o * K, K, d[o], z[o], qmax);
        }
        x[3] = 0.0f;  // zero is a level
        Quantizer q;
        quantizer_setup(&q, QUANT_UNIFORM, bits, 1, CO, d, z, NULL, NULL);
        quantizer_fake(&q, y, x, CO * K, 0);
        for (int o = 0; o < CO; o++)
            for (int j = 0; j < K; j++) {
                size_t i = (size_t)o * K + j;
                check_close(y[i], naive_q(x[i], d[o], z[o], qmax), d[o], "channel-wise", bits, i);
            }
        // the row's kernel on one channel is what the generic call ran
        QKIND_UNIFORM_OPS.fake(&q, 4, y2, x + 4 * K, K);
        assert_memory_equal(y2, y + 4 * K, K * sizeof(float));

        size_t n = 3 * 4096 + 37;
        float *xl = malloc(n * sizeof(float)), *yl = malloc(n * sizeof(float));
        float dl[3] = {9.0f, 0.037f, 9.0f}, zl[3] = {0.0f, (float)(qmax / 3) + 0.3f, 0.0f};
        fill_slice(&r, xl, n, dl[1], zl[1], qmax);
        quantizer_setup(&q, QUANT_UNIFORM, bits, 0, 3, dl, zl, NULL, NULL);
        quantizer_fake(&q, yl, xl, n, 1);
        for (size_t i = 0; i < n; i++)
            check_close(yl[i], naive_q(xl[i], dl[1], zl[1], qmax), dl[1], "layer-wise", bits, i);
        free(xl);
        free(yl);
    }
    // ties go to the even level (Δ a power of two: x/Δ exact)
    const float ties[] = {0.25f, 0.75f, -0.25f, -0.75f, 1.25f};  // x/Δ = 0.5, 1.5, -0.5, -1.5, 2.5
    float d = 0.5f, z = 4.0f, y[5];
    Quantizer q;
    quantizer_setup(&q, QUANT_UNIFORM, 4, 0, 1, &d, &z, NULL, NULL);
    quantizer_fake(&q, y, ties, 5, 0);
    const float want[] = {0.0f, 1.0f, 0.0f, -1.0f, 1.0f};
    for (int i = 0; i < 5; i++) assert_float_equal(y[i], want[i], 0.0f);
}

/* ---- gradients against central differences ------------------------------------------- */

// loss(Δ, z) = Σ_i G_i f(x_i) over one slice, in double; f = s (surrogate != 0, r frozen at
// (x, d0)) or q.
static double loss(const float *x, const float *G, size_t n, double delta, double zero, int qmax, int surr,
                   double d0) {
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        double r = nearbyint((double)x[i] / d0) - (double)x[i] / d0;
        double f = surr ? surrogate(x[i], delta, zero, qmax, r) : naive_q(x[i], delta, zero, qmax);
        s += (double)G[i] * f;
    }
    return s;
}

// One slice of n values with (Δ, z): the analytic sums g_d, g_z (ours) and dx against
// central differences (surrogate: all; q: Δ only when every value is outside, z always).
static void check_slice_grads(const float *x, const float *G, const float *dx, size_t n, double gd, double gz,
                              float delta, float zero, int qmax, const char *what, int bits) {
    double hd = FD_REL_STEP * delta, hz = FD_REL_STEP;
    for (int surr = 1; surr >= 0; surr--) {
        double fd = (loss(x, G, n, delta + hd, zero, qmax, surr, delta) -
                     loss(x, G, n, delta - hd, zero, qmax, surr, delta)) / (2 * hd);
        double fz = (loss(x, G, n, delta, zero + hz, qmax, surr, delta) -
                     loss(x, G, n, delta, zero - hz, qmax, surr, delta)) / (2 * hz);
        double scale_d = 0, scale_z = 0;
        for (size_t i = 0; i < n; i++) {
            scale_d += fabs(G[i]) * qmax;
            scale_z += fabs(G[i]) * delta;
        }
        // q's own d/dΔ is round(x/Δ) inside the range, not the LSQ round(x/Δ) - x/Δ: only the
        // surrogate's here (check_outside_delta checks q's where they agree)
        if (surr && fabs(gd - fd) > TOL_FD * scale_d)
            fail_msg("%s, %d bits: dΔ %.9g, surrogate central difference %.9g", what, bits, gd, fd);
        if (fabs(gz - fz) > TOL_FD * scale_z)
            fail_msg("%s, %d bits: dz %.9g, %s central difference %.9g", what, bits, gz, surr ? "surrogate" : "q",
                     fz);
    }
    // dx: the surrogate is linear in x between the clamp ends (slope 1), flat outside
    for (size_t i = 0; i < n; i++) {
        double r = nearbyint((double)x[i] / delta) - (double)x[i] / delta, h = FD_REL_STEP * delta;
        double f = (surrogate(x[i] + h, delta, zero, qmax, r) - surrogate(x[i] - h, delta, zero, qmax, r)) / (2 * h);
        if (fabs((double)dx[i] - G[i] * f) > TOL_FD * fabs(G[i]) + 1e-12)
            fail_msg("%s, %d bits, element %zu: dx %.9g, surrogate central difference %.9g", what, bits, i, dx[i],
                     G[i] * f);
    }
}

// Outside the range q's own d/dΔ is defined and equals the LSQ gradient: checked on a slice of
// clamped values only.
static void check_outside_delta(Rng *r, int bits) {
    int qmax = (1 << bits) - 1;
    enum { N = 33 };
    float x[N], G[N], dx[N] = {0}, d = 0.07f, z = 2.0f, dd = 0, dz = 0;
    for (int i = 0; i < N; i++) {
        int m = (i % 2) ? qmax + 2 + (int)rng_below(r, 5) : -(int)z - 2 - (int)rng_below(r, 5);  // both sides
        x[i] = ((float)m + FRAC_MAX * (2.0f * rng_uniform(r) - 1.0f)) * d;
        G[i] = 2.0f * rng_uniform(r) - 1.0f;
    }
    Quantizer q;
    quantizer_setup(&q, QUANT_UNIFORM, bits, 0, 1, &d, &z, NULL, NULL);
    quantizer_fake_backward(&q, dx, &dd, &dz, G, x, N, 0);
    double h = FD_REL_STEP * d;
    double fd = (loss(x, G, N, d + h, z, qmax, 0, d) - loss(x, G, N, d - h, z, qmax, 0, d)) / (2 * h);
    double scale = 0;
    for (int i = 0; i < N; i++) scale += fabs(G[i]) * qmax;
    if (fabs(dd - fd) > TOL_FD * scale)
        fail_msg("outside, %d bits: dΔ %.9g, q's central difference %.9g", bits, dd, fd);
    for (int i = 0; i < N; i++) assert_float_equal(dx[i], 0.0f, 0.0f);
}

static void test_uniform_grads_fd(void **state) {
    Rng r;
    rng_seed(&r, 12, 0);
    for (int b = 0; b < N_BITS; b++) {
        int bits = BITS[b], qmax = (1 << bits) - 1;
        // channel-wise: 5 channels of 19, integer zero points (weights)
        enum { CO = 5, K = 19 };
        float x[CO * K], G[CO * K], dx[CO * K], d[CO], z[CO], dd[CO], dz[CO];
        for (int o = 0; o < CO; o++) {
            d[o] = 0.02f + 0.3f * rng_uniform(&r);
            z[o] = (float)rng_below(&r, (uint32_t)qmax + 1);
            fill_slice(&r, x + o * K, K, d[o], z[o], qmax);
        }
        for (int i = 0; i < CO * K; i++) G[i] = 2.0f * rng_uniform(&r) - 1.0f;
        memset(dx, 0, sizeof dx);
        memset(dd, 0, sizeof dd);
        memset(dz, 0, sizeof dz);
        Quantizer q;
        quantizer_setup(&q, QUANT_UNIFORM, bits, 1, CO, d, z, NULL, NULL);
        quantizer_fake_backward(&q, dx, dd, dz, G, x, CO * K, 0);
        for (int o = 0; o < CO; o++)
            check_slice_grads(x + o * K, G + o * K, dx + o * K, K, dd[o], dz[o], d[o], z[o], qmax, "channel-wise",
                              bits);

        // layer-wise: a 2-entry table, entry 0, a real zero point (activations); several chunks
        size_t n = 2 * 4096 + 101;
        float *xl = malloc(n * sizeof(float)), *Gl = malloc(n * sizeof(float)), *dxl = calloc(n, sizeof(float));
        float dl[2] = {0.05f, 1.0f}, zl[2] = {(float)(qmax / 2) + 0.35f, 0.0f}, ddl[2] = {0}, dzl[2] = {0};
        fill_slice(&r, xl, n, dl[0], zl[0], qmax);
        for (size_t i = 0; i < n; i++) Gl[i] = 2.0f * rng_uniform(&r) - 1.0f;
        quantizer_setup(&q, QUANT_UNIFORM, bits, 0, 2, dl, zl, NULL, NULL);
        quantizer_fake_backward(&q, dxl, ddl, dzl, Gl, xl, n, 0);
        check_slice_grads(xl, Gl, dxl, n, ddl[0], dzl[0], dl[0], zl[0], qmax, "layer-wise", bits);
        assert_float_equal(ddl[1], 0.0f, 0.0f);  // the inactive entry
        assert_float_equal(dzl[1], 0.0f, 0.0f);
        free(xl);
        free(Gl);
        free(dxl);
        check_outside_delta(&r, bits);
    }
}

/* ---- integers ------------------------------------------------------------------------ */

// For every level l: encode(decode(l)) == l (integer z, any Δ); decode(encode(x)) == fake(x)
// bit for bit; unpack(pack(levels)) == levels on an odd count. Per bit width.
static void test_uniform_levels_roundtrip(void **state) {
    Rng r;
    rng_seed(&r, 13, 0);
    for (int b = 0; b < N_BITS; b++) {
        int bits = BITS[b], qmax = (1 << bits) - 1, L = qmax + 1;
        enum { CO = 3 };
        float d[CO] = {1e-3f, 0.173f, 37.5f}, z[CO];
        for (int o = 0; o < CO; o++) z[o] = (float)rng_below(&r, (uint32_t)L);
        uint8_t *lv = malloc((size_t)CO * L), *lv2 = malloc((size_t)CO * L);
        float *v = malloc((size_t)CO * L * sizeof(float));
        for (int o = 0; o < CO; o++)
            for (int l = 0; l < L; l++) lv[o * L + l] = (uint8_t)l;
        Quantizer q;
        quantizer_setup(&q, QUANT_UNIFORM, bits, 1, CO, d, z, NULL, NULL);
        quantizer_decode(&q, v, lv, (size_t)CO * L, 0);
        quantizer_encode(&q, lv2, v, (size_t)CO * L, 0);
        assert_memory_equal(lv, lv2, (size_t)CO * L);
        for (int o = 0; o < CO; o++)  // decode is (l - z) Δ
            for (int l = 0; l < L; l++) assert_true(v[o * L + l] == ((float)l - z[o]) * d[o]);

        // decode(encode(x)) == fake(x) on random data, clamped values included
        enum { K = 29 };
        float x[CO * K], y1[CO * K], y2[CO * K];
        uint8_t e[CO * K];
        for (int i = 0; i < CO * K; i++) x[i] = (2.0f * rng_uniform(&r) - 1.0f) * d[i / K] * (float)(L + 4);
        quantizer_encode(&q, e, x, CO * K, 0);
        quantizer_decode(&q, y1, e, CO * K, 0);
        quantizer_fake(&q, y2, x, CO * K, 0);
        assert_memory_equal(y1, y2, sizeof y1);

        // decode's gradient in Δ and z with the levels fixed, against central differences of
        // Σ dy (l - z) Δ (linear in both: exact up to rounding)
        float *dy = malloc((size_t)CO * L * sizeof(float)), dd[CO] = {0}, dz[CO] = {0};
        for (int i = 0; i < CO * L; i++) dy[i] = 2.0f * rng_uniform(&r) - 1.0f;
        quantizer_decode_backward(&q, dd, dz, NULL, dy, lv, (size_t)CO * L, 0);
        for (int o = 0; o < CO; o++) {
            double hd = FD_REL_STEP * d[o], hz = FD_REL_STEP, fd = 0, fz = 0, scale = 0;
            for (int l = 0; l < L; l++) {
                double g = dy[o * L + l];
                fd += g * ((l - z[o]) * (d[o] + hd) - (l - z[o]) * (d[o] - hd)) / (2 * hd);
                fz += g * ((l - z[o] - hz) * d[o] - (l - z[o] + hz) * d[o]) / (2 * hz);
                scale += fabs(g) * (L + fabs(z[o]));
            }
            if (fabs(dd[o] - fd) > TOL_FD * scale)
                fail_msg("decode, %d bits: dΔ %.9g, central difference %.9g", bits, dd[o], fd);
            if (fabs(dz[o] - fz) > TOL_FD * scale * d[o])
                fail_msg("decode, %d bits: dz %.9g, central difference %.9g", bits, dz[o], fz);
        }
        free(dy);

        // the export's bytes: an odd count, the container's size, exact round trip
        size_t n = 1001;
        uint8_t *src = malloc(n), *back = malloc(n);
        for (size_t i = 0; i < n; i++) src[i] = (uint8_t)rng_below(&r, (uint32_t)L);
        const QKindOps *ops = quantizer_ops(&q);
        size_t nb = ops->packed_size(&q, n);
        int container = bits <= 4 ? bits : 8;  // pack.h: 2, 3 and 4 bits dense, 5..8 in bytes
        assert_int_equal(nb, (n * (size_t)container + 7) / 8);
        uint8_t *packed = malloc(nb);
        ops->pack(&q, packed, src, n);
        ops->unpack(&q, back, packed, n);
        assert_memory_equal(src, back, n);
        free(packed);
        free(src);
        free(back);
        free(lv);
        free(lv2);
        free(v);
    }
}

/* ---- easyquant ---------------------------------------------------------------------- */

static const double EQ_FRACTION = 0.02;  // 5 outliers of 203 (ceil)
static const int EQ_STEPS = 60;
static const double EQ_LR = 0.01;

static float f16r(float x) { return f16_to_f32(f32_to_f16(x)); }

// The m largest |x| of a channel (ties: the lower position), ascending: by repeated argmax.
static void naive_outliers(const float *x, size_t n, int m, int32_t *idx) {
    char *taken = calloc(n, 1);
    for (int s = 0; s < m; s++) {
        size_t best = n;
        for (size_t i = 0; i < n; i++)
            if (!taken[i] && (best == n || fabsf(x[i]) > fabsf(x[best]))) best = i;
        taken[best] = 1;
    }
    for (size_t i = 0, s = 0; i < n; i++)
        if (taken[i]) idx[s++] = (int32_t)i;
    free(taken);
}

typedef struct {
    Quantizer q;
    float *d, *z, *val;
    int32_t *idx;
    int m;
} EqQ;

// A channel-wise easyquant quantizer of co channels of len weights, side table allocated.
static void eq_make(EqQ *t, int bits, int co, size_t len, double fraction, int steps) {
    t->d = calloc((size_t)co, sizeof(float));
    t->z = calloc((size_t)co, sizeof(float));
    quantizer_setup(&t->q, QUANT_EASYQUANT, bits, 1, co, t->d, t->z, NULL, NULL);
    t->q.kp = (QKindParams){fraction, steps, EQ_LR};
    t->m = quantizer_side_count(&t->q, len);
    t->idx = calloc((size_t)co * (t->m ? t->m : 1), sizeof(int32_t));
    t->val = calloc((size_t)co * (t->m ? t->m : 1), sizeof(float));
    quantizer_setup_side(&t->q, t->m, t->idx, t->val);
}

static void eq_free(EqQ *t) {
    free(t->d);
    free(t->z);
    free(t->idx);
    free(t->val);
}

// Normal weights with a few planted large ones per channel (the outliers to find).
static void eq_weights(Rng *r, float *x, int co, size_t len) {
    rng_normal_fill(r, x, (size_t)co * len);
    for (int o = 0; o < co; o++)
        for (int s = 0; s < 3; s++) x[(size_t)o * len + rng_below(r, (uint32_t)len)] *= 8.0f;
}

// Fit: the outliers are the naive choice with their float16 values; the fake-quant forward is
// float16 there and the naive uniform loop elsewhere; decode(encode(x)) is fake(x) bit for
// bit (the outliers restored exactly from the side table); the export's side values are
// fake(x) at the outlier positions; a layer-wise easyquant quantizer is refused.
static void test_easyquant_fake_naive(void **state) {
    Rng r;
    rng_seed(&r, 21, 0);
    enum { CO = 5 };
    const size_t K = 203;
    for (int b = 0; b < N_BITS; b++) {
        int bits = BITS[b], qmax = (1 << bits) - 1;
        float *x = malloc(CO * K * sizeof(float)), *y = malloc(CO * K * sizeof(float));
        float *y2 = malloc(CO * K * sizeof(float));
        uint8_t *lv = malloc(CO * K);
        eq_weights(&r, x, CO, K);
        EqQ t;
        eq_make(&t, bits, CO, K, EQ_FRACTION, EQ_STEPS);
        assert_int_equal(t.m, 5);
        Err e = {0};
        assert_int_equal(quantizer_fit(&t.q, x, CO * K, b % 2 ? QUANT_INIT_MSE : QUANT_INIT_MAX, -1, &e), 0);
        quantizer_fake(&t.q, y, x, CO * K, 0);
        for (int o = 0; o < CO; o++) {
            const float *xo = x + o * K, *yo = y + o * K;
            int32_t want[8];
            naive_outliers(xo, K, t.m, want);
            assert_memory_equal(t.idx + o * t.m, want, (size_t)t.m * sizeof(int32_t));
            for (size_t j = 0, s = 0; j < K; j++) {
                if (s < (size_t)t.m && (size_t)want[s] == j) {
                    assert_true(yo[j] == f16r(xo[j]));
                    assert_true(t.val[o * t.m + s] == f16r(xo[j]));
                    s++;
                    continue;
                }
                check_close(yo[j], naive_q(xo[j], t.d[o], t.z[o], qmax), t.d[o], "easyquant", bits, o * K + j);
            }
        }
        quantizer_encode(&t.q, lv, x, CO * K, 0);
        quantizer_decode(&t.q, y2, lv, CO * K, 0);
        assert_memory_equal(y2, y, CO * K * sizeof(float));
        for (int o = 0; o < CO; o++)
            for (int s = 0; s < t.m; s++) {
                float zc = fminf(fmaxf(rintf(t.z[o]), 0.0f), (float)qmax);
                assert_int_equal(lv[o * K + t.idx[o * t.m + s]], (int)zc);  // the level of 0 (z in range)
            }
        // side values of other weights (the student after training): fake(x') there
        float *x2 = malloc(CO * K * sizeof(float)), *sv = malloc((size_t)CO * t.m * sizeof(float));
        for (size_t i = 0; i < CO * K; i++) x2[i] = x[i] * 1.01f + 0.001f;
        assert_int_equal(quantizer_side_values(&t.q, sv, x2, CO * K), 0);
        for (int o = 0; o < CO; o++)
            for (int s = 0; s < t.m; s++) assert_true(sv[o * t.m + s] == f16r(x2[o * K + t.idx[o * t.m + s]]));
        free(x2);
        free(sv);
        eq_free(&t);
        free(x);
        free(y);
        free(y2);
        free(lv);
    }
    // the default share: 0.5% of 203 rounds up to 2; none without a share
    EqQ t;
    eq_make(&t, 4, 1, K, 0.005, 0);
    assert_int_equal(t.m, 2);
    eq_free(&t);
    eq_make(&t, 4, 1, K, 0.0, 0);
    assert_int_equal(t.m, 0);
    eq_free(&t);
    // weights only
    float d = 1, z = 0, xs[4] = {1, 2, 3, 4};
    Quantizer q;
    quantizer_setup(&q, QUANT_EASYQUANT, 4, 0, 1, &d, &z, NULL, NULL);
    Err e = {0};
    assert_int_equal(quantizer_fit(&q, xs, 4, QUANT_INIT_MAX, -1, &e), ERR_VALUE);
    assert_non_null(strstr(e.msg, "weights (channel-wise) only"));
}

// Mean squared reconstruction error of the non-outliers of a channel with (Δ, z), in double.
static double rest_error(const float *x, size_t n, const int32_t *idx, int m, float d, float z, int qmax) {
    double s = 0;
    size_t cnt = 0;
    for (size_t j = 0, k = 0; j < n; j++) {
        if (k < (size_t)m && (size_t)idx[k] == j) {
            k++;
            continue;
        }
        double e = naive_q(x[j], d, z, qmax) - x[j];
        s += e * e;
        cnt++;
    }
    return s / (double)cnt;
}

// The range descent: never worse than the init it starts from, better on normal weights.
static void test_easyquant_range_descent(void **state) {
    Rng r;
    rng_seed(&r, 22, 0);
    enum { CO = 6 };
    const size_t K = 301;
    float *x = malloc(CO * K * sizeof(float));
    eq_weights(&r, x, CO, K);
    for (int b = 0; b < N_BITS; b++) {
        int bits = BITS[b], qmax = (1 << bits) - 1;
        EqQ a, g;
        eq_make(&a, bits, CO, K, EQ_FRACTION, 0);  // the init alone
        eq_make(&g, bits, CO, K, EQ_FRACTION, EQ_STEPS);
        Err e = {0};
        assert_int_equal(quantizer_fit(&a.q, x, CO * K, QUANT_INIT_MAX, -1, &e), 0);
        assert_int_equal(quantizer_fit(&g.q, x, CO * K, QUANT_INIT_MAX, -1, &e), 0);
        int better = 0;
        for (int o = 0; o < CO; o++) {
            assert_memory_equal(a.idx + o * a.m, g.idx + o * g.m, (size_t)a.m * sizeof(int32_t));
            assert_true(a.z[o] == g.z[o]);  // z stays
            double ea = rest_error(x + o * K, K, a.idx + o * a.m, a.m, a.d[o], a.z[o], qmax);
            double eg = rest_error(x + o * K, K, g.idx + o * g.m, g.m, g.d[o], g.z[o], qmax);
            assert_true(eg <= ea);
            better += eg < ea;
        }
        print_message("  %d bits: descent improved %d of %d channels\n", bits, better, CO);
        if (bits <= 4) assert_true(better > 0);
        eq_free(&a);
        eq_free(&g);
    }
    free(x);
}

// Gradients: the non-outliers exactly as the uniform row on them alone; an outlier passes dy
// to x and adds nothing to Δ, z (also through decode).
static void test_easyquant_grads(void **state) {
    Rng r;
    rng_seed(&r, 23, 0);
    enum { CO = 3 };
    const size_t K = 157;
    float *x = malloc(CO * K * sizeof(float)), *dy = malloc(CO * K * sizeof(float));
    float *dx = calloc(CO * K, sizeof(float));
    eq_weights(&r, x, CO, K);
    for (size_t i = 0; i < CO * K; i++) dy[i] = 2.0f * rng_uniform(&r) - 1.0f;
    EqQ t;
    eq_make(&t, 3, CO, K, EQ_FRACTION, EQ_STEPS);
    Err e = {0};
    assert_int_equal(quantizer_fit(&t.q, x, CO * K, QUANT_INIT_MAX, -1, &e), 0);
    float dd[CO] = {0}, dz[CO] = {0}, ddd[CO] = {0};
    quantizer_fake_backward(&t.q, dx, dd, dz, dy, x, CO * K, 0);
    uint8_t *lv = malloc(CO * K);
    quantizer_encode(&t.q, lv, x, CO * K, 0);
    quantizer_decode_backward(&t.q, ddd, NULL, NULL, dy, lv, CO * K, 0);
    for (int o = 0; o < CO; o++) {
        // the rest, contiguous, through the uniform row
        float *xr = malloc(K * sizeof(float)), *gr = malloc(K * sizeof(float)), *dxr = calloc(K, sizeof(float));
        uint8_t *lr = malloc(K);
        size_t nr = 0;
        const int32_t *idx = t.idx + o * t.m;
        for (size_t j = 0, s = 0; j < K; j++) {
            if (s < (size_t)t.m && (size_t)idx[s] == j) {
                assert_true(dx[o * K + j] == dy[o * K + j]);
                s++;
                continue;
            }
            xr[nr] = x[o * K + j];
            gr[nr] = dy[o * K + j];
            lr[nr] = lv[o * K + j];
            nr++;
        }
        float du = 0, dzu = 0, ddu = 0, d1 = t.d[o], z1 = t.z[o];
        Quantizer u;
        quantizer_setup(&u, QUANT_UNIFORM, 3, 1, 1, &d1, &z1, NULL, NULL);
        quantizer_fake_backward(&u, dxr, &du, &dzu, gr, xr, nr, 0);
        quantizer_decode_backward(&u, &ddu, NULL, NULL, gr, lr, nr, 0);
        for (size_t j = 0, s = 0, k = 0; j < K; j++) {
            if (s < (size_t)t.m && (size_t)idx[s] == j) {
                s++;
                continue;
            }
            assert_true(dx[o * K + j] == dxr[k++]);
        }
        assert_float_equal(dd[o], du, 1e-5 * fabsf(du) + 1e-6);
        assert_float_equal(dz[o], dzu, 1e-5 * fabsf(dzu) + 1e-6);
        assert_float_equal(ddd[o], ddu, 1e-5 * fabsf(ddu) + 1e-6);
        free(xr);
        free(gr);
        free(dxr);
        free(lr);
    }
    eq_free(&t);
    free(x);
    free(dy);
    free(dx);
    free(lv);
}

int main(void) {
    threads_set(0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_complete),
        cmocka_unit_test(test_names_unique_and_found),
        cmocka_unit_test(test_uniform_fake_naive),
        cmocka_unit_test(test_uniform_grads_fd),
        cmocka_unit_test(test_uniform_levels_roundtrip),
        cmocka_unit_test(test_easyquant_fake_naive),
        cmocka_unit_test(test_easyquant_range_descent),
        cmocka_unit_test(test_easyquant_grads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
