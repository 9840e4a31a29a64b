#include "testutil.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io/fileio.h"
#include "io/npy.h"
#include "util/threads.h"

double rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

void assert_rel_l2_impl(const float *ours, const float *ref, size_t n, double tol, const char *what,
                        const char *file, int line) {
    double r = rel_l2(ours, ref, n);
    if (r <= tol && isfinite(r)) return;
    size_t worst = 0;
    double wd = -1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)ours[i] - (double)ref[i]);
        if (!(d <= wd)) { wd = d; worst = i; }
    }
    print_error("%s:%d: %s: relative L2 %.3g > %.3g; max |diff| %.4g at index %zu (ours %.6g, ref %.6g)\n",
                file, line, what, r, tol, wd, worst, (double)ours[worst], (double)ref[worst]);
    _fail(file, line);
}

Ctx *test_ctx_static(void) {
    static Ctx c;
    Err e = {0};
    assert_int_equal(ctx_init(&c, (size_t)1 << 30, &e), 0);
    return &c;
}

Ctx *test_ctx_new(size_t bytes) {
    Ctx *c = malloc(sizeof *c);
    Err e = {0};
    assert_non_null(c);
    assert_int_equal(ctx_init(c, bytes, &e), 0);
    return c;
}

void test_ctx_delete(Ctx *c) {
    ctx_free(c);
    free(c);
}

void assert_thread_deterministic(float *(*run)(int threads, size_t *len)) {
    size_t n1, n2, n3;
    float *a = run(2, &n1), *b = run(2, &n2), *one = run(1, &n3);
    assert_int_equal(n1, n2);
    assert_int_equal(n1, n3);
    assert_memory_equal(a, b, n1 * sizeof(float));
    assert_memory_equal(a, one, n1 * sizeof(float));
    free(a);
    free(b);
    free(one);
    threads_set(0);
}

float *test_backward_outputs(Ctx *c, Tensor *out, Rng *r, Tensor *const *inputs, int n, size_t *len) {
    assert_non_null(out);
    float *G = malloc(out->n * sizeof(float));
    assert_non_null(G);
    rng_normal_fill(r, G, out->n);
    assert_int_equal(tape_backward(c, out, G), 0);
    free(G);
    *len = out->n;
    for (int i = 0; i < n; i++) *len += inputs[i]->n;
    float *buf = malloc(*len * sizeof(float)), *p = buf;
    assert_non_null(buf);
    memcpy(p, out->data, out->n * sizeof(float));
    p += out->n;
    for (int i = 0; i < n; i++) {
        memcpy(p, inputs[i]->grad, inputs[i]->n * sizeof(float));
        p += inputs[i]->n;
    }
    return buf;
}

int test_tmpdir_make(char *dir, size_t cap, const char *tag) {
    if ((size_t)snprintf(dir, cap, "/tmp/effdm_%s_XXXXXX", tag) >= cap) return -1;
    return mkdtemp(dir) ? 0 : -1;
}

static int tmpdir_remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

int test_tmpdir_remove(const char *dir) {
    // depth first (children before their folder), not following symbolic links
    return nftw(dir, tmpdir_remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : -1;
}

const char *test_path_in(const char *dir, const char *name) {
    static char buf[8][1024];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

const char *test_data_path(const char *name) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", TEST_DATA_DIR, name);
    return buf;
}

Tensor *test_load_npy(Ctx *c, const char *name) {
    NpyArray a;
    Err e = {0};
    if (npy_read(test_data_path(name), &a, &e)) {
        print_error("%s\n", e.msg);
        fail();
    }
    Tensor *t = tensor_from(c, a.data, a.ndim, a.shape);
    npy_free(&a);
    assert_non_null(t);
    return t;
}

void test_fill_matrix_normal(Tensor *t, int rows, int cols, Rng *r) {
    assert_non_null(t);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], rows);
    assert_int_equal(t->shape[1], cols);
    rng_normal_fill(r, t->data, t->n);
}

