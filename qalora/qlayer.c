/* qlayer.c: the QALoRA layer (EfficientDM quant_layer.py QuantModule_intnlora) and the
   special 8-bit layer (QuantModule). */
#include "qalora/qlayer.h"

#include "autograd/ops/gemm_util.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/profile.h"
#include "qalora/qkind.h"
#include "qalora/rotate.h"
#include "qalora/token_quant.h"

void qlayer_config_defaults(QLayerConfig *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->w_bits = 4;
    cfg->a_bits = 4;
    cfg->rank = 32;
    cfg->n_entries = 100;
    cfg->w_init = QUANT_INIT_MAX;
    cfg->a_init = QUANT_INIT_MSE;
    cfg->w_kind = QUANT_UNIFORM;
    cfg->a_kind = QUANT_UNIFORM;
    cfg->kp = (QKindParams){QLAYER_EQ_OUTLIER_FRACTION, QLAYER_EQ_STEPS, QLAYER_EQ_LR};
}

// Output channels and weight row length of a conv2d / linear layer; 0 or an ERR_ code.
static int layer_dims(const ModelLayer *l, int *cout, size_t *k, Err *e) {
    char s[64];
    if (l->kind == LAYER_CONV1D)
        return err_set(e, ERR_VALUE, "layer '%s': conv1d layers are not quantized (they stay FP)", l->name);
    int want = l->kind == LAYER_LINEAR ? 2 : 4;
    if (!l->weight.data || l->weight.ndim != want || l->weight.n == 0)
        return err_set(e, ERR_SHAPE, "layer '%s': weight of shape %s (expected %d dims)", l->name,
                       tensor_shape_str(&l->weight, s, sizeof s), want);
    *cout = l->weight.shape[0];
    *k = l->weight.n / (size_t)*cout;
    return 0;
}

// The layer's input channels (dim 1 of a conv2d / linear weight).
static int layer_cin(const ModelLayer *l) { return l->weight.shape[1]; }

// w (the layer's weight) through the layer's rotation along its input channels (rotate.h
// "Layout"); H is its own inverse, so this maps both ways.
static void weight_rotate(const QLayer *q, float *w) {
    const Tensor *t = &q->layer->weight;
    rotate_apply(w, (size_t)q->cout, layer_cin(q->layer), t->n / ((size_t)q->cout * (size_t)layer_cin(q->layer)), q->rot);
}

void qlayer_weight_unrotate(const QLayer *q, float *w) {
    if (q->rot) weight_rotate(q, w);
}

// The FP weight in the layer's basis: l's own data, or (rotated layer) a rotated copy in *tmp
// (free it). NULL when out of memory.
static const float *weight_in_basis(const QLayer *q, float **tmp) {
    const Tensor *t = &q->layer->weight;
    *tmp = NULL;
    if (!q->rot) return t->data;
    *tmp = malloc(t->n * sizeof(float));
    if (!*tmp) return NULL;
    memcpy(*tmp, t->data, t->n * sizeof(float));
    weight_rotate(q, *tmp);
    return *tmp;
}

static int bits_valid(int b) { return b >= QUANT_MIN_BITS && b <= QUANT_MAX_BITS; }

