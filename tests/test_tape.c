/* test_tape.c: the engine core: arena reuse, grad mode, frozen parameters, gradient
   accumulation, scopes, and the reductions (sum, mean, MSE) against closed forms and
   finite differences. */
#include "testutil.h"

#include <math.h>
#include <string.h>

static const double TOL_FORWARD = 1e-6;
static const double TOL_GRAD = 1e-2;  // float32 forward, central differences in double, eps 1e-3

static void test_arena_reuse(void **state) {
    Arena a;
    Err e = {0};
    assert_int_equal(arena_init(&a, 1 << 20, &e), 0);
    void *p1 = arena_alloc(&a, 1000);
    assert_non_null(p1);
    assert_int_equal((size_t)p1 % ARENA_ALIGN, 0);
    arena_reset(&a);
    void *p2 = arena_alloc(&a, 1000);
    assert_ptr_equal(p1, p2);  // reset hands out the same memory again: no growth step to step
    assert_null(arena_alloc(&a, 2 << 20));
    assert_int_equal(a.failed_bytes, 2 << 20);
    size_t m = arena_mark(&a);
    assert_non_null(arena_alloc(&a, 100));
    arena_release(&a, m);
    assert_int_equal(arena_mark(&a), m);
    arena_free(&a);
}

static void test_arena_full_sets_error(void **state) {
    Ctx c;
    Err e = {0};
    assert_int_equal(ctx_init(&c, 4096, &e), 0);
    Tensor *t = tensor_new2(&c, 1000, 1000);
    assert_null(t);
    assert_int_equal(c.err.code, ERR_NOMEM);
    assert_non_null(strstr(c.err.msg, "4000000"));
    assert_null(t_sum(&c, t));  // NULL propagates
    ctx_free(&c);
}

static void test_sum_mean_mse_forward(void **state) {
    Ctx c;
    Err e = {0};
    assert_int_equal(ctx_init(&c, 1 << 26, &e), 0);
    int n = 10001;  // several chunks
    Tensor *a = tensor_new1(&c, n), *b = tensor_new1(&c, n);
    double s = 0, sq = 0;
    for (int i = 0; i < n; i++) {
        a->data[i] = (float)sin(i);
        b->data[i] = (float)cos(i);
        s += a->data[i];
        double d = (double)a->data[i] - b->data[i];
        sq += d * d;
    }
    assert_true(fabs(t_sum(&c, a)->data[0] - s) <= TOL_FORWARD * (1 + fabs(s)));
    assert_true(fabs(t_mean(&c, a)->data[0] - s / n) <= TOL_FORWARD);
    assert_true(fabs(t_mse_loss(&c, a, b, 0)->data[0] - sq) <= TOL_FORWARD * sq);
    assert_true(fabs(t_mse_loss(&c, a, b, 1)->data[0] - sq / n) <= TOL_FORWARD * sq / n);
    ctx_free(&c);
}

static Tensor *f_mse(Ctx *c, Tensor *const *in, void *u) {
    Tensor *l = t_mse_loss(c, in[0], in[1], *(int *)u);
    return l;
}
static Tensor *f_mean(Ctx *c, Tensor *const *in, void *u) { return t_mean(c, in[0]); }

static void test_reduce_gradcheck(void **state) {
    Rng r;
    rng_seed(&r, 1, 1);
    Tensor *a = test_param_new(2, (int[]){3, 5}, 1, &r, 1.0f);
    Tensor *b = test_param_new(2, (int[]){3, 5}, 1, &r, 1.0f);
    Tensor *in[2] = {a, b};
    for (int mean = 0; mean <= 1; mean++)
        gradcheck(f_mse, in, 2, &mean, (GradcheckOpts){.tol = TOL_GRAD});
    gradcheck(f_mean, in, 1, NULL, (GradcheckOpts){.tol = TOL_GRAD});
    test_param_free(a);
    test_param_free(b);
}

