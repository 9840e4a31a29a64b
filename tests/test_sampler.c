/* test_sampler.c: DDIM / PLMS against upstream. The shipped teacher run by the real CompVis
   DDIMSampler (tests/data/teacher/ddim_ref, models/zoo/fmnist-ldm/README.md): final latents and
   decoded images for (20 steps, guidance 1.5) and (50 steps, guidance 3.0), eta 0. The DDIM
   timestep list and sampling parameters against make_ddim_timesteps / make_ddim_sampling_parameters
   written out here; PLMS' multistep coefficients and its first-step evaluation order; noise
   streams that make an image independent of its batch. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/npy.h"
#include "models/ldm.h"
#include "sample/ddim.h"
#include "sample/generate.h"
#include "sample/plms.h"
#include "sample/sampler.h"

static const double TOL_DDIM = 1e-4;  // models/zoo/fmnist-ldm/README.md: "~1e-4 relative L2"
static const size_t ARENA_BYTES = (size_t)2 << 30;

static Ldm *g_teacher;

static int load_teacher(void **state) {
    (void)state;
    Err e = {0};
    char cfg[4096];
    snprintf(cfg, sizeof cfg, "%s", test_data_path("../../models/zoo/fmnist-ldm/config.yaml"));
    if (ldm_load(&g_teacher, cfg, test_data_path("../../models/zoo/fmnist-ldm/model.ckpt"), NULL, &e)) {
        fprintf(stderr, "teacher: %s\n", e.msg);
        return -1;
    }
    return 0;
}

static int free_teacher(void **state) {
    (void)state;
    ldm_free(g_teacher);
    return 0;
}

// make_ddim_timesteps('uniform', S, 1000): c = 1000 // S; np.asarray(list(range(0, 1000, c))) + 1
static void test_ddim_timesteps(void **state) {
    (void)state;
    const int S[] = {20, 30, 50, 100, 250}, count[] = {20, 31, 50, 100, 250};
    for (int k = 0; k < 5; k++) {
        int out[1000];
        int n = ddim_timesteps(1000, S[k], out, 1000);
        assert_int_equal(n, count[k]);
        int c = 1000 / S[k];
        for (int i = 0; i < n; i++) assert_int_equal(out[i], i * c + 1);
        assert_true((n - 1) * c < 1000 && n * c >= 1000);
    }
    int out[4];
    assert_int_equal(ddim_timesteps(1000, 1, out, 4), 1);
    assert_int_equal(out[0], 1);
    assert_int_equal(ddim_timesteps(1000, 500, NULL, 0), 500);   // last timestep 999
    assert_int_equal(ddim_timesteps(1000, 1000, NULL, 0), -1);   // would index alphas_cumprod[1000]
    assert_int_equal(ddim_timesteps(1000, 0, NULL, 0), -1);
    assert_int_equal(ddim_timesteps(1000, 1001, NULL, 0), -1);
    assert_int_equal(sampler_real_steps(g_teacher, 30), 31);
}

// make_ddim_sampling_parameters on the teacher's float32 alphas_cumprod.
static void test_ddim_parameters(void **state) {
    (void)state;
    const float *acp = g_teacher->alphas_cumprod;
    Err e = {0};
    for (int eta10 = 0; eta10 <= 10; eta10 += 10) {
        double eta = eta10 / 10.0;
        DdimSchedule s;
        assert_int_equal(ddim_schedule_init(&s, acp, 1000, 50, eta, &e), 0);
        assert_int_equal(s.n, 50);
        for (int i = 0; i < s.n; i++) {
            float a = acp[20 * i + 1], ap = i ? acp[20 * (i - 1) + 1] : acp[0];
            assert_true(s.alphas[i] == a && s.alphas_prev[i] == ap);
            double sig = eta * sqrt((1 - (double)ap) / (1 - (double)a) * (1 - (double)a / ap));
            assert_true(fabs(s.sigmas[i] - sig) <= 1e-6 * sig + 1e-12);
            assert_true(fabsf(s.sqrt_one_minus_alphas[i] - (float)sqrt(1.0 - a)) <= 2e-7f);
        }
        if (eta == 0) for (int i = 0; i < s.n; i++) assert_true(s.sigmas[i] == 0.0f);
        ddim_schedule_free(&s);
    }
    DdimSchedule s;
    assert_int_equal(ddim_schedule_init(&s, acp, 1000, 1000, 0.0, &e), ERR_VALUE);
    assert_non_null(strstr(e.msg, "1000"));
    // S = 3: range(0, 1000, 333) + 1 = [1, 334, 667, 1000] indexes past alphas_cumprod; 2 and 4 work
    int n = 0;
    memset(&e, 0, sizeof e);
    assert_int_equal(ddim_check_steps(1000, 3, &n, &e), ERR_VALUE);
    assert_non_null(strstr(e.msg, "range(0, 1000, 333)"));
    assert_non_null(strstr(e.msg, "2 and 4"));
    assert_int_equal(ddim_check_steps(1000, 4, &n, &e), 0);
    assert_int_equal(n, 4);
}

// p_sample_ddim's update against its formula in double.
static void test_ddim_update(void **state) {
    (void)state;
    Err e = {0};
    DdimSchedule s;
    assert_int_equal(ddim_schedule_init(&s, g_teacher->alphas_cumprod, 1000, 10, 0.7, &e), 0);
    Rng r;
    rng_seed(&r, 3, 0);
    float x[64], ep[64], nz[64], out[64], px0[64];
    rng_normal_fill(&r, x, 64);
    rng_normal_fill(&r, ep, 64);
    rng_normal_fill(&r, nz, 64);
    for (int index = 0; index < s.n; index++) {
        ddim_update(&s, index, x, ep, nz, out, px0, 64);
        double a = s.alphas[index], ap = s.alphas_prev[index], sg = s.sigmas[index];
        for (int i = 0; i < 64; i++) {
            double p = (x[i] - sqrt(1 - a) * ep[i]) / sqrt(a);
            double want = sqrt(ap) * p + sqrt(1 - ap - sg * sg) * ep[i] + sg * nz[i];
            assert_true(fabs(px0[i] - p) <= 1e-5 * (1 + fabs(p)));
            assert_true(fabs(out[i] - want) <= 1e-5 * (1 + fabs(want)));
        }
    }
    ddim_schedule_free(&s);
}

static void test_plms_coefficients(void **state) {
    (void)state;
    enum { N = 37 };
    float e[N], o1[N], o2[N], o3[N], out[N];
    Rng r;
    rng_seed(&r, 4, 0);
    rng_normal_fill(&r, e, N);
    rng_normal_fill(&r, o1, N);
    rng_normal_fill(&r, o2, N);
    rng_normal_fill(&r, o3, N);
    const float *old[3] = {o3, o2, o1};  // oldest first: old[-1] = o1
    for (int k = 1; k <= 3; k++) {
        plms_combine(out, e, old + (3 - k), k, N);
        for (int i = 0; i < N; i++) {
            double want = k == 1 ? (3.0 * e[i] - o1[i]) / 2
                        : k == 2 ? (23.0 * e[i] - 16.0 * o1[i] + 5.0 * o2[i]) / 12
                                 : (55.0 * e[i] - 59.0 * o1[i] + 37.0 * o2[i] - 9.0 * o3[i]) / 24;
            assert_true(fabs(out[i] - want) <= 1e-5 * (1 + fabs(want)));
        }
    }
    plms_first(out, e, o1, N);
    for (int i = 0; i < N; i++) assert_true(fabsf(out[i] - (e[i] + o1[i]) / 2) <= 1e-6f);
}

/* ---- the teacher against the real DDIMSampler ---- */