int qlayer_sizes(const ModelLayer *l, const QLayerConfig *cfg, size_t *n_params, size_t *n_grads, Err *e) {
    int cout = 0;
    size_t k = 0;
    *n_params = *n_grads = 0;
    int rc = layer_dims(l, &cout, &k, e);
    if (rc) return rc;
    if (!bits_valid(cfg->w_bits) || !bits_valid(cfg->a_bits))
        return err_set(e, ERR_VALUE, "layer '%s': %d-bit weights, %d-bit activations (supported: %d..%d)", l->name,
                       cfg->w_bits, cfg->a_bits, QUANT_MIN_BITS, QUANT_MAX_BITS);
    if (!qkind_valid((int)cfg->w_kind) || !qkind_valid((int)cfg->a_kind))
        return err_set(e, ERR_VALUE, "layer '%s': quantizer kinds %d, %d (the table has %d)", l->name, (int)cfg->w_kind,
                       (int)cfg->a_kind, QUANT_KIND_COUNT);
    if (qkind_get(cfg->a_kind)->weight_only)
        return err_set(e, ERR_VALUE, "layer '%s': the %s quantizer is for weights only, not activations", l->name,
                       quant_kind_name(cfg->a_kind));
    if (cfg->a_token && !cfg->special && cfg->a_kind != QUANT_UNIFORM)
        return err_set(e, ERR_VALUE, "layer '%s': per-token activation ranges need the uniform activation quantizer, "
                       "not %s", l->name, quant_kind_name(cfg->a_kind));
    if (cfg->special) return 0;
    if (cfg->rank < 0 || cfg->n_entries < 1)
        return err_set(e, ERR_VALUE, "layer '%s': LoRA rank %d, %d TALSQ entries (expected rank >= 0, entries >= 1)",
                       l->name, cfg->rank, cfg->n_entries);
    size_t r = (size_t)cfg->rank, S = (size_t)cfg->n_entries, co = (size_t)cout;
    size_t pw = (size_t)qkind_get(cfg->w_kind)->n_param, pa = (size_t)qkind_get(cfg->a_kind)->n_param;
    *n_params = r * k + co * r + co + 2 * S + co * pw + S * pa;
    *n_grads = *n_params + co;
    return 0;
}

// q->wq over Δ_w, z_w and the kind's own values wp (gradients of Δ_w, of wp: dwd, dwp or NULL)
// with its kind's settings and side table (allocated here), fitted to the FP weights. 0 or an
// ERR_ code naming the layer.
static int weight_quantizer_init(QLayer *q, const ModelLayer *l, const QLayerConfig *cfg, const float *w, float *wd,
                                 float *wz, float *dwd, float *wp, float *dwp, Err *e) {
    quantizer_setup(&q->wq, cfg->w_kind, cfg->w_bits, 1, q->cout, wd, wz, dwd, NULL);
    if (qkind_get(cfg->w_kind)->n_param) quantizer_setup_param(&q->wq, wp, dwp);
    q->wq.kp = cfg->kp;
    int m = quantizer_side_count(&q->wq, q->k);
    if (m > 0) {
        q->side_idx = malloc((size_t)q->cout * (size_t)m * sizeof *q->side_idx);
        q->side_val = malloc((size_t)q->cout * (size_t)m * sizeof *q->side_val);
        if (!q->side_idx || !q->side_val) return err_set(e, ERR_NOMEM, "layer '%s': out of memory", l->name);
        quantizer_setup_side(&q->wq, m, q->side_idx, q->side_val);
    }
    if (quantizer_fit(&q->wq, w, l->weight.n, cfg->w_init, -1, e))
        return err_prefix(e, "layer '%s'", l->name);
    return 0;
}

static int init_special(QLayer *q, const ModelLayer *l, const QLayerConfig *cfg, const float *w, Err *e) {
    size_t co = (size_t)q->cout, nw = l->weight.n;
    size_t pw = (size_t)qkind_get(cfg->w_kind)->n_param, pa = (size_t)qkind_get(cfg->a_kind)->n_param;
    // fixed: [Δ_w (Cout) | z_w (Cout) | Δ_a | z_a | fake-quantized weight (Cout·K) | the kinds' own
    // values: weight (Cout·Pw), activation (Pa)]
    q->fixed = calloc(2 * co + 2 + nw + co * pw + pa, sizeof(float));
    if (!q->fixed) return err_set(e, ERR_NOMEM, "layer '%s': out of memory", l->name);
    float *wd = q->fixed, *wz = wd + co, *ad = wz + co, *az = ad + 1, *wfq = az + 1, *wp = wfq + nw, *ap = wp + co * pw;
    if (weight_quantizer_init(q, l, cfg, w, wd, wz, NULL, wp, NULL, e)) return e->code;
    quantizer_fake(&q->wq, wfq, w, nw, 0);
    tensor_init_param(&q->w_fq, wfq, NULL, l->weight.ndim, l->weight.shape);
    *ad = *az = 0.0f;
    quantizer_setup(&q->aq, cfg->a_kind, cfg->a_bits, 0, 1, ad, az, NULL, NULL);
    q->aq.kp = cfg->kp;  // the mse search's settings (the kinds' other settings are for weights)
    if (pa) quantizer_setup_param(&q->aq, ap, NULL);
    return 0;
}