Tensor *test_param_new(int ndim, const int *shape, int requires_grad, Rng *rng, float scale) {
    size_t n = tensor_shape_numel(ndim, shape);
    Tensor *t = calloc(1, sizeof *t);
    float *data = malloc((n ? n : 1) * sizeof(float));
    float *grad = requires_grad ? calloc(n ? n : 1, sizeof(float)) : NULL;
    assert_non_null(t);
    assert_non_null(data);
    if (rng) {
        rng_normal_fill(rng, data, n);
        for (size_t i = 0; i < n; i++) data[i] *= scale;
    } else {
        memset(data, 0, n * sizeof(float));
    }
    tensor_init_param(t, data, grad, ndim, shape);
    return t;
}

Tensor *test_tensor_normal(Ctx *c, int ndim, const int *shape, Rng *r) {
    Tensor *t = tensor_new(c, ndim, shape);
    assert_non_null(t);
    rng_normal_fill(r, t->data, t->n);
    return t;
}

void test_param_free(Tensor *t) {
    if (!t) return;
    free(t->data);
    free(t->grad);
    free(t);
}

static double gc_loss(Ctx *c, GradcheckFn f, Tensor *const *inputs, void *user, const float *G) {
    arena_reset(&c->arena);
    tape_clear(c);
    int prev = ctx_set_grad(c, 0);
    Tensor *out = f(c, inputs, user);
    ctx_set_grad(c, prev);
    if (!out) {
        print_error("gradcheck: forward failed: %s\n", c->err.msg);
        fail();
    }
    double s = 0;
    for (size_t i = 0; i < out->n; i++) s += (double)out->data[i] * (double)G[i];
    return s;
}

double gradcheck(GradcheckFn f, Tensor *const *inputs, int n_inputs, void *user, GradcheckOpts o) {
    if (o.eps == 0) o.eps = 1e-3;
    if (o.tol == 0) o.tol = 1e-2;
    Ctx c;
    Err e = {0};
    assert_int_equal(ctx_init(&c, (size_t)1 << 30, &e), 0);

    // analytic pass
    Tensor *out = f(&c, inputs, user);
    if (!out) {
        print_error("gradcheck: forward failed: %s\n", c.err.msg);
        fail();
    }
    size_t nout = out->n;
    float *G = malloc(nout * sizeof(float));
    Rng rng;
    rng_seed(&rng, 42, 7);
    rng_normal_fill(&rng, G, nout);
    for (int i = 0; i < n_inputs; i++)
        if (inputs[i] && inputs[i]->grad) memset(inputs[i]->grad, 0, inputs[i]->n * sizeof(float));
    if (tape_backward(&c, out, G) != 0) {
        print_error("gradcheck: backward failed: %s\n", c.err.msg);
        fail();
    }
    double worst_all = 0;
    for (int i = 0; i < n_inputs; i++) {
        Tensor *x = inputs[i];
        if (!x || !x->requires_grad) continue;
        float *analytic = malloc(x->n * sizeof(float));
        memcpy(analytic, x->grad, x->n * sizeof(float));
        size_t count = x->n, stride = 1;
        if (o.max_elems > 0 && count > (size_t)o.max_elems) stride = count / (size_t)o.max_elems;
        double num2 = 0, diff2 = 0, worst = 0;
        size_t worst_j = 0, checked = 0;
        double worst_a = 0, worst_n = 0;
        for (size_t j = 0; j < count; j += stride) {
            float orig = x->data[j];
            x->data[j] = orig + (float)o.eps;
            double lp = gc_loss(&c, f, inputs, user, G);
            x->data[j] = orig - (float)o.eps;
            double lm = gc_loss(&c, f, inputs, user, G);
            double h = (double)(orig + (float)o.eps) - (double)(orig - (float)o.eps);
            double num = (lp - lm) / h;
            if (o.kink > 0) {
                x->data[j] = orig + (float)(o.eps / 2);
                double lp2 = gc_loss(&c, f, inputs, user, G);
                x->data[j] = orig - (float)(o.eps / 2);
                double lm2 = gc_loss(&c, f, inputs, user, G);
                double h2 = (double)(orig + (float)(o.eps / 2)) - (double)(orig - (float)(o.eps / 2));
                double num2h = (lp2 - lm2) / h2;
                if (fabs(num - num2h) > o.kink * (1.0 + fabs(num))) {
                    x->data[j] = orig;
                    continue;
                }
            }
            x->data[j] = orig;
            double d = (double)analytic[j] - num;
            num2 += num * num;
            diff2 += d * d;
            if (fabs(d) > worst) { worst = fabs(d); worst_j = j; worst_a = analytic[j]; worst_n = num; }
            checked++;
        }
        double rel = num2 > 0 ? sqrt(diff2 / num2) : sqrt(diff2);
        if (rel > worst_all) worst_all = rel;
        if (!(rel <= o.tol)) {
            print_error("gradcheck: input %d: relative L2 %.3g > %.3g over %zu elements; worst element %zu: "
                        "analytic %.6g numeric %.6g\n", i, rel, o.tol, checked, worst_j, worst_a, worst_n);
            free(analytic);
            free(G);
            ctx_free(&c);
            fail();
        }
        free(analytic);
    }
    free(G);
    ctx_free(&c);
    return worst_all;
}