static void test_frozen_and_accumulate(void **state) {
    Ctx c;
    Err e = {0};
    assert_int_equal(ctx_init(&c, 1 << 24, &e), 0);
    Rng r;
    rng_seed(&r, 2, 1);
    Tensor *w = test_param_new(1, (int[]){4}, 1, &r, 1.0f);       // trainable
    Tensor *frozen = test_param_new(1, (int[]){4}, 0, &r, 1.0f);  // no grad buffer
    assert_null(frozen->grad);
    Tensor *l = t_mse_loss(&c, w, frozen, 0);
    assert_int_equal(c.n_nodes, 1);
    assert_int_equal(tape_backward(&c, l, NULL), 0);
    float g1[4];
    for (int i = 0; i < 4; i++) {
        g1[i] = w->grad[i];
        assert_true(fabsf(g1[i] - 2 * (w->data[i] - frozen->data[i])) < 1e-5f);
    }
    assert_null(frozen->grad);  // a frozen input never gets a buffer
    // a second backward accumulates
    l = t_mse_loss(&c, w, frozen, 0);
    assert_int_equal(tape_backward(&c, l, NULL), 0);
    for (int i = 0; i < 4; i++) assert_true(fabsf(w->grad[i] - 2 * g1[i]) < 1e-5f);
    // frozen inputs only: nothing recorded even with grad mode on
    Tensor *l2 = t_mse_loss(&c, frozen, frozen, 0);
    assert_int_equal(c.n_nodes, 0);
    assert_false(l2->requires_grad);
    // grad mode off: nothing recorded
    ctx_set_grad(&c, 0);
    t_mse_loss(&c, w, frozen, 0);
    assert_int_equal(c.n_nodes, 0);
    test_param_free(w);
    test_param_free(frozen);
    ctx_free(&c);
}

static void test_scope_frees_intermediates(void **state) {
    Ctx c;
    Err e = {0};
    assert_int_equal(ctx_init(&c, 1 << 24, &e), 0);
    ctx_set_grad(&c, 0);
    Tensor *x = tensor_new1(&c, 1000);
    for (int i = 0; i < 1000; i++) x->data[i] = (float)i;
    size_t before = arena_mark(&c.arena);
    CtxScope s = ctx_scope_begin(&c);
    Tensor *junk = tensor_new1(&c, 100000);
    assert_non_null(junk);
    Tensor *y = tensor_new1(&c, 1000);
    for (int i = 0; i < 1000; i++) y->data[i] = 2.0f * x->data[i];
    y = ctx_scope_end(&c, s, y);
    assert_non_null(y);
    // only the kept tensor (header + data) remains after the scope start
    assert_true(arena_mark(&c.arena) - before <= 2 * ARENA_ALIGN + 1000 * sizeof(float));
    for (int i = 0; i < 1000; i++) assert_true(y->data[i] == 2.0f * i);
    assert_true(x->data[999] == 999.0f);
    // keep == NULL releases everything allocated in the scope
    size_t mark = arena_mark(&c.arena);
    s = ctx_scope_begin(&c);
    assert_non_null(tensor_new1(&c, 5000));
    assert_null(ctx_scope_end(&c, s, NULL));
    assert_int_equal(arena_mark(&c.arena), mark);
    ctx_free(&c);
}

static void test_pool_reuses_blocks(void **state) {
    BlockPool p;
    Err e = {0};
    assert_int_equal(pool_init(&p, 1 << 20, &e), 0);
    void *a = pool_alloc(&p, 1000), *b = pool_alloc(&p, 4000);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal((size_t)a % ARENA_ALIGN, 0);
    assert_int_equal(p.live, 1024 + 4032);
    pool_free(&p, a);
    assert_int_equal(p.live, 4032);
    assert_ptr_not_equal(pool_alloc(&p, 2000), a);  // larger than the free block: new memory
    assert_ptr_equal(pool_alloc(&p, 990), a);       // same aligned size: the freed block again
    assert_int_equal(p.peak, 1024 + 4032 + 2048);
    pool_free(&p, b);
    void *c = pool_alloc(&p, 3000);                 // up to a third smaller: b's block serves it
    assert_ptr_equal(c, b);
    assert_int_equal(p.live, 1024 + 2048 + 4032);   // counted at its block's size
    pool_free(&p, c);
    assert_ptr_not_equal(pool_alloc(&p, 2500), b);  // less than two thirds of it: not reused
    assert_true(pool_owns(&p, b));
    assert_false(pool_owns(&p, &p));
    assert_null(pool_alloc(&p, 2 << 20));
    pool_reset(&p);
    assert_int_equal(p.live, 0);
    assert_ptr_equal(pool_alloc(&p, 1000), a);
    pool_free_all(&p);
}

