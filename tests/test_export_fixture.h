/* test_export_fixture.h: the shipped teacher and a calibrated, perturbed student of it, for
   the export tests (test_export.c, test_int_kernels.c): teacher_open / teacher_close,
   random UNet inputs, a no-grad forward copied out of the arena, student_config and
   student_make. */
#ifndef EFFDM_TEST_EXPORT_FIXTURE_H
#define EFFDM_TEST_EXPORT_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/fileio.h"
#include "models/ldm.h"
#include "qalora/calibrate.h"
#include "qalora/export.h"
#include "qalora/qmodel.h"
#include "run/run_config.h"
#include "run/run_wire.h"

#define TEACHER_DIR TEST_DATA_DIR "/../../models/zoo/fmnist-ldm"

static char *tmp_path(const char *suffix) {
    static int k;
    char *p = malloc(256);
    snprintf(p, 256, "/tmp/effdm_test_export_%d_%d%s", (int)getpid(), k++, suffix);
    return p;
}

typedef struct {
    Ldm *m;
    WeightFile *f;     // the teacher checkpoint (first-stage tensor names)
    char *yaml;
} Teacher;

// The teacher of YAML yaml and checkpoint ckpt (all parts).
static inline Teacher teacher_open_from(const char *yaml, const char *ckpt) {
    Teacher t = {0};
    Err e = {0};
    LdmConfig *cfg = malloc(sizeof *cfg);
    assert_int_equal(ldm_config_load(cfg, yaml, &e), 0);
    assert_int_equal(weights_open(&t.f, ckpt, &e), 0);
    LdmLoadOpts o = {LDM_EMA_AUTO, LDM_PARTS_ALL};
    int rc = ldm_load_from(&t.m, cfg, t.f, &o, &e);
    if (rc) print_error("teacher: %s\n", e.msg);
    assert_int_equal(rc, 0);
    unsigned char *buf;
    size_t n;
    assert_int_equal(file_read_all(yaml, &buf, &n, &e), 0);
    t.yaml = malloc(n + 1);
    memcpy(t.yaml, buf, n);
    t.yaml[n] = '\0';
    free(buf);
    free(cfg);
    return t;
}

static inline Teacher teacher_open(void) { return teacher_open_from(TEACHER_DIR "/config.yaml", TEACHER_DIR "/model.ckpt"); }

static void teacher_close(Teacher *t) {
    ldm_free(t->m);
    weights_close(t->f);
    free(t->yaml);
}

// Random UNet inputs at one timestep t.
static void inputs(Ldm *m, int n, int t, uint64_t seed, float *x, float *ts, int *y) {
    Rng r;
    rng_seed(&r, seed, 0);
    int C, H, W;
    ldm_latent_shape(m, &C, &H, &W);
    rng_normal_fill(&r, x, (size_t)n * C * H * W);
    for (int i = 0; i < n; i++) {
        ts[i] = (float)t;
        y[i] = (int)rng_below(&r, (uint32_t)ldm_n_classes(m));
    }
}

static inline float *forward(Ctx *c, Ldm *m, const float *x, const float *t, const int *y, int n) {
    int C, H, W;
    ldm_latent_shape(m, &C, &H, &W);
    ctx_reset(c);
    ctx_set_grad(c, 0);
    Tensor *out = ldm_apply_model(c, m, tensor_from(c, x, 4, (int[]){n, C, H, W}), t, y);
    if (!out) print_error("forward: %s\n", c->err.msg);
    assert_non_null(out);
    float *r = malloc(out->n * sizeof(float));
    memcpy(r, out->data, out->n * sizeof(float));
    return r;
}

// The fake-quant student q of teacher m at timestep ts, copied out (q left disabled).
static inline float *student_forward(QModel *q, Ctx *c, Ldm *m, const float *x, const float *t, const int *y, int n,
                                     int ts) {
    qmodel_enable(q, 1);
    qmodel_set_timestep(q, ts);
    float *r = forward(c, m, x, t, y, n);
    qmodel_enable(q, 0);
    return r;
}

// The run config of the export tests' students: the reference recipe with w_bits / a_bits and
// train.steps as given; the caller sets the rest.
static inline RunConfig student_config(int w_bits, int a_bits, int train_steps) {
    RunConfig rc;
    run_config_defaults(&rc, RC_RECIPE_REFERENCE);
    rc.quant.weight_bits = w_bits;
    rc.quant.act_bits = a_bits;
    rc.train.steps = train_steps;
    return rc;
}

// A calibrated student of rc's quant config, moved away from its start (simulated training):
// LoRA B, Δ_w, the activation tables (z_a real-valued, as training leaves it).
static void student_make(QModel *q, Ctx *c, Teacher *T, const RunConfig *rc, int perturb) {
    Err e = {0};
    QModelConfig qc;
    assert_int_equal(run_qmodel_config(&qc, rc, &e), 0);
    Rng r;
    rng_seed(&r, 5, 0);
    assert_int_equal(qmodel_init(q, T->m->unet, &qc, T->m->T, &r, &e), 0);
    int C, H, W, n = 4;
    ldm_latent_shape(T->m, &C, &H, &W);
    float *x = malloc((size_t)n * C * H * W * sizeof(float)), t[4];
    int y[4];
    inputs(T->m, n, 500, 77, x, t, y);
    for (int i = 0; i < n; i++) t[i] = (float)(100 + 250 * i);
    int rcode = qmodel_calibrate_ldm(q, c, T->m, x, t, y, n, &e);
    if (rcode) print_error("calibrate: %s\n", e.msg);
    assert_int_equal(rcode, 0);
    free(x);
    if (!perturb) return;
    rng_seed(&r, 6, 0);
    for (int k = 0; k < q->n_q; k++) {
        QLayer *ql = &q->q[k];
        for (int i = 0; i < ql->aq.n; i++) {
            ql->aq.delta.data[i] *= 1.0f + 0.4f * (rng_uniform(&r) - 0.5f);
            ql->aq.zero.data[i] += 3.0f * (rng_uniform(&r) - 0.5f);
        }
        if (ql->special) continue;
        for (size_t i = 0; i < ql->lora_b.n; i++) ql->lora_b.data[i] = 2e-3f * (rng_uniform(&r) - 0.5f);
        for (int o = 0; o < ql->cout; o++) ql->wq.delta.data[o] *= 1.0f + 0.1f * (rng_uniform(&r) - 0.5f);
    }
}

// Rounds the student's activation zero points (the export's activation reference uses the
// rounded z_a, docs/METHOD.md TALSQ) and exports it to a new temporary file: its path.
static inline char *student_export(QModel *q, Teacher *T, ExportSummary *s) {
    for (int k = 0; k < q->n_q; k++) quantizer_round_zero(&q->q[k].aq);
    char *path = tmp_path(".safetensors");
    Err e = {0};
    ExportInfo info = {.source = TEACHER_DIR "/model.ckpt", .yaml = T->yaml, .epoch = "last"};
    int r = export_write(q, T->m, T->f, &info, path, s, &e);
    if (r) print_error("export: %s\n", e.msg);
    assert_int_equal(r, 0);
    return path;
}

#endif
