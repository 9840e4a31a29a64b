/* export.c: merge + pack + write the deployed model (EfficientDM's save of the merged
   integer model; the format is export.h's). Loading: export_load.c. */
#include "qalora/export.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/dtype.h"
#include "io/safetensors.h"
#include "models/ldm_config.h"
#include "qalora/pack.h"
#include "qalora/qkind.h"
#include "util/grow.h"

#define UNET_PREFIX "model.diffusion_model."
#define AE_PREFIX "first_stage_model."
#define CLASS_EMB_NAME "cond_stage_model.embedding.weight"

/* ---- writing ------------------------------------------------------------------------ */

// Buffers that must live until st_write: per quantized layer its packed levels and tables.
typedef struct {
    uint8_t *packed;
    float *a_delta, *a_zero;
} LayerBufs;

// Integer zero points in the smallest exact container: U8 when every value is in 0..255,
// else I16 when they fit, else F32 as they are. *data points at the values to write.
static int zero_points(KeepList *k, const float *z, int n, DType *dt, const void **data) {
    int u8 = 1, i16 = 1;
    for (int i = 0; i < n; i++) {
        if (z[i] != rintf(z[i]) || z[i] < -32768.0f || z[i] > 32767.0f) u8 = i16 = 0;
        else if (z[i] < 0.0f || z[i] > 255.0f) u8 = 0;
    }
    if (u8) {
        uint8_t *b = keep_alloc(k, (size_t)n);
        if (!b) return ERR_NOMEM;
        for (int i = 0; i < n; i++) b[i] = (uint8_t)z[i];
        *dt = DT_U8;
        *data = b;
    } else if (i16) {
        int16_t *b = keep_alloc(k, (size_t)n * sizeof *b);
        if (!b) return ERR_NOMEM;
        for (int i = 0; i < n; i++) b[i] = (int16_t)z[i];
        *dt = DT_I16;
        *data = b;
    } else {
        *dt = DT_F32;
        *data = z;
    }
    return 0;
}

// 1 if p is the weight of a conv/linear layer the student leaves FP.
static int fp_layer_weight(const QModel *q, const Tensor *p) {
    for (int i = 0; i < q->n_all; i++)
        if (q->choice[i].role == QSEL_FP && q->all[i]->weight.data == p->data) return 1;
    return 0;
}

// Index of the quantized layer whose weight is p (data pointer), or -1.
static int quantized_weight(const QModel *q, const Tensor *p) {
    for (int k = 0; k < q->n_q; k++)
        if (q->q[k].layer->weight.data == p->data) return k;
    return -1;
}

// Adds a tensor and counts its bytes into *unet when the name is under the UNet prefix.
static int add(StWriter *w, const char *name, DType dt, int ndim, const int64_t *shape, const void *data,
               size_t *unet, size_t *total, Err *e) {
    if (st_writer_add(w, name, dt, ndim, shape, data, e)) return e->code;
    size_t n = w->tensors[w->n_tensors - 1].nbytes;
    *total += n;
    if (!strncmp(name, UNET_PREFIX, strlen(UNET_PREFIX))) *unet += n;
    return 0;
}

// The weight kind's side table (export.h): positions I16 when the channel is short enough,
// else I32; values F16 (they are float16 values: exact).
static int add_side(StWriter *w, KeepList *keep, const QLayer *ql, const float *val, size_t *unet, size_t *total,
                    Err *e) {
    int m = ql->wq.n_side;
    size_t cnt = (size_t)ql->cout * (size_t)m;
    int64_t shape[2] = {ql->cout, m};
    int i16 = ql->k <= 32767;
    void *idx = keep_alloc(keep, cnt * (i16 ? sizeof(int16_t) : sizeof(int32_t)));
    uint16_t *h = keep_alloc(keep, cnt * sizeof *h);
    if (!idx || !h) return err_set(e, ERR_NOMEM, "export: out of memory");
    for (size_t j = 0; j < cnt; j++) {
        if (i16) ((int16_t *)idx)[j] = (int16_t)ql->wq.side_idx[j];
        else ((int32_t *)idx)[j] = ql->wq.side_idx[j];
        h[j] = f32_to_f16(val[j]);
    }
    char name[600];
    snprintf(name, sizeof name, UNET_PREFIX "%s.w_side_idx", ql->layer->name);
    if (add(w, name, i16 ? DT_I16 : DT_I32, 2, shape, idx, unet, total, e)) return e->code;
    snprintf(name, sizeof name, UNET_PREFIX "%s.w_side_val", ql->layer->name);
    return add(w, name, DT_F16, 2, shape, h, unet, total, e);
}

