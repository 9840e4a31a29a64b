/* qmodel.c: the quantized student over a UNet (EfficientDM quant_model.py
   QuantModel_intnlora: quant_module_refactor, set_first_last_layer_to_8bit, the TALSQ
   step counter as one shared entry). */
#include "qalora/qmodel.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/dtype.h"
#include "qalora/qkind.h"

void qmodel_config_defaults(QModelConfig *cfg) {
    memset(cfg, 0, sizeof *cfg);
    qsel_config_defaults(&cfg->sel);
    cfg->rank = 32;
    cfg->train_steps = 100;
    cfg->talsq = 1;
    cfg->w_init = QUANT_INIT_MAX;
    cfg->a_init = QUANT_INIT_MSE;
    cfg->kp = (QKindParams){QLAYER_EQ_OUTLIER_FRACTION, QLAYER_EQ_STEPS, QLAYER_EQ_LR};
    snprintf(cfg->fp_names[0], QMODEL_FP_NAME_MAX, "skip");
    snprintf(cfg->fp_names[1], QMODEL_FP_NAME_MAX, "op");
    cfg->n_fp_names = 2;
}

// Copies cfg into q->cfg so that the overrides live in q (the caller's array may go away).
static int config_copy(QModelConfig *dst, const QModelConfig *src, Err *e) {
    *dst = *src;
    if (src->sel.n_overrides > QMODEL_MAX_OVERRIDES)
        return err_set(e, ERR_VALUE, "quantization config: %d overrides (at most %d)", src->sel.n_overrides,
                       QMODEL_MAX_OVERRIDES);
    if (src->n_fp_names < 0 || src->n_fp_names > QMODEL_MAX_FP_NAMES)
        return err_set(e, ERR_VALUE, "quantization config: %d fp names (at most %d)", src->n_fp_names,
                       QMODEL_MAX_FP_NAMES);
    for (int i = 0; i < src->sel.n_overrides; i++) {
        const QSelOverride *o = &src->sel.overrides[i];
        snprintf(dst->pattern_store[i], QMODEL_PATTERN_MAX, "%s", o->pattern ? o->pattern : "");
        dst->override_store[i] = *o;
        dst->override_store[i].pattern = dst->pattern_store[i];
    }
    dst->sel.overrides = src->sel.n_overrides ? dst->override_store : NULL;
    return 0;
}

// 1 if the layer's leaf name contains one of the configured fp names.
static int fp_name_match(const QModelConfig *cfg, const ModelLayer *l) {
    const char *leaf = layer_leaf_name(l);
    for (int i = 0; i < cfg->n_fp_names; i++)
        if (cfg->fp_names[i][0] && strstr(leaf, cfg->fp_names[i])) return 1;
    return 0;
}

// select.h with the configured fp names: layers those names keep FP are hidden from
// qsel_select, so the special positions are counted among the layers really quantized (as
// the reference counts its replaced modules). select.h's own rule ("skip", "op") must be
// covered by the names: quantizing those layers is not implemented.
static int select_layers(QModel *q, Err *e) {
    ModelLayer **sub = malloc((size_t)q->n_all * sizeof *sub);
    int *sub_of = malloc((size_t)q->n_all * sizeof *sub_of);
    QSelChoice *sub_choice = calloc((size_t)q->n_all, sizeof *sub_choice);
    int rc = 0, n_sub = 0;
    if (!sub || !sub_of || !sub_choice) {
        rc = err_set(e, ERR_NOMEM, "out of memory selecting layers");
        goto done;
    }
    for (int i = 0; i < q->n_all; i++) {
        ModelLayer *l = q->all[i];
        int conv_or_linear = l->kind == LAYER_CONV2D || l->kind == LAYER_LINEAR;
        int fp_by_name = conv_or_linear && fp_name_match(&q->cfg, l);
        if (conv_or_linear && !qsel_rule_quantizes(l) && !fp_by_name) {
            rc = err_set(e, ERR_VALUE, "quant.fp_name_contains: layer '%s' would be quantized: quantizing layers "
                         "whose name contains 'skip' or 'op' is not implemented yet (keep both names in the list)",
                         l->name);
            goto done;
        }
        sub_of[i] = -1;
        if (fp_by_name) continue;
        sub_of[i] = n_sub;
        sub[n_sub++] = l;
    }
    if ((rc = qsel_select(sub, n_sub, &q->cfg.sel, sub_choice, e))) goto done;
    for (int i = 0; i < q->n_all; i++) {
        if (sub_of[i] >= 0) q->choice[i] = sub_choice[sub_of[i]];
        else q->choice[i] = (QSelChoice){QSEL_FP, 0, 0};
    }
done:
    free(sub);
    free(sub_of);
    free(sub_choice);
    return rc;
}