static void ddim_ref_case(int steps, float scale, const char *zname, const char *iname) {
    Err e = {0};
    Ctx c;
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    Tensor *xT = test_load_npy(&c, "teacher/ddim_ref/xT.npy");
    Tensor *yf = test_load_npy(&c, "teacher/ddim_ref/y.npy");
    Tensor *zref = test_load_npy(&c, zname);
    Tensor *iref = test_load_npy(&c, iname);
    int N = xT->shape[0];
    assert_int_equal(N, 10);
    int y[10];
    for (int i = 0; i < N; i++) y[i] = (int)yf->data[i];
    float *z = malloc(xT->n * sizeof(float));
    memcpy(z, xT->data, xT->n * sizeof(float));
    SamplerOpts o = {.kind = SAMPLER_DDIM, .steps = steps, .eta = 0.0f, .scale = scale};
    if (sampler_run(&c, g_teacher, &o, z, N, y, NULL, &e)) {
        print_error("%s\n", e.msg);
        fail();
    }
    double ez = rel_l2(z, zref->data, zref->n);
    assert_rel_l2(z, zref->data, zref->n, TOL_DDIM);
    Tensor *zt = tensor_from(&c, z, 4, xT->shape);
    Tensor *img = ldm_decode_first_stage(&c, g_teacher, zt);
    assert_non_null(img);
    assert_true(tensor_same_shape(img, iref));
    double ei = rel_l2(img->data, iref->data, iref->n);
    assert_rel_l2(img->data, iref->data, iref->n, TOL_DDIM);
    printf("ddim_ref S%d scale %.1f: z rel L2 %.3g, img rel L2 %.3g\n", steps, (double)scale, ez, ei);
    free(z);
    ctx_free(&c);
}

