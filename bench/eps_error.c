/* bench/eps_error.c: where a quantized student's ε goes wrong, step by step, on the teacher's
   own sampling trajectory (issue 19's diagnosis tool).

       build/bench/eps_error --ldm-config C.yaml --ckpt M.ckpt [--n 32] [--steps 20]
                             [--scale 3] [--seed 7] [--threads N] EXPORT.safetensors...

   The teacher samples N class-balanced images (DDIM, eta 0, guidance --scale). At each step
   every export is evaluated on the teacher's x_t (its TALSQ entry for t, no guidance gain)
   and its error is split the way guidance combines it, ε = ε_u + s (ε_c - ε_u):
     eu, ec   mean squared error of the unconditional / conditional ε
     corr     correlation of those two errors (1: they cancel in ε_c - ε_u)
     guided   mean squared error of the guided ε (what the sampler uses)
     k        <ε_s, ε_t> / <ε_t, ε_t> of the guided ε (1: no systematic shrink or growth)
     dir      mean squared error of ε_c - ε_u, next to the teacher's own power of it (sig)
   Per-step errors say whether a student is closer to its teacher where the loss looks; they
   do not see what sampling does with the errors (issue 19: a student better than naive PTQ
   on every one of these at every step, and worse in sample distribution). Unconditional
   teachers: eu only. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/ldm.h"
#include "qalora/export.h"
#include "sample/ddim.h"
#include "util/rng.h"
#include "util/threads.h"

#define MAX_EXPORTS 8

// eps of m at x (N images) for labels uncond (into eu) and y (into ec; NULL: unconditional).
static int eval_both(Ctx *c, Ldm *m, const float *x, int N, const int shape[4], int t, const int *y, float *eu,
                     float *ec, Err *e) {
    int cond = ldm_is_class_conditional(m), B = cond ? 2 * N : N;
    size_t n = (size_t)N * shape[1] * shape[2] * shape[3];
    size_t mark = arena_mark(&c->arena);
    float *ts = ctx_alloc(c, (size_t)B * sizeof(float));
    int *yin = cond ? ctx_alloc(c, (size_t)B * sizeof(int)) : NULL;
    float *xx = ctx_alloc(c, (size_t)B / N * n * sizeof(float));
    if (!ts || !xx || (cond && !yin)) return err_set(e, ERR_NOMEM, "eps_error: out of memory");
    for (int i = 0; i < B; i++) ts[i] = (float)t;
    for (int i = 0; cond && i < N; i++) {
        yin[i] = ldm_uncond_label(m);
        yin[N + i] = y[i];
    }
    memcpy(xx, x, n * sizeof(float));
    if (cond) memcpy(xx + n, x, n * sizeof(float));
    const int sh[4] = {B, shape[1], shape[2], shape[3]};
    Tensor *o = ldm_apply_model(c, m, tensor_from(c, xx, 4, sh), ts, yin);
    if (!o) return err_set(e, c->err.code ? c->err.code : ERR_INTERNAL, "eps_error: forward failed: %s", c->err.msg);
    memcpy(eu, o->data, n * sizeof(float));
    if (cond) memcpy(ec, o->data + n, n * sizeof(float));
    arena_release(&c->arena, mark);
    return 0;
}

static int usage(const char *msg) {
    if (msg) fprintf(stderr, "eps_error: %s\n", msg);
    fprintf(stderr, "usage: eps_error --ldm-config C.yaml --ckpt M.ckpt [--n N] [--steps S] [--scale G] "
                    "[--seed S] [--threads T] EXPORT.safetensors...\n");
    return 2;
}

int main(int argc, char **argv) {
    threads_reexec_spinning(argv);
    const char *cfg = NULL, *ckpt = NULL, *paths[MAX_EXPORTS];
    int N = 32, steps = 20, threads = 0, n_exp = 0;
    float S = 3.0f;
    unsigned long seed = 7;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--ldm-config") && i + 1 < argc) cfg = argv[++i];
        else if (!strcmp(argv[i], "--ckpt") && i + 1 < argc) ckpt = argv[++i];
        else if (!strcmp(argv[i], "--n") && i + 1 < argc) N = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--scale") && i + 1 < argc) S = strtof(argv[++i], NULL);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (argv[i][0] == '-') return usage(argv[i]);
        else if (n_exp < MAX_EXPORTS) paths[n_exp++] = argv[i];
        else return usage("at most 8 exports");
    }
    if (!cfg || !ckpt || !n_exp) return usage("--ldm-config, --ckpt and one export at least are required");
    if (N < 1 || N > 4096 || steps < 1 || !(S >= 0 && isfinite(S))) return usage("bad --n, --steps or --scale");
    threads_set(threads);
    Err e = {0};
    Ldm *T = NULL;
    ExportModel *em[MAX_EXPORTS] = {0};
    if (ldm_load(&T, cfg, ckpt, NULL, &e)) return fprintf(stderr, "eps_error: %s\n", e.msg), 2;
    for (int k = 0; k < n_exp; k++)
        if (export_load(&em[k], paths[k], &e)) return fprintf(stderr, "eps_error: %s\n", e.msg), 2;
    Ctx c = {0};
    if (ctx_init(&c, (size_t)16 << 30, &e)) return fprintf(stderr, "eps_error: %s\n", e.msg), 1;
    ctx_set_grad(&c, 0);
    int C, H, W, cond = ldm_is_class_conditional(T);
    ldm_latent_shape(T, &C, &H, &W);
    const int shape[4] = {N, C, H, W};
    const size_t per = (size_t)C * H * W, n = per * (size_t)N;
    float *buf = malloc(6 * n * sizeof(float));
    int *y = malloc((size_t)N * sizeof(int));
    if (!buf || !y) return fprintf(stderr, "eps_error: out of memory\n"), 1;
    float *x = buf, *tu = buf + n, *tc = buf + 2 * n, *su = buf + 3 * n, *sc = buf + 4 * n, *g = buf + 5 * n;
    for (int i = 0; cond && i < N; i++) {
        int k = i % (ldm_n_classes(T) - 1);
        y[i] = k >= ldm_uncond_label(T) ? k + 1 : k;
    }
    for (int i = 0; i < N; i++) {
        Rng r;
        rng_seed(&r, seed, (uint64_t)i);
        rng_normal_fill(&r, x + (size_t)i * per, per);
    }
    DdimSchedule s;
    if (ddim_schedule_init(&s, T->alphas_cumprod, T->T, steps, 0.0, &e))
        return fprintf(stderr, "eps_error: %s\n", e.msg), 2;
    printf("# %d images, DDIM %d steps, guidance %g; exports:", N, s.n, (double)S);
    for (int k = 0; k < n_exp; k++) printf(" [%d] %s", k, paths[k]);
    printf("\n%5s %7s  %3s %8s %8s %5s %8s %6s %8s %8s\n", "t", "|eps|2", "exp", "eu", "ec", "corr", "guided", "k",
           "dir", "sig");
    for (int i = 0; i < s.n; i++) {
        int index = s.n - i - 1, t = s.timesteps[index];
        if (eval_both(&c, T, x, N, shape, t, y, tu, tc, &e)) return fprintf(stderr, "%s\n", e.msg), 1;
        double gg = 0;
        for (size_t j = 0; j < n; j++) {
            g[j] = cond ? tu[j] + S * (tc[j] - tu[j]) : tu[j];
            gg += (double)g[j] * g[j];
        }
        for (int k = 0; k < n_exp; k++) {
            export_set_timestep(em[k], t);
            em[k]->ldm->guidance_gain = 0;
            if (eval_both(&c, em[k]->ldm, x, N, shape, t, y, su, sc, &e)) return fprintf(stderr, "%s\n", e.msg), 1;
            double du2 = 0, dc2 = 0, dudc = 0, dg2 = 0, sg = 0, dd2 = 0, td2 = 0;
            for (size_t j = 0; j < n; j++) {
                double du = (double)su[j] - tu[j], dc = cond ? (double)sc[j] - tc[j] : 0;
                double gs = cond ? su[j] + S * ((double)sc[j] - su[j]) : su[j];
                double td = cond ? (double)tc[j] - tu[j] : 0;
                du2 += du * du, dc2 += dc * dc, dudc += du * dc;
                dg2 += (gs - g[j]) * (gs - g[j]), sg += gs * g[j];
                dd2 += (dc - du) * (dc - du), td2 += td * td;
            }
            printf("%5d %7.4f  [%d] %8.5f %8.5f %5.2f %8.5f %6.3f %8.5f %8.5f\n", t, gg / (double)n, k,
                   du2 / (double)n, dc2 / (double)n, cond ? dudc / sqrt(du2 * dc2 + 1e-30) : 0.0, dg2 / (double)n,
                   sg / gg, dd2 / (double)n, td2 / (double)n);
        }
        ddim_update(&s, index, x, g, NULL, x, NULL, n);
    }
    ddim_schedule_free(&s);
    for (int k = 0; k < n_exp; k++) export_free(em[k]);
    ldm_free(T);
    ctx_free(&c);
    free(buf);
    free(y);
    return 0;
}