static void layer_qconfig(const QModel *q, int i, QLayerConfig *lc) {
    const QSelChoice *ch = &q->choice[i];
    qlayer_config_defaults(lc);
    lc->w_bits = ch->w_bits;
    lc->a_bits = ch->a_bits;
    lc->special = ch->role == QSEL_SPECIAL;
    lc->rank = lc->special ? 0 : q->cfg.rank;
    lc->n_entries = q->cfg.talsq ? q->train_sched.n : 1;
    lc->w_init = q->cfg.w_init;
    lc->a_init = q->cfg.a_init;
    lc->w_kind = ch->w_kind;
    lc->a_kind = ch->a_kind;
    lc->kp = q->cfg.kp;
    lc->rotate_block = q->cfg.rotate_block;
    lc->a_token = q->cfg.a_token;
}

// The float16 copies of the layers left FP (conv1d included: the export's FP layers are the same set).
static int init_fp16(QModel *q, Err *e) {
    int n = 0;
    for (int i = 0; i < q->n_all; i++) n += q->choice[i].role == QSEL_FP;
    q->fp16 = calloc((size_t)(n ? n : 1), sizeof *q->fp16);
    if (!q->fp16) return err_set(e, ERR_NOMEM, "out of memory for %d float16 layers", n);
    for (int i = 0; i < q->n_all; i++) {
        if (q->choice[i].role != QSEL_FP) continue;
        if (fplayer_init(&q->fp16[q->n_fp16], q->all[i], e)) return err_prefix(e, "quant.fp_layers: f16");
        q->n_fp16++;
    }
    return 0;
}

int qmodel_init(QModel *q, UNet *unet, const QModelConfig *cfg, int T, Rng *rng, Err *e) {
    memset(q, 0, sizeof *q);
    q->unet = unet;
    if (config_copy(&q->cfg, cfg, e)) return e->code;
    if (cfg->rank < 0) return err_set(e, ERR_VALUE, "quant.lora_rank: expected >= 0, found %d", cfg->rank);
    if (q->cfg.talsq) {
        if (talsq_ddim_uniform(&q->train_sched, T, cfg->train_steps, e)) return err_prefix(e, "train.steps");
    } else {
        // one activation (Δ, z) per layer: a table of one entry serves every timestep
        int t0 = 0;
        talsq_from_timesteps(&q->train_sched, &t0, 1, e);
    }
    q->all = unet_layers(unet, &q->n_all);
    q->choice = calloc((size_t)q->n_all, sizeof *q->choice);
    q->q_index = malloc((size_t)q->n_all * sizeof *q->q_index);
    q->state_sel = malloc((size_t)q->n_all * 3 * sizeof *q->state_sel);
    q->state_ts = malloc((size_t)q->train_sched.n * sizeof *q->state_ts);
    if (!q->choice || !q->q_index || !q->state_sel || !q->state_ts) {
        err_set(e, ERR_NOMEM, "out of memory for the quantized model");
        goto fail;
    }
    if (select_layers(q, e)) goto fail;
    for (int i = 0; i < q->n_all; i++) q->q_index[i] = q->choice[i].role == QSEL_FP ? -1 : q->n_q++;
    q->q = calloc((size_t)(q->n_q ? q->n_q : 1), sizeof *q->q);
    q->param_off = calloc((size_t)(q->n_q ? q->n_q : 1), sizeof *q->param_off);
    q->grad_off = calloc((size_t)(q->n_q ? q->n_q : 1), sizeof *q->grad_off);
    if (!q->q || !q->param_off || !q->grad_off) {
        err_set(e, ERR_NOMEM, "out of memory for %d quantized layers", q->n_q);
        goto fail;
    }
    // size table, then one parameter block and one gradient block carved by it
    for (int i = 0; i < q->n_all; i++) {
        int k = q->q_index[i];
        if (k < 0) continue;
        QLayerConfig lc;
        layer_qconfig(q, i, &lc);
        size_t np, ng;
        if (qlayer_sizes(q->all[i], &lc, &np, &ng, e)) goto fail;
        q->param_off[k] = q->n_params;
        q->grad_off[k] = q->n_grads;
        q->n_params += np;
        q->n_grads += ng;
    }
    q->params = calloc(q->n_params ? q->n_params : 1, sizeof(float));
    q->own_grads = calloc(q->n_grads ? q->n_grads : 1, sizeof(float));
    if (!q->params || !q->own_grads) {
        err_set(e, ERR_NOMEM, "out of memory for %zu trainable parameters", q->n_params);
        goto fail;
    }
    q->grads = q->own_grads;
    for (int i = 0; i < q->n_all; i++) {
        int k = q->q_index[i];
        if (k < 0) continue;
        QLayerConfig lc;
        layer_qconfig(q, i, &lc);
        int special = lc.special;
        if (qlayer_init(&q->q[k], q->all[i], &lc, special ? NULL : q->params + q->param_off[k],
                        special ? NULL : q->grads + q->grad_off[k], rng, e))
            goto fail;
        q->q[k].entry = &q->entry;
    }
    for (int i = 0; i < q->n_all; i++) {
        q->state_sel[3 * i] = (int32_t)q->choice[i].role;
        q->state_sel[3 * i + 1] = q->choice[i].w_bits;
        q->state_sel[3 * i + 2] = q->choice[i].a_bits;
    }
    q->state_cfg[0] = q->cfg.rank;
    q->state_cfg[1] = q->cfg.talsq ? q->train_sched.n : 1;
    q->state_cfg[2] = q->cfg.talsq;
    q->state_cfg[3] = q->n_all;
    for (int i = 0; i < q->train_sched.n; i++) q->state_ts[i] = q->train_sched.timesteps[i];
    q->state_fp_bits = q->cfg.fp_f16 ? 16 : 32;
    if (q->cfg.fp_f16 && init_fp16(q, e)) goto fail;
    return 0;
fail:
    qmodel_free(q);
    return e->code;
}