int qlayer_init(QLayer *q, ModelLayer *l, const QLayerConfig *cfg, float *params, float *grads, Rng *rng,
                Err *e) {
    memset(q, 0, sizeof *q);
    size_t np, ng;
    int rc = qlayer_sizes(l, cfg, &np, &ng, e);
    if (rc) return rc;
    q->layer = l;
    q->special = cfg->special;
    q->a_init = cfg->a_init;
    layer_dims(l, &q->cout, &q->k, e);
    q->rot = rotate_block(layer_cin(l), cfg->rotate_block);
    float *wrot = NULL;
    const float *w = weight_in_basis(q, &wrot);
    if (!w) {
        err_set(e, ERR_NOMEM, "layer '%s': out of memory rotating its weight", l->name);
        goto fail;
    }
    if (cfg->special) {
        q->n_entries = 1;
        rc = init_special(q, l, cfg, w, e);
        free(wrot);
        if (rc) goto fail;
        return 0;
    }
    q->rank = cfg->rank;
    q->n_entries = cfg->n_entries;
    q->a_token = cfg->a_token;
    if (!params) params = q->own_params = calloc(np, sizeof(float));
    if (!grads) grads = q->own_grads = calloc(ng, sizeof(float));
    q->fixed = malloc((size_t)q->cout * sizeof(float));
    q->w_int = malloc(l->weight.n);
    if (!params || !grads || !q->fixed || !q->w_int) {
        free(wrot);
        err_set(e, ERR_NOMEM, "layer '%s': out of memory for its quantized state", l->name);
        goto fail;
    }
    q->params = params;
    q->grads = grads;
    memset(grads, 0, ng * sizeof(float));
    size_t r = (size_t)q->rank, co = (size_t)q->cout, S = (size_t)q->n_entries;
    size_t pw = (size_t)qkind_get(cfg->w_kind)->n_param;
    float *A = params, *B = A + r * q->k, *wd = B + co * r, *ad = wd + co, *az = ad + S, *wp = az + S, *ap = wp + co * pw;
    float *gA = grads, *gB = gA + r * q->k, *gwq = gB + co * r, *gwb = gwq + co, *gad = gwb + co, *gaz = gad + S;
    float *gwp = gaz + S, *gap = gwp + co * pw;

    // naive PTQ: Δ_w, z_w (and the kind's values) from the FP weights, W_int = the levels of W
    rc = weight_quantizer_init(q, l, cfg, w, wd, q->fixed, gwq, wp, gwp, e);
    if (!rc) quantizer_encode(&q->wq, q->w_int, w, l->weight.n, 0);
    free(wrot);
    if (rc) goto fail;
    tensor_init_param(&q->w_delta_base, wd, gwb, 1, (int[]){q->cout});

    if (q->rank > 0) {
        // torch nn.init.kaiming_uniform_(a=sqrt(5)): bound = sqrt(6 / ((1 + a^2) fan_in)) = 1/sqrt(fan_in)
        double bound = sqrt(6.0 / ((1.0 + 5.0) * (double)q->k));
        if (l->kind == LAYER_LINEAR) {
            tensor_init_param(&q->lora_a, A, gA, 2, (int[]){q->rank, (int)q->k});
            tensor_init_param(&q->lora_b, B, gB, 2, (int[]){q->cout, q->rank});
        } else {
            const int *ws = l->weight.shape;
            tensor_init_param(&q->lora_a, A, gA, 4, (int[]){q->rank, ws[1], ws[2], ws[3]});
            tensor_init_param(&q->lora_b, B, gB, 4, (int[]){q->cout, q->rank, 1, 1});
        }
        rng_uniform_fill(rng, A, r * q->k, (float)-bound, (float)bound);
        memset(B, 0, co * r * sizeof(float));
    }
    memset(ad, 0, 2 * S * sizeof(float));
    quantizer_setup(&q->aq, cfg->a_kind, cfg->a_bits, 0, q->n_entries, ad, az, gad, gaz);
    q->aq.kp = cfg->kp;  // the mse search's settings (the kinds' other settings are for weights)
    if (qkind_get(cfg->a_kind)->n_param) {
        for (size_t i = 0; i < S * (size_t)qkind_get(cfg->a_kind)->n_param; i++) ap[i] = 1.0f;  // until calibrated
        quantizer_setup_param(&q->aq, ap, gap);
    }
    return 0;
fail:
    qlayer_free(q);
    return e->code;
}

