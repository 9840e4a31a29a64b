/* bench/finetune.c: seconds per EfficientDM distillation step - the trainer's own step
   (train/distill_step.c through trainer_bench_steps: teacher forward with guidance, student
   forward + backward, AdamW, DDIM update) - with its split, GEMM throughput and memory.

       build/bench/finetune [--model fmnist|cin256] [--batch B] [--steps N] [--warmup N]
                            [--threads N] [--recipe reference|effdm] [--grad-slots S] [--profile]
                            [--recompute auto|on|off] [--ldm-config cin256-v2.yaml]

   fmnist: the shipped teacher (models/zoo/fmnist-ldm, found as bench/sample finds it), W4A4,
   batch 2 then 8 (or --batch). cin256: the CompVis LDM-4 ImageNet UNet (cin256-v2.yaml, by
   default the copy in tests/data/compvis_configs) with random weights (ldm_new_random: no
   checkpoint is needed for a timing; the first stage is not part of a distillation step),
   W4A4, batch 2, 64x64 latents: a few steps only (--steps 2 by default). --recompute sets
   run.recompute_weights (auto: on for cin256, off for fmnist).
   Recipe "reference" by default (100 DDIM steps, eta 1, guidance 1.5, loss on the guided ε),
   as the PyTorch peer (scripts/bench_peer.sh) runs it. Each case calibrates a small run
   directory in /tmp first (calib.steps 20, 4 trajectories for fmnist; 2 steps, 1 trajectory
   for cin256: the activation ranges only need to be finite), then runs --warmup steps and
   times --steps steps; it prints the median (and min/max) seconds per step and the median
   split.
   GEMM throughput: FLOPs of the student's conv2d / linear / matmul / attention / LoRA ops
   (forward, and twice that for the backward nodes that ran; autograd/profile.h) over the
   time those ops took, against one 1024^3 cblas_sgemm timed right after, same threads.
   Memory: peak RSS (VmHWM, reset after setup through /proc/self/clear_refs) against teacher FP weights + the student's QALoRA state +
   AdamW (gradient block and moments) + the step's activations (the arena in use when the
   backward starts: tape, saved values, the teacher's output) - the trainer's own counts.
   It restarts itself once with effdm's OpenMP spin setting (util/threads.h). */
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/profile.h"
#include "autograd/ops/gemm_util.h"
#include "bench/benchutil.h"
#include "models/ldm.h"
#include "run/run_calibrate.h"
#include "run/run_train.h"
#include "util/threads.h"

#define MAX_STEPS 256

typedef struct {
    double sec[MAX_STEPS], split[4][MAX_STEPS];
    int n, warmup;
} StepLog;

static void on_step(const TrainerStep *s, void *user) {
    StepLog *l = user;
    if (l->warmup > 0) {
        l->warmup--;
        return;
    }
    if (l->n >= MAX_STEPS) return;
    l->sec[l->n] = s->seconds;
    for (int k = 0; k < 4; k++) l->split[k][l->n] = s->split[k];
    l->n++;
}


static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static double mib(size_t bytes) { return (double)bytes / (1 << 20); }

// GEMM FLOPs and seconds of a profile (conv2d, linear, matmul, attention, LoRA weight).
static void gemm_totals(const Profile *p, double *flops, double *sec) {
    const int kinds[] = {OP_CONV2D, OP_LINEAR, OP_MATMUL, OP_ATTENTION, OP_LORA_WEIGHT};
    *flops = *sec = 0;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        for (int d = 0; d < 2; d++) {
            *flops += p->flops[d][kinds[i]];
            *sec += p->sec[d][kinds[i]];
        }
}

typedef struct {
    int cin256;
    const char *cfg_path, *ckpt_path;
    int batch, steps, warmup, profile;
    RcRecipe recipe;
    int grad_slots;  // train.grad_slots (0: one per trajectory, the default)
    RcRecompute recompute;
} Case;