void qmodel_free(QModel *q) {
    if (!q) return;
    if (q->q)
        for (int k = 0; k < q->n_q; k++) qlayer_free(&q->q[k]);
    for (int k = 0; k < q->n_fp16; k++) fplayer_free(&q->fp16[k]);
    free(q->fp16);
    free(q->q);
    free(q->choice);
    free(q->q_index);
    free(q->param_off);
    free(q->grad_off);
    free(q->params);
    free(q->own_grads);
    free(q->state_sel);
    free(q->state_ts);
    memset(q, 0, sizeof *q);
}

size_t qmodel_step_weight_size(const QModel *q) {
    size_t n = 0;
    for (int k = 0; k < q->n_q; k++)
        if (!q->q[k].special) n += q->q[k].layer->weight.n;
    return n;
}

void qmodel_use_step_weights(QModel *q, float *eff, float *grad) {
    size_t off = 0;
    for (int k = 0; k < q->n_q; k++) {
        QLayer *l = &q->q[k];
        if (l->special) continue;
        qlayer_use_step_weight(l, eff ? eff + off : NULL, eff && grad ? grad + off : NULL);
        off += l->layer->weight.n;
    }
}

void qmodel_set_recompute(QModel *q, int on) {
    for (int k = 0; k < q->n_q; k++) q->q[k].recompute = on;
}

void qmodel_enable(QModel *q, int on) {
    for (int k = 0; k < q->n_q; k++) {
        if (on) qlayer_attach(&q->q[k]);
        else qlayer_detach(&q->q[k]);
    }
    for (int k = 0; k < q->n_fp16; k++) {
        if (on) fplayer_attach(&q->fp16[k]);
        else fplayer_detach(&q->fp16[k]);
    }
    q->enabled = on;
}

void qmodel_set_timestep(QModel *q, int t) { q->entry = q->cfg.talsq ? talsq_entry(&q->train_sched, t) : 0; }

void qmodel_counts(const QModel *q, int *trainable, int *special, int *fp) {
    int n[3] = {0, 0, 0};
    for (int i = 0; i < q->n_all; i++) n[q->choice[i].role]++;
    if (trainable) *trainable = n[QSEL_TRAINABLE];
    if (special) *special = n[QSEL_SPECIAL];
    if (fp) *fp = n[QSEL_FP];
}

size_t qmodel_bytes(const QModel *q) {
    size_t b = q->n_params * sizeof(float) + (q->own_grads ? q->n_grads * sizeof(float) : 0);
    for (int i = 0; i < q->n_q; i++) {
        const QLayer *l = &q->q[i];
        size_t nw = l->layer->weight.n, co = (size_t)l->cout;
        if (l->special)  // qlayer.c: [Δ_w | z_w | Δ_a | z_a | W_fq | the kinds' own values]
            b += (2 * co + 2 + nw + (size_t)l->wq.param.n + (size_t)l->aq.param.n) * sizeof(float);
        else b += co * sizeof(float) + nw;                       // z_w, W_int (one byte per level)
        b += co * (size_t)l->wq.n_side * (sizeof(int32_t) + sizeof(float));  // a side table
    }
    return b;
}

QLayer *qmodel_find(QModel *q, const char *name) {
    for (int k = 0; k < q->n_q; k++)
        if (!strcmp(q->q[k].layer->name, name)) return &q->q[k];
    return NULL;
}

/* ---- training interface ------------------------------------------------------------ */

int qmodel_trainable(QModel *q, QTrainable *out) {
    static const char *const suffix[QMODEL_GROUP_COUNT] = {"", "w_delta", "w_delta_base", "", ""};
    int n = 0;
    for (int k = 0; k < q->n_q; k++) {
        QLayer *ql = &q->q[k];
        Tensor *t[QLAYER_MAX_SLOTS];
        int m = qlayer_trainable(ql, t);
        size_t off = q->grad_off[k];
        for (int j = 0; j < m; j++) {
            if (out) {
                QTrainable *o = &out[n];
                o->t = t[j];
                o->layer = k;
                o->grad_off = off;
                const char *nm;
                if (t[j] == &ql->lora_a) o->group = QMODEL_GROUP_LORA, nm = "lora_a";
                else if (t[j] == &ql->lora_b) o->group = QMODEL_GROUP_LORA, nm = "lora_b";
                else if (t[j] == &ql->wq.delta) o->group = QMODEL_GROUP_W_DELTA_Q, nm = suffix[QMODEL_GROUP_W_DELTA_Q];
                else if (t[j] == &ql->w_delta_base)
                    o->group = QMODEL_GROUP_W_DELTA_BASE, nm = suffix[QMODEL_GROUP_W_DELTA_BASE];
                else if (t[j] == &ql->aq.delta) o->group = QMODEL_GROUP_ACT, nm = "a_delta";
                else if (t[j] == &ql->wq.param) o->group = QMODEL_GROUP_KIND, nm = "w_param";
                else if (t[j] == &ql->aq.param) o->group = QMODEL_GROUP_KIND, nm = "a_param";
                else o->group = QMODEL_GROUP_ACT, nm = "a_zero";
                snprintf(o->name, sizeof o->name, "q.%s.%s", ql->layer->name, nm);
            }
            off += t[j]->n;
            n++;
        }
    }
    return n;
}