void qlayer_free(QLayer *q) {
    if (!q) return;
    qlayer_detach(q);
    free(q->own_params);
    free(q->own_grads);
    free(q->fixed);
    free(q->w_int);
    free(q->side_idx);
    free(q->side_val);
    memset(q, 0, sizeof *q);
}

static Tensor *qlayer_forward_hook(Ctx *c, ModelLayer *l, Tensor *x) { return qlayer_forward(c, l->quant, x); }

void qlayer_attach(QLayer *q) {
    q->layer->quant = q;
    q->layer->quant_forward = qlayer_forward_hook;
}

void qlayer_detach(QLayer *q) {
    if (q->layer && q->layer->quant == q) {
        q->layer->quant = NULL;
        q->layer->quant_forward = NULL;
    }
}

int qlayer_trainable(QLayer *q, Tensor *out[QLAYER_MAX_SLOTS]) {
    if (q->special) return 0;
    int n = 0;
    if (q->rank > 0) {
        out[n++] = &q->lora_a;
        out[n++] = &q->lora_b;
    }
    out[n++] = &q->wq.delta;
    out[n++] = &q->w_delta_base;
    out[n++] = &q->aq.delta;
    out[n++] = &q->aq.zero;
    if (q->wq.param.data) out[n++] = &q->wq.param;  // the kinds' own values (qkind.h n_param)
    if (q->aq.param.data) out[n++] = &q->aq.param;
    return n;
}

int qlayer_is_act_tensor(const QLayer *q, const Tensor *t) {
    return t == &q->aq.delta || t == &q->aq.zero || (q->aq.param.data && t == &q->aq.param);
}

void qlayer_bind_grads(QLayer *q, float *grads) { qlayer_bind_grads_ex(q, grads, QGRAD_ZERO_ALL); }

void qlayer_bind_grads_ex(QLayer *q, float *grads, QGradZero zero) {
    Tensor *t[QLAYER_MAX_SLOTS];
    int n = qlayer_trainable(q, t);
    float *g = grads;
    for (int i = 0; i < n; i++) {
        t[i]->grad = g;
        t[i]->requires_grad = 1;
        if (zero == QGRAD_ZERO_ALL || (zero == QGRAD_ZERO_ACT && qlayer_is_act_tensor(q, t[i])))
            memset(g, 0, t[i]->n * sizeof(float));
        g += t[i]->n;
    }
    if (n) {
        free(q->own_grads);
        q->own_grads = NULL;
        q->grads = grads;
    }
}

int qlayer_special_refit(QLayer *q) {
    float *tmp;
    const float *w = weight_in_basis(q, &tmp);
    if (!w) return ERR_NOMEM;
    quantizer_fake(&q->wq, q->w_fq.data, w, q->layer->weight.n, 0);
    free(tmp);
    return 0;
}

void qlayer_set_act(QLayer *q, float delta, float zero) {
    for (int i = 0; i < q->aq.n; i++) {
        q->aq.delta.data[i] = delta;
        q->aq.zero.data[i] = zero;
    }
    q->act_ready = 1;
}