void test_unet_config_parity(UNetConfig *c, const int *attn, int n_attn, int num_res_blocks, const int *mult,
                             int n_mult, int num_heads) {
    unet_config_defaults(c);
    c->image_size = 8;
    c->in_channels = 4;
    c->out_channels = 4;
    c->model_channels = 32;
    memcpy(c->attention_resolutions, attn, (size_t)n_attn * sizeof *attn);
    c->n_attention_resolutions = n_attn;
    c->num_res_blocks = num_res_blocks;
    memcpy(c->channel_mult, mult, (size_t)n_mult * sizeof *mult);
    c->n_channel_mult = n_mult;
    c->num_heads = num_heads;
}

void test_unet_config_cin(UNetConfig *c) {
    test_unet_config_parity(c, (const int[]){1, 2}, 2, 2, (const int[]){1, 2}, 2, 1);
    c->use_spatial_transformer = 1;
    c->transformer_depth = 1;
    c->context_dim = 32;
}

const char *test_cwd_path(const char *rel) {
    static char buf[8192];
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) cwd[0] = '\0';
    snprintf(buf, sizeof buf, "%s/%s", cwd, rel);
    return buf;
}

char *test_slurp(const char *path) {
    unsigned char *buf;
    size_t n;
    Err e = {0};
    if (file_read_all(path, &buf, &n, &e)) return NULL;
    char *s = realloc(buf, n + 1);
    if (!s) {
        free(buf);
        return NULL;
    }
    s[n] = '\0';
    return s;
}

char *test_slurp_in(const char *dir, const char *name) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return test_slurp(p);
}

void test_write_file(const char *path, const char *fmt, ...) {
    FILE *f = fopen(path, "w");
    if (!f) fail_msg("cannot write %s", path);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    if (fclose(f)) fail_msg("cannot write %s", path);
}

int test_exists_in(const char *dir, const char *name) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

int test_run_cli(const char *dir, const char *args) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' %s >'%s/stdout.txt' 2>'%s/stderr.txt'", EFFDM_BIN, args, dir, dir);
    return test_shell_status(cmd);
}

int test_shell_status(const char *cmd) {
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void test_remove_paths(char *const *paths, int n) {
    char cmd[4096] = "rm -rf";
    size_t len = strlen(cmd);
    for (int i = 0; i < n && len < sizeof cmd; i++)
        len += (size_t)snprintf(cmd + len, sizeof cmd - len, " '%s'", paths[i]);
    assert_true(len < sizeof cmd);
    assert_int_equal(test_shell_status(cmd), 0);
    for (int i = 0; i < n; i++) free(paths[i]);
}

int test_calibrate_teacher(const char *cfg, const char *body, const char *run_dir, const char *opts) {
    const char *teacher = TEST_DATA_DIR "/../../models/zoo/fmnist-ldm";
    test_write_file(cfg, "model: {ldm_config: %s/config.yaml, ckpt: %s/model.ckpt}\n%srun: {out: %s}\n", teacher,
                    teacher, body, run_dir);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s calibrate --config %s %s", EFFDM_BIN, cfg, opts);
    return test_shell_status(cmd);
}