static void test_teacher_ddim_s20(void **state) {
    (void)state;
    ddim_ref_case(20, 1.5f, "teacher/ddim_ref/z_S20_scale1.5.npy", "teacher/ddim_ref/img_S20_scale1.5.npy");
}

static void test_teacher_ddim_s50(void **state) {
    (void)state;
    ddim_ref_case(50, 3.0f, "teacher/ddim_ref/z_S50_scale3.0.npy", "teacher/ddim_ref/img_S50_scale3.0.npy");
}

/* ---- evaluation order, hooks, streams ---- */

typedef struct {
    int n;
    int step[32], t[32];
} EvalLog;

static void log_eval(int step, int total, int t, void *user) {
    EvalLog *l = user;
    (void)total;
    if (l->n < 32) {
        l->step[l->n] = step;
        l->t[l->n] = t;
    }
    l->n++;
}

// PLMS: the first step evaluates t, then t_next (pseudo improved Euler); later steps one
// evaluation each. DDIM: one evaluation per step, timesteps descending.
static void test_eval_order(void **state) {
    (void)state;
    Err e = {0};
    Ctx c;
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    float x[2 * 256];
    Rng r;
    rng_seed(&r, 1, 0);
    rng_normal_fill(&r, x, 512);
    int y[2] = {3, 7};
    EvalLog l = {0};
    SamplerOpts o = {.kind = SAMPLER_PLMS, .steps = 5, .scale = 2.0f, .on_eval = log_eval, .user = &l};
    assert_int_equal(sampler_run(&c, g_teacher, &o, x, 2, y, NULL, &e), 0);
    const int want_step[] = {0, 1, 1, 2, 3, 4}, want_t[] = {801, 601, 601, 401, 201, 1};
    assert_int_equal(l.n, 6);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(l.step[i], want_step[i]);
        assert_int_equal(l.t[i], want_t[i]);
    }
    for (int i = 0; i < 512; i++) assert_true(isfinite(x[i]));
    EvalLog d = {0};
    o.kind = SAMPLER_DDIM;
    o.user = &d;
    assert_int_equal(sampler_run(&c, g_teacher, &o, x, 2, y, NULL, &e), 0);
    assert_int_equal(d.n, 5);
    for (int i = 0; i < 5; i++) assert_int_equal(d.t[i], 801 - 200 * i);
    o.eta = 0.5f;
    o.kind = SAMPLER_PLMS;
    assert_int_equal(sampler_run(&c, g_teacher, &o, x, 2, y, NULL, &e), ERR_VALUE);
    assert_non_null(strstr(e.msg, "eta"));
    ctx_free(&c);
}