/* ---- the weight path ------------------------------------------------------------- */

// out (Cout, K) = decode(W_int) + B·A (uniform: (W_int - z_w) Δ_w + B·A). The GEMM adds onto
// the dequantized weight (beta = 1), as the reference adds its LoRA weight to the dequantized one.
static void qweight_compute(const QLayer *q, float *out) {
    size_t K = q->k;
    quantizer_decode(&q->wq, out, q->w_int, (size_t)q->cout * K, 0);
    if (q->rank > 0)
        gemm_rm(0, 0, q->cout, (int)K, q->rank, 1.0f, q->lora_b.data, q->rank, q->lora_a.data, (int)K, 1.0f, out,
                (int)K);
}

// Adds the decode's and LoRA's gradients for g = d loss / d(W_base + B·A):
//   d Δ_w[o] += the decode's gradient (uniform: Σ_j g[o, j] (W_int[o, j] - z_w[o]));  dB += g Aᵀ;  dA += Bᵀ g
// into db_t (w_delta_base), a, b (NULL without LoRA) and p (the weight kind's own values; NULL:
// none; their one gradient buffer takes both paths), each when it requires one.
static void qweight_prequant_backward(Ctx *c, const QLayer *q, const float *g, Tensor *db_t, Tensor *a, Tensor *b,
                                      Tensor *p) {
    size_t K = q->k;
    float *dd = db_t->requires_grad ? tensor_grad(c, db_t) : NULL, *dp = p && p->requires_grad ? tensor_grad(c, p) : NULL;
    if ((db_t->requires_grad && !dd) || (p && p->requires_grad && !dp)) return;
    if (dd || dp) quantizer_decode_backward(&q->wq, dd, NULL, dp, g, q->w_int, (size_t)q->cout * K, 0);
    if (b && b->requires_grad) {
        float *dB = tensor_grad(c, b);
        if (!dB) return;
        gemm_rm(0, 1, q->cout, q->rank, (int)K, 1.0f, g, (int)K, a->data, (int)K, 1.0f, dB, q->rank);
    }
    if (a && a->requires_grad) {
        float *dA = tensor_grad(c, a);
        if (!dA) return;
        gemm_rm(1, 0, q->rank, (int)K, q->cout, 1.0f, b->data, q->rank, g, (int)K, 1.0f, dA, (int)K);
    }
}

// in[0] = w_delta_base, in[1] = lora_a, in[2] = lora_b (NULL without LoRA), in[3] = the weight
// kind's own values (NULL: none); saved = the QLayer.
static void qweight_backward(Ctx *c, TapeNode *nd) {
    qweight_prequant_backward(c, nd->saved, nd->out->grad, nd->in[0], nd->in[1], nd->in[2], nd->in[3]);
}

// 1 (and c->err set) for a special layer, which has no LoRA weight path.
static int special_refused(Ctx *c, const QLayer *q) {
    if (q->special) err_set(&c->err, ERR_INTERNAL, "layer '%s': a special layer has no LoRA weight path", q->layer->name);
    return q->special;
}

static Tensor *weight_prequant_op(Ctx *c, QLayer *q) {
    if (special_refused(c, q)) return NULL;
    const Tensor *w = &q->layer->weight;
    Tensor *out = tensor_new(c, w->ndim, w->shape);
    if (!out) return NULL;
    qweight_compute(q, out->data);
    // One fused op (dequantize + LoRA product + add) keeps two weight-sized tensors per
    // layer and step off the arena, compared with t_mul / t_matmul / t_add.
    Tensor *in[4] = {&q->w_delta_base, q->rank > 0 ? &q->lora_a : NULL, q->rank > 0 ? &q->lora_b : NULL,
                     q->wq.param.data ? &q->wq.param : NULL};
    TapeNode *nd = tape_record(c, OP_LORA_WEIGHT, qweight_backward, out, in, 4);
    if (nd) nd->saved = q;
    return out;
}

