/* test_trainer_fixture.h: tiny fine-tuning runs on the shipped teacher for the trainer and
   resume tests: a run config of a few steps and its calibrated run directory (effdm
   calibrate on 2 short teacher trajectories). */
#ifndef EFFDM_TEST_TRAINER_FIXTURE_H
#define EFFDM_TEST_TRAINER_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "models/ldm.h"
#include "run/run_calibrate.h"
#include "run/run_config.h"
#include "run/run_train.h"

#define FIX_ROOT TEST_DATA_DIR "/../.."

// A small run: 2 epochs of 4 steps, batch 2, validation every epoch on 4 inputs.
static void fix_config(RunConfig *rc, RcRecipe recipe, const char *out) {
    run_config_defaults(rc, recipe);
    snprintf(rc->model.ldm_config, sizeof rc->model.ldm_config, "%s", FIX_ROOT "/models/zoo/fmnist-ldm/config.yaml");
    snprintf(rc->model.ckpt, sizeof rc->model.ckpt, "%s", FIX_ROOT "/models/zoo/fmnist-ldm/model.ckpt");
    rc->train.epochs = 2;
    rc->train.steps = 4;
    rc->train.batch = 2;
    rc->train.val_every = 1;
    rc->train.val_inputs = 4;
    rc->train.val_samples = 0;  // the sampled validation has its own test (test_trainer.c)
    rc->train.checkpoint_every = 1;
    rc->train.sample_every = 0;
    rc->calib.steps = 10;
    rc->calib.n_samples = 2;
    rc->calib.batch = 2;
    rc->calib.n_inputs = 4;
    rc->run.arena_mb = 512;
    snprintf(rc->run.out, sizeof rc->run.out, "%s", out);
}

// Creates rc->run.out as a calibrated run directory (effdm calibrate's run_calibrate).
static int fix_calibrate(const RunConfig *rc, Err *e) {
    CalibOpts o = {0};
    return run_calibrate(rc, &o, NULL, e);
}

// Copies file src to dst (test helper). 0 on success.
static int fix_copy_file(const char *src, const char *dst) {
    FILE *a = fopen(src, "rb");
    if (!a) return -1;
    FILE *b = fopen(dst, "wb");
    if (!b) {
        fclose(a);
        return -1;
    }
    char buf[1 << 16];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, a)) > 0) fwrite(buf, 1, k, b);
    fclose(a);
    return fclose(b);
}

// Copies the run directory files (not samples/) of src into a new directory dst.
static __attribute__((unused)) int fix_copy_run(const char *src, const char *dst) {
    static const char *const files[] = {"config.yaml", "calib.safetensors", "state.safetensors", "state.json",
                                        "log.csv", "best.safetensors"};
    mkdir(dst, 0777);
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char a[2048], b[2048];
        snprintf(a, sizeof a, "%s/%s", src, files[i]);
        snprintf(b, sizeof b, "%s/%s", dst, files[i]);
        if (access(a, F_OK) == 0 && fix_copy_file(a, b)) return -1;
    }
    return 0;
}

// rm -r of a run directory made by these tests (files and samples/).
static void fix_remove_run(const char *dir) {
    char cmd[2200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

// Opens the run directory dir with base's settings (run.out = dir) and runs it with the hooks
// until the end or *h->stop; any other error fails the test. Returns 0 or ERR_INTERRUPTED.
static __attribute__((unused)) int fix_run_dir(const RunConfig *base, const char *dir, const TrainerHooks *h) {
    RunConfig rc = *base;
    snprintf(rc.run.out, sizeof rc.run.out, "%s", dir);
    Err e = {0};
    Trainer *tr;
    if (run_trainer_open(&tr, &rc, dir, &e)) fail_msg("open %s: %s", dir, e.msg);
    int code = trainer_run(tr, h, NULL, &e);
    if (code && code != ERR_INTERRUPTED) fail_msg("run %s: %s", dir, e.msg);
    trainer_free(tr);
    return code;
}

#endif