double qmodel_lora_lr(const QModel *q, int layer, double divisor) {
    const QLayer *ql = &q->q[layer];
    double s = 0;
    for (int c = 0; c < ql->wq.n; c++) s += (double)ql->wq.delta.data[c];
    return s / (double)ql->wq.n / divisor;
}

void qmodel_bind_grads(QModel *q, float *grads) { qmodel_bind_grads_ex(q, grads, QGRAD_ZERO_ALL); }

size_t qmodel_act_grad_ranges(QModel *q, size_t *off, size_t *len) {
    size_t n = 0, end = (size_t)-1;  // end of the last range: a range that starts there extends it
    for (int k = 0; k < q->n_q; k++) {
        if (q->q[k].special) continue;
        Tensor *t[QLAYER_MAX_SLOTS];
        int nt = qlayer_trainable(&q->q[k], t);
        size_t o = q->grad_off[k];
        for (int i = 0; i < nt; o += t[i]->n, i++) {
            if (!qlayer_is_act_tensor(&q->q[k], t[i])) continue;
            if (n && o == end) {
                if (off && len) len[n - 1] += t[i]->n;
            } else {
                if (off && len) off[n] = o, len[n] = t[i]->n;
                n++;
            }
            end = o + t[i]->n;
        }
    }
    return n;
}

void qmodel_bind_grads_ex(QModel *q, float *grads, QGradZero zero) {
    for (int k = 0; k < q->n_q; k++)
        if (!q->q[k].special) qlayer_bind_grads_ex(&q->q[k], grads + q->grad_off[k], zero);
    if (grads != q->own_grads) {
        free(q->own_grads);
        q->own_grads = NULL;
    }
    q->grads = grads;
}

void qmodel_zero_grads(QModel *q) {
    if (q->grads && q->n_grads) memset(q->grads, 0, q->n_grads * sizeof(float));
}

/* ---- calibration ------------------------------------------------------------------- */

// One forward with every layer in `mode` (QCALIB_FIT resets the layers' ranges first).
static int calibrate_forward(QModel *q, Ctx *c, QModelForwardFn fwd, void *user, QCalibMode mode, Err *e) {
    int was_enabled = q->enabled;
    qmodel_enable(q, 1);
    for (int k = 0; k < q->n_q; k++) {
        q->q[k].calib = mode;
        if (mode == QCALIB_FIT) q->q[k].act_ready = 0;
    }
    int prev_grad = ctx_set_grad(c, 0);
    size_t mark = arena_mark(&c->arena);
    Tensor *out = fwd(c, user);
    int rc = 0;
    if (!out) rc = err_set(e, c->err.code ? c->err.code : ERR_INTERNAL, "calibration forward: %s", c->err.msg);
    arena_release(&c->arena, mark);
    ctx_set_grad(c, prev_grad);
    for (int k = 0; k < q->n_q; k++) {
        q->q[k].calib = QCALIB_OFF;
        if (!rc && !q->q[k].act_ready)
            rc = err_set(e, ERR_VALUE, "calibration forward: layer '%s' received no input", q->q[k].layer->name);
    }
    if (!was_enabled) qmodel_enable(q, 0);
    return rc;
}

int qmodel_calibrate_acts(QModel *q, Ctx *c, QModelForwardFn fwd, void *user, Err *e) {
    return calibrate_forward(q, c, fwd, user, QCALIB_FIT, e);
}

typedef struct {
    Ldm *ldm;
    const float *x, *t;
    const int *y;
    int n;
} LdmCalib;

static Tensor *ldm_calib_forward(Ctx *c, void *user) {
    LdmCalib *u = user;
    int C, H, W;
    ldm_latent_shape(u->ldm, &C, &H, &W);
    Tensor *x = tensor_from(c, u->x, 4, (int[]){u->n, C, H, W});
    return ldm_apply_model(c, u->ldm, x, u->t, u->y);
}

// One calibration forward in `mode` on n recorded inputs of ldm's UNet.
static int calibrate_ldm(QModel *q, Ctx *c, Ldm *ldm, const float *x, const float *t, const int *y, int n,
                         QCalibMode mode, Err *e) {
    if (ldm->unet != q->unet)
        return err_set(e, ERR_INTERNAL, "calibration: the model's UNet is not the one the student wraps");
    if (n < 1) return err_set(e, ERR_VALUE, "calibration: no inputs");
    LdmCalib u = {ldm, x, t, y, n};
    return calibrate_forward(q, c, ldm_calib_forward, &u, mode, e);
}