Tensor *qlayer_weight_prequant(Ctx *c, QLayer *q) {
    // the LoRA product B·A: one (Cout, r) x (r, K) GEMM
    PROF_OP(c, OP_LORA_WEIGHT, weight_prequant_op(c, q),
            out && !q->special ? 2.0 * (double)q->cout * (double)q->rank * (double)q->k : 0.0);
}

Tensor *qlayer_weight(Ctx *c, QLayer *q) {
    if (q->special) return &q->w_fq;
    return t_fake_quant(c, qlayer_weight_prequant(c, q), &q->wq, 0);
}

/* ---- the weight path as one op, rebuilt in backward -------------------------------- */

// What the op's node keeps: the layer, and W_base + B·A from the rebuild until the backward
// right after it (the conv / linear that reads W_eff is the op just before on the way back),
// so that it is computed once more per step, not twice.
typedef struct {
    const QLayer *q;
    float *pre;  // pool scratch between rebuild and backward, or NULL
} QWeightSaved;

// qlayer_weight's two forward kernels: pre = W_base + B·A, eff = q_w(pre) (eff may be pre).
void qlayer_weight_step(const QLayer *q, float *pre, float *eff) {
    qweight_compute(q, pre);
    quantizer_fake(&q->wq, eff, pre, q->layer->weight.n, 0);
}

// The two ops' backwards in tape order for deff = d loss / d W_eff: the fake-quant's (into
// dpre, and dd, dz, dp: Δ_w's quantizer path, z_w, the kind's values; NULL: not needed), then
// the LoRA weight's on dpre. pre = W_base + B·A; dpre: scratch of the weight's count.
static void qweight_path_backward(Ctx *c, const QLayer *q, const float *deff, const float *pre, float *dpre, float *dd,
                                  float *dz, float *dp, Tensor *db_t, Tensor *a, Tensor *b, Tensor *param) {
    size_t n = q->layer->weight.n;
    memset(dpre, 0, n * sizeof(float));
    quantizer_fake_backward_all(&q->wq, dpre, dd, dz, dp, deff, pre, n, 0);
    qweight_prequant_backward(c, q, dpre, db_t, a, b, param);
}

// in[0..3] as qweight_backward's, in[4] = Δ_w (quantizer path), in[5] = z_w; saved = QWeightSaved.
static void qweight_fused_rebuild(Ctx *c, TapeNode *nd) {
    QWeightSaved *sv = nd->saved;
    size_t n = nd->out->n;
    if (!sv->pre && !(sv->pre = ctx_scratch(c, n))) return;
    if (tensor_rebuild_data(c, nd->out)) qlayer_weight_step(sv->q, sv->pre, nd->out->data);
}

// The two ops' backwards in tape order: the fake-quant's (into d pre, dΔ_w, dz_w, the kind's
// values), then the LoRA weight's on d pre.
static void qweight_fused_backward(Ctx *c, TapeNode *nd) {
    QWeightSaved *sv = nd->saved;
    const QLayer *q = sv->q;
    size_t n = nd->out->n;
    Tensor *delta = nd->in[4], *zero = nd->in[5], *param = nd->in[3];
    float *dd = delta->requires_grad ? tensor_grad(c, delta) : NULL;
    float *dz = zero->requires_grad ? tensor_grad(c, zero) : NULL;
    float *dp = param && param->requires_grad ? tensor_grad(c, param) : NULL;
    if ((delta->requires_grad && !dd) || (zero->requires_grad && !dz) || (param && param->requires_grad && !dp)) return;
    if (!sv->pre && (sv->pre = ctx_scratch(c, n))) qweight_compute(q, sv->pre);  // W_eff was never dropped
    float *dpre = ctx_scratch(c, n);
    if (sv->pre && dpre)
        qweight_path_backward(c, q, nd->out->grad, sv->pre, dpre, dd, dz, dp, nd->in[0], nd->in[1], nd->in[2], param);
    ctx_scratch_free(c, dpre);
    ctx_scratch_free(c, sv->pre);
    sv->pre = NULL;
}