char *export_quant_json(const QModel *q) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    const QModelConfig *c = &q->cfg;
    cJSON_AddNumberToObject(o, "w_bits", c->sel.w_bits);
    cJSON_AddNumberToObject(o, "a_bits", c->sel.a_bits);
    cJSON_AddNumberToObject(o, "special_bits", c->sel.special_bits);
    cJSON_AddNumberToObject(o, "rank", c->rank);
    cJSON_AddBoolToObject(o, "talsq", c->talsq);
    cJSON_AddNumberToObject(o, "train_steps", c->talsq ? c->train_steps : 0);
    cJSON *ts = cJSON_AddArrayToObject(o, "timesteps");
    for (int i = 0; ts && i < q->train_sched.n; i++) cJSON_AddItemToArray(ts, cJSON_CreateNumber(q->train_sched.timesteps[i]));
    cJSON *layers = cJSON_AddArrayToObject(o, "layers");
    for (int k = 0; layers && k < q->n_q; k++) {
        const QLayer *ql = &q->q[k];
        cJSON *l = cJSON_CreateObject();
        if (!l) break;
        cJSON_AddStringToObject(l, "name", ql->layer->name);
        cJSON_AddStringToObject(l, "role", ql->special ? "special" : "trainable");
        cJSON_AddNumberToObject(l, "w_bits", ql->wq.bits);
        cJSON_AddNumberToObject(l, "a_bits", ql->aq.bits);
        cJSON_AddNumberToObject(l, "entries", ql->aq.n);
        cJSON_AddStringToObject(l, "w_quantizer", quant_kind_name(ql->wq.kind));
        cJSON_AddStringToObject(l, "a_quantizer", quant_kind_name(ql->aq.kind));
        if (ql->rot) cJSON_AddNumberToObject(l, "rotate", ql->rot);
        if (ql->a_token) cJSON_AddStringToObject(l, "a_granularity", "token");
        cJSON_AddItemToArray(layers, l);
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

int export_write(const QModel *q, Ldm *m, WeightFile *teacher, const ExportInfo *info, const char *path,
                 ExportSummary *s, Err *e) {
    ExportSummary local;
    if (!s) s = &local;
    memset(s, 0, sizeof *s);
    if (!m->unet || m->unet != q->unet)
        return err_set(e, ERR_INTERNAL, "export: the student does not wrap the model's UNet");
    if (!info || !info->yaml) return err_set(e, ERR_INTERNAL, "export: the model's YAML text is required");
    for (int k = 0; k < q->n_q; k++)
        if (!q->q[k].act_ready)
            return err_set(e, ERR_VALUE, "export: layer '%s' has no activation ranges (calibrate first)",
                           q->q[k].layer->name);
    StWriter w = {0};
    LayerBufs *lb = calloc((size_t)(q->n_q ? q->n_q : 1), sizeof *lb);
    uint8_t *levels = NULL;
    char *json = NULL, name[600];
    KeepList keep = {0};
    int rc = 0;
    size_t unet = 0, total = 0;
    if (!lb) return err_set(e, ERR_NOMEM, "export: out of memory");
    UNet *u = m->unet;
    // a student with float16 FP layers computed with exactly these F16 values; forcing F16
    // onto a float32 student rounds weights it never used (export.h "Size")
    int fp16 = q->cfg.fp_f16 || info->fp16_layers;

    // the UNet's FP parameters, in registration order
    for (int i = 0; i < unet_param_tensors(u) && !rc; i++) {
        const char *pn;
        Tensor *p = unet_param_at(u, i, &pn);
        if (quantized_weight(q, p) >= 0) continue;
        int64_t shape[WEIGHTS_MAX_DIMS];
        int nd = unet_param_file_ndim(u, i);
        for (int d = 0; d < nd; d++) shape[d] = p->shape[d];
        snprintf(name, sizeof name, UNET_PREFIX "%s", pn);
        if (fp16 && fp_layer_weight(q, p)) {
            uint16_t *h = keep_alloc(&keep, p->n * sizeof *h);
            if (!h) {
                rc = err_set(e, ERR_NOMEM, "export: out of memory");
                break;
            }
            for (size_t j = 0; j < p->n; j++) h[j] = f32_to_f16(p->data[j]);
            rc = add(&w, name, DT_F16, nd, shape, h, &unet, &total, e);
        } else {
            rc = add(&w, name, DT_F32, nd, shape, p->data, &unet, &total, e);
        }
    }
    // the quantized layers: merged, packed levels; ranges; tables with rounded zero points
    for (int k = 0; k < q->n_q && !rc; k++) {
        const QLayer *ql = &q->q[k];
        const QKindOps *wops = quantizer_ops(&ql->wq);
        size_t n = ql->layer->weight.n, nb = wops->packed_size(&ql->wq, n);
        int S = ql->aq.n;
        levels = realloc(levels, n);
        lb[k].packed = malloc(nb);
        lb[k].a_delta = malloc((size_t)S * sizeof(float));
        lb[k].a_zero = malloc((size_t)S * sizeof(float));
        if (!levels || !lb[k].packed || !lb[k].a_delta || !lb[k].a_zero) {
            rc = err_set(e, ERR_NOMEM, "export: out of memory for layer '%s'", ql->layer->name);
            break;
        }
        int m = ql->wq.n_side;
        float *side = m ? keep_alloc(&keep, (size_t)ql->cout * m * sizeof(float)) : NULL;
        if (m && !side) {
            rc = err_set(e, ERR_NOMEM, "export: out of memory");
            break;
        }
        if ((rc = qlayer_merge_side(ql, levels, side, e))) break;
        wops->pack(&ql->wq, lb[k].packed, levels, n);
        qlayer_export_act(ql, lb[k].a_delta, lb[k].a_zero);
        const char *ln = ql->layer->name;
        int64_t co = ql->cout, s1 = S, sb = (int64_t)nb;
        snprintf(name, sizeof name, UNET_PREFIX "%s.qweight", ln);
        if ((rc = add(&w, name, DT_U8, 1, &sb, lb[k].packed, &unet, &total, e))) break;
        snprintf(name, sizeof name, UNET_PREFIX "%s.w_delta", ln);
        if ((rc = add(&w, name, DT_F32, 1, &co, ql->wq.delta.data, &unet, &total, e))) break;
        DType zt;
        const void *zd;
        if (zero_points(&keep, ql->wq.zero.data, ql->cout, &zt, &zd)) {
            rc = err_set(e, ERR_NOMEM, "export: out of memory");
            break;
        }
        snprintf(name, sizeof name, UNET_PREFIX "%s.w_zero", ln);
        if ((rc = add(&w, name, zt, 1, &co, zd, &unet, &total, e))) break;
        snprintf(name, sizeof name, UNET_PREFIX "%s.a_delta", ln);
        if ((rc = add(&w, name, DT_F32, 1, &s1, lb[k].a_delta, &unet, &total, e))) break;
        if (zero_points(&keep, lb[k].a_zero, S, &zt, &zd)) {
            rc = err_set(e, ERR_NOMEM, "export: out of memory");
            break;
        }
        snprintf(name, sizeof name, UNET_PREFIX "%s.a_zero", ln);
        if ((rc = add(&w, name, zt, 1, &s1, zd, &unet, &total, e))) break;
        const Tensor *kp[2] = {&ql->wq.param, &ql->aq.param};  // the kinds' own values (nupes' exponents)
        for (int j = 0; j < 2 && !rc; j++) {
            if (!kp[j]->data) continue;
            int64_t np = (int64_t)kp[j]->n;
            snprintf(name, sizeof name, UNET_PREFIX "%s.%s", ln, j ? "a_param" : "w_param");
            rc = add(&w, name, DT_F32, 1, &np, kp[j]->data, &unet, &total, e);
        }
        if (rc) break;
        if (m && (rc = add_side(&w, &keep, ql, side, &unet, &total, e))) break;
    }
    // first stage (the tensors the loader reads, with the checkpoint's shapes), class embedder
    if (!rc && m->ae && teacher) {
        size_t plen = strlen(AE_PREFIX);
        for (int i = 0; i < weights_count(teacher) && !rc; i++) {
            const WeightInfo *wi = weights_info(teacher, i);
            if (strncmp(wi->name, AE_PREFIX, plen) != 0) continue;
            Tensor *t = ae_param(m->ae, wi->name + plen);
            if (!t) continue;
            if (t->n != wi->numel) {
                rc = err_set(e, ERR_SHAPE, "%s: tensor '%s': %zu values, the loaded model has %zu",
                             weights_path(teacher), wi->name, wi->numel, t->n);
                break;
            }
            rc = add(&w, wi->name, DT_F32, wi->ndim, wi->shape, t->data, &unet, &total, e);
        }
    } else if (!rc && m->ae) {
        rc = err_set(e, ERR_INTERNAL, "export: the teacher checkpoint is needed to list the first-stage tensors");
    }
    if (!rc && m->class_emb.data)
        rc = add(&w, CLASS_EMB_NAME, DT_F32, 2, (int64_t[]){m->class_emb.shape[0], m->class_emb.shape[1]},
                 m->class_emb.data, &unet, &total, e);
    float sf = (float)m->scale_factor;
    if (!rc) rc = add(&w, "betas", DT_F32, 1, (int64_t[]){m->T}, m->betas, &unet, &total, e);
    if (!rc) rc = add(&w, "alphas_cumprod", DT_F32, 1, (int64_t[]){m->T}, m->alphas_cumprod, &unet, &total, e);
    if (!rc) rc = add(&w, "scale_factor", DT_F32, 0, NULL, &sf, &unet, &total, e);
    if (!rc && info->eps_gain && info->n_gain > 0) {
        rc = add(&w, "eps_gain", DT_F32, 1, (int64_t[]){info->n_gain}, info->eps_gain, &unet, &total, e);
        s->eps_gain = info->eps_gain[0];
    }
    if (!rc && info->guidance_gain && info->n_gain > 0) {
        rc = add(&w, "guidance_gain", DT_F32, 1, (int64_t[]){info->n_gain}, info->guidance_gain, &unet, &total, e);
        s->n_gain = info->n_gain;
        s->gain_min = s->gain_max = info->guidance_gain[0];
        for (int k = 1; k < info->n_gain; k++) {
            if (info->guidance_gain[k] < s->gain_min) s->gain_min = info->guidance_gain[k];
            if (info->guidance_gain[k] > s->gain_max) s->gain_max = info->guidance_gain[k];
        }
    }

    // metadata
    char num[64];
    int rotated = 0, token = 0;
    for (int k = 0; k < q->n_q; k++) rotated |= q->q[k].rot > 0, token |= q->q[k].a_token;
    const char *fmt = token ? EXPORT_FORMAT_TOKEN : rotated ? EXPORT_FORMAT_ROT : EXPORT_FORMAT;
    if (!rc) rc = st_writer_meta(&w, "effdm.format", fmt, e);
    if (!rc) rc = st_writer_meta(&w, "effdm.ldm_config", info->yaml, e);
    if (!rc && !(json = export_quant_json(q))) rc = err_set(e, ERR_NOMEM, "export: out of memory for the metadata");
    if (!rc) rc = st_writer_meta(&w, "effdm.quant", json, e);
    if (!rc && info->source) rc = st_writer_meta(&w, "effdm.source", info->source, e);
    if (!rc && info->source_config) rc = st_writer_meta(&w, "effdm.source_config", info->source_config, e);
    if (!rc && info->run_dir) rc = st_writer_meta(&w, "effdm.run", info->run_dir, e);
    if (!rc && info->epoch) rc = st_writer_meta(&w, "effdm.epoch", info->epoch, e);
    if (!rc) rc = st_writer_meta(&w, "effdm.ema", info->ema ? "1" : "0", e);
    if (!rc)
        rc = st_writer_meta(&w, "effdm.fp_layers", fp16 ? (q->cfg.fp_f16 ? "F16" : "F16-at-export") : "F32", e);
    snprintf(num, sizeof num, "%zu", unet);
    if (!rc) rc = st_writer_meta(&w, "effdm.unet_bytes", num, e);
    snprintf(num, sizeof num, "%zu", unet_param_count(u) * sizeof(float));
    if (!rc) rc = st_writer_meta(&w, "effdm.unet_fp32_bytes", num, e);
    if (!rc) rc = st_write(&w, path, e);

    if (!rc) {
        s->unet_bytes = unet;
        s->unet_fp32_bytes = unet_param_count(u) * sizeof(float);
        s->total_bytes = total;
        qmodel_counts(q, &s->trainable, &s->special, &s->fp);
        s->w_bits = q->cfg.sel.w_bits;
        s->a_bits = q->cfg.sel.a_bits;
        s->special_bits = q->cfg.sel.special_bits;
        s->entries = q->cfg.talsq ? q->train_sched.n : 1;
        s->token = token;
        s->fp16_layers = fp16;
        s->exact = !fp16 || q->cfg.fp_f16;
    }
    cJSON_free(json);
    for (int k = 0; k < q->n_q; k++) {
        free(lb[k].packed);
        free(lb[k].a_delta);
        free(lb[k].a_zero);
    }
    free(lb);
    free(levels);
    keep_free(&keep);
    st_writer_free(&w);
    return rc;
}
