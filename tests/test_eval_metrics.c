/* test_eval_metrics.c: Fréchet distance, feature statistics, Inception Score and improved
   precision/recall against pytorch-fid / reference-code fixtures (tests/data/fid, see its
   README) and closed forms. */
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval/frechet.h"
#include "eval/inception_score.h"
#include "eval/prec_recall.h"
#include "io/fileio.h"
#include "util/rng.h"

static const double TOL_FID_REL = 1e-6;        // fixtures README
static const double TOL_FID_IDENTICAL = 1e-8;  // absolute, fixtures README
static const double TOL_IS_REL = 1e-6;         // logits rounded to float32 before the softmax
static const double TOL_STATS = 1e-10;         // relative, double accumulation vs two-pass

/* The fixtures are float64 '<f8' arrays; io/npy.h converts to float32, which would cost
   the digits a 1e-6 tolerance on a difference of traces needs, so read them here. */
static double *load_f8(const char *name, int *rows, int *cols) {
    unsigned char *buf;
    size_t size;
    Err e = {0};
    if (file_read_all(test_data_path(name), &buf, &size, &e)) {
        print_error("%s\n", e.msg);
        fail();
    }
    assert_true(size > 10 && memcmp(buf, "\x93NUMPY", 6) == 0);
    size_t hlen = buf[6] == 1 ? (size_t)(buf[8] | buf[9] << 8) : (size_t)(buf[8] | buf[9] << 8 | buf[10] << 16);
    size_t off = buf[6] == 1 ? 10 + hlen : 12 + hlen;
    char hdr[512] = {0};
    memcpy(hdr, buf + (buf[6] == 1 ? 10 : 12), hlen < sizeof hdr - 1 ? hlen : sizeof hdr - 1);
    assert_non_null(strstr(hdr, "'<f8'"));
    assert_non_null(strstr(hdr, "'fortran_order': False"));
    const char *sh = strstr(hdr, "'shape': (");
    assert_non_null(sh);
    int r = 1, c = 1;
    int got = sscanf(sh + 10, "%d, %d", &r, &c);
    assert_true(got >= 1);
    if (got == 1) c = 1;
    *rows = r;
    *cols = c;
    assert_true(off + (size_t)r * c * 8 <= size);
    double *d = malloc((size_t)r * c * sizeof(double));
    assert_non_null(d);
    memcpy(d, buf + off, (size_t)r * c * sizeof(double));  // little-endian host (x86-64, arm64)
    free(buf);
    return d;
}

static float *to_f32(const double *d, size_t n) {
    float *f = malloc(n * sizeof(float));
    assert_non_null(f);
    for (size_t i = 0; i < n; i++) f[i] = (float)d[i];
    return f;
}

static double expected_value(const char *json_name, const char *key) {
    unsigned char *buf;
    size_t size;
    Err e = {0};
    assert_int_equal(file_read_all(test_data_path(json_name), &buf, &size, &e), 0);
    cJSON *j = cJSON_ParseWithLength((const char *)buf, size);
    assert_non_null(j);
    cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    assert_true(cJSON_IsNumber(v));
    double x = v->valuedouble;
    cJSON_Delete(j);
    free(buf);
    return x;
}

static double fid_case(const char *name) {
    char p[4][128];
    const char *parts[4] = {"mu1", "sigma1", "mu2", "sigma2"};
    double *a[4];
    int r, c, D = 0;
    for (int i = 0; i < 4; i++) {
        snprintf(p[i], sizeof p[i], "fid/frechet/%s_%s.npy", name, parts[i]);
        a[i] = load_f8(p[i], &r, &c);
        if (i == 0) D = r * c;
        else if (i == 1 || i == 3) assert_true(r == D && c == D);
    }
    double fid = -1, off = -1;
    Err e = {0};
    assert_int_equal(frechet_distance(a[0], a[1], a[2], a[3], D, &fid, &off, &e), 0);
    assert_true(off == 0.0);  // README: no case needs the 1e-6 offset
    for (int i = 0; i < 4; i++) free(a[i]);
    return fid;
}

static void test_frechet_fixtures(void **state) {
    const char *cases[] = {"gauss", "singular"};
    for (int i = 0; i < 2; i++) {
        double fid = fid_case(cases[i]);
        double ref = expected_value("fid/frechet/expected.json", cases[i]);
        double rel = fabs(fid - ref) / fabs(ref);
        print_message("frechet %-9s ours %.12g ref %.12g rel %.2e\n", cases[i], fid, ref, rel);
        assert_true(rel <= TOL_FID_REL);
    }
    double fid = fid_case("identical");
    double ref = expected_value("fid/frechet/expected.json", "identical");
    print_message("frechet identical ours %.3e ref %.3e\n", fid, ref);
    assert_true(fabs(fid - ref) <= TOL_FID_IDENTICAL);
}

