/* cmd_finetune.c: effdm finetune: EfficientDM fine-tuning (QALoRA + TALSQ distillation)
   of a run directory, resumable. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/ops/gemm_util.h"
#include "autograd/profile.h"
#include "cli/cli.h"
#include "cli/commands.h"
#include "cli/finetune_dry_run.h"
#include "plot/plot.h"
#include "run/run_calibrate.h"
#include "run/run_dir.h"
#include "run/run_plot.h"
#include "run/run_train.h"
#include "util/dist.h"
#include "util/threads.h"
#include "util/clock.h"

static const char *const usage[] = {
    "usage: effdm finetune --config RUN.yaml [--set KEY=VALUE ...] [--threads N] [--dry-run]",
    "       effdm finetune --resume RUN_DIR [--config RUN.yaml] [--set KEY=VALUE ...] [--threads N]",
    "       effdm finetune --keys",
    "",
    "Fine-tunes the quantized student of a run directory (the config's run.out) by distilling",
    "the FP teacher along its own DDIM trajectories (EfficientDM: QALoRA + TALSQ), one AdamW",
    "step per trajectory step. Without a calibrated state in the run directory, the",
    "calibration (effdm calibrate) runs first.",
    "",
    "  --config RUN.yaml  the run config (e.g. configs/fmnist-ldm-w4a4.yaml; every key: --keys)",
    "  --keys             print every run-config key, its default and its meaning (Markdown, the",
    "                     tables of docs/USER_GUIDE.md \"The run config\") and exit",
    "  --resume RUN_DIR   continue the run in RUN_DIR exactly where its last checkpoint stopped;",
    "                     with --config, that config replaces the run's (it must agree on every",
    "                     key resuming needs: the first disagreeing key is named)",
    "  --set KEY=VALUE    set one run-config key after the file, as if it were the file's last",
    "                     line (repeatable; a later one wins): --set train.epochs=4",
    "                     --set run.out=/tmp/x. VALUE is read like the YAML file's values (lists",
    "                     in flow form: --set 'quant.fp_name_contains=[skip, op]'); an unknown",
    "                     key or a bad value is an error (exit 2). The run's config.yaml records",
    "                     the result. With --resume and no --config the assignments apply to the",
    "                     run's own config.yaml: keys resuming needs (marked * in the user guide)",
    "                     must keep their value, others (train.checkpoint_every, ...) may change",
    "  --threads N        threads (default: run.threads, else $EFFDM_THREADS, else all cores, shared",
    "                     among the MPI ranks on this machine); any count resumes bit-identically",
    "  --dry-run          print what the run would be (student layers and bits, trainable values,",
    "                     epochs x steps) and an estimate of its time and peak memory from a",
    "                     reduced calibration and a few timed steps in a temporary folder;",
    "                     nothing is written to run.out",
    "  --profile          at the end, print where the time of the steps went: per op kind",
    "                     (conv2d, linear, attention, group_norm, fake_quant, lora_weight, ...; forward",
    "                     and backward, calls, % of the total) and per UNet block (input_blocks.N,",
    "                     middle_block, output_blocks.N, out, time_embed), teacher and student",
    "                     together (validations and sample grids included); see docs/USER_GUIDE.md",
    "",
    "The run directory: config.yaml, calib.safetensors, state.safetensors (checkpoint every",
    "train.checkpoint_every epochs), best.safetensors (train.select_epoch best_val), log.csv",
    "(epoch, step, loss, lr, seconds, val_error, ...), samples/epoch_NNN.png, curves.png (the",
    "training curves, redrawn at every checkpoint: effdm plot).",
    "SIGINT / SIGTERM: the current step finishes, the run is saved mid-epoch, exit 130 / 143",
    "(during calibration: it stops, nothing is written); a second signal changes nothing (the",
    "save is never cut), a third ends at once (the last checkpoint stays intact).",
    "Several machines: mpirun -np N effdm finetune ... splits the trajectories of every step",
    "among N ranks and sums their gradients in a fixed order: the run directory (on a shared",
    "file system; rank 0 writes it) is bit-identical to one process's, and --resume works with",
    "any rank count (docs/USER_GUIDE.md \"Several machines\").",
    "Exit status: 0 done, 2 bad input, 1 failure (a NaN/Inf loss stops with the epoch and step,",
    "after saving the state before that step), 130 / 143 stopped by a signal.",
    NULL,
};

static volatile sig_atomic_t stop_signal = 0;

// The first signal asks for a stop after the current step (or calibration batch) and a
// save; the second only says so again (`timeout -s INT` signals the process and its group,
// two Ctrl-C come quickly), so a save in progress is never cut; the third ends the process
// at once, the last checkpoint intact (every file is written to a temporary name, then
// renamed).
static volatile sig_atomic_t signals_seen = 0;

static void on_signal(int sig) {
    static const char again[] = "\neffdm finetune: stopping after the current step and saving (a third signal ends "
                                "at once; the last checkpoint stays intact)\n";
    if (!stop_signal) stop_signal = sig;
    if (++signals_seen == 2) {
        ssize_t w = write(2, again, sizeof again - 1);
        (void)w;
    } else if (signals_seen >= 3) {
        signal(sig, SIG_DFL);
        raise(sig);
    }
}

static void install_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

typedef struct {
    Progress bar;
    int64_t first;  // global step before this call
    int tty;
    RcSelect select;  // train.select_epoch (names the best record)
    // the sampled validation of the starting model and of the best epoch, as seen by this call
    SampleCheck start, best_seen;
    int has_start, best_seen_epoch;
    int plot_failed;  // curves.png could not be drawn (said once)
} View;

static void line(View *v, const char *msg) { fprintf(stderr, "%s%s\n", v->tty ? "\r\033[K" : "", msg); }

static void on_step(const TrainerStep *s, void *user) {
    View *v = user;
    char extra[160];
    snprintf(extra, sizeof extra, "epoch %d/%d step %d/%d loss %.4g lr %.3g", s->epoch + 1, s->epochs, s->step + 1,
             s->steps, (double)s->loss, s->lr);
    progress_update(&v->bar, (long)(s->global_step - v->first), extra);
}

// "epoch 12" or "before training" (epoch -1: the starting naive PTQ student).
static const char *epoch_name(int epoch, char *buf, size_t n) {
    if (epoch < 0) snprintf(buf, n, "before training");
    else snprintf(buf, n, "epoch %d", epoch + 1);
    return buf;
}

static void on_val(const TrainerVal *tv, void *user) {
    View *view = user;
    if (isfinite(tv->sampled.mse)) {
        if (tv->epoch == -1) view->start = tv->sampled, view->has_start = 1;
        if (tv->best_epoch == tv->epoch) view->best_seen = tv->sampled, view->best_seen_epoch = tv->epoch;
    }
    char msg[300], a[32], b[32], smp[128] = "";
    if (isfinite(tv->sampled.mse))
        snprintf(smp, sizeof smp, ", sampled: latent mse %.5g, fd %.5g, teacher error x%.4f", tv->sampled.mse,
                 tv->sampled.fd, tv->sampled.real);
    // under best_sampled the best record is the sampled score (2: the starting model's)
    const char *what = isfinite(tv->sampled.mse) && ((View *)user)->select == RC_SELECT_BEST_SAMPLED
                           ? "sampled score" : "val error";
    snprintf(msg, sizeof msg, "%s: val error %.6g%s (best %s %.6g, %s) %.1f s", epoch_name(tv->epoch, a, sizeof a),
             tv->val_error, smp, what, tv->best_val, epoch_name(tv->best_epoch, b, sizeof b), tv->seconds);
    line(user, msg);
}

static void on_note(const char *msg, void *user) { line(user, msg); }

// The run's curves.png, redrawn at every checkpoint (effdm plot; about 30 ms of CPU for a
// 3,200-step log, next to the checkpoint's own writes). Failing to draw does not stop the
// run: it is said once.
static void on_checkpoint(const char *run_dir, void *user) {
    View *v = user;
    Err e = {0};
    if (run_plot(run_dir, NULL, NULL, &e) && !v->plot_failed) {
        char msg[600];
        snprintf(msg, sizeof msg, "effdm finetune: note: %s not redrawn: %s", RUN_PLOT_FILE, e.msg);
        line(v, msg);
        v->plot_failed = 1;
    }
}

static int fail(const Err *e) { return cli_fail("finetune", e); }

// A point where MPI ranks agree (every rank calls it, failed or not): the lowest failing
// rank prints its message, once, and every rank returns the exit status (0: go on). One
// process: prints its own error.
static int agree(int code, const Err *e) {
    int who, c = dist_first_failure(code, &who);
    if (!c) return 0;
    if (who == dist_rank()) {
        if (dist_size() > 1) fprintf(stderr, "effdm finetune: rank %d: %s\n", who, e->msg[0] ? e->msg : err_name(c));
        else fail(e);
    }
    return err_exit_status(c);
}

int cmd_finetune(int argc, char **argv) {
    Err e = {0};
    const char *config = NULL, *resume = NULL;
    int threads = -1, help = 0, n_pos = 0, profile = 0, dry_run = 0, keys = 0;
    CliStrs sets = {0};
    const char *pos[1];
    CliOpt opts[] = {{"--config", OPT_STR, &config, 0}, {"--resume", OPT_STR, &resume, 0},
                     {"--threads", OPT_INT, &threads, 0}, {"--profile", OPT_FLAG, &profile, 0},
                     {"--set", OPT_STRS, &sets, 0}, {"--dry-run", OPT_FLAG, &dry_run, 0},
                     {"--keys", OPT_FLAG, &keys, 0}};
    const double t_start = clock_seconds();
    const int rank = dist_rank(), world = dist_size(), talk = rank == 0;  // rank 0 speaks for the job
    int x;
    cli_parse(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), pos, &n_pos, 1, &help, &e);
    if ((x = agree(e.code, &e))) return x;
    if (help) return talk ? cli_help(usage) : 0;
    if (keys) {
        if (talk) run_config_keys_markdown(stdout);
        return 0;
    }
    if (n_pos) err_set(&e, ERR_ARG, "unexpected argument '%s' (see effdm finetune --help)", pos[0]);
    else if (!config && !resume)
        err_set(&e, ERR_ARG, "expected --config RUN.yaml or --resume RUN_DIR (see effdm finetune --help)");
    if ((x = agree(e.code, &e))) return x;
    RunConfig given, rc;
    const RunConfig *gp = NULL;
    char run_cfg[4096];
    const char *base = config;
    if (!config && (sets.n || dry_run)) {  // --resume DIR --set/--dry-run: over the run's own config
        snprintf(run_cfg, sizeof run_cfg, "%s/config.yaml", resume);
        if (access(run_cfg, F_OK) == 0) base = run_cfg;  // else run_dir_resolve names what is missing
    }
    if (base && !run_config_load_set(base, sets.v, sets.n, &given, &e)) gp = &given;
    if ((x = agree(e.code, &e))) return x;
    if (dry_run) {  // what the run would be and cost; run.out is not touched
        if (world > 1) err_set(&e, ERR_ARG, "--dry-run: run it without mpirun (one process)");
        else if (!gp) err_set(&e, ERR_ARG, "--dry-run needs --config RUN.yaml (or --resume with the run's config.yaml)");
        else if (!cli_threads(opts[2].seen ? threads : given.run.threads > 0 ? given.run.threads : -1, &e))
            finetune_dry_run(&given, &e);
        return e.code ? fail(&e) : 0;
    }
    RunDirStatus st;
    run_dir_resolve(resume, gp, &rc, &st, &e);
    if (!e.code) cli_threads(opts[2].seen ? threads : rc.run.threads > 0 ? rc.run.threads : -1, &e);
    if ((x = agree(e.code, &e))) return x;
    if (st == RUN_DIR_EMPTY) {
        // no calibrated student yet: effdm calibrate first, into the same run directory (MPI:
        // the ranks share the teacher trajectories, rank 0 writes)
        if (talk) fprintf(stderr, "effdm finetune: %s has no calibrated state: calibrating first\n", rc.run.out);
        CliCalibBar cs = {0};
        install_handlers();
        CalibOpts co = {0, talk ? progress_calib : NULL, &cs, &stop_signal};
        CalibSummary cal;
        run_calibrate(&rc, &co, &cal, &e);
        if (e.code == ERR_INTERRUPTED) {
            fprintf(stderr, "%seffdm finetune: %s: nothing was written (a calibration is redone whole: the next "
                    "effdm finetune starts it again)\n", cs.bar.is_tty ? "\n" : "", e.msg);
            return 128 + (int)stop_signal;
        }
        if ((x = agree(e.code, &e))) return x;
        if (talk && cal.warning[0]) fprintf(stderr, "effdm finetune: note: %s\n", cal.warning);
        if (talk)
            fprintf(stderr, "effdm finetune: calibrated in %.1f s (%d UNet inputs recorded)\n", cal.sec_total,
                    cal.n_recorded);
    }

    Trainer *tr = NULL;
    run_trainer_open(&tr, &rc, rc.run.out, &e);
    if ((x = agree(e.code, &e))) {
        trainer_free(tr);
        return x;
    }
    int epoch, step;
    trainer_position(tr, &epoch, &step);
    View v = {.tty = isatty(2), .select = rc.train.select_epoch, .best_seen_epoch = -2};
    int S = trainer_steps_per_epoch(tr);
    int64_t total = (int64_t)rc.train.epochs * S;
    v.first = (int64_t)epoch * S + step;
    char ranks[64] = "";
    if (world > 1) snprintf(ranks, sizeof ranks, " on each of %d MPI ranks", world);
    if (!talk)
        ;
    else if (epoch >= rc.train.epochs)
        fprintf(stderr, "effdm finetune: %s: the run is complete (%d epochs)\n", rc.run.out, rc.train.epochs);
    else
        fprintf(stderr, "effdm finetune: %s: %s at epoch %d/%d, step %d/%d (%d thread%s%s)\n", rc.run.out,
                trainer_resumed(tr) ? "resuming" : "starting", epoch + 1, rc.train.epochs, step, S, threads_get(),
                threads_get() == 1 ? "" : "s", ranks);
    if (talk && trainer_open_note(tr)) fprintf(stderr, "effdm finetune: note: %s\n", trainer_open_note(tr));
    int saved_ranks = trainer_saved_ranks(tr);
    if (talk && saved_ranks > 0 && saved_ranks != world)
        fprintf(stderr, "effdm finetune: note: the run was computed on %d MPI rank%s, it continues on %d: the result "
                "is the same (the trajectories of a step are split among the ranks, their gradients summed in a "
                "fixed order)\n", saved_ranks, saved_ranks == 1 ? "" : "s", world);
    const char *saved_gemm = trainer_saved_fp_gemm(tr), *gemm = gemm_kernel_name(gemm_kernel_get());
    if (talk && saved_gemm && strcmp(saved_gemm, gemm) && epoch < rc.train.epochs)
        fprintf(stderr, "effdm finetune: note: the run was computed with the %s FP32 GEMM kernel, it continues with "
                "%s: correct, but not bit-identical to an uninterrupted run (EFFDM_SGEMM=%s keeps the bits)\n",
                saved_gemm, gemm, saved_gemm);
    if (talk) progress_start(&v.bar, "finetune", (long)(total - v.first));
    install_handlers();
    TrainerHooks h = {.on_step = on_step, .on_val = on_val, .on_note = on_note, .on_checkpoint = on_checkpoint,
                      .user = &v, .stop = &stop_signal};
    if (!talk) h = (TrainerHooks){.stop = &stop_signal};
    TrainerSummary s;
    Profile *prof = profile ? malloc(sizeof *prof) : NULL;
    if (prof) {
        prof_init(prof);
        trainer_set_profile(tr, prof, prof);
    }
    double t0 = clock_seconds();
    int code = trainer_run(tr, &h, &s, &e);
    plot_release();  // nothing is drawn after this
    double wall = clock_seconds() - t0;
    int shared = trainer_failure_shared(tr) || code == ERR_INTERRUPTED;
    trainer_free(tr);
    if (code) free(prof);
    if (code == ERR_INTERRUPTED) {  // every rank stopped at the same step (trainer.c)
        if (talk) {
            line(&v, "");
            fprintf(stderr, "effdm finetune: %s\n", e.msg);
        }
        return 128 + (stop_signal ? (int)stop_signal : SIGINT);
    }
    if (code) {
        if (talk) line(&v, "");
        if (world == 1) return fail(&e);
        if (talk || !shared) fprintf(stderr, "effdm finetune: rank %d: %s\n", rank, e.msg);
        // only this rank saw it: the others may wait in an exchange, end the job
        if (!shared) dist_abort(err_exit_status(code));
        return err_exit_status(code);
    }
    if (!talk) {
        free(prof);
        return 0;
    }
    progress_finish(&v.bar, NULL);
    printf("run          %s\n", rc.run.out);
    printf("epochs       %d of %d (%d steps each)\n", s.epoch, s.epochs, s.steps);
    printf("steps run    %lld in %.1f s of optimizer steps (%.3f s/step)\n", (long long)s.steps_run, s.seconds,
           s.steps_run ? s.seconds / (double)s.steps_run : 0.0);
    printf("wall         %.1f s (this command: loading, calibration, validations, sample grids and checkpoints "
           "included)\n", clock_seconds() - t_start);
    printf("whole run    %.1f s of optimizer steps over every call so far\n", s.total_seconds);
    if (!isnan(s.final_loss)) printf("final loss   %.6g\n", (double)s.final_loss);
    char be[32];
    if (s.has_best)
        printf("best %s %.6g (%s)\n", rc.train.select_epoch == RC_SELECT_BEST_SAMPLED ? "score" : "val  ", s.best_val,
               epoch_name(s.best_epoch, be, sizeof be));
    // the teacher's denoising error on the samples rose with fine-tuning: on the test teachers
    // (docs/RESULTS.md) that went with a loss of judge precision and, on one, of test-set FID
    if (v.has_start && s.has_best && v.best_seen_epoch == s.best_epoch && s.best_epoch >= 0 &&
        fabs(v.best_seen.real - 1.0) > fabs(v.start.real - 1.0) + SAMPLED_REAL_TOL)
        fprintf(stderr, "effdm finetune: warning: the chosen epoch's samples are further from the teacher's own in "
                "how well the teacher denoises them than the starting model's (naive PTQ): x%.4f of its error on "
                "its own samples vs x%.4f; on test teachers this went with lower precision and, on one, a worse "
                "test-set FID than naive PTQ (train.select_epoch best_sampled keeps the starting model then)\n",
                v.best_seen.real, v.start.real);
    if (s.has_best && s.best_epoch == -1 && s.epoch == s.epochs && s.epochs > 0 &&
        rc.train.select_epoch != RC_SELECT_LAST)
        fprintf(stderr, "effdm finetune: warning: no fine-tuned epoch beat the starting model (naive PTQ) on the %s; "
                "the run's best, which effdm export takes by default, is that starting model\n",
                rc.train.select_epoch == RC_SELECT_BEST_SAMPLED ? "sampled validation" : "validation error");
    if (prof) {
        code = cli_print_profile(prof, wall, &e);
        free(prof);
        if (code) return fail(&e);
    }
    return 0;
}
