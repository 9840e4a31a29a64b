/* test_export.c: the deployed model against the fake-quantized student it comes from
   (W4A4 and W2A8, after simulated training, at training and other sampling timesteps), the
   TALSQ mapping against a brute-force nearest timestep, the size of the UNet part against a
   byte count computed here from the format, corrupted exports (each error names the tensor
   or key), the layers' quantizer kinds (recorded; an export without them loads as uniform),
   and the CLI: calibrate -> export -> sample --model, with the recorded inputs
   checked against the sampler's documented noise streams. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io/fileio.h"
#include "io/safetensors.h"
#include "models/ldm.h"
#include "qalora/calibrate.h"
#include "qalora/export.h"
#include "qalora/export_int.h"
#include "qalora/guidance_gain.h"
#include "qalora/pack.h"
#include "qalora/rotate.h"
#include "sample/generate.h"
#include "test_export_fixture.h"

static const double TOL_EXPORT = 1e-5;  // docs/METHOD.md: the export computes the student exactly
static const double SIZE_TARGET = 1.0 / 6.0;  // W4: UNet part <= 1/6 of the FP32 UNet
static const int N_IN = 3;

// Nearest training timestep, ties to the smaller: by brute force.
static int nearest_entry(const TalsqSchedule *s, int t) {
    int best = 0;
    for (int i = 1; i < s->n; i++) {
        long d = labs((long)s->timesteps[i] - t), db = labs((long)s->timesteps[best] - t);
        if (d < db) best = i;
    }
    return best;
}

// An effdm.format "1" copy of the export at src (3-bit levels in 4-bit containers, as that
// format stored them) into dst: every 3-bit qweight repacked, the format key set to "1".
static void write_format_v1(const char *src, const char *dst, const QModel *q) {
    StFile f;
    Err e = {0};
    assert_int_equal(st_open(&f, src, &e), 0);
    StWriter w = {0};
    uint8_t *repacked[512] = {0};
    int n_rep = 0;
    for (int i = 0; i < f.n_tensors; i++) {
        const StTensor *t = &f.tensors[i];
        const void *data = st_data(&f, i);
        int64_t shape[WEIGHTS_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        for (int k = 0; k < q->n_q; k++) {
            char name[300];
            snprintf(name, sizeof name, "model.diffusion_model.%s.qweight", q->q[k].layer->name);
            if (strcmp(name, t->name) != 0 || q->q[k].wq.bits != 3) continue;
            size_t n = q->q[k].layer->weight.n;
            uint8_t *lv = malloc(n);
            assert_true(n_rep < 512);
            repacked[n_rep] = malloc(PACK_BYTES(n, 4));
            unpack_ints(lv, data, n, 3);
            pack_ints(repacked[n_rep], lv, n, 4);  // 4 bits: two per byte
            free(lv);
            data = repacked[n_rep++];
            shape[0] = (int64_t)PACK_BYTES(n, 4);
        }
        assert_int_equal(st_writer_add(&w, t->name, t->dtype, t->ndim, shape, data, &e), 0);
    }
    assert_true(n_rep > 0);
    for (int i = 0; i < f.n_meta; i++)
        assert_int_equal(st_writer_meta(&w, f.meta[i].key, strcmp(f.meta[i].key, "effdm.format") ? f.meta[i].value : "1",
                                        &e), 0);
    assert_int_equal(st_write(&w, dst, &e), 0);
    st_writer_free(&w);
    st_close(&f);
    for (int i = 0; i < n_rep; i++) free(repacked[i]);
}

// quant.rotate of the next check (0: none): rotated layers store the levels of W Hᵀ and rotate x.
static int g_rotate;
// quant.act_granularity token for the next check: per-token activation layers (the float path).
static int g_token;

// w_kind: the weight quantizer (with easyquant the export also holds each layer's side table).
static void check_equivalence_kinds(int w_bits, int a_bits, int train_steps, RcFpLayers fp_layers, QuantKind w_kind,
                                    QuantKind a_kind);

static void check_equivalence_kind(int w_bits, int a_bits, int train_steps, RcFpLayers fp_layers, QuantKind w_kind) {
    check_equivalence_kinds(w_bits, a_bits, train_steps, fp_layers, w_kind, QUANT_UNIFORM);
}

// a_kind: the activation quantizer (nupes: the export holds each table entry's exponent).
static void check_equivalence_kinds(int w_bits, int a_bits, int train_steps, RcFpLayers fp_layers, QuantKind w_kind,
                                    QuantKind a_kind) {
    Teacher T = teacher_open();
    Ctx *c = test_ctx_new((size_t)1 << 30);
    RunConfig rc = student_config(w_bits, a_bits, train_steps);
    rc.quant.weight_quantizer = w_kind;
    rc.quant.act_quantizer = a_kind;
    rc.quant.fp_layers = fp_layers;
    rc.quant.rotate = g_rotate;
    rc.quant.act_granularity = g_token ? RC_GRAN_TOKEN : RC_GRAN_TENSOR;
    QModel q;
    student_make(&q, c, &T, &rc, 1);
    ExportSummary s;
    char *path = student_export(&q, &T, &s);
    Err e = {0};
    ExportModel *em = NULL;
    int r = export_load(&em, path, &e);
    if (r) print_error("load: %s\n", e.msg);
    assert_int_equal(r, 0);
    assert_int_equal(em->n_layers, q.n_q);
    assert_int_equal(em->train_sched.n, q.train_sched.n);
    // the float path computes the student exactly; the integer kernels are checked against
    // it layer by layer in test_int_kernels (their float rescale differs in the last bits,
    // which can move a downstream activation across a rounding boundary)
    assert_int_equal(export_set_kernel(em, "float", &e), 0);
    print_message("  W%dA%d, %d entries, FP layers %s: UNet part %zu of %zu bytes (1/%.2f)\n", w_bits, a_bits,
                  em->train_sched.n, fp_layers == RC_FP_F16 ? "f16" : "f32", s.unet_bytes, s.unet_fp32_bytes,
                  (double)s.unet_fp32_bytes / (double)s.unet_bytes);
    assert_int_equal(s.fp16_layers, fp_layers == RC_FP_F16);
    assert_int_equal(s.exact, 1);

    // the deployed weight is the student's W_eff, bit for bit (in the layer's own basis: a rotated
    // layer's W_eff H, the same transform of the same floats on both sides)
    int n_rot = 0;
    for (int k = 0; k < q.n_q; k++) {
        ctx_reset(c);
        ctx_set_grad(c, 0);
        Tensor *weff = qlayer_weight(c, &q.q[k]);  // a special layer's own tensor: not to be written
        float *w = malloc(weff->n * sizeof(float)), *ws = malloc(weff->n * sizeof(float));
        memcpy(ws, weff->data, weff->n * sizeof(float));
        assert_int_equal(export_layer_weight(em, q.q[k].layer->name, w), 0);
        assert_int_equal(em->layers[k].rot, q.q[k].rot);
        assert_int_equal(q.q[k].rot, rotate_block(q.q[k].layer->weight.shape[1], g_rotate));
        n_rot += q.q[k].rot > 0;
        qlayer_weight_unrotate(&q.q[k], ws);
        assert_memory_equal(w, ws, weff->n * sizeof(float));
        free(w);
        free(ws);
    }
    assert_true(g_rotate ? n_rot == q.n_q : n_rot == 0);  // the test UNet's channels are all even
    // the layers left FP: the weights the student ran (float16-rounded copies, or the teacher's)
    int n_all_e;
    ModelLayer **LE = unet_layers(em->ldm->unet, &n_all_e);
    assert_int_equal(q.n_fp16, fp_layers == RC_FP_F16 ? q.n_all - q.n_q : 0);
    for (int i = 0, k16 = 0; i < q.n_all; i++) {
        if (q.choice[i].role != QSEL_FP) continue;
        const float *ran = fp_layers == RC_FP_F16 ? q.fp16[k16++].data : q.all[i]->weight.data;
        assert_memory_equal(LE[i]->weight.data, ran, LE[i]->weight.n * sizeof(float));
    }

    // outputs at training timesteps and at the timesteps of 20- and 30-step samplers
    TalsqSchedule s20, s30;
    assert_int_equal(talsq_ddim_uniform(&s20, 1000, 20, &e), 0);
    assert_int_equal(talsq_ddim_uniform(&s30, 1000, 30, &e), 0);
    int ts[] = {q.train_sched.timesteps[0], q.train_sched.timesteps[q.train_sched.n - 1], s20.timesteps[9],
                s30.timesteps[1], s30.timesteps[17], s30.timesteps[30], 500};
    int C, H, W;
    ldm_latent_shape(T.m, &C, &H, &W);
    float *x = malloc((size_t)N_IN * C * H * W * sizeof(float)), t[N_IN];
    int y[N_IN];
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        inputs(T.m, N_IN, ts[i], 100 + i, x, t, y);
        float *ys = student_forward(&q, c, T.m, x, t, y, N_IN, ts[i]);
        export_set_timestep(em, ts[i]);
        assert_int_equal(em->entry, nearest_entry(&q.train_sched, ts[i]));
        assert_int_equal(em->entry, q.entry);
        float *ye = forward(c, em->ldm, x, t, y, N_IN);
        size_t n = (size_t)N_IN * C * H * W;
        double err = rel_l2(ye, ys, n);
        print_message("    t = %3d (entry %2d): export vs student rel L2 %.3g\n", ts[i], em->entry, err);
        assert_rel_l2(ye, ys, n, TOL_EXPORT);
        free(ys);
        free(ye);
    }
    // the side tables: every easyquant layer has one, the export's equals the student's positions
    for (int k = 0; k < q.n_q; k++) {
        const ExportLayer *L = &em->layers[k];
        assert_int_equal(L->w_kind, w_kind);
        assert_int_equal(L->a_kind, a_kind);
        if (w_kind == QUANT_NUPES)  // each channel's exponent, as the student's
            assert_memory_equal(L->w_param, q.q[k].wq.param.data, (size_t)L->cout * sizeof(float));
        if (a_kind == QUANT_NUPES) assert_memory_equal(L->a_param, q.q[k].aq.param.data, (size_t)L->entries * sizeof(float));
        if (w_kind == QUANT_NUPES || a_kind == QUANT_NUPES) {
            // not affine: the integer path only through level tables (weights up to 4 bits,
            // tables within EXPORT_LUT_MAX_ERR; test_int_kernels checks it), else the float path
            int fine = L->w_lut_err <= EXPORT_LUT_MAX_ERR && L->a_lut_err <= EXPORT_LUT_MAX_ERR;
            assert_int_equal(L->int_ok, L->lut);
            assert_int_equal(L->int_ok, (w_kind != QUANT_NUPES || L->w_bits <= 4) && fine);
        }
        assert_int_equal(L->a_token, g_token && !q.q[k].special);
        assert_int_equal(q.q[k].a_token, L->a_token);
        if (L->a_token) assert_int_equal(L->int_ok, 1);  // uniform weights: the integer kernels (test_int_kernels)
        assert_int_equal(L->n_side, q.q[k].wq.n_side);
        if (w_kind == QUANT_EASYQUANT) assert_true(L->n_side > 0);
        if (L->n_side)
            assert_memory_equal(L->side_idx, q.q[k].wq.side_idx, (size_t)L->cout * L->n_side * sizeof(int32_t));
    }
    // the packed layout: 2 levels per byte at 4 bits, 8 in 3 bytes at 3 bits, 4 per byte at 2 bits, 1 at 8 bits
    WeightFile *f;
    assert_int_equal(weights_open(&f, path, &e), 0);
    for (int k = 0; k < q.n_q; k++) {
        char name[300];
        snprintf(name, sizeof name, "model.diffusion_model.%s.qweight", q.q[k].layer->name);
        const WeightInfo *wi = weights_find(f, name);
        assert_non_null(wi);
        size_t n = q.q[k].layer->weight.n, b = (size_t)(q.q[k].wq.bits <= 4 ? q.q[k].wq.bits : 8);
        assert_int_equal(wi->numel, (n * b + 7) / 8);
    }
    weights_close(f);
    if (w_bits == 3) {  // an export of the older format (3 bits in 4-bit containers) loads to the same weights
        char *v1 = tmp_path(".safetensors");
        write_format_v1(path, v1, &q);
        ExportModel *e1 = NULL;
        int r1 = export_load(&e1, v1, &e);
        if (r1) print_error("format 1: %s\n", e.msg);
        assert_int_equal(r1, 0);
        for (int k = 0; k < q.n_q; k++) {
            size_t n = q.q[k].layer->weight.n;
            float *w2 = malloc(n * sizeof(float)), *w1 = malloc(n * sizeof(float));
            assert_int_equal(export_layer_dequant(&em->layers[k], w2), 0);
            assert_int_equal(export_layer_dequant(&e1->layers[k], w1), 0);
            assert_memory_equal(w1, w2, n * sizeof(float));
            assert_int_equal(e1->layers[k].int_ok, em->layers[k].int_ok);
            free(w1);
            free(w2);
        }
        export_free(e1);
        unlink(v1);
        free(v1);
    }
    free(x);
    export_free(em);
    unlink(path);
    free(path);
    qmodel_free(&q);
    test_ctx_delete(c);
    teacher_close(&T);
}

static void check_equivalence(int w_bits, int a_bits, int train_steps, RcFpLayers fp_layers) {
    check_equivalence_kind(w_bits, a_bits, train_steps, fp_layers, QUANT_UNIFORM);
}

static void test_equivalence_w4a4(void **state) { check_equivalence(4, 4, 100, RC_FP_F16); }
static void test_equivalence_w4a4_f32(void **state) { check_equivalence(4, 4, 100, RC_FP_F32); }
static void test_equivalence_w2a8(void **state) { check_equivalence(2, 8, 20, RC_FP_F16); }
static void test_equivalence_w3a8(void **state) { check_equivalence(3, 8, 20, RC_FP_F16); }  // dense 3-bit rows
static void test_equivalence_easyquant(void **state) { check_equivalence_kind(4, 4, 20, RC_FP_F16, QUANT_EASYQUANT); }
// block-Hadamard rotation of every quantized layer's input (quant.rotate)
static void test_equivalence_rotate(void **state) {
    g_rotate = 64;
    check_equivalence(4, 4, 20, RC_FP_F16);
    g_rotate = 0;
}
// nupes weights and activations (the float path: not affine) at 3 and 4 bits
static void test_equivalence_nupes(void **state) {
    check_equivalence_kinds(4, 4, 20, RC_FP_F16, QUANT_NUPES, QUANT_NUPES);
    check_equivalence_kinds(3, 8, 20, RC_FP_F16, QUANT_NUPES, QUANT_UNIFORM);
}

/* ---- size ---------------------------------------------------------------------------- */