// Diagonal covariances commute: d^2 = |mu1 - mu2|^2 + sum (sqrt a_i - sqrt b_i)^2.
static void test_frechet_diagonal_closed_form(void **state) {
    enum { D = 5 };
    double mu1[D] = {0, 1, 2, 3, 4}, mu2[D] = {1, 1, 0, 3, -1}, s1[D * D] = {0}, s2[D * D] = {0};
    double a[D] = {1, 4, 0.25, 0, 9}, b[D] = {4, 1, 0.25, 2, 0};
    double ref = 1 + 0 + 4 + 0 + 25;
    for (int i = 0; i < D; i++) {
        s1[i * D + i] = a[i];
        s2[i * D + i] = b[i];
        ref += (sqrt(a[i]) - sqrt(b[i])) * (sqrt(a[i]) - sqrt(b[i]));
    }
    double fid, off;
    Err e = {0};
    assert_int_equal(frechet_distance(mu1, s1, mu2, s2, D, &fid, &off, &e), 0);
    assert_true(fabs(fid - ref) <= 1e-12 * ref);
    // a NaN input is a named error, not a number
    s2[3] = NAN;
    assert_int_equal(frechet_distance(mu1, s1, mu2, s2, D, &fid, &off, &e), ERR_VALUE);
    assert_non_null(strstr(e.msg, "sigma2"));
}

// Streaming accumulation over uneven batches equals the two-pass np.cov definition,
// also with features far from the origin.
static void test_stats_streaming(void **state) {
    enum { N = 701, D = 9 };
    Rng r;
    rng_seed(&r, 7, 0);
    float *x = malloc(N * D * sizeof(float));
    assert_non_null(x);
    rng_normal_fill(&r, x, N * D);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < D; j++) x[i * D + j] = x[i * D + j] * (float)(j + 1) + 1000.0f + 10.0f * j;
    FrechetAcc a;
    Err e = {0};
    assert_int_equal(frechet_acc_init(&a, D, &e), 0);
    size_t sizes[] = {1, 300, 17, 383};
    size_t at = 0;
    for (int b = 0; b < 4; b++) {
        assert_int_equal(frechet_acc_add(&a, x + at * D, sizes[b], &e), 0);
        at += sizes[b];
    }
    assert_int_equal(at, N);
    double mu[D], sig[D * D], rm[D] = {0}, rs[D * D] = {0};
    assert_int_equal(frechet_acc_finish(&a, mu, sig, &e), 0);
    frechet_acc_free(&a);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < D; j++) rm[j] += x[i * D + j];
    for (int j = 0; j < D; j++) rm[j] /= N;
    for (int i = 0; i < N; i++)
        for (int p = 0; p < D; p++)
            for (int q = 0; q < D; q++) rs[p * D + q] += (x[i * D + p] - rm[p]) * (x[i * D + q] - rm[q]);
    for (int k = 0; k < D * D; k++) rs[k] /= (N - 1);
    for (int j = 0; j < D; j++) assert_true(fabs(mu[j] - rm[j]) <= TOL_STATS * fabs(rm[j]));
    for (int k = 0; k < D * D; k++) assert_true(fabs(sig[k] - rs[k]) <= TOL_STATS * fabs(rs[(k / D) * D + k / D]) * 10);
    // one row: no covariance
    assert_int_equal(frechet_acc_init(&a, D, &e), 0);
    assert_int_equal(frechet_acc_add(&a, x, 1, &e), 0);
    assert_int_equal(frechet_acc_finish(&a, mu, sig, &e), ERR_VALUE);
    frechet_acc_free(&a);
    free(x);
}

static void test_inception_score_fixture(void **state) {
    int n, k;
    double *l64 = load_f8("fid/is_pr/logits.npy", &n, &k);
    float *l = to_f32(l64, (size_t)n * k);
    double m, s;
    Err e = {0};
    assert_int_equal(inception_score(l, (size_t)n, k, 10, &m, &s, &e), 0);
    double rm = expected_value("fid/is_pr/expected.json", "is_mean");
    double rs = expected_value("fid/is_pr/expected.json", "is_std");
    print_message("IS ours %.10g +- %.10g ref %.10g +- %.10g\n", m, s, rm, rs);
    assert_true(fabs(m - rm) <= TOL_IS_REL * rm);
    assert_true(fabs(s - rs) <= TOL_IS_REL * 10 * rs);  // std: a difference of near-equal scores
    free(l64);
    free(l);
}

// Uniform predictions: IS 1. Confident, balanced over K classes in every split: IS = K.
static void test_inception_score_closed_form(void **state) {
    enum { N = 40, K = 4 };
    float l[N * K];
    double m, s;
    Err e = {0};
    for (int i = 0; i < N * K; i++) l[i] = 0.5f;
    assert_int_equal(inception_score(l, N, K, 4, &m, &s, &e), 0);
    assert_true(fabs(m - 1.0) < 1e-12 && s < 1e-12);
    for (int i = 0; i < N; i++)
        for (int c = 0; c < K; c++) l[i * K + c] = c == i % K ? 1000.0f : 0.0f;
    assert_int_equal(inception_score(l, N, K, 10, &m, &s, &e), 0);
    assert_true(fabs(m - K) < 1e-9 && s < 1e-9);
    assert_int_equal(inception_score(l, 5, K, 10, &m, &s, &e), ERR_VALUE);
}