static Tensor *weight_recompute_op(Ctx *c, QLayer *q) {
    if (special_refused(c, q)) return NULL;
    const Tensor *w = &q->layer->weight;
    Tensor *out = tensor_new_transient(c, w->ndim, w->shape);
    float *pre = out ? ctx_scratch(c, out->n) : NULL;
    if (!pre) return NULL;
    qlayer_weight_step(q, pre, out->data);
    ctx_scratch_free(c, pre);
    Tensor *in[6] = {&q->w_delta_base, q->rank > 0 ? &q->lora_a : NULL, q->rank > 0 ? &q->lora_b : NULL,
                     q->wq.param.data ? &q->wq.param : NULL, &q->wq.delta, &q->wq.zero};
    TapeNode *nd = tape_record(c, OP_QWEIGHT, qweight_fused_backward, out, in, 6);
    if (c->err.code) return NULL;
    if (nd) {
        QWeightSaved *sv = ctx_alloc(c, sizeof *sv);
        if (!sv) return NULL;
        *sv = (QWeightSaved){q, NULL};
        nd->saved = sv;
        nd->rebuild = qweight_fused_rebuild;
        out->remat = nd;
    }
    return out;
}

/* ---- the weight path once per step ------------------------------------------------ */

void qlayer_weight_step_backward(Ctx *c, QLayer *q, const float *deff, const float *pre, float *dpre) {
    Tensor *delta = &q->wq.delta, *zero = &q->wq.zero, *param = q->wq.param.data ? &q->wq.param : NULL;
    float *dd = delta->requires_grad ? delta->grad : NULL, *dz = zero->requires_grad ? zero->grad : NULL;
    float *dp = param && param->requires_grad ? param->grad : NULL;
    qweight_path_backward(c, q, deff, pre, dpre, dd, dz, dp, &q->w_delta_base, q->rank > 0 ? &q->lora_a : NULL,
                          q->rank > 0 ? &q->lora_b : NULL, param);
}

void qlayer_use_step_weight(QLayer *q, float *eff, float *grad) {
    q->step_w = q->special ? NULL : eff;
    if (q->step_w) tensor_init_param(&q->w_step, eff, grad, q->layer->weight.ndim, q->layer->weight.shape);
}

Tensor *qlayer_weight_recompute(Ctx *c, QLayer *q) {
    // the LoRA product B·A: one (Cout, r) x (r, K) GEMM
    PROF_OP(c, OP_QWEIGHT, weight_recompute_op(c, q),
            out && !q->special ? 2.0 * (double)q->cout * (double)q->rank * (double)q->k : 0.0);
}

/* ---- forward --------------------------------------------------------------------- */

// A per-token layer's calibration: α from x into entry `which` (< 0: every entry), zero points 0.
static int token_fit(QLayer *q, const Tensor *x, int which, Err *e) {
    size_t outer, C, inner;
    if (token_quant_view(x, q->layer->kind != LAYER_LINEAR, &outer, &C, &inner))
        return err_set(e, ERR_SHAPE, "an input of %d dimensions", x->ndim);
    for (size_t i = 0; i < x->n; i++)
        if (!isfinite(x->data[i]))  // as quantizer_fit
            return err_set(e, ERR_VALUE, "quantizer: non-finite value %g at index %zu", x->data[i], i);
    float a = token_quant_fit(x->data, outer, C, inner, q->aq.bits, q->a_init, &q->aq.kp);
    if (a < 0) return err_set(e, ERR_NOMEM, "out of memory");
    for (int k = 0; k < q->aq.n; k++)
        if (which < 0 || k == which) q->aq.delta.data[k] = a, q->aq.zero.data[k] = 0.0f;
    return 0;
}