int qmodel_calibrate_ldm(QModel *q, Ctx *c, Ldm *ldm, const float *x, const float *t, const int *y, int n, Err *e) {
    return calibrate_ldm(q, c, ldm, x, t, y, n, QCALIB_FIT, e);
}

int qmodel_calibrate_ldm_entry(QModel *q, Ctx *c, Ldm *ldm, const float *x, const float *t, const int *y, int n,
                               int entry, Err *e) {
    if (!q->cfg.talsq) return err_set(e, ERR_VALUE, "calib.act_ranges: per_step needs quant.talsq: true");
    if (entry < 0 || entry >= q->train_sched.n)
        return err_set(e, ERR_VALUE, "calibration: TALSQ entry %d of %d", entry, q->train_sched.n);
    int was = q->entry;
    q->entry = entry;
    int rc = calibrate_ldm(q, c, ldm, x, t, y, n, QCALIB_FIT_ENTRY, e);
    q->entry = was;
    return rc;
}

/* ---- state I/O --------------------------------------------------------------------- */

// The tensors of one layer in a state (writer and reader walk the same list): name suffix,
// dtype, shape and where the values live.
enum { LAYER_TENSORS_MAX = 12 };
typedef struct {
    const char *suffix;
    DType dtype;
    int ndim;
    int64_t shape[WEIGHTS_MAX_DIMS];
    void *data;
} LayerTensor;

static int layer_tensor_f32(LayerTensor *t, const char *suffix, float *data, int ndim, const int *shape) {
    *t = (LayerTensor){suffix, DT_F32, ndim, {0}, data};
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    return 1;
}

static int layer_tensors(QLayer *ql, LayerTensor *t) {
    int n = 0;
    if (!ql->special) {
        const Tensor *wt = &ql->layer->weight;
        t[n] = (LayerTensor){"w_int", DT_U8, wt->ndim, {0}, ql->w_int};
        for (int d = 0; d < wt->ndim; d++) t[n].shape[d] = wt->shape[d];
        n++;
        if (ql->rank > 0) {
            n += layer_tensor_f32(&t[n], "lora_a", ql->lora_a.data, ql->lora_a.ndim, ql->lora_a.shape);
            n += layer_tensor_f32(&t[n], "lora_b", ql->lora_b.data, ql->lora_b.ndim, ql->lora_b.shape);
        }
    }
    n += layer_tensor_f32(&t[n], "w_delta", ql->wq.delta.data, 1, &ql->cout);
    n += layer_tensor_f32(&t[n], "w_zero", ql->wq.zero.data, 1, &ql->cout);
    n += layer_tensor_f32(&t[n], "a_delta", ql->aq.delta.data, 1, &ql->aq.n);
    n += layer_tensor_f32(&t[n], "a_zero", ql->aq.zero.data, 1, &ql->aq.n);
    if (ql->wq.param.data)  // the kinds' own values (nupes: one exponent per channel / per table entry)
        n += layer_tensor_f32(&t[n], "w_param", ql->wq.param.data, 1, ql->wq.param.shape);
    if (ql->aq.param.data) n += layer_tensor_f32(&t[n], "a_param", ql->aq.param.data, 1, ql->aq.param.shape);
    if (ql->wq.n_side) {  // the weight kind's side table (positions inside a channel, W_base's values)
        int shape[2] = {ql->cout, ql->wq.n_side};
        t[n++] = (LayerTensor){"w_side_idx", DT_I32, 2, {shape[0], shape[1]}, ql->wq.side_idx};
        n += layer_tensor_f32(&t[n], "w_side_val", ql->wq.side_val, 2, shape);
    }
    return n;
}

/* The layers' quantizer kinds, in the metadata <prefix>sel.quantizers: a JSON object
   {"<layer>": ["<weight kind>", "<activation kind>"], ...} over the quantized layers in
   registration order. States written before kinds existed have none: every layer uniform. */
static int write_kinds(const QModel *q, StWriter *w, const char *prefix, Err *e) {
    cJSON *o = cJSON_CreateObject();
    int ok = o != NULL;
    for (int k = 0; ok && k < q->n_q; k++) {
        const QLayer *ql = &q->q[k];
        const char *pair[2] = {quant_kind_name(ql->wq.kind), quant_kind_name(ql->aq.kind)};
        cJSON *a = cJSON_CreateStringArray(pair, 2);
        ok = a && cJSON_AddItemToObject(o, ql->layer->name, a);
        if (a && !ok) cJSON_Delete(a);
    }
    char *text = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!text) return err_set(e, ERR_NOMEM, "out of memory writing the quantizer kinds");
    char key[512];
    snprintf(key, sizeof key, "%s%s", prefix, QMODEL_KINDS_META);
    int rc = st_writer_meta(w, key, text, e);
    cJSON_free(text);
    return rc;
}