static int run_case(const Case *k) {
    Err e = {0};
    char dir[] = "/tmp/effdm_bench_ft_XXXXXX";
    if (!mkdtemp(dir)) {
        perror("bench finetune: mkdtemp");
        return 1;
    }
    RunConfig rc;
    run_config_defaults(&rc, k->recipe);
    snprintf(rc.model.ldm_config, sizeof rc.model.ldm_config, "%s", k->cfg_path);
    snprintf(rc.model.ckpt, sizeof rc.model.ckpt, "%s", k->cin256 ? "(random init)" : k->ckpt_path);
    rc.quant.weight_bits = rc.quant.act_bits = 4;
    rc.calib.steps = k->cin256 ? 2 : 20;
    rc.calib.n_samples = rc.calib.batch = k->cin256 ? 1 : 4;
    rc.calib.n_inputs = k->cin256 ? 1 : 8;
    rc.train.val_inputs = 1;
    rc.train.batch = k->batch;
    rc.train.grad_slots = k->grad_slots;
    rc.run.recompute_weights = k->recompute;
    rc.train.sample_every = 0;
    rc.run.arena_mb = k->cin256 ? 65536 : 4096;  // address space only (MAP_NORESERVE)
    snprintf(rc.run.out, sizeof rc.run.out, "%s/run", dir);
    int code = 1;
    Ldm *m = NULL;
    Trainer *tr = NULL;
    if (run_config_validate(&rc, &e)) goto fail;
    double t0 = bench_now();
    if (k->cin256) {
        LdmConfig *lc = malloc(sizeof *lc);
        if (!lc || ldm_config_load(lc, k->cfg_path, &e) || ldm_new_random(&m, lc, 1, &e)) {
            free(lc);
            goto fail;
        }
        free(lc);
        if (run_calibrate_with(&rc, m, NULL, NULL, &e)) goto fail;
        Ldm *owned = m;
        m = NULL;
        if (run_trainer_open_with(&tr, &rc, owned, rc.run.out, &e)) goto fail;
    } else {
        if (run_calibrate(&rc, NULL, NULL, &e) || run_trainer_open(&tr, &rc, rc.run.out, &e)) goto fail;
    }
    double setup = bench_now() - t0;
    int C, H, W;
    ldm_latent_shape(trainer_ldm(tr), &C, &H, &W);
    printf("\n%s  W4A4  batch %d (UNet batch %d with guidance) in %d gradient slot%s  latents %dx%dx%d  recipe %s  "
           "UNet %.1f M params  setup (calibration + open) %.1f s\n",
           k->cin256 ? "cin256-v2 (random init)" : "fmnist-ldm", k->batch, 2 * k->batch,
           k->grad_slots ? k->grad_slots : k->batch, (k->grad_slots ? k->grad_slots : k->batch) == 1 ? "" : "s", C, H, W,
           k->recipe == RC_RECIPE_REFERENCE ? "reference" : "effdm",
           (double)unet_param_count(trainer_ldm(tr)->unet) / 1e6, setup);
    fflush(stdout);

    // the peak from here on: the steps, not the calibration before them
    int reset = bench_reset_peak_rss() == 0;
    double rss0 = bench_rss_mib();
    StepLog log = {.warmup = k->warmup};
    TrainerHooks h = {.on_step = on_step, .user = &log};
    if (trainer_bench_steps(tr, k->warmup, &h, &e)) goto fail;
    Profile *pt = malloc(sizeof *pt), *ps = malloc(sizeof *ps);
    if (!pt || !ps) {
        free(pt);
        free(ps);
        err_set(&e, ERR_NOMEM, "out of memory");
        goto fail;
    }
    prof_init(pt);
    prof_init(ps);
    trainer_set_profile(tr, pt, ps);
    double t1 = bench_now();
    if (trainer_bench_steps(tr, k->steps, &h, &e)) {
        free(pt);
        free(ps);
        goto fail;
    }
    double wall = bench_now() - t1;
    trainer_set_profile(tr, NULL, NULL);
    int n = log.n;
    double lo = log.sec[0], hi = log.sec[0];
    for (int i = 1; i < n; i++) lo = log.sec[i] < lo ? log.sec[i] : lo, hi = log.sec[i] > hi ? log.sec[i] : hi;
    printf("  s/step     median %.4f  (min %.4f  max %.4f  over %d steps after %d warm-up)\n", bench_median(log.sec, n),
           lo, hi, n, k->warmup);
    double sp[4];
    for (int i = 0; i < 4; i++) sp[i] = bench_median(log.split[i], n);
    double ssum = sp[0] + sp[1] + sp[2] + sp[3];
    printf("  split      teacher fwd %.4f (%.0f%%)  student fwd %.4f (%.0f%%)  backward %.4f (%.0f%%)  "
           "optimizer %.4f (%.0f%%)\n", sp[0], 100 * sp[0] / ssum, sp[1], 100 * sp[1] / ssum, sp[2],
           100 * sp[2] / ssum, sp[3], 100 * sp[3] / ssum);

    double sf, ss, tf, ts;
    gemm_totals(ps, &sf, &ss);
    gemm_totals(pt, &tf, &ts);
    double sg = bench_sgemm_seconds(1024, 1024, 1024, 1.0), peak = 2.0 * 1024 * 1024 * 1024 / sg;
    printf("  GEMM       student %.1f GFLOP/s (%.1f GFLOP in %.3f s/step of GEMM ops, %.0f%% of the student's "
           "op time)  teacher %.1f GFLOP/s  sgemm 1024^3 %.1f GFLOP/s  ratio student/sgemm %.2f\n",
           ss > 0 ? 1e-9 * sf / ss : 0, 1e-9 * sf / n, ss / n, 100 * ss / prof_total(ps), ts > 0 ? 1e-9 * tf / ts : 0,
           1e-9 * peak, ss > 0 ? (sf / ss) / peak : 0);

    TrainerMemory mem;
    trainer_memory(tr, &mem);
    double weights = mib(mem.teacher + mem.student + mem.optimizer + mem.step_weights), rss = bench_peak_rss_mib();
    double step_peak = mib(mem.arena_peak) + mib(mem.grad_peak);
    printf("  memory     peak RSS%s %.1f MiB  weights %.1f MiB (teacher FP %.1f + student QALoRA %.1f + AdamW %.1f + the "
           "step's weights %.1f)  "
           "activations %.1f MiB (arena peak %.1f + gradients of intermediates alive at once %.1f, weights %s)  "
           "RSS / (weights + activations) %.2f\n",
           reset ? " of the steps" : " (whole process)", rss, weights,
           mib(mem.teacher), mib(mem.student), mib(mem.optimizer), mib(mem.step_weights), mib(mem.activations),
           mib(mem.arena_peak),
           mib(mem.grad_peak), mem.recompute ? "rebuilt in backward" : "once per step", rss / (weights + mib(mem.activations)));
    printf("             RSS / (weights + arena peak + gradient peak) %.2f (the gradient pool touched %.1f MiB); RSS "
           "before the steps %.1f MiB (weights, libraries, BLAS buffers)\n", rss / (weights + step_peak),
           mib(mem.grad_extent), rss0);
    printf("  teacher    %zu tape nodes after its forward; arena high-water %.1f MiB during it (block outputs "
           "kept for the skips + one block's intermediates), %.1f KiB kept (its output)\n", mem.teacher_nodes,
           mib(mem.teacher_peak), (double)mem.teacher_kept / 1024);
    if (k->profile) {
        char *buf = malloc(1 << 16);
        if (buf) {
            prof_format(pt, 0, buf, 1 << 16);
            printf("  teacher (%d steps) ", n);
            fputs(buf, stdout);
            prof_format(ps, 0, buf, 1 << 16);
            printf("  student (%d steps) ", n);
            fputs(buf, stdout);
            double tt = prof_total(pt), st = prof_total(ps);
            printf("  wall of the %d steps %.3f s: teacher ops %.3f, student ops %.3f, outside ops (AdamW, DDIM "
                   "update, copies) %.3f\n", n, wall, tt, st, wall - tt - st);
            free(buf);
        }
    }
    free(pt);
    free(ps);
    code = 0;
fail:
    if (code) fprintf(stderr, "bench finetune: %s\n", e.msg);
    trainer_free(tr);
    ldm_free(m);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    fflush(stdout);
    return code;
}