// Bytes of n integer zero points in the format's container: U8 when all are in 0..255, I16
// when all fit 16 bits, else F32 (export.h).
static size_t zero_bytes(const float *z, int n, int round_first) {
    int u8 = 1, i16 = 1;
    for (int i = 0; i < n; i++) {
        float v = round_first ? rintf(z[i]) : z[i];
        if (v < -32768.0f || v > 32767.0f) u8 = i16 = 0;
        else if (v < 0.0f || v > 255.0f) u8 = 0;
    }
    return (size_t)n * (u8 ? 1 : (i16 ? 2 : 4));
}

static void test_size(void **state) {
    Teacher T = teacher_open();
    Ctx *c = test_ctx_new((size_t)1 << 30);
    RunConfig rc;
    run_config_defaults(&rc, RC_RECIPE_EFFDM);
    assert_int_equal(rc.quant.fp_layers, RC_FP_F16);  // the default run: float16 FP layers
    QModel q;
    Err e = {0};
    char *p32 = tmp_path(".safetensors"), *p16 = tmp_path(".safetensors"), *pforced = tmp_path(".safetensors");
    ExportInfo info = {.yaml = T.yaml};
    ExportSummary s32, s16, sforced;
    student_make(&q, c, &T, &rc, 0);
    assert_int_equal(export_write(&q, T.m, T.f, &info, p16, &s16, &e), 0);
    qmodel_free(&q);
    rc.quant.fp_layers = RC_FP_F32;
    student_make(&q, c, &T, &rc, 0);
    assert_int_equal(export_write(&q, T.m, T.f, &info, p32, &s32, &e), 0);
    info.fp16_layers = 1;  // forced onto the float32 student: the size of p16, not exact
    assert_int_equal(export_write(&q, T.m, T.f, &info, pforced, &sforced, &e), 0);
    assert_true(s16.fp16_layers && s16.exact);
    assert_true(!s32.fp16_layers && s32.exact);
    assert_true(sforced.fp16_layers && !sforced.exact);
    assert_int_equal(sforced.unet_bytes, s16.unet_bytes);

    // the UNet part from the format's definition: packed levels, zero points in their
    // container, F32 Δ and tables, the rest F32 (F16 for FP layer weights in p16)
    size_t fp32 = 0, levels = 0, ranges = 0, fp_rest = 0, fp_layers = 0, n_fp_layers_w = 0;
    for (int i = 0; i < unet_param_tensors(T.m->unet); i++) {
        const char *name;
        Tensor *p = unet_param_at(T.m->unet, i, &name);
        fp32 += 4 * p->n;
        int quant = 0;
        for (int k = 0; k < q.n_q; k++) quant |= q.q[k].layer->weight.data == p->data;
        if (quant) continue;
        int is_fp_layer_w = 0;
        for (int j = 0; j < q.n_all; j++) is_fp_layer_w |= q.all[j]->weight.data == p->data;
        if (is_fp_layer_w) {
            fp_layers += p->n;
            n_fp_layers_w++;
        } else {
            fp_rest += 4 * p->n;
        }
    }
    for (int k = 0; k < q.n_q; k++) {
        const QLayer *ql = &q.q[k];
        int b = ql->wq.bits <= 2 ? 2 : (ql->wq.bits <= 4 ? 4 : 8);
        levels += (ql->layer->weight.n * (size_t)b + 7) / 8;
        ranges += (size_t)ql->cout * 4 + zero_bytes(ql->wq.zero.data, ql->cout, 0) + (size_t)ql->aq.n * 4 +
                  zero_bytes(ql->aq.zero.data, ql->aq.n, 1);
    }
    size_t want32 = levels + ranges + fp_rest + 4 * fp_layers, want16 = levels + ranges + fp_rest + 2 * fp_layers;
    print_message("  FP32 UNet %zu bytes; export UNet part %zu (1/%.2f), with F16 FP layers %zu (1/%.2f); "
                  "levels %zu, ranges+tables %zu, FP rest %zu, FP layer weights %zu floats in %zu tensors\n",
                  fp32, s32.unet_bytes, (double)fp32 / s32.unet_bytes, s16.unet_bytes, (double)fp32 / s16.unet_bytes,
                  levels, ranges, fp_rest, fp_layers, n_fp_layers_w);
    assert_int_equal(s32.unet_fp32_bytes, fp32);
    assert_int_equal(s32.unet_bytes, want32);
    assert_int_equal(s16.unet_bytes, want16);
    assert_true((double)s16.unet_bytes <= SIZE_TARGET * (double)fp32);
    assert_true((double)s32.unet_bytes <= (1.0 / 5.5) * (double)fp32);  // exact: about 1/5.9 (export.h "Size")
    // the file agrees with the summary, and says what its FP layers are
    static const char *const fp_meta[3] = {"F16", "F32", "F16-at-export"};
    const char *paths[3] = {p16, p32, pforced};
    for (int i = 0; i < 3; i++) {
        WeightFile *f;
        assert_int_equal(weights_open(&f, paths[i], &e), 0);
        assert_string_equal(weights_metadata(f, "effdm.fp_layers"), fp_meta[i]);
        weights_close(f);
    }
    ExportModel *em;
    assert_int_equal(export_load(&em, p16, &e), 0);
    assert_int_equal(em->unet_bytes, s16.unet_bytes);
    export_free(em);
    unlink(p32);
    unlink(p16);
    unlink(pforced);
    free(p32);
    free(p16);
    free(pforced);
    qmodel_free(&q);
    test_ctx_delete(c);
    teacher_close(&T);
}