// The kind named at index i of a layer's pair, checked against the layer's own.
static int check_kind(const QLayer *ql, const cJSON *pair, int i, QuantKind have, const char *path, const char *key,
                      Err *e) {
    static const char *const what[2] = {"weight", "activation"};
    static const char *const cfg_key[2] = {"quant.weight_quantizer", "quant.act_quantizer"};
    const cJSON *v = cJSON_GetArrayItem(pair, i);
    QuantKind k;
    if (!cJSON_IsString(v))
        return err_set(e, ERR_FORMAT, "%s: metadata %s: layer '%s': expected [weight kind, activation kind]", path, key,
                       ql->layer->name);
    if (qkind_find(v->valuestring, &k)) {
        char known[256];
        return err_set(e, ERR_VALUE, "%s: metadata %s: layer '%s': unknown %s quantizer '%s' (this build knows: %s)",
                       path, key, ql->layer->name, what[i], v->valuestring, qkind_list(known, sizeof known));
    }
    if (k != have)
        return err_set(e, ERR_VALUE, "%s: layer '%s': %s quantizer '%s' in the state, '%s' in the config (%s, "
                       "quant.overrides)", path, ql->layer->name, what[i], quant_kind_name(k), quant_kind_name(have),
                       cfg_key[i]);
    return 0;
}

// The saved kinds against the QModel's; absent: every layer uniform (older states).
static int check_kinds(const QModel *q, WeightFile *f, const char *prefix, Err *e) {
    char key[512];
    const char *path = weights_path(f);
    snprintf(key, sizeof key, "%s%s", prefix, QMODEL_KINDS_META);
    const char *text = weights_metadata(f, key);
    if (!text) {
        for (int k = 0; k < q->n_q; k++) {
            const QLayer *ql = &q->q[k];
            if (ql->wq.kind != QUANT_UNIFORM || ql->aq.kind != QUANT_UNIFORM)
                return err_set(e, ERR_VALUE, "%s: layer '%s': uniform quantizers in the state (it records no "
                               "kinds: written before quantizer kinds existed), %s / %s in the config "
                               "(quant.weight_quantizer, quant.act_quantizer, quant.overrides)", path, ql->layer->name,
                               quant_kind_name(ql->wq.kind), quant_kind_name(ql->aq.kind));
        }
        return 0;
    }
    cJSON *o = cJSON_Parse(text);
    int rc = 0;
    if (!cJSON_IsObject(o)) rc = err_set(e, ERR_FORMAT, "%s: metadata %s is not a JSON object", path, key);
    for (int k = 0; !rc && k < q->n_q; k++) {
        const QLayer *ql = &q->q[k];
        const cJSON *pair = cJSON_GetObjectItemCaseSensitive(o, ql->layer->name);
        if (!cJSON_IsArray(pair) || cJSON_GetArraySize(pair) != 2)
            rc = err_set(e, ERR_FORMAT, "%s: metadata %s: layer '%s': expected [weight kind, activation kind]", path,
                         key, ql->layer->name);
        else if (!(rc = check_kind(ql, pair, 0, ql->wq.kind, path, key, e)))
            rc = check_kind(ql, pair, 1, ql->aq.kind, path, key, e);
    }
    cJSON_Delete(o);
    return rc;
}

int qmodel_write_state(const QModel *q, StWriter *w, const char *prefix, Err *e) {
    char name[512];
    if (write_kinds(q, w, prefix, e)) return e->code;
    snprintf(name, sizeof name, "%ssel.layers", prefix);
    if (st_writer_add(w, name, DT_I32, 2, (int64_t[]){q->n_all, 3}, q->state_sel, e)) return e->code;
    snprintf(name, sizeof name, "%ssel.config", prefix);
    if (st_writer_add(w, name, DT_I32, 1, (int64_t[]){4}, q->state_cfg, e)) return e->code;
    snprintf(name, sizeof name, "%ssel.fp_bits", prefix);
    if (st_writer_add(w, name, DT_I32, 1, (int64_t[]){1}, &q->state_fp_bits, e)) return e->code;
    if (q->cfg.rotate_block > 0) {  // only then: an unrotated state stays as it was before rotation existed
        snprintf(name, sizeof name, "%ssel.rotate", prefix);
        if (st_writer_add(w, name, DT_I32, 1, (int64_t[]){1}, &q->cfg.rotate_block, e)) return e->code;
    }
    if (q->cfg.a_token) {  // only then, as sel.rotate
        snprintf(name, sizeof name, "%ssel.act_token", prefix);
        if (st_writer_add(w, name, DT_I32, 1, (int64_t[]){1}, &q->cfg.a_token, e)) return e->code;
    }
    snprintf(name, sizeof name, "%stalsq.timesteps", prefix);
    if (st_writer_add(w, name, DT_I32, 1, (int64_t[]){q->train_sched.n}, q->state_ts, e)) return e->code;
    for (int k = 0; k < q->n_q; k++) {
        LayerTensor lt[LAYER_TENSORS_MAX];
        int n = layer_tensors((QLayer *)&q->q[k], lt);
        for (int i = 0; i < n; i++) {
            snprintf(name, sizeof name, "%s%s.%s", prefix, q->q[k].layer->name, lt[i].suffix);
            if (st_writer_add(w, name, lt[i].dtype, lt[i].ndim, lt[i].shape, lt[i].data, e)) return e->code;
        }
    }
    return 0;
}