// loss = sum(silu(r) + y) with y = silu^L(x) and r a reshape view of y: a chain, a tensor read twice
// and a view sharing its gradient. Fills gx with d loss / dx; returns the pool's peak (0 without).
static size_t chain_grad(int pooled, const float *x0, int n, int L, float *gx) {
    Ctx c;
    Err e = {0};
    assert_int_equal(ctx_init(&c, 1 << 24, &e), 0);
    if (pooled) assert_int_equal(ctx_pool_grads(&c, 1 << 24, &e), 0);
    Tensor *x = tensor_from(&c, x0, 1, (int[]){n});
    x->requires_grad = 1;
    Tensor *y = x;
    for (int i = 0; i < L; i++) y = t_silu(&c, y);
    Tensor *r = t_reshape(&c, y, 2, (int[]){2, n / 2});
    Tensor *s = t_reshape(&c, t_silu(&c, r), 1, (int[]){n});
    Tensor *loss = t_sum(&c, t_add(&c, s, y));
    assert_non_null(loss);
    assert_int_equal(tape_backward(&c, loss, NULL), 0);
    memcpy(gx, x->grad, (size_t)n * sizeof(float));
    size_t leaf = ((size_t)n * sizeof(float) + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    if (pooled) assert_int_equal(c.grad_pool.live, leaf);  // only the leaf's gradient remains
    size_t peak = c.grad_pool.peak;
    ctx_free(&c);
    return peak;
}

static void test_grad_pool_frees_in_backward(void **state) {
    enum { N = 1000, L = 12 };
    float x[N], g_arena[N], g_pool[N];
    Rng r;
    rng_seed(&r, 7, 1);
    rng_normal_fill(&r, x, N);
    chain_grad(0, x, N, L, g_arena);
    size_t peak = chain_grad(1, x, N, L, g_pool);
    // freeing changes where gradients live, never what they are
    assert_memory_equal(g_arena, g_pool, sizeof g_arena);
    // alive at once: the leaf's, y's (shared with its view), one in flight, the loss's and the add's;
    // without freeing all L + 5 would be
    assert_true(peak <= 4 * (N * sizeof(float) + ARENA_ALIGN) + ARENA_ALIGN);
    // and the gradient itself: silu' chained, against central differences of the loss in double
    for (int k = 0; k < N; k += 97) {
        double lp = 0, lm = 0, h = 1e-3;
        for (int sgn = -1; sgn <= 1; sgn += 2) {
            double v = x[k] + sgn * h, acc = 0;
            for (int i = 0; i < N; i++) {
                double y = i == k ? v : x[i];
                for (int l = 0; l < L; l++) y = y / (1 + exp(-y));
                acc += y + y / (1 + exp(-y));
            }
            if (sgn < 0) lm = acc; else lp = acc;
        }
        assert_true(fabs((lp - lm) / (2 * h) - g_pool[k]) < TOL_GRAD);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arena_reuse),
        cmocka_unit_test(test_arena_full_sets_error),
        cmocka_unit_test(test_sum_mean_mse_forward),
        cmocka_unit_test(test_reduce_gradcheck),
        cmocka_unit_test(test_frozen_and_accumulate),
        cmocka_unit_test(test_scope_frees_intermediates),
        cmocka_unit_test(test_pool_reuses_blocks),
        cmocka_unit_test(test_grad_pool_frees_in_backward),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