Tensor *qlayer_forward(Ctx *c, QLayer *q, Tensor *x) {
    if (!x) return NULL;
    ModelLayer *l = q->layer;
    // a rotated layer's quantizer, its calibration and its hook see H x (rotate.h)
    if (q->rot && !(x = t_rotate(c, x, l->kind != LAYER_LINEAR, q->rot))) return NULL;
    if (q->calib_hook) q->calib_hook(q->calib_user, q, x);
    int fit_entry = q->calib == QCALIB_FIT_ENTRY && !q->special && q->aq.n > 1;
    if (q->calib == QCALIB_FIT || fit_entry) {
        // the reference fits on the input of this very forward, then quantizes it
        Err fe = {0};
        int which = fit_entry ? (q->entry ? *q->entry : 0) : -1;
        int rc = q->a_token ? token_fit(q, x, which, &fe) : quantizer_fit(&q->aq, x->data, x->n, q->a_init, which, &fe);
        if (rc) {
            err_set(&c->err, fe.code, "layer '%s': activation calibration: %s", l->name, fe.msg);
            return NULL;
        }
        q->act_ready = 1;
    }
    if (!q->act_ready) {
        err_set(&c->err, ERR_VALUE, "layer '%s': activation quantizer not calibrated (run a calibration forward "
                "or load its ranges)", l->name);
        return NULL;
    }
    int entry = (q->special || !q->entry) ? 0 : *q->entry;
    if (entry < 0 || entry >= q->aq.n) {
        err_set(&c->err, ERR_VALUE, "layer '%s': TALSQ entry %d of %d", l->name, entry, q->aq.n);
        return NULL;
    }
    Tensor *xq = q->a_token ? t_fake_quant_token(c, x, &q->aq, entry, l->kind != LAYER_LINEAR)
                            : t_fake_quant(c, x, &q->aq, entry);
    int fused = q->recompute && !q->special && !q->step_w;
    Tensor *w = q->step_w ? &q->w_step : fused ? qlayer_weight_recompute(c, q) : qlayer_weight(c, q);
    Tensor *b = l->bias.data ? &l->bias : NULL;
    Tensor *y = l->kind == LAYER_LINEAR ? t_linear(c, xq, w, b) : t_conv2d(c, xq, w, b, l->stride, l->pad);
    if (fused && w) tensor_drop(c, w);  // rebuilt when the backward needs it (tape.h)
    return y;
}

/* ---- merge / export -------------------------------------------------------------- */

int qlayer_merge(const QLayer *q, uint8_t *levels, Err *e) { return qlayer_merge_side(q, levels, NULL, e); }

int qlayer_merge_side(const QLayer *q, uint8_t *levels, float *side_val, Err *e) {
    const Tensor *w = &q->layer->weight;
    float *win = NULL;
    const float *x;
    if (!q->special) {
        win = malloc(w->n * sizeof(float));
        if (!win) return err_set(e, ERR_NOMEM, "layer '%s': out of memory merging its weight", q->layer->name);
        qweight_compute(q, win);
        x = win;
    } else if (!(x = weight_in_basis(q, &win))) {
        return err_set(e, ERR_NOMEM, "layer '%s': out of memory merging its weight", q->layer->name);
    }
    quantizer_encode(&q->wq, levels, x, w->n, 0);
    int rc = side_val ? quantizer_side_values(&q->wq, side_val, x, w->n) : 0;
    free(win);
    if (rc) return err_set(e, rc, "layer '%s': out of memory merging its weight", q->layer->name);
    return 0;
}

void qlayer_effective_weight(const QLayer *q, float *w) {
    size_t n = q->layer->weight.n;
    if (q->special) {
        memcpy(w, q->w_fq.data, n * sizeof(float));
        return;
    }
    // qlayer_weight's two ops' kernels
    qlayer_weight_step(q, w, w);
}

void qlayer_export_act(const QLayer *q, float *delta, float *zero) {
    for (int i = 0; i < q->aq.n; i++) {
        delta[i] = q->aq.delta.data[i];
        zero[i] = rintf(q->aq.zero.data[i]);
    }
}
