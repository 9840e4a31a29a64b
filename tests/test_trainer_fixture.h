/* test_trainer_fixture.h: tiny fine-tuning runs on the shipped teacher for the trainer and
   resume tests: a run config of a few steps and a calibrated run directory (a quick
   stand-in for `effdm calibrate`: random latents at a few timesteps as the recorded inputs,
   the activation ranges fitted on the first of them), written with the same writers. */
#ifndef EFFDM_TEST_TRAINER_FIXTURE_H
#define EFFDM_TEST_TRAINER_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "models/ldm.h"
#include "qalora/qmodel.h"
#include "train/run_config.h"

#define FIX_ROOT TEST_DATA_DIR "/../.."
#define FIX_N_INPUTS 16  // recorded inputs
#define FIX_N_USED 4     // of them, used by the activation init

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
    rc->train.checkpoint_every = 1;
    rc->train.sample_every = 0;
    rc->calib.n_inputs = FIX_N_USED;
    rc->run.arena_mb = 512;
    snprintf(rc->run.out, sizeof rc->run.out, "%s", out);
}

// Creates rc->run.out as a calibrated run directory. Returns 0 or an ERR_ code.
static int fix_calibrate(const RunConfig *rc, Err *e) {
    mkdir(rc->run.out, 0777);
    char path[2048];
    snprintf(path, sizeof path, "%s/config.yaml", rc->run.out);
    if (run_config_write(rc, path, e)) return e->code;
    Ldm *m = NULL;
    LdmLoadOpts lo = {.ema = LDM_EMA_AUTO, .parts = LDM_PART_UNET | LDM_PART_COND_STAGE};
    if (ldm_load(&m, rc->model.ldm_config, rc->model.ckpt, &lo, e)) return e->code;
    int C, H, W;
    ldm_latent_shape(m, &C, &H, &W);
    size_t per = (size_t)C * H * W;
    const int n = FIX_N_INPUTS;
    float *x = malloc(n * per * sizeof(float)), *t = malloc(n * sizeof(float));
    int *y = malloc(n * sizeof(int));
    int64_t *y64 = malloc(n * sizeof(int64_t)), used[FIX_N_USED];
    Rng r;
    rng_seed(&r, 77, 0);
    rng_normal_fill(&r, x, n * per);
    for (int i = 0; i < n; i++) {
        t[i] = (float)(1 + 62 * (int)rng_below(&r, 16));
        y[i] = (int)rng_below(&r, (uint32_t)ldm_n_classes(m));
        y64[i] = y[i];
    }
    for (int i = 0; i < FIX_N_USED; i++) used[i] = i;
    QModel q;
    memset(&q, 0, sizeof q);
    QModelConfig qc;
    Ctx c;
    int rc_code = 0, q_ok = 0, c_ok = 0;
    if ((rc_code = qmodel_config_from_run(&qc, rc, e))) goto done;
    Rng ir;
    rng_seed(&ir, 5, 0);
    if ((rc_code = qmodel_init(&q, m->unet, &qc, m->T, &ir, e))) goto done;
    q_ok = 1;
    if ((rc_code = ctx_init(&c, (size_t)256 << 20, e))) goto done;
    c_ok = 1;
    if ((rc_code = qmodel_calibrate_ldm(&q, &c, m, x, t, y, FIX_N_USED, e))) goto done;
    StWriter w = {0};
    snprintf(path, sizeof path, "%s/state.safetensors", rc->run.out);
    if (!(rc_code = qmodel_write_state(&q, &w, "q.", e))) rc_code = st_write(&w, path, e);
    st_writer_free(&w);
    if (rc_code) goto done;
    StWriter cw = {0};
    const int64_t xs[4] = {n, C, H, W}, ns = n, nu = FIX_N_USED;
    snprintf(path, sizeof path, "%s/calib.safetensors", rc->run.out);
    if (!(rc_code = st_writer_add(&cw, "x", DT_F32, 4, xs, x, e)) && !(rc_code = st_writer_add(&cw, "t", DT_F32, 1, &ns, t, e)) &&
        !(rc_code = st_writer_add(&cw, "y", DT_I64, 1, &ns, y64, e)) &&
        !(rc_code = st_writer_add(&cw, "used", DT_I64, 1, &nu, used, e)))
        rc_code = st_write(&cw, path, e);
    st_writer_free(&cw);
done:
    if (c_ok) ctx_free(&c);
    if (q_ok) qmodel_free(&q);
    ldm_free(m);
    free(x);
    free(t);
    free(y);
    free(y64);
    return rc_code;
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
    static const char *const files[] = {"config.yaml", "calib.safetensors", "state.safetensors", "log.csv",
                                        "best.safetensors"};
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

#endif