// Reads an integer tensor of the given dtype and exact shape (raw bytes). ERR_KEY / ERR_SHAPE
// / ERR_DTYPE naming it.
static int read_ints(WeightFile *f, const char *name, DType dt, int ndim, const int64_t *shape, void *dst,
                     size_t elem, Err *e) {
    const WeightInfo *wi = weights_find(f, name);
    if (!wi) return err_set(e, ERR_KEY, "%s: tensor '%s' is missing", weights_path(f), name);
    if (wi->dtype != dt)
        return err_set(e, ERR_DTYPE, "%s: tensor '%s': expected dtype %s, found %s", weights_path(f), name,
                       dtype_name(dt), dtype_name(wi->dtype));
    int same = wi->ndim == ndim;
    size_t n = 1;
    for (int d = 0; d < ndim; d++) {
        same = same && wi->shape[d] == shape[d];
        n *= (size_t)shape[d];
    }
    if (!same) {
        char a[96] = "", b[96] = "";
        for (int d = 0; d < ndim; d++)
            snprintf(a + strlen(a), sizeof a - strlen(a), "%s%lld", d ? ", " : "", (long long)shape[d]);
        for (int d = 0; d < wi->ndim; d++)
            snprintf(b + strlen(b), sizeof b - strlen(b), "%s%lld", d ? ", " : "", (long long)wi->shape[d]);
        return err_set(e, ERR_SHAPE, "%s: tensor '%s': expected shape (%s), found (%s)", weights_path(f), name, a,
                       b);
    }
    return weights_read_raw(f, name, dst, n * elem, e);
}

static int read_f32(WeightFile *f, const char *name, float *dst, int ndim, const int *shape, Err *e) {
    if (!weights_find(f, name)) return err_set(e, ERR_KEY, "%s: tensor '%s' is missing", weights_path(f), name);
    return weights_read_f32(f, name, dst, ndim, shape, e);
}

// The saved selection and config against the QModel's (built from the current config).
static int check_selection(QModel *q, WeightFile *f, const char *prefix, Err *e) {
    char name[512];
    const char *path = weights_path(f);
    int32_t cfgv[4];
    snprintf(name, sizeof name, "%ssel.config", prefix);
    if (read_ints(f, name, DT_I32, 1, (int64_t[]){4}, cfgv, 4, e)) return e->code;
    if (cfgv[3] != q->n_all)
        return err_set(e, ERR_VALUE, "%s: the state is of a model with %d conv/linear layers, this UNet has %d", path,
                       cfgv[3], q->n_all);
    if (cfgv[0] != q->state_cfg[0])
        return err_set(e, ERR_VALUE, "%s: LoRA rank %d in the state, %d in the config (quant.lora_rank)", path,
                       cfgv[0], q->state_cfg[0]);
    if (cfgv[2] != q->state_cfg[2] || cfgv[1] != q->state_cfg[1])
        return err_set(e, ERR_VALUE, "%s: TALSQ %s with %d entries in the state, %s with %d in the config "
                       "(quant.talsq, train.steps)", path, cfgv[2] ? "on" : "off", cfgv[1],
                       q->state_cfg[2] ? "on" : "off", q->state_cfg[1]);
    // states written before quant.fp_layers existed trained float32 FP layers
    int32_t fp_bits = 32;
    snprintf(name, sizeof name, "%ssel.fp_bits", prefix);
    if (weights_find(f, name) && read_ints(f, name, DT_I32, 1, (int64_t[]){1}, &fp_bits, 4, e)) return e->code;
    if (fp_bits != q->state_fp_bits)
        return err_set(e, ERR_VALUE, "%s: the FP layers' weights are float%d in the state, float%d in the config "
                       "(quant.fp_layers: f%d)%s", path, (int)fp_bits, (int)q->state_fp_bits, (int)q->state_fp_bits,
                       fp_bits == 32 && !weights_find(f, name) ? " - the state predates quant.fp_layers: set "
                       "quant.fp_layers: f32 in the run's config.yaml" : "");
    int32_t rot = 0;  // absent: not rotated
    snprintf(name, sizeof name, "%ssel.rotate", prefix);
    if (weights_find(f, name) && read_ints(f, name, DT_I32, 1, (int64_t[]){1}, &rot, 4, e)) return e->code;
    if (rot != q->cfg.rotate_block)
        return err_set(e, ERR_VALUE, "%s: Hadamard rotation block %d in the state, %d in the config (quant.rotate)",
                       path, (int)rot, q->cfg.rotate_block);
    int32_t tok = 0;  // absent: static per-tensor ranges
    snprintf(name, sizeof name, "%ssel.act_token", prefix);
    if (weights_find(f, name) && read_ints(f, name, DT_I32, 1, (int64_t[]){1}, &tok, 4, e)) return e->code;
    if ((tok != 0) != (q->cfg.a_token != 0))
        return err_set(e, ERR_VALUE, "%s: activation ranges per %s in the state, per %s in the config "
                       "(quant.act_granularity)", path, tok ? "token" : "tensor", q->cfg.a_token ? "token" : "tensor");
    int32_t *sel = malloc((size_t)q->n_all * 3 * sizeof *sel);
    int32_t *ts = malloc((size_t)q->train_sched.n * sizeof *ts);
    int rc = 0;
    if (!sel || !ts) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto done;
    }
    snprintf(name, sizeof name, "%ssel.layers", prefix);
    if ((rc = read_ints(f, name, DT_I32, 2, (int64_t[]){q->n_all, 3}, sel, 4, e))) goto done;
    for (int i = 0; i < q->n_all; i++) {
        const int32_t *s = sel + 3 * i, *m = q->state_sel + 3 * i;
        if (s[0] == m[0] && s[1] == m[1] && s[2] == m[2]) continue;
        QSelRole sr = (s[0] >= QSEL_FP && s[0] <= QSEL_SPECIAL) ? (QSelRole)s[0] : QSEL_FP;
        rc = err_set(e, ERR_VALUE, "%s: layer '%s': %s W%d/A%d in the state, %s W%d/A%d in the config", path,
                     q->all[i]->name, qsel_role_name(sr), s[1], s[2], qsel_role_name((QSelRole)m[0]), m[1], m[2]);
        goto done;
    }
    snprintf(name, sizeof name, "%stalsq.timesteps", prefix);
    if ((rc = read_ints(f, name, DT_I32, 1, (int64_t[]){q->train_sched.n}, ts, 4, e))) goto done;
    for (int i = 0; i < q->train_sched.n; i++)
        if (ts[i] != q->train_sched.timesteps[i]) {
            rc = err_set(e, ERR_VALUE, "%s: training timestep %d is %d in the state, %d in the config", path, i,
                         ts[i], q->train_sched.timesteps[i]);
            goto done;
        }