// Ldm.guidance_gain g multiplies the guidance term: ε at scale s with gain g equals
// ε_u + s g (ε_c - ε_u) from the two branches evaluated separately; scale 1 ignores it.
static void test_guidance_gain(void **state) {
    (void)state;
    Err e = {0};
    Ctx c;
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    float x[256];
    Rng r;
    rng_seed(&r, 3, 0);
    rng_normal_fill(&r, x, 256);
    int y[1] = {4}, yu[1] = {ldm_uncond_label(g_teacher)};
    float t[1] = {501};
    const int shape[4] = {1, 4, 8, 8};
    Tensor *ec = ldm_apply_model(&c, g_teacher, tensor_from(&c, x, 4, shape), t, y);
    Tensor *eu = ldm_apply_model(&c, g_teacher, tensor_from(&c, x, 4, shape), t, yu);
    g_teacher->guidance_gain = 1.25f;
    Tensor *eg = sampler_eps(&c, g_teacher, tensor_from(&c, x, 4, shape), 501, y, 3.0f);
    Tensor *e1 = sampler_eps(&c, g_teacher, tensor_from(&c, x, 4, shape), 501, y, 1.0f);
    g_teacher->eps_gain = 1.02f;  // the whole guided eps times it
    Tensor *ege = sampler_eps(&c, g_teacher, tensor_from(&c, x, 4, shape), 501, y, 3.0f);
    g_teacher->guidance_gain = g_teacher->eps_gain = 0;
    assert_non_null(ege);
    assert_non_null(ec);
    assert_non_null(eu);
    assert_non_null(eg);
    assert_non_null(e1);
    double num = 0, den = 0, num1 = 0, nume = 0;
    for (int i = 0; i < 256; i++) {
        double want = eu->data[i] + 3.0 * 1.25 * ((double)ec->data[i] - eu->data[i]);
        num += (eg->data[i] - want) * (eg->data[i] - want);
        den += want * want;
        num1 += ((double)e1->data[i] - ec->data[i]) * ((double)e1->data[i] - ec->data[i]);
        nume += ((double)ege->data[i] - 1.02 * want) * ((double)ege->data[i] - 1.02 * want);
    }
    assert_true(sqrt(nume / den) < 1e-5);
    assert_true(sqrt(num / den) < 1e-5);  // batched [u | c] call vs two single calls
    assert_true(sqrt(num1 / den) < 1e-5);
    ctx_free(&c);
}

// --eps-scale: one DDIM step (eta 0) with every eps times g equals the closed form
// x_prev = sqrt(a_prev) (x - sqrt(1 - a) g e) / sqrt(a) + sqrt(1 - a_prev) g e, e the guided eps.
static void test_eps_scale(void **state) {
    (void)state;
    Err e = {0};
    Ctx c;
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    float x[256], x1[256];
    Rng r;
    rng_seed(&r, 4, 0);
    rng_normal_fill(&r, x, 256);
    memcpy(x1, x, sizeof x);
    int y[1] = {2};
    const int shape[4] = {1, 4, 8, 8};
    const float g = 1.01f;
    SamplerOpts o = {.kind = SAMPLER_DDIM, .steps = 1, .eta = 0, .scale = 3.0f, .eps_scale = g};
    DdimSchedule s;
    assert_int_equal(ddim_schedule_init(&s, g_teacher->alphas_cumprod, g_teacher->T, 1, 0.0, &e), 0);
    int t = s.timesteps[0];
    Tensor *et = sampler_eps(&c, g_teacher, tensor_from(&c, x, 4, shape), t, y, 3.0f);
    assert_non_null(et);
    double a = s.alphas[0], ap = s.alphas_prev[0], num = 0, den = 0;
    assert_int_equal(sampler_run(&c, g_teacher, &o, x1, 1, y, NULL, &e), 0);
    for (int i = 0; i < 256; i++) {
        double ge = g * (double)et->data[i];
        double want = sqrt(ap) * ((double)x[i] - sqrt(1 - a) * ge) / sqrt(a) + sqrt(1 - ap) * ge;
        num += (x1[i] - want) * (x1[i] - want);
        den += want * want;
    }
    assert_true(sqrt(num / den) < 1e-5);
    ddim_schedule_free(&s);
    ctx_free(&c);
}

// With eta > 0 every image draws its noise from its own stream: sampling 3 images together or
// one at a time gives the same latents (up to float summation order in batched GEMMs).
static void test_batch_independence(void **state) {
    (void)state;
    Err e = {0};
    Ctx c;
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    enum { N = 3, PER = 4 * 8 * 8 };
    float xb[N * PER], xs[N * PER];
    Rng rb[N], rs;
    int y[N] = {0, 5, 9};
    for (int i = 0; i < N; i++) sample_initial_noise(&rb[i], 77, i, xb + i * PER, PER);
    SamplerOpts o = {.kind = SAMPLER_DDIM, .steps = 10, .eta = 1.0f, .scale = 3.0f};
    assert_int_equal(sampler_run(&c, g_teacher, &o, xb, N, y, rb, &e), 0);
    for (int i = 0; i < N; i++) {
        sample_initial_noise(&rs, 77, i, xs + i * PER, PER);
        assert_int_equal(sampler_run(&c, g_teacher, &o, xs + i * PER, 1, y + i, &rs, &e), 0);
    }
    assert_rel_l2(xs, xb, N * PER, 1e-5);
    // a different seed gives different images
    sample_initial_noise(&rs, 78, 0, xs, PER);
    assert_true(rel_l2(xs, xb, PER) > 0.1);
    ctx_free(&c);
}

