/* test_export_compvis.c: effdm export --format compvis-fp32 / compvis-fp16 (qalora/export_compvis.h)
   on the shipped teacher and a calibrated, perturbed W4A8 student of it: the file has exactly
   the teacher's tensor names and shapes, the documented dtypes; each quantized layer's tensor is
   the student's W_eff as its forward computes it (qlayer_weight on the tape: bit for bit in F32,
   its float16 rounding in F16); the FP layers are the weights the student ran; every other
   tensor is the teacher's, bit for bit. A teacher with EMA buffers (and an integer
   num_updates): model_ema.* hold the student too. And the CLI: a calibrated run exported with
   --format compvis-fp16 (the note on what the file cannot hold, effdm info, effdm forward
   reading the file, effdm sample --model refusing it by name), refused --format / --out /
   --fp16-layers with exit 2 and no file. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ckpt_edit.h"
#include "io/dtype.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "qalora/export_compvis.h"
#include "test_export_fixture.h"

// float16 keeps 11 significant bits: |h - x| <= 2^-11 |x| for a value in its normal range
static const double F16_REL = 1.0 / 2048.0;
static const float EMA_FACTOR = 1.25f;  // the EMA teacher's model_ema.* = this x the raw weights

// Raw bytes of tensor `name` of f (malloc'ed); its info in *wi.
static void *read_raw(WeightFile *f, const char *name, const WeightInfo **wi) {
    *wi = weights_find(f, name);
    if (!*wi) fail_msg("tensor '%s' missing from %s", name, weights_path(f));
    size_t nb = (*wi)->numel * dtype_size((*wi)->dtype);
    void *b = malloc(nb ? nb : 1);
    Err e = {0};
    if (weights_read_raw(f, name, b, nb, &e)) fail_msg("%s", e.msg);
    return b;
}

// The out tensor (F32 or F16 per f16) holds exactly `want` (n floats): its bits in F32, its
// float16 rounding in F16 (and that rounding is within half a float16 step of want).
static void assert_holds(const char *name, const void *out, DType dt, const float *want, size_t n, int f16) {
    if (dt != (f16 ? DT_F16 : DT_F32)) fail_msg("'%s': dtype %s, expected %s", name, dtype_name(dt), f16 ? "F16" : "F32");
    if (!f16) {
        if (memcmp(out, want, n * sizeof(float))) fail_msg("'%s': F32 values differ from the expected ones", name);
        return;
    }
    const uint16_t *h = out;
    for (size_t j = 0; j < n; j++) {
        if (h[j] != f32_to_f16(want[j])) fail_msg("'%s'[%zu]: F16 0x%04x, expected the rounding of %g", name, j, h[j], want[j]);
        double v = f16_to_f32(h[j]), d = fabs(v - want[j]);
        if (fabs(want[j]) > 6.2e-5 && d > F16_REL * fabs(want[j])) fail_msg("'%s'[%zu]: %g for %g", name, j, v, want[j]);
    }
}

static int has_prefix(const char *s, const char *p) { return !strncmp(s, p, strlen(p)); }

// The UNet parameter whose checkpoint name (or LitEma name, *ema = 1) is name, or -1.
static int unet_param_named(UNet *u, const char *name, int *ema) {
    for (int k = 0; k < unet_param_tensors(u); k++) {
        const char *pn;
        unet_param_at(u, k, &pn);
        char en[600], rn[600];
        ldm_ema_name(en, sizeof en, pn);
        snprintf(rn, sizeof rn, "model.diffusion_model.%s", pn);
        *ema = !strcmp(name, en);
        if (*ema || !strcmp(name, rn)) return k;
    }
    return -1;
}

typedef struct {
    int n_student, n_fp, n_unet, n_teacher, n_ema;
} Counts;

// The out tensor `name` (info oi, bytes ob) holds the student's value of UNet parameter pi:
// W_eff as qlayer_weight computes it, the weight an FP layer ran, or the UNet's own tensor.
static void check_student(const char *name, const WeightInfo *oi, const void *ob, const QModel *q, int pi, Ctx *c,
                          int f16, int fp16_layers, Counts *n) {
    Tensor *p = unet_param_at(q->unet, pi, NULL);
    assert_int_equal(oi->numel, p->n);
    int ql = -1, fl = -1;
    for (int k = 0; k < q->n_q; k++)
        if (q->q[k].layer->weight.data == p->data) ql = k;
    for (int k = 0; k < q->n_all; k++)
        if (q->choice[k].role == QSEL_FP && q->all[k]->weight.data == p->data) fl = k;
    if (ql >= 0) {  // the student's W_eff, as its forward computes it
        ctx_reset(c);
        ctx_set_grad(c, 0);
        Tensor *weff = qlayer_weight(c, &q->q[ql]);
        assert_non_null(weff);
        // a rotated layer (quant.rotate): W_eff H, the weight that acts on the unrotated input; it
        // is near the teacher's W (4-bit rounding), W_eff itself is not
        float *w = malloc(weff->n * sizeof(float));
        memcpy(w, weff->data, weff->n * sizeof(float));
        qlayer_weight_unrotate(&q->q[ql], w);
        if (q->q[ql].rot) assert_true(rel_l2(w, p->data, p->n) < 0.25 && rel_l2(weff->data, p->data, p->n) > 0.5);
        assert_holds(name, ob, oi->dtype, w, weff->n, f16);
        free(w);
        n->n_student++;
    } else if (fl >= 0) {  // the weight the student ran: the teacher's, or its float16 rounding
        float *w = malloc(p->n * sizeof(float));
        memcpy(w, p->data, p->n * sizeof(float));
        if (fp16_layers)
            for (size_t j = 0; j < p->n; j++) w[j] = f16_to_f32(f32_to_f16(w[j]));
        assert_holds(name, ob, oi->dtype, w, p->n, f16);
        free(w);
        n->n_fp++;
    } else {  // biases, norms, embeddings: the UNet the student was built on
        assert_holds(name, ob, oi->dtype, p->data, p->n, f16);
        n->n_unet++;
    }
}

// The file at path against the teacher file tf, the model m it was loaded into and student q
// (see the top): the expected key set is the teacher's, less scale_factor without scale_by_std
// and model_ema.* without use_ema, plus LitEma's buffers the teacher lacks with use_ema.
static void check_file(const char *path, WeightFile *tf, const Ldm *m, const QModel *q, Ctx *c, int f16,
                       int fp16_layers) {
    Err e = {0};
    WeightFile *of;
    assert_int_equal(weights_open(&of, path, &e), 0);
    assert_string_equal(weights_format(of), "safetensors");
    assert_string_equal(weights_metadata(of, "effdm.kind"), f16 ? "compvis-fp16" : "compvis-fp32");
    assert_null(weights_metadata(of, "effdm.format"));  // not an effdm export: effdm sample --model refuses it
    assert_non_null(weights_metadata(of, "effdm.ldm_config"));
    assert_string_equal(weights_metadata(of, "effdm.ema"), m->using_ema ? "1" : "0");
    int use_ema = m->cfg.use_ema, by_std = m->cfg.scale_by_std, n_expected = 0;
    Counts n = {0};
    UNet *u = q->unet;
    int np = unet_param_tensors(u);
    int *ema_seen = calloc((size_t)np, sizeof *ema_seen);
    for (int i = 0; i < weights_count(tf); i++) {
        const WeightInfo *ti = weights_info(tf, i), *oi;
        const char *name = ti->name;
        if ((!strcmp(name, "scale_factor") && !by_std) || (has_prefix(name, "model_ema.") && !use_ema)) {
            assert_null(weights_find(of, name));
            continue;
        }
        n_expected++;
        void *ob = read_raw(of, name, &oi);
        assert_int_equal(oi->ndim, ti->ndim);
        for (int d = 0; d < ti->ndim; d++) assert_int_equal(oi->shape[d], ti->shape[d]);
        int is_ema, pi = unet_param_named(u, name, &is_ema);
        if (pi >= 0) {
            check_student(name, oi, ob, q, pi, c, f16, fp16_layers, &n);
            n.n_ema += is_ema;
            if (is_ema) ema_seen[pi] = 1;
        } else {  // the teacher's tensor as stored (F16 network weights in compvis-fp16)
            const WeightInfo *ti2;
            void *tb = read_raw(tf, name, &ti2);
            int network = has_prefix(name, "first_stage_model.") || has_prefix(name, "cond_stage_model.") ||
                          has_prefix(name, "model.diffusion_model.");
            if (!dtype_is_float(ti->dtype)) {
                assert_int_equal(oi->dtype, ti->dtype);
                assert_memory_equal(ob, tb, ti->numel * dtype_size(ti->dtype));
            } else {
                assert_int_equal(ti->dtype, DT_F32);  // the fixtures are float32
                assert_holds(name, ob, oi->dtype, tb, ti->numel, f16 && network);
            }
            free(tb);
            n.n_teacher++;
        }
        free(ob);
    }
    if (by_std && !weights_find(tf, "scale_factor")) {  // registered from the YAML
        const WeightInfo *oi;
        float *sf = read_raw(of, "scale_factor", &oi);
        assert_true(oi->dtype == DT_F32 && oi->ndim == 0 && sf[0] == (float)m->cfg.scale_factor);
        free(sf);
        n_expected++;
    }
    if (use_ema) {  // LitEma's buffers the teacher lacks: the student's values, decay 0.9999, num_updates 0
        for (int k = 0; k < np; k++) {
            if (ema_seen[k]) continue;
            const char *pn;
            Tensor *p = unet_param_at(u, k, &pn);
            char en[600];
            ldm_ema_name(en, sizeof en, pn);
            const WeightInfo *oi;
            void *ob = read_raw(of, en, &oi);
            assert_int_equal(oi->ndim, unet_param_file_ndim(u, k));
            for (int d = 0; d < oi->ndim; d++) assert_int_equal(oi->shape[d], p->shape[d]);
            check_student(en, oi, ob, q, k, c, f16, fp16_layers, &n);
            n.n_ema++;
            free(ob);
            n_expected++;
        }
        // the EMA's scalars, added when the teacher has none: (name, dtype, value)
        static const struct {
            const char *name;
            DType dt;
            double value;
        } scalars[] = {{"model_ema.decay", DT_F32, 0.9999f}, {"model_ema.num_updates", DT_I32, 0}};
        for (int i = 0; i < 2; i++) {
            if (weights_find(tf, scalars[i].name)) continue;
            const WeightInfo *oi;
            void *v = read_raw(of, scalars[i].name, &oi);
            double got = oi->dtype == DT_F32 ? *(float *)v : oi->dtype == DT_I32 ? *(int32_t *)v : NAN;
            assert_true(oi->dtype == scalars[i].dt && got == scalars[i].value);
            free(v);
            n_expected++;
        }
    }
    assert_int_equal(weights_count(of), n_expected);
    int tr, sp, fp;
    qmodel_counts(q, &tr, &sp, &fp);
    print_message("  %s: %d tensors: %d W_eff, %d FP-layer weights, %d other UNet tensors (%d of all these "
                  "model_ema.*), %d as the teacher's\n", f16 ? "compvis-fp16" : "compvis-fp32", weights_count(of),
                  n.n_student, n.n_fp, n.n_unet, n.n_ema, n.n_teacher);
    int copies = use_ema ? 2 : 1;
    assert_int_equal(n.n_student, copies * q->n_q);
    assert_int_equal(n.n_fp, copies * fp);
    assert_int_equal(n.n_student + n.n_fp + n.n_unet, copies * np);
    assert_int_equal(n.n_ema, use_ema ? np : 0);
    free(ema_seen);
    weights_close(of);
}

static void check_compvis(int f16, RcFpLayers fp_layers, int rotate) {
    Teacher T = teacher_open();
    Ctx *c = test_ctx_new((size_t)1 << 30);
    RunConfig rc = student_config(4, 8, 20);
    rc.quant.fp_layers = fp_layers;
    rc.quant.rotate = rotate;
    QModel q;
    student_make(&q, c, &T, &rc, 1);
    char *path = tmp_path(".safetensors");
    Err e = {0};
    CompvisSummary s;
    CompvisInfo info = {.source = TEACHER_DIR "/model.ckpt", .yaml = T.yaml, .epoch = "last", .f16 = f16};
    int r = export_compvis_write(&q, T.m, T.f, &info, path, &s, &e);
    if (r) fail_msg("%s", e.msg);
    assert_int_equal(s.n_tensors, weights_count(T.f) - 1);  // less scale_factor: the YAML has scale_by_std false
    assert_int_equal(s.sf_dropped, 1);
    assert_non_null(strstr(s.keys_note, "scale_factor left out"));
    assert_int_equal(s.n_quantized, q.n_q);
    assert_int_equal(s.n_fp_rounded, fp_layers == RC_FP_F16 ? q.n_fp16 : 0);
    assert_int_equal(s.n_ema, 0);
    assert_int_equal(s.a_bits_min, 8);
    assert_int_equal(s.a_bits_max, 8);
    assert_non_null(strstr(s.note, "A8 fake-quant"));
    check_file(path, T.f, T.m, &q, c, f16, fp_layers == RC_FP_F16);
    unlink(path);
    free(path);
    qmodel_free(&q);
    test_ctx_delete(c);
    teacher_close(&T);
}

static void test_fp32(void **state) { check_compvis(0, RC_FP_F32, 0); }
static void test_fp32_fp16_layers(void **state) { check_compvis(0, RC_FP_F16, 0); }
static void test_fp16(void **state) { check_compvis(1, RC_FP_F16, 0); }
static void test_fp32_rotated(void **state) { check_compvis(0, RC_FP_F16, 64); }

// A copy of the shipped teacher with LitEma buffers (EMA_FACTOR x the raw weights),
// model_ema.num_updates as I32 as LitEma registers it, and without scale_factor when drop_sf.
static int drop_scale_factor(char *name, int *ndim, int64_t *shape, void *user) {
    (void)ndim, (void)shape, (void)user;
    return strcmp(name, "scale_factor") != 0;
}

static char *ema_teacher(int drop_sf) {
    char *tmp = tmp_path("_ema0.safetensors"), *path = tmp_path("_ema.safetensors");
    Err e = {0};
    if (ckpt_edit_copy_ema(TEACHER_DIR "/model.ckpt", tmp, drop_sf ? drop_scale_factor : NULL, NULL, EMA_FACTOR, &e))
        fail_msg("%s", e.msg);
    StFile f;
    assert_int_equal(st_open(&f, tmp, &e), 0);
    StWriter w = {0};
    int32_t nu = 5054;
    for (int i = 0; i < f.n_tensors; i++) {
        const StTensor *t = &f.tensors[i];
        if (!strcmp(t->name, "model_ema.num_updates")) assert_int_equal(st_writer_add(&w, t->name, DT_I32, 0, NULL, &nu, &e), 0);
        else assert_int_equal(st_writer_add(&w, t->name, t->dtype, t->ndim, t->shape, st_data(&f, i), &e), 0);
    }
    assert_int_equal(st_write(&w, path, &e), 0);
    st_writer_free(&w);
    st_close(&f);
    unlink(tmp);
    free(tmp);
    return path;
}

// The shipped YAML with use_ema and scale_by_std set (a temporary file: its path).
static char *yaml_variant(int use_ema, int scale_by_std) {
    unsigned char *buf;
    size_t n;
    Err e = {0};
    assert_int_equal(file_read_all(TEACHER_DIR "/config.yaml", &buf, &n, &e), 0);
    char *text = calloc(n + 64, 1);
    memcpy(text, buf, n);
    free(buf);
    char *u = strstr(text, "use_ema: false"), *b = strstr(text, "scale_by_std: false");
    assert_non_null(u);
    assert_non_null(b);
    if (use_ema) memcpy(u, "use_ema: true ", 14);  // same length: a trailing space
    if (scale_by_std) memcpy(b, "scale_by_std: true ", 19);
    char *path = tmp_path(".yaml");
    test_write_file(path, "%s", text);
    free(text);
    return path;
}

// A teacher from ckpt with the YAML variant; ema: how the UNet's EMA weights are chosen.
static Teacher teacher_variant(const char *ckpt, const char *yaml, LdmEmaMode ema) {
    Teacher T = {0};
    Err e = {0};
    LdmConfig *cfg = malloc(sizeof *cfg);
    assert_int_equal(ldm_config_load(cfg, yaml, &e), 0);
    assert_int_equal(weights_open(&T.f, ckpt, &e), 0);
    LdmLoadOpts o = {ema, LDM_PARTS_ALL};
    if (ldm_load_from(&T.m, cfg, T.f, &o, &e)) fail_msg("%s", e.msg);
    free(cfg);
    unsigned char *buf;
    size_t n;
    assert_int_equal(file_read_all(yaml, &buf, &n, &e), 0);
    T.yaml = calloc(n + 1, 1);
    memcpy(T.yaml, buf, n);
    free(buf);
    return T;
}

// Exports a W4A8 student of T (effdm recipe: FP layers f16) and checks the file; its summary in *s.
static void export_and_check(Teacher *T, CompvisSummary *s) {
    Ctx *c = test_ctx_new((size_t)1 << 30);
    RunConfig rc;
    run_config_defaults(&rc, RC_RECIPE_EFFDM);
    rc.quant.act_bits = 8;
    rc.train.steps = 10;
    QModel q;
    student_make(&q, c, T, &rc, 1);
    char *path = tmp_path(".safetensors");
    Err e = {0};
    CompvisInfo info = {.yaml = T->yaml, .f16 = 0, .guidance_gain = 1, .eps_gain = 1};
    if (export_compvis_write(&q, T->m, T->f, &info, path, s, &e)) fail_msg("%s", e.msg);
    assert_non_null(strstr(s->note, "guidance gain and eps gain"));
    check_file(path, T->f, T->m, &q, c, 0, 1);
    unlink(path);
    free(path);
    qmodel_free(&q);
    test_ctx_delete(c);
}

// use_ema true, the teacher has LitEma buffers: the student is built on them, and they (and the raw
// names) hold the student; decay and the I32 num_updates as the teacher's. scale_by_std true and
// no scale_factor in the teacher: added from the YAML.
static void test_ema_kept(void **state) {
    (void)state;
    char *tp = ema_teacher(1), *yp = yaml_variant(1, 1);
    Teacher T = teacher_variant(tp, yp, LDM_EMA_AUTO);
    assert_int_equal(T.m->using_ema, 1);
    CompvisSummary s;
    export_and_check(&T, &s);
    int np = unet_param_tensors(T.m->unet);
    assert_int_equal(s.n_ema, np);
    assert_int_equal(s.n_ema_added + s.n_ema_dropped + s.sf_dropped, 0);
    assert_int_equal(s.sf_added, 1);
    assert_int_equal(s.n_tensors, weights_count(T.f) + 1);
    // the UNet the student was built on is the EMA one: a bias is EMA_FACTOR x the raw weight's
    const WeightInfo *wi;
    float *raw = read_raw(T.f, "model.diffusion_model.out.2.bias", &wi);
    Tensor *b = NULL;
    for (int k = 0; k < unet_param_tensors(T.m->unet) && !b; k++) {
        const char *pn;
        Tensor *p = unet_param_at(T.m->unet, k, &pn);
        if (!strcmp(pn, "out.2.bias")) b = p;
    }
    assert_non_null(b);
    for (size_t j = 0; j < wi->numel; j++) assert_true(b->data[j] == EMA_FACTOR * raw[j]);
    free(raw);
    teacher_close(&T);
    unlink(tp);
    unlink(yp);
    free(tp);
    free(yp);
}

// use_ema false (the shipped YAML) but the student built on the EMA buffers (model.ema on): the raw
// names hold it, the teacher's model_ema.* are left out (LatentDiffusion has no LitEma then).
static void test_ema_dropped(void **state) {
    (void)state;
    char *tp = ema_teacher(0);
    Teacher T = teacher_variant(tp, TEACHER_DIR "/config.yaml", LDM_EMA_ON);
    assert_int_equal(T.m->using_ema, 1);
    CompvisSummary s;
    export_and_check(&T, &s);
    int np = unet_param_tensors(T.m->unet);
    assert_int_equal(s.n_ema, 0);
    assert_int_equal(s.n_ema_dropped, np + 2);
    assert_non_null(strstr(s.keys_note, "model_ema.* tensors left out"));
    assert_int_equal(s.n_tensors, weights_count(T.f) - np - 2 - 1);
    teacher_close(&T);
    unlink(tp);
    free(tp);
}

// use_ema true and a teacher without LitEma buffers (the shipped one): they are added, holding the
// student, with LitEma's initial decay and num_updates.
static void test_ema_added(void **state) {
    (void)state;
    char *yp = yaml_variant(1, 0);
    Teacher T = teacher_variant(TEACHER_DIR "/model.ckpt", yp, LDM_EMA_AUTO);
    assert_int_equal(T.m->using_ema, 0);
    CompvisSummary s;
    export_and_check(&T, &s);
    int np = unet_param_tensors(T.m->unet);
    assert_int_equal(s.n_ema, np);
    assert_int_equal(s.n_ema_added, np + 2);
    assert_non_null(strstr(s.keys_note, "model_ema.* tensors added"));
    assert_int_equal(s.n_tensors, weights_count(T.f) - 1 + np + 2);
    teacher_close(&T);
    unlink(yp);
    free(yp);
}

/* ---- the CLI ------------------------------------------------------------------------ */

