/* finetune_dry_run.c: effdm finetune --dry-run: what a run would be and cost, before hours
   are committed (a cin256 user needs it most). Nothing is written to run.out: a reduced
   calibration (one trajectory batch) and a few timed optimizer steps run in a temporary
   folder, removed at the end. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/commands.h"
#include "cli/finetune_dry_run.h"
#include "run/run_calibrate.h"
#include "run/run_train.h"
#include "util/clock.h"
#include "util/threads.h"

#define DRY_WARMUP 1
#define DRY_STEPS 3

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    double t[DRY_WARMUP + DRY_STEPS];
    int n;
} StepTimes;

static void on_step(const TrainerStep *s, void *user) {
    StepTimes *st = user;
    if (st->n < DRY_WARMUP + DRY_STEPS) st->t[st->n++] = s->seconds;
}

static void human_time(double s, char *buf, size_t n) {
    if (s < 120) snprintf(buf, n, "%.0f s", s);
    else if (s < 7200) snprintf(buf, n, "%.1f min", s / 60);
    else snprintf(buf, n, "%.1f h", s / 3600);
}

int finetune_dry_run(const RunConfig *given, Err *e) {
    RunConfig rc = *given;
    char dir[] = "/tmp/effdm_dry_run_XXXXXX";
    if (!mkdtemp(dir)) return err_set(e, ERR_IO, "--dry-run: cannot create a temporary folder in /tmp");
    snprintf(rc.run.out, sizeof rc.run.out, "%s/run", dir);
    // one calibration batch stands for the whole calibration; no validation or grids
    int batches = (given->calib.n_samples + given->calib.batch - 1) / given->calib.batch;
    rc.calib.n_samples = given->calib.batch < given->calib.n_samples ? given->calib.batch : given->calib.n_samples;
    rc.train.val_every = 0;
    rc.train.val_samples = 0;
    rc.train.select_epoch = RC_SELECT_LAST;
    rc.train.sample_every = 0;
    rc.train.checkpoint_every = 0;
    CalibSummary cal;
    CalibOpts co = {0};
    int code;
    fprintf(stderr, "effdm finetune: --dry-run: calibrating on %d of %d trajectories and timing %d steps in %s "
            "(removed after)\n", rc.calib.n_samples, given->calib.n_samples, DRY_STEPS, dir);
    // the activation fit picks n_inputs of the reduced record, which holds at least one input
    // per trajectory step: cap it there (a timing only)
    int recorded = rc.calib.n_samples * given->calib.steps;
    if (rc.calib.n_inputs > recorded) rc.calib.n_inputs = recorded > 0 ? recorded : 1;
    if ((code = run_calibrate(&rc, &co, &cal, e))) goto done;
    Trainer *tr;
    if ((code = run_trainer_open(&tr, &rc, rc.run.out, e))) goto done;
    StepTimes st = {0};
    TrainerHooks h = {.on_step = on_step, .user = &st};
    code = trainer_bench_steps(tr, DRY_WARMUP + DRY_STEPS, &h, e);
    if (code) {
        trainer_free(tr);
        goto done;
    }
    QModel *q = trainer_qmodel(tr);
    int n_tr, n_sp, n_fp;
    qmodel_counts(q, &n_tr, &n_sp, &n_fp);
    TrainerMemory mem;
    trainer_memory(tr, &mem);
    size_t unet = unet_param_count(trainer_ldm(tr)->unet);
    int S = trainer_steps_per_epoch(tr);
    trainer_free(tr);
    qsort(st.t + DRY_WARMUP, DRY_STEPS, sizeof(double), cmp_double);
    double step_s = st.t[DRY_WARMUP + DRY_STEPS / 2];
    double calib_s = cal.sec_record * batches + cal.sec_calib, steps_s = step_s * (double)given->train.epochs * S;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    char a[32], b[32], c[32];
    human_time(calib_s, a, sizeof a);
    human_time(steps_s, b, sizeof b);
    human_time(calib_s + steps_s, c, sizeof c);
    const RcTrain *T = &given->train;
    printf("run          %s (nothing written: --dry-run)\n", given->run.out);
    printf("model        %s (%s), UNet %.2f M parameters\n", given->model.ckpt, given->model.ldm_config,
           (double)unet / 1e6);
    printf("student      W%dA%d, LoRA rank %d: %d trainable layers, %d special (W%dA%d), %d FP; %.2f M trainable "
           "values (LoRA, step sizes, TALSQ tables)\n", cal.w_bits, cal.a_bits, cal.rank, n_tr, n_sp, cal.special_bits,
           cal.special_bits, n_fp, (double)(mem.optimizer / 3 / sizeof(float)) / 1e6);
    printf("training     recipe %s: %d epochs x %d steps, batch %d in %d gradient slot%s, %d thread%s\n",
           T->recipe == RC_RECIPE_EFFDM ? "effdm" : "reference", T->epochs, S, T->batch,
           T->grad_slots ? T->grad_slots : T->batch, (T->grad_slots ? T->grad_slots : T->batch) == 1 ? "" : "s",
           threads_get(), threads_get() == 1 ? "" : "s");
    printf("step time    %.3f s (median of %d after %d warm-up; %.3f to %.3f)\n", step_s, DRY_STEPS, DRY_WARMUP,
           st.t[DRY_WARMUP], st.t[DRY_WARMUP + DRY_STEPS - 1]);
    printf("estimate     calibration %s (%d trajectory batch%s), %d optimizer steps %s: about %s, validations and "
           "sample grids on top\n", a, batches, batches == 1 ? "" : "es", T->epochs * S, b, c);
    printf("memory       peak RSS %.0f MiB in this trial: teacher %.0f MiB, student %.0f MiB, AdamW %.0f MiB, step "
           "arena peak %.0f MiB + gradients %.0f MiB\n", (double)ru.ru_maxrss / 1024.0, (double)mem.teacher / 1048576.0,
           (double)mem.student / 1048576.0, (double)mem.optimizer / 1048576.0, (double)mem.arena_peak / 1048576.0,
           (double)mem.grad_peak / 1048576.0);
done:;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "effdm finetune: could not remove %s\n", dir);
    return code;
}
