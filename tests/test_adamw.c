/* test_adamw.c: AdamW against the closed-form update of Loshchilov & Hutter as PyTorch
   implements it (decoupled decay first, bias-corrected moments), computed in double here,
   with the linear-decay schedule and two slots sharing one data array. */
#include "testutil.h"

#include <math.h>
#include <string.h>

#include "train/adamw.h"

static const double TOL = 1e-5;  // float32 update vs double reference, relative to |p|

typedef struct { double p, m, v; } RefState;

static void ref_step(RefState *s, double g, double lr, double b1, double b2, double eps, double wd, int t) {
    s->p *= 1 - lr * wd;
    s->m = b1 * s->m + (1 - b1) * g;
    s->v = b2 * s->v + (1 - b2) * g * g;
    double mhat = s->m / (1 - pow(b1, t)), vhat = s->v / (1 - pow(b2, t));
    s->p -= lr * mhat / (sqrt(vhat) + eps * 1.0);
}

static void test_adamw_matches_closed_form(void **state) {
    AdamW o;
    Err e = {0};
    assert_int_equal(adamw_init(&o, 16, 2, &e), 0);
    adamw_group(&o, 0, 1e-2, 0.9, 0.999, 1e-8, 0.01);
    adamw_group(&o, 1, 5e-4, 0.8, 0.99, 1e-6, 0.0);
    float a[5] = {1, -2, 3, 0.5f, -0.1f}, b[3] = {0.3f, 0.2f, -0.7f};
    size_t oa, ob;
    assert_int_equal(adamw_add_slot(&o, 0, a, 5, &oa, &e), 0);
    assert_int_equal(adamw_add_slot(&o, 1, b, 3, &ob, &e), 0);
    o.total_steps = 10;
    RefState ra[5], rb[3];
    for (int i = 0; i < 5; i++) ra[i] = (RefState){a[i], 0, 0};
    for (int i = 0; i < 3; i++) rb[i] = (RefState){b[i], 0, 0};
    for (int t = 1; t <= 10; t++) {
        double factor = (10.0 - (t - 1)) / 10.0;
        for (int i = 0; i < 5; i++) {
            double g = sin(t * 1.3 + i) * 2.0;
            o.grad[oa + i] = (float)g;
            ref_step(&ra[i], (float)g, 1e-2 * factor, 0.9, 0.999, 1e-8, 0.01, t);
        }
        for (int i = 0; i < 3; i++) {
            double g = cos(t * 0.7 + i) * 1e-3;  // small gradients: eps matters
            o.grad[ob + i] = (float)g;
            ref_step(&rb[i], (float)g, 5e-4 * factor, 0.8, 0.99, 1e-6, 0.0, t);
        }
        adamw_step(&o);
        adamw_zero_grad(&o);
    }
    for (int i = 0; i < 5; i++) assert_true(fabs(a[i] - ra[i].p) <= TOL * (1 + fabs(ra[i].p)));
    for (int i = 0; i < 3; i++) assert_true(fabs(b[i] - rb[i].p) <= TOL * (1 + fabs(rb[i].p)));
    assert_true(adamw_lr_factor(&o) == 0.0);  // schedule ran out
    adamw_free(&o);
}

static void test_adamw_shared_data_two_updates(void **state) {
    // Two slots over one array (the reference's Δ_w): each applies its own update in turn.
    AdamW o;
    Err e = {0};
    assert_int_equal(adamw_init(&o, 4, 1, &e), 0);
    adamw_group(&o, 0, 1e-3, 0.9, 0.999, 1e-8, 0.01);
    float d[2] = {0.5f, 0.25f};
    size_t o1, o2;
    assert_int_equal(adamw_add_slot(&o, 0, d, 2, &o1, &e), 0);
    assert_int_equal(adamw_add_slot(&o, 0, d, 2, &o2, &e), 0);
    o.grad[o1] = 1.0f; o.grad[o1 + 1] = -1.0f;
    o.grad[o2] = 2.0f; o.grad[o2 + 1] = 0.5f;
    RefState r = {0.5, 0, 0}, r1;
    ref_step(&r, 1.0, 1e-3, 0.9, 0.999, 1e-8, 0.01, 1);
    r1 = (RefState){r.p, 0, 0};
    ref_step(&r1, 2.0, 1e-3, 0.9, 0.999, 1e-8, 0.01, 1);
    adamw_step(&o);
    assert_true(fabs(d[0] - r1.p) <= TOL);
    // over capacity is an error, not an overflow
    size_t o3;
    float x[1];
    assert_int_equal(adamw_add_slot(&o, 0, x, 1, &o3, &e), ERR_NOMEM);
    adamw_free(&o);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adamw_matches_closed_form),
        cmocka_unit_test(test_adamw_shared_data_two_updates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