static void test_prec_recall_fixture(void **state) {
    int nr, nf, d1, d2;
    double *r64 = load_f8("fid/is_pr/real.npy", &nr, &d1);
    double *f64 = load_f8("fid/is_pr/fake.npy", &nf, &d2);
    assert_int_equal(d1, d2);
    float *r = to_f32(r64, (size_t)nr * d1), *f = to_f32(f64, (size_t)nf * d2);
    double p, rc;
    Err e = {0};
    assert_int_equal(prec_recall(r, nr, f, nf, d1, 3, &p, &rc, &e), 0);
    double rp = expected_value("fid/is_pr/expected.json", "precision");
    double rr = expected_value("fid/is_pr/expected.json", "recall");
    print_message("precision %.4f (ref %.4f) recall %.4f (ref %.4f)\n", p, rp, rc, rr);
    // exact fractions of 200: equal up to the rounding of the JSON decimal
    assert_true(fabs(p - rp) < 1e-9);
    assert_true(fabs(rc - rr) < 1e-9);
    free(r64);
    free(f64);
    free(r);
    free(f);
}

// Points 0, 1, 3, 7, 15 on a line: 2nd-NN (k = 2) distances are known; a fake point set
// shifted far away has precision = recall = 0; identical sets give 1 and 1.
static void test_prec_recall_closed_form(void **state) {
    enum { N = 5, D = 2 };
    float x[N * D] = {0, 5, 1, 5, 3, 5, 7, 5, 15, 5};
    double r2[N];
    Err e = {0};
    assert_int_equal(prec_recall_radii(x, N, D, 2, r2, &e), 0);
    double ref[N] = {3, 2, 3, 6, 12};  // 2nd nearest of 0: 3 (to 3); of 1: 2 (to 3); of 3: 3 (to 0); of 7: 6 (to 1); of 15: 12 (to 3)
    for (int i = 0; i < N; i++) assert_true(fabs(r2[i] - ref[i] * ref[i]) < 1e-9);
    float far[N * D];
    for (int i = 0; i < N * D; i++) far[i] = x[i] + 1000.0f;
    double p, r;
    assert_int_equal(prec_recall(x, N, far, N, D, 2, &p, &r, &e), 0);
    assert_true(p == 0.0 && r == 0.0);
    assert_int_equal(prec_recall(x, N, x, N, D, 2, &p, &r, &e), 0);
    assert_true(p == 1.0 && r == 1.0);
    assert_int_equal(prec_recall(x, N, x, 2, D, 2, &p, &r, &e), ERR_VALUE);
}

// More rows than one block: the blocked radii equal brute force in double.
static void test_prec_recall_blocks(void **state) {
    enum { N = PR_BLOCK_ROWS + 77, D = 6 };
    Rng g;
    rng_seed(&g, 3, 1);
    float *x = malloc(N * D * sizeof(float));
    double *r2 = malloc(N * sizeof(double));
    assert_non_null(x);
    assert_non_null(r2);
    rng_normal_fill(&g, x, N * D);
    Err e = {0};
    assert_int_equal(prec_recall_radii(x, N, D, 3, r2, &e), 0);
    for (int i = 0; i < N; i += 37) {
        double b[3] = {INFINITY, INFINITY, INFINITY};
        for (int j = 0; j < N; j++) {
            if (j == i) continue;
            double d = 0;
            for (int c = 0; c < D; c++) d += ((double)x[i * D + c] - x[j * D + c]) * ((double)x[i * D + c] - x[j * D + c]);
            if (d < b[2]) {
                b[2] = d;
                if (b[2] < b[1]) { double t = b[1]; b[1] = b[2]; b[2] = t; }
                if (b[1] < b[0]) { double t = b[0]; b[0] = b[1]; b[1] = t; }
            }
        }
        assert_true(fabs(r2[i] - b[2]) <= 1e-5 * b[2]);
    }
    free(x);
    free(r2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frechet_fixtures),
        cmocka_unit_test(test_frechet_diagonal_closed_form),
        cmocka_unit_test(test_stats_streaming),
        cmocka_unit_test(test_inception_score_fixture),
        cmocka_unit_test(test_inception_score_closed_form),
        cmocka_unit_test(test_prec_recall_fixture),
        cmocka_unit_test(test_prec_recall_closed_form),
        cmocka_unit_test(test_prec_recall_blocks),
    };
    return cmocka_run_group_tests_name("eval_metrics", tests, NULL, NULL);
}