static void usage(const char *argv0) {
    fprintf(stderr, "usage: %s [--model fmnist|cin256] [--batch B] [--steps N] [--warmup N] [--threads N] "
            "[--recipe reference|effdm] [--grad-slots S] [--profile] [--recompute auto|on|off] "
            "[--ldm-config cin256-v2.yaml]\n", argv0);
}

int main(int argc, char **argv) {
    threads_reexec_spinning(argv);  // as effdm does (util/threads.h)
    int threads = 0, batch = 0, steps = -1, warmup = -1, profile = 0, cin256 = 0, grad_slots = 0;
    RcRecipe recipe = RC_RECIPE_REFERENCE;
    RcRecompute recompute = RC_RECOMPUTE_AUTO;
    const char *cfg = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--profile")) profile = 1;
        else if (!v) return usage(argv[0]), 2;
        else if (!strcmp(a, "--threads")) threads = atoi(v), i++;
        else if (!strcmp(a, "--batch")) batch = atoi(v), i++;
        else if (!strcmp(a, "--grad-slots")) grad_slots = atoi(v), i++;
        else if (!strcmp(a, "--steps")) steps = atoi(v), i++;
        else if (!strcmp(a, "--warmup")) warmup = atoi(v), i++;
        else if (!strcmp(a, "--ldm-config")) cfg = v, i++;
        else if (!strcmp(a, "--model") && (!strcmp(v, "fmnist") || !strcmp(v, "cin256"))) cin256 = v[0] == 'c', i++;
        else if (!strcmp(a, "--recompute") && (!strcmp(v, "auto") || !strcmp(v, "on") || !strcmp(v, "off")))
            recompute = !strcmp(v, "auto") ? RC_RECOMPUTE_AUTO : !strcmp(v, "on") ? RC_RECOMPUTE_ON : RC_RECOMPUTE_OFF, i++;
        else if (!strcmp(a, "--recipe") && (!strcmp(v, "reference") || !strcmp(v, "effdm")))
            recipe = v[0] == 'r' ? RC_RECIPE_REFERENCE : RC_RECIPE_EFFDM, i++;
        else return usage(argv[0]), 2;
    }
    if (steps < 0) steps = cin256 ? 2 : 10;
    if (warmup < 0) warmup = cin256 ? 1 : 3;
    if (steps < 1 || steps > MAX_STEPS || warmup < 0 || batch < 0 || grad_slots < 0) return usage(argv[0]), 2;
    threads_set(threads);

    char exe_dir[PATH_MAX], tcfg[PATH_MAX], tckpt[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe_dir, sizeof exe_dir - 1);
    exe_dir[len > 0 ? len : 0] = '\0';
    if (strrchr(exe_dir, '/')) *strrchr(exe_dir, '/') = '\0';
    const char *zoo = getenv("EFFDM_ZOO");
    if (cin256) {
        snprintf(tcfg, sizeof tcfg, "%s/../../tests/data/compvis_configs/cin256-v2.yaml", exe_dir);
        tckpt[0] = '\0';
    } else if (zoo && *zoo) {
        snprintf(tcfg, sizeof tcfg, "%s/fmnist-ldm/config.yaml", zoo);
        snprintf(tckpt, sizeof tckpt, "%s/fmnist-ldm/model.ckpt", zoo);
    } else {
        snprintf(tcfg, sizeof tcfg, "%s/../../models/zoo/fmnist-ldm/config.yaml", exe_dir);
        snprintf(tckpt, sizeof tckpt, "%s/../../models/zoo/fmnist-ldm/model.ckpt", exe_dir);
    }
    if (!cfg) cfg = tcfg;
    char model[512];
    FILE *fp = fopen("/proc/cpuinfo", "r");
    snprintf(model, sizeof model, "?");
    if (fp) {
        char line[512];
        while (fgets(line, sizeof line, fp))
            if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
                snprintf(model, sizeof model, "%s", strchr(line, ':') + 2);
                model[strcspn(model, "\n")] = '\0';
                break;
            }
        fclose(fp);
    }
    printf("finetune bench  %s  cores %ld  thr=%d blas=%s gemm=%s simd=%s OMP_WAIT_POLICY=%s GOMP_SPINCOUNT=%s\n",
           model, sysconf(_SC_NPROCESSORS_ONLN), threads_get(), threads_blas_name(), gemm_kernel_name(gemm_kernel_get()), bench_cpu_flags(),
           getenv("OMP_WAIT_POLICY") ? getenv("OMP_WAIT_POLICY") : "(default)",
           getenv("GOMP_SPINCOUNT") ? getenv("GOMP_SPINCOUNT") : "(default)");
    printf("model config %s\n", cfg);
    const int fm_batches[2] = {2, 8};
    int nb = batch ? 1 : (cin256 ? 1 : 2);
    for (int i = 0; i < nb; i++) {
        Case k = {cin256, cfg, tckpt, batch ? batch : (cin256 ? 2 : fm_batches[i]), steps, warmup, profile, recipe,
                  grad_slots, recompute};
        if (run_case(&k)) return 1;
    }
    return 0;
}