done:
    free(sel);
    free(ts);
    return rc;
}

static int read_layer(QLayer *ql, WeightFile *f, const char *prefix, Err *e) {
    char name[512];
    LayerTensor lt[LAYER_TENSORS_MAX];
    int n = layer_tensors(ql, lt);
    const Tensor *wt = &ql->layer->weight;
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "%s%s.%s", prefix, ql->layer->name, lt[i].suffix);
        if (lt[i].dtype == DT_F32) {
            int shape[WEIGHTS_MAX_DIMS];
            for (int d = 0; d < lt[i].ndim; d++) shape[d] = (int)lt[i].shape[d];
            if (read_f32(f, name, lt[i].data, lt[i].ndim, shape, e)) return e->code;
            if (lt[i].data == ql->wq.param.data || lt[i].data == ql->aq.param.data) {  // nupes: exponents > 0
                const float *v = lt[i].data;
                for (int j = 0; j < shape[0]; j++)
                    if (!(v[j] > 0.0f && v[j] <= 100.0f))
                        return err_set(e, ERR_VALUE, "%s: tensor '%s': value %g at %d (expected a positive exponent)",
                                       weights_path(f), name, (double)v[j], j);
            }
            continue;
        }
        if (read_ints(f, name, lt[i].dtype, lt[i].ndim, lt[i].shape, lt[i].data, dtype_size(lt[i].dtype), e))
            return e->code;
        if (lt[i].data == ql->wq.side_idx) {  // each channel's positions ascending inside the channel
            for (int o = 0; o < ql->cout; o++)
                for (int s = 0; s < ql->wq.n_side; s++) {
                    int32_t p = ql->wq.side_idx[(size_t)o * ql->wq.n_side + s];
                    int32_t prev = s ? ql->wq.side_idx[(size_t)o * ql->wq.n_side + s - 1] : -1;
                    if (p <= prev || (size_t)p >= ql->k)
                        return err_set(e, ERR_VALUE, "%s: tensor '%s': channel %d: position %d (expected ascending "
                                       "positions in 0..%zu)", weights_path(f), name, o, (int)p, ql->k - 1);
                }
            continue;
        }
        int qmax = quantizer_qmax(&ql->wq);
        for (size_t j = 0; j < wt->n; j++)
            if (ql->w_int[j] > qmax)
                return err_set(e, ERR_VALUE, "%s: tensor '%s': level %d at %zu exceeds %d (%d bits)", weights_path(f),
                               name, ql->w_int[j], j, qmax, ql->wq.bits);
    }
    // a special layer's fixed weight follows from the FP weight and its (now restored) ranges
    if (ql->special && qlayer_special_refit(ql))
        return err_set(e, ERR_NOMEM, "out of memory restoring layer '%s'", ql->layer->name);
    ql->act_ready = 1;
    return 0;
}

int qmodel_read_state(QModel *q, WeightFile *f, const char *prefix, Err *e) {
    if (check_selection(q, f, prefix, e) || check_kinds(q, f, prefix, e)) return e->code;
    for (int k = 0; k < q->n_q; k++)
        if (read_layer(&q->q[k], f, prefix, e)) return e->code;
    return 0;
}