// Non-finite latents stop the sampler at the step where they appear (they used to be decoded
// and written as black images), and eta outside 0..1 is refused before any step.
static void test_nonfinite(void **state) {
    (void)state;
    Err e = {0};
    Ctx c;
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    enum { PER = 4 * 8 * 8 };
    float x[2 * PER];
    Rng r[2];
    int y[2] = {1, 2};
    for (int i = 0; i < 2; i++) sample_initial_noise(&r[i], 5, i, x + i * PER, PER);
    x[PER + 17] = NAN;  // image 1
    SamplerOpts o = {.kind = SAMPLER_DDIM, .steps = 4, .eta = 0.0f, .scale = 3.0f};
    assert_int_equal(sampler_run(&c, g_teacher, &o, x, 2, y, r, &e), ERR_NAN);
    assert_non_null(strstr(e.msg, "sampling step 1/4"));
    assert_non_null(strstr(e.msg, "image 1"));
    e = (Err){0};
    o.eta = 1.2f;
    for (int i = 0; i < 2; i++) sample_initial_noise(&r[i], 5, i, x + i * PER, PER);
    assert_int_equal(sampler_run(&c, g_teacher, &o, x, 2, y, r, &e), ERR_VALUE);
    assert_non_null(strstr(e.msg, "eta"));
    ctx_free(&c);
}

typedef struct {
    float img[12][32 * 32];
    int labels[12];
    int calls;
} Collected;

static int collect(const float *images, const int *shape, const float *z, const int *labels, int first, int count,
                   void *user, Err *e) {
    (void)z, (void)e;
    Collected *col = user;
    assert_int_equal(shape[1] * shape[2] * shape[3], 32 * 32);
    for (int i = 0; i < count; i++) {
        memcpy(col->img[first + i], images + (size_t)i * 1024, 1024 * sizeof(float));
        col->labels[first + i] = labels[i];
    }
    col->calls++;
    return 0;
}

// sample_generate: class-balanced labels, images in [0, 1], batch size does not change images.
static void test_generate(void **state) {
    (void)state;
    Err e = {0};
    Ctx c;
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    int y[12];
    assert_int_equal(sample_labels(g_teacher, 12, -1, y, &e), 0);
    for (int i = 0; i < 12; i++) assert_int_equal(y[i], i % 10);
    static Collected a, b;
    GenerateOpts g = {.sampler = {.kind = SAMPLER_DDIM, .steps = 8, .eta = 0.3f, .scale = 2.0f}, .seed = 5,
                      .batch = 5, .on_batch = collect, .user = &a};
    assert_int_equal(sample_generate(&c, g_teacher, &g, y, 12, &e), 0);
    assert_int_equal(a.calls, 3);
    g.batch = 12;
    g.decode_batch = 4;
    g.user = &b;
    assert_int_equal(sample_generate(&c, g_teacher, &g, y, 12, &e), 0);
    assert_int_equal(b.calls, 1);
    for (int i = 0; i < 12; i++) {
        assert_int_equal(a.labels[i], i % 10);
        assert_rel_l2(b.img[i], a.img[i], 1024, 1e-5);
        for (int k = 0; k < 1024; k++) assert_true(a.img[i][k] >= 0.0f && a.img[i][k] <= 1.0f);
    }
    assert_int_equal(sample_labels(g_teacher, 4, 10, y, &e), 0);  // the unconditional label itself
    assert_int_equal(sample_labels(g_teacher, 4, 11, y, &e), ERR_ARG);
    assert_non_null(strstr(e.msg, "--class 11"));
    ctx_free(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ddim_timesteps),
        cmocka_unit_test(test_guidance_gain),
        cmocka_unit_test(test_eps_scale),
        cmocka_unit_test(test_ddim_parameters),
        cmocka_unit_test(test_ddim_update),
        cmocka_unit_test(test_plms_coefficients),
        cmocka_unit_test(test_teacher_ddim_s20),
        cmocka_unit_test(test_teacher_ddim_s50),
        cmocka_unit_test(test_eval_order),
        cmocka_unit_test(test_batch_independence),
        cmocka_unit_test(test_nonfinite),
        cmocka_unit_test(test_generate),
    };
    return cmocka_run_group_tests_name("sampler", tests, load_teacher, free_teacher);
}