/* ---- corrupted exports ------------------------------------------------------------------ */

// v with every `from` replaced by `to` (malloc'd); asserts there was one.
static char *replace_all(const char *v, const char *from, const char *to) {
    size_t cap = strlen(v) * (strlen(to) + 1) + 1, nf = strlen(from);
    char *out = malloc(cap), *o = out;
    int hits = 0;
    for (const char *p = v; *p;) {
        if (!strncmp(p, from, nf)) {
            o += sprintf(o, "%s", to);
            p += nf;
            hits++;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    assert_true(hits > 0);
    return out;
}

typedef struct {
    const char *drop;        // tensor left out
    const char *reshape;     // tensor written with one element less (1-D view)
    const char *drop_meta;   // metadata key left out
    const char *edit_meta;   // metadata key whose value has every `from` replaced by `to`
    const char *from, *to;   //   (at least one must be there)
} Corruption;

// Copies src to dst with one corruption (raw bytes; the writer keeps our pointers).
static void corrupt_copy(const char *src, const char *dst, const Corruption *k) {
    StFile f;
    Err e = {0};
    assert_int_equal(st_open(&f, src, &e), 0);
    StWriter w = {0};
    for (int i = 0; i < f.n_tensors; i++) {
        const StTensor *t = &f.tensors[i];
        if (k->drop && !strcmp(t->name, k->drop)) continue;
        if (k->reshape && !strcmp(t->name, k->reshape)) {
            int64_t n = (int64_t)t->numel - 1;
            assert_int_equal(st_writer_add(&w, t->name, t->dtype, 1, &n, st_data(&f, i), &e), 0);
            continue;
        }
        assert_int_equal(st_writer_add(&w, t->name, t->dtype, t->ndim, t->shape, st_data(&f, i), &e), 0);
    }
    for (int i = 0; i < f.n_meta; i++) {
        const char *key = f.meta[i].key;
        if (k->drop_meta && !strcmp(key, k->drop_meta)) continue;
        char *edited = k->edit_meta && !strcmp(key, k->edit_meta) ? replace_all(f.meta[i].value, k->from, k->to) : NULL;
        assert_int_equal(st_writer_meta(&w, key, edited ? edited : f.meta[i].value, &e), 0);
        free(edited);
    }
    assert_int_equal(st_write(&w, dst, &e), 0);
    st_writer_free(&w);
    st_close(&f);
}

// The default-recipe (EfficientDM) student of T, moved away from its start.
static void effdm_student(QModel *q, Ctx *c, Teacher *T) {
    RunConfig rc;
    run_config_defaults(&rc, RC_RECIPE_EFFDM);
    student_make(q, c, T, &rc, 1);
}

static void test_corrupt(void **state) {
    Teacher T = teacher_open();
    Ctx *c = test_ctx_new((size_t)1 << 30);
    QModel q;
    effdm_student(&q, c, &T);
    Err e = {0};
    char *good = tmp_path(".safetensors"), *bad = tmp_path(".safetensors");
    ExportInfo info = {.yaml = T.yaml};
    assert_int_equal(export_write(&q, T.m, T.f, &info, good, NULL, &e), 0);
    const char *L = "model.diffusion_model.input_blocks.1.0.in_layers.2";
    char qw[200], wd[200], az[200];
    snprintf(qw, sizeof qw, "%s.qweight", L);
    snprintf(wd, sizeof wd, "%s.w_delta", L);
    snprintf(az, sizeof az, "%s.a_zero", L);
    struct {
        Corruption k;
        int code;
        const char *named;
    } cases[] = {
        {{"model.diffusion_model.out.0.weight", NULL, NULL}, ERR_KEY, "model.diffusion_model.out.0.weight"},
        {{"model.diffusion_model.input_blocks.3.0.op.weight", NULL, NULL}, ERR_KEY, "input_blocks.3.0.op.weight"},
        {{qw, NULL, NULL}, ERR_KEY, qw},
        {{NULL, qw, NULL}, ERR_SHAPE, qw},
        {{NULL, wd, NULL}, ERR_SHAPE, wd},
        {{az, NULL, NULL}, ERR_KEY, az},
        {{NULL, "model.diffusion_model.out.0.bias", NULL}, ERR_SHAPE, "out.0.bias"},
        {{"first_stage_model.decoder.conv_out.weight", NULL, NULL}, ERR_KEY, "first_stage_model.decoder.conv_out"},
        {{NULL, NULL, "effdm.quant"}, ERR_FORMAT, "effdm.quant"},
        {{NULL, NULL, "effdm.format"}, ERR_FORMAT, "effdm.format"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        corrupt_copy(good, bad, &cases[i].k);
        ExportModel *em = NULL;
        e = (Err){0};
        int r = export_load(&em, bad, &e);
        print_message("  case %zu: %s (%s)\n", i, err_name(r), e.msg);
        assert_int_equal(r, cases[i].code);
        assert_null(em);
        assert_non_null(strstr(e.msg, cases[i].named));
    }
    // the teacher checkpoint is not an export
    ExportModel *em = NULL;
    e = (Err){0};
    assert_int_equal(export_load(&em, TEACHER_DIR "/model.ckpt", &e), ERR_FORMAT);
    assert_non_null(strstr(e.msg, "not an effdm export"));
    unlink(good);
    unlink(bad);
    free(good);
    free(bad);
    qmodel_free(&q);
    test_ctx_delete(c);
    teacher_close(&T);
}

/* ---- rotated layers in the export ------------------------------------------------------- */

// An export with rotated layers is marked effdm.format "3" (one without stays "2"), so that a
// build that does not know rotation refuses it; a "rotate" entry in a file of another format, or
// a block that is not a power of two dividing the layer's input channels, is refused naming the layer.
// A copy of the export at path with one metadata edit (written to bad) is refused as
// ERR_FORMAT, the message naming both parts.
typedef struct {
    Corruption k;
    const char *named[2];
} FormatCase;

static void expect_format_refusals(const char *path, const char *bad, const FormatCase *cases, size_t n) {
    for (size_t i = 0; i < n; i++) {
        corrupt_copy(path, bad, &cases[i].k);
        ExportModel *em = NULL;
        Err e = {0};
        int r = export_load(&em, bad, &e);
        print_message("  case %zu: %s (%s)\n", i, err_name(r), e.msg);
        assert_int_equal(r, ERR_FORMAT);
        assert_null(em);
        for (int j = 0; j < 2; j++) assert_has(e.msg, cases[i].named[j]);
    }
}

static void test_rotate_format(void **state) {
    Teacher T = teacher_open();
    Ctx *c = test_ctx_new((size_t)1 << 30);
    RunConfig rc = student_config(4, 4, 20);
    rc.quant.rotate = 64;
    QModel q;
    student_make(&q, c, &T, &rc, 0);
    char *path = student_export(&q, &T, NULL), *bad = tmp_path(".safetensors");
    Err e = {0};
    WeightFile *f;
    assert_int_equal(weights_open(&f, path, &e), 0);
    assert_string_equal(weights_metadata(f, "effdm.format"), EXPORT_FORMAT_ROT);
    weights_close(f);
    // time_embed.0 (32 input channels) is rotated with block 32
    const char *entry = "\"name\":\"time_embed.0\",\"role\":\"special\",\"w_bits\":8,\"a_bits\":8,\"entries\":1,"
                        "\"w_quantizer\":\"uniform\",\"a_quantizer\":\"uniform\",\"rotate\":32}";
    const FormatCase cases[] = {
        {{.edit_meta = "effdm.format", .from = "3", .to = "2"}, {"time_embed.0", "effdm.format"}},
        {{.edit_meta = "effdm.quant", .from = "\"rotate\":32}", .to = "\"rotate\":24}"}, {"time_embed.0", "rotate 24"}},
        {{.edit_meta = "effdm.quant", .from = "\"rotate\":32}", .to = "\"rotate\":64}"}, {"time_embed.0", "rotate 64"}},
        {{.edit_meta = "effdm.quant", .from = "\"rotate\":32}", .to = "\"rotate\":\"32\"}"}, {"'rotate'", "integer"}},
    };
    assert_int_equal(weights_open(&f, path, &e), 0);
    assert_non_null(strstr(weights_metadata(f, "effdm.quant"), entry));
    weights_close(f);
    expect_format_refusals(path, bad, cases, sizeof cases / sizeof cases[0]);
    qmodel_free(&q);
    unlink(path);
    free(path);
    // without rotation: format "2", as before rotation existed
    rc.quant.rotate = 0;
    student_make(&q, c, &T, &rc, 0);
    path = student_export(&q, &T, NULL);
    assert_int_equal(weights_open(&f, path, &e), 0);
    assert_string_equal(weights_metadata(f, "effdm.format"), EXPORT_FORMAT);
    assert_null(strstr(weights_metadata(f, "effdm.quant"), "rotate"));
    weights_close(f);
    unlink(path);
    unlink(bad);
    free(path);
    free(bad);
    qmodel_free(&q);
    test_ctx_delete(c);
    teacher_close(&T);
}

// dynamic per-token activation ranges (quant.act_granularity token): the float path runs the
// student's per-token quantizer with its learned ratios; format "4", whose per-layer field is
// checked on load
static void test_equivalence_token(void **state) {
    g_token = 1;
    check_equivalence(4, 4, 20, RC_FP_F16);
    g_token = 0;
    Teacher T = teacher_open();
    Ctx *c = test_ctx_new((size_t)1 << 30);
    RunConfig rc = student_config(4, 4, 20);
    rc.quant.act_granularity = RC_GRAN_TOKEN;
    QModel q;
    student_make(&q, c, &T, &rc, 0);
    char *path = student_export(&q, &T, NULL), *bad = tmp_path(".safetensors");
    Err e = {0};
    WeightFile *f;
    assert_int_equal(weights_open(&f, path, &e), 0);
    assert_string_equal(weights_metadata(f, "effdm.format"), EXPORT_FORMAT_TOKEN);
    const char *special = "\"name\":\"time_embed.0\",\"role\":\"special\",\"w_bits\":8,\"a_bits\":8,\"entries\":1,"
                          "\"w_quantizer\":\"uniform\",\"a_quantizer\":\"uniform\"}";
    assert_non_null(strstr(weights_metadata(f, "effdm.quant"), special));
    assert_non_null(strstr(weights_metadata(f, "effdm.quant"), "\"a_granularity\":\"token\"}"));
    weights_close(f);
    const FormatCase cases[] = {
        {{.edit_meta = "effdm.format", .from = "4", .to = "3"}, {"has an a_granularity", "other than '4'"}},
        {{.edit_meta = "effdm.quant", .from = "\"a_granularity\":\"token\"}", .to = "\"a_granularity\":\"pixel\"}"},
         {"a_granularity pixel", "layer '"}},
        {{.edit_meta = "effdm.quant", .from = "\"a_quantizer\":\"uniform\"}", .to = "\"a_quantizer\":\"uniform\",\"a_granularity\":\"token\"}"},
         {"time_embed.0", "special"}},
    };
    expect_format_refusals(path, bad, cases, sizeof cases / sizeof cases[0]);
    unlink(path);
    unlink(bad);
    free(path);
    free(bad);
    qmodel_free(&q);
    test_ctx_delete(c);
    teacher_close(&T);
}

/* ---- quantizer kinds in the export ------------------------------------------------------ */

// Every layer records its quantizer kinds (effdm.quant layers[].w_quantizer / a_quantizer); an
// export written before kinds existed (no such fields) loads as uniform and computes the same
// bits; a kind this build does not know, or a malformed one, is refused naming the layer.
static void test_quantizer_kinds(void **state) {
    Teacher T = teacher_open();
    Ctx *c = test_ctx_new((size_t)1 << 30);
    QModel q;
    effdm_student(&q, c, &T);
    char *path = student_export(&q, &T, NULL), *old = tmp_path(".safetensors"), *bad = tmp_path(".safetensors");
    Err e = {0};
    WeightFile *f;
    assert_int_equal(weights_open(&f, path, &e), 0);
    const char *json = weights_metadata(f, "effdm.quant");
    assert_non_null(json);
    const char *rec = "\"w_quantizer\":\"uniform\",\"a_quantizer\":\"uniform\"";
    int n_rec = 0;
    for (const char *p = json; (p = strstr(p, rec)); p++) n_rec++;
    assert_int_equal(n_rec, q.n_q);
    weights_close(f);

    corrupt_copy(path, old,
                 &(Corruption){.edit_meta = "effdm.quant", .from = ",\"w_quantizer\":\"uniform\",\"a_quantizer\":\"uniform\"", .to = ""});
    ExportModel *en = NULL, *eo = NULL;
    assert_int_equal(export_load(&en, path, &e), 0);
    int r = export_load(&eo, old, &e);
    if (r) print_error("old format: %s\n", e.msg);
    assert_int_equal(r, 0);
    assert_int_equal(eo->n_layers, en->n_layers);
    for (int k = 0; k < eo->n_layers; k++) {
        assert_int_equal(eo->layers[k].w_kind, QUANT_UNIFORM);
        assert_int_equal(eo->layers[k].a_kind, QUANT_UNIFORM);
        assert_int_equal(eo->layers[k].int_ok, en->layers[k].int_ok);
    }
    int C, H, W;
    ldm_latent_shape(T.m, &C, &H, &W);
    float *x = malloc((size_t)N_IN * C * H * W * sizeof(float)), t[N_IN];
    int y[N_IN];
    inputs(T.m, N_IN, 321, 5, x, t, y);
    for (int use_float = 0; use_float < 2; use_float++) {
        assert_int_equal(export_set_kernel(en, use_float ? "float" : "auto", &e), 0);
        assert_int_equal(export_set_kernel(eo, use_float ? "float" : "auto", &e), 0);
        export_set_timestep(en, 321);
        export_set_timestep(eo, 321);
        float *yn = forward(c, en->ldm, x, t, y, N_IN), *yo = forward(c, eo->ldm, x, t, y, N_IN);
        assert_memory_equal(yn, yo, (size_t)N_IN * C * H * W * sizeof(float));
        free(yn);
        free(yo);
    }
    export_free(en);
    export_free(eo);

    struct {
        const char *from, *to;
        int code;
        const char *named[2];
    } cases[] = {
        {"\"a_quantizer\":\"uniform\"}", "\"a_quantizer\":\"apot\"}", ERR_UNSUPPORTED, {"'apot'", "(uniform, "}},
        {"\"w_quantizer\":\"uniform\"", "\"w_quantizer\":4", ERR_FORMAT, {"w_quantizer", "time_embed.0"}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        corrupt_copy(path, bad, &(Corruption){.edit_meta = "effdm.quant", .from = cases[i].from, .to = cases[i].to});
        ExportModel *em = NULL;
        e = (Err){0};
        r = export_load(&em, bad, &e);
        print_message("  case %zu: %s (%s)\n", i, err_name(r), e.msg);
        assert_int_equal(r, cases[i].code);
        assert_null(em);
        for (int j = 0; j < 2; j++) assert_non_null(strstr(e.msg, cases[i].named[j]));
    }
    free(x);
    unlink(path);
    unlink(old);
    unlink(bad);
    free(path);
    free(old);
    free(bad);
    qmodel_free(&q);
    test_ctx_delete(c);
    teacher_close(&T);
}

/* ---- the CLI ------------------------------------------------------------------------ */

static const int CLI_STEPS = 4, CLI_SAMPLES = 2, CLI_INPUTS = 4, CLI_SEED = 11;

static void test_cli(void **state) {
    char *dir = tmp_path(""), *cfg = tmp_path(".yaml"), *model = tmp_path(".safetensors"), *out = tmp_path("_s");
    char run_dir[300], cmd[2000], body[300];
    snprintf(run_dir, sizeof run_dir, "%s/run", dir);
    snprintf(body, sizeof body,
             "calib: {steps: %d, n_samples: %d, batch: 2, n_inputs: %d, seed: %d}\n"
             "train: {steps: 10, guidance_fit_samples: 4, eps_gain: fit}\n",
             CLI_STEPS, CLI_SAMPLES, CLI_INPUTS, CLI_SEED);
    assert_int_equal(test_calibrate_teacher(cfg, body, run_dir, "--threads 2"), 0);
    assert_true(test_exists_in(run_dir, "config.yaml"));
    assert_true(test_exists_in(run_dir, "calib.safetensors"));
    assert_true(test_exists_in(run_dir, "state.safetensors"));
    // a second calibration does not replace the student silently
    snprintf(cmd, sizeof cmd, "%s calibrate --config %s 2>/dev/null", EFFDM_BIN, cfg);
    assert_int_equal(test_shell_status(cmd), 2);

    // an error after the recording (more activation inputs than recorded) writes nothing
    char bad_run[300];
    snprintf(bad_run, sizeof bad_run, "%s/bad", dir);
    snprintf(body, sizeof body, "calib: {steps: %d, n_samples: 1, n_inputs: 100}\n", CLI_STEPS);
    assert_int_equal(test_calibrate_teacher(cfg, body, bad_run, "2>/dev/null"), 2);
    assert_int_equal(access(bad_run, F_OK), -1);

    // the recorded inputs: every guided UNet call, both halves; step 0 is x_T of each trajectory
    WeightFile *f;
    Err e = {0};
    char p[400];
    snprintf(p, sizeof p, "%s/calib.safetensors", run_dir);
    assert_int_equal(weights_open(&f, p, &e), 0);
    int n = CLI_SAMPLES * CLI_STEPS * 2;
    const WeightInfo *wx = weights_find(f, "x");
    assert_non_null(wx);
    assert_int_equal(wx->shape[0], n);
    size_t per = (size_t)wx->shape[1] * wx->shape[2] * wx->shape[3];
    float *x = malloc((size_t)n * per * sizeof(float)), *t = malloc((size_t)n * sizeof(float));
    int64_t y[64], traj[64], step[64], used[64];
    assert_int_equal(weights_read_f32(f, "x", x, 4, (int[]){n, (int)wx->shape[1], (int)wx->shape[2],
                                                            (int)wx->shape[3]}, &e), 0);
    assert_int_equal(weights_read_f32(f, "t", t, 1, &n, &e), 0);
    assert_int_equal(weights_read_raw(f, "y", y, (size_t)n * 8, &e), 0);
    assert_int_equal(weights_read_raw(f, "traj", traj, (size_t)n * 8, &e), 0);
    assert_int_equal(weights_read_raw(f, "step", step, (size_t)n * 8, &e), 0);
    assert_int_equal(weights_read_raw(f, "used", used, (size_t)CLI_INPUTS * 8, &e), 0);
    float *xT = malloc(per * sizeof(float));
    Rng r;
    int seen_step0 = 0, n_uncond = 0;
    for (int i = 0; i < n; i++) {
        assert_true(step[i] >= 0 && step[i] < CLI_STEPS);
        // CompVis uniform: c = 1000 / 4 = 250, timesteps 1, 251, 501, 751, walked from the top
        assert_int_equal((int)t[i], 1 + 250 * (CLI_STEPS - 1 - (int)step[i]));
        n_uncond += y[i] == 10;
        if (step[i] != 0) continue;
        sample_initial_noise(&r, CLI_SEED, (int)traj[i], xT, per);
        assert_memory_equal(x + (size_t)i * per, xT, per * sizeof(float));
        seen_step0++;
    }
    assert_int_equal(seen_step0, 2 * CLI_SAMPLES);
    assert_int_equal(n_uncond, n / 2);
    for (int i = 0; i < CLI_INPUTS; i++) {
        assert_true(used[i] >= 0 && used[i] < n);
        for (int j = 0; j < i; j++) assert_true(used[i] != used[j]);
    }
    weights_close(f);
    free(x);
    free(t);
    free(xT);

    // export (naive PTQ) and sample from it
    snprintf(cmd, sizeof cmd, "%s export --run %s --out %s --threads 2", EFFDM_BIN, run_dir, model);
    assert_int_equal(test_shell_status(cmd), 0);
    {  // the effdm recipe fits a guidance gain (guidance_gain.h): one value per TALSQ entry, on the grid's range,
       // and selecting an entry sets the model's gain
        ExportModel *em;
        Err e = {0};
        if (export_load(&em, model, &e)) fail_msg("%s", e.msg);
        assert_non_null(em->guidance_gain);
        assert_int_equal(em->train_sched.n, 10);
        for (int k = 0; k < em->train_sched.n; k++) {
            assert_true(em->guidance_gain[k] >= GUIDANCE_GRID.min && em->guidance_gain[k] <= GUIDANCE_GRID.max);
            assert_true(em->guidance_gain[k] == em->guidance_gain[0]);
        }
        // and the eps gain (train.eps_gain fit) after it, within its walk's range
        assert_non_null(em->eps_gain);
        for (int k = 0; k < em->train_sched.n; k++) {
            assert_true(em->eps_gain[k] >= EPS_GRID.min && em->eps_gain[k] <= EPS_GRID.max);
            assert_true(em->eps_gain[k] == em->eps_gain[0]);
        }
        export_set_timestep(em, 500);
        assert_true(em->ldm->guidance_gain == em->guidance_gain[em->entry]);
        assert_true(em->ldm->eps_gain == em->eps_gain[em->entry]);
        export_free(em);
    }
    snprintf(cmd, sizeof cmd, "%s export --run %s --out %s.best --epoch best 2>/dev/null", EFFDM_BIN, run_dir, model);
    assert_int_equal(test_shell_status(cmd), 2);  // no best.safetensors before fine-tuning
    snprintf(cmd, sizeof cmd, "%s info %s | grep -Eq 'quant: +W4A4, special layers 8-bit'", EFFDM_BIN, model);
    assert_int_equal(test_shell_status(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s sample --model %s --n 4 --steps 4 --scale 3 --batch 4 --out %s --threads 2 | grep -q "
             "'the export.s fitted gain'", EFFDM_BIN, model, out);
    assert_int_equal(test_shell_status(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s sample --model %s --n 4 --steps 4 --scale 3 --batch 4 --out %s --threads 2 | grep -q "
             "'eps gain: '", EFFDM_BIN, model, out);
    assert_int_equal(test_shell_status(cmd), 0);
    assert_true(test_exists_in(out, "grid.png"));
    assert_true(test_exists_in(out, "0/00000.png"));
    assert_true(test_exists_in(out, "3/00003.png"));
    snprintf(cmd, sizeof cmd, "%s sample --model %s --ckpt x --out %s 2>/dev/null", EFFDM_BIN, model, out);
    assert_int_equal(test_shell_status(cmd), 2);

    test_remove_paths((char *[]){dir, cfg, model, out}, 4);
}

// guidance_parabola_min: the vertex of y = (x - 1.23)^2 + 0.5 from three samples, clamping, and
// the middle point when there is no curvature.
static void test_guidance_parabola(void **state) {
    (void)state;
    float x[3] = {1.1f, 1.2f, 1.3f}, y[3];
    for (int i = 0; i < 3; i++) y[i] = (x[i] - 1.23f) * (x[i] - 1.23f) + 0.5f;
    assert_true(fabsf(guidance_parabola_min(x, y) - 1.23f) < 1e-4f);
    for (int i = 0; i < 3; i++) y[i] = (x[i] - 2.0f) * (x[i] - 2.0f);
    assert_true(guidance_parabola_min(x, y) == 1.3f);
    for (int i = 0; i < 3; i++) y[i] = 1.0f - x[i];
    assert_true(guidance_parabola_min(x, y) == 1.2f);
}

// gain_search on closed-form errors: an interior minimum (the parabola's vertex, not measured),
// minima past each end of the start grid (the walk, its limit and its point cap), an error
// code passed through.
typedef struct {
    int kind, calls, fail_at;
} GainErr;

static int gain_err_at(float g, double *err, void *user) {
    GainErr *u = user;
    if (++u->calls == u->fail_at) return 7;
    double d = (double)g - (u->kind == 0 ? 1.23 : u->kind == 1 ? 0.62 : 3.0);
    *err = d * d + 0.5;
    return 0;
}

static void test_gain_search(void **state) {
    (void)state;
    GuidanceFit f;
    GainErr u = {0, 0, 0};
    assert_int_equal(gain_search(&GUIDANCE_GRID, gain_err_at, &u, &f), 0);
    assert_true(fabsf(f.gain - 1.23f) < 1e-4f);
    assert_int_equal(u.calls, 8);  // the start grid only
    assert_int_equal(f.n_grid, 8);
    u = (GainErr){1, 0, 0};  // below the grid: 0.8, 0.7, 0.6, 0.5 walked; 0.5 is worse than 0.6
    assert_int_equal(gain_search(&GUIDANCE_GRID, gain_err_at, &u, &f), 0);
    assert_int_equal(u.calls, 8 + 4);
    assert_true(fabsf(f.grid[0] - 0.5f) < 1e-5f && fabsf(f.grid[1] - 0.6f) < 1e-5f);
    for (int k = 1; k < f.n_grid; k++) assert_true(f.grid[k] > f.grid[k - 1]);  // ascending
    assert_true(fabsf(f.gain - 0.62f) < 1e-3f);
    u = (GainErr){2, 0, 0};  // above the grid: the walk stops at GAIN_FIT_MAX points
    assert_int_equal(gain_search(&GUIDANCE_GRID, gain_err_at, &u, &f), 0);
    assert_int_equal(u.calls, GAIN_FIT_MAX);
    assert_true(fabsf(f.gain - (0.9f + 0.1f * (GAIN_FIT_MAX - 1))) < 1e-5f);
    GainGrid narrow = {0.9f, 0.1f, 8, 0.5f, 1.8f};  // ... or at its limit
    assert_int_equal(gain_search(&narrow, gain_err_at, &u, &f), 0);
    assert_true(fabsf(f.gain - 1.8f) < 1e-5f);
    assert_int_equal(f.n_grid, 10);
    u = (GainErr){1, 0, 10};
    assert_int_equal(gain_search(&GUIDANCE_GRID, gain_err_at, &u, &f), 7);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_equivalence_w4a4), cmocka_unit_test(test_equivalence_w4a4_f32),
        cmocka_unit_test(test_equivalence_w2a8),
        cmocka_unit_test(test_equivalence_w3a8),
        cmocka_unit_test(test_size),             cmocka_unit_test(test_corrupt),
        cmocka_unit_test(test_cli),              cmocka_unit_test(test_guidance_parabola), cmocka_unit_test(test_gain_search),
        cmocka_unit_test(test_quantizer_kinds),  cmocka_unit_test(test_equivalence_easyquant),
        cmocka_unit_test(test_equivalence_nupes), cmocka_unit_test(test_equivalence_rotate),
        cmocka_unit_test(test_rotate_format),    cmocka_unit_test(test_equivalence_token),
    };
    return cmocka_run_group_tests_name("export", tests, NULL, NULL);
}