static void test_cli(void **state) {
    (void)state;
    char *dir = tmp_path(""), *cfg = tmp_path(".yaml"), *out = tmp_path(".safetensors"), *log = tmp_path(".log");
    char run_dir[300], cmd[2400];
    snprintf(run_dir, sizeof run_dir, "%s/run", dir);
    assert_int_equal(test_calibrate_teacher(cfg,
                                            "quant: {weight_bits: 4, act_bits: 8}\n"
                                            "calib: {steps: 4, n_samples: 2, batch: 2, n_inputs: 4}\n"
                                            "train: {steps: 10, guidance_gain: fit, eps_gain: off}\n",
                                            run_dir, "--threads 2 >/dev/null 2>&1"),
                     0);
    // refused: an unknown format, a .ckpt (no torch zip writer), another name, --fp16-layers; no file left
    const char *bad[] = {"--format compvis", "--format compvis-fp16 --out-suffix .ckpt",
                         "--format compvis-fp32 --out-suffix .bin", "--format compvis-fp32 --fp16-layers"};
    const char *msg[] = {"--format: expected effdm, compvis-fp32 or compvis-fp16, found",
                         "effdm writes no torch .ckpt", "expected a name ending in .safetensors",
                         "--fp16-layers applies to the effdm format only"};
    for (int i = 0; i < 4; i++) {
        char opts[200], target[320];
        const char *suffix = strstr(bad[i], "--out-suffix ");
        snprintf(opts, sizeof opts, "%.*s", suffix ? (int)(suffix - bad[i]) : (int)strlen(bad[i]), bad[i]);
        snprintf(target, sizeof target, "%s%s", out, suffix ? suffix + 13 : "");
        snprintf(cmd, sizeof cmd, "%s export --run %s --out %s %s 2>%s", EFFDM_BIN, run_dir, target, opts, log);
        assert_int_equal(test_shell_status(cmd), 2);
        assert_int_equal(access(target, F_OK), -1);
        snprintf(cmd, sizeof cmd, "grep -qF -- '%s' %s", msg[i], log);
        if (test_shell_status(cmd) != 0) fail_msg("export %s: stderr lacks '%s'", bad[i], msg[i]);
    }
    // the export: the note on stderr, the teacher's tensors, the file's description in effdm info
    snprintf(cmd, sizeof cmd, "%s export --run %s --out %s --format compvis-fp16 --threads 2 2>%s >/dev/null",
             EFFDM_BIN, run_dir, out, log);
    assert_int_equal(test_shell_status(cmd), 0);
    snprintf(cmd, sizeof cmd, "grep -q 'note: a CompVis state dict holds no activation quantization (A8 fake-quant "
             "of .* layers, 10 TALSQ entries), nor the guidance gain the run fits' %s", log);
    assert_int_equal(test_shell_status(cmd), 0);
    WeightFile *tf, *of;
    Err e = {0};
    assert_int_equal(weights_open(&tf, TEACHER_DIR "/model.ckpt", &e), 0);
    assert_int_equal(weights_open(&of, out, &e), 0);
    assert_int_equal(weights_count(of), weights_count(tf) - 1);  // scale_factor left out: scale_by_std false
    for (int i = 0; i < weights_count(tf); i++) {
        const char *name = weights_info(tf, i)->name;
        if (strcmp(name, "scale_factor") != 0) assert_non_null(weights_find(of, name));
    }
    assert_int_equal(weights_find(of, "model.diffusion_model.out.2.weight")->dtype, DT_F16);
    assert_int_equal(weights_find(of, "alphas_cumprod")->dtype, DT_F32);
    weights_close(of);
    weights_close(tf);
    snprintf(cmd, sizeof cmd, "%s info %s | grep -q '^effdm compvis-fp16: a fine-tuned student dequantized'", EFFDM_BIN, out);
    assert_int_equal(test_shell_status(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s info %s | grep -q '^  not in file: a CompVis state dict holds no activation'", EFFDM_BIN,
             out);
    assert_int_equal(test_shell_status(cmd), 0);
    // not an effdm export: sample --model says what it is
    snprintf(cmd, sizeof cmd, "%s sample --model %s --n 1 --out %s/s 2>%s", EFFDM_BIN, out, dir, log);
    assert_int_equal(test_shell_status(cmd), 2);
    snprintf(cmd, sizeof cmd, "grep -q 'a CompVis state dict (effdm export --format compvis-fp16), not an effdm "
             "export: sample it as a checkpoint' %s", log);
    assert_int_equal(test_shell_status(cmd), 0);
    // effdm reads the file as a CompVis checkpoint (the UNet of the dequantized student)
    char x[320], t[320], y[320], eps[320];
    snprintf(x, sizeof x, "%s/x.npy", dir);
    snprintf(t, sizeof t, "%s/t.npy", dir);
    snprintf(y, sizeof y, "%s/y.npy", dir);
    snprintf(eps, sizeof eps, "%s/eps.npy", dir);
    float xv[2 * 4 * 8 * 8], tv[2] = {1, 501}, yv[2] = {3, 10};
    Rng r;
    rng_seed(&r, 3, 0);
    rng_normal_fill(&r, xv, 2 * 4 * 8 * 8);
    assert_int_equal(npy_write(x, xv, 4, (int[]){2, 4, 8, 8}, &e), 0);
    assert_int_equal(npy_write(t, tv, 1, (int[]){2}, &e), 0);
    assert_int_equal(npy_write(y, yv, 1, (int[]){2}, &e), 0);
    snprintf(cmd, sizeof cmd, "%s forward --ldm-config %s/config.yaml --ckpt %s --x %s --t %s --y %s --out %s "
             ">/dev/null", EFFDM_BIN, TEACHER_DIR, out, x, t, y, eps);
    assert_int_equal(test_shell_status(cmd), 0);
    NpyArray a;
    assert_int_equal(npy_read(eps, &a, &e), 0);
    assert_int_equal((int)a.n, 2 * 4 * 8 * 8);
    for (size_t i = 0; i < a.n; i++) assert_true(isfinite(a.data[i]));
    npy_free(&a);
    test_remove_paths((char *[]){dir, cfg, out, log}, 4);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp32), cmocka_unit_test(test_fp32_fp16_layers), cmocka_unit_test(test_fp16),
        cmocka_unit_test(test_fp32_rotated),
        cmocka_unit_test(test_ema_kept), cmocka_unit_test(test_ema_dropped), cmocka_unit_test(test_ema_added),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
