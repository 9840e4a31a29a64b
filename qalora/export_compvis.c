/* export_compvis.c: the student dequantized into the teacher's CompVis state dict (the
   format is export_compvis.h's). */
#include "qalora/export_compvis.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/dtype.h"
#include "io/safetensors.h"
#include "qalora/export.h"
#include "util/grow.h"

#define UNET_PREFIX "model.diffusion_model."

// The student's value of every UNet parameter (registration order), and its LitEma name.
typedef struct {
    const char *name;      // name inside the UNet ("input_blocks.0.0.weight")
    char ema[512];         // "model_ema.diffusion_modelinput_blocks00weight"
    const float *data;     // the student's values (numel floats)
    size_t numel;
    int ndim;              // its checkpoint shape (Conv1d weights 3-D)
    int64_t shape[WEIGHTS_MAX_DIMS];
    int in_teacher_ema;    // the teacher file has its LitEma buffer
} StudentParam;

// Fills sp[0..n) (n = unet_param_tensors): W_eff for quantized layers' weights (computed into
// bufs), the float16-rounded copy for FP layers the student ran that way, else the UNet's own.
static int student_params(const QModel *q, KeepList *bufs, StudentParam *sp, CompvisSummary *s, Err *e) {
    UNet *u = q->unet;
    int n = unet_param_tensors(u);
    for (int i = 0; i < n; i++) {
        Tensor *p = unet_param_at(u, i, &sp[i].name);
        ldm_ema_name(sp[i].ema, sizeof sp[i].ema, sp[i].name);
        sp[i].data = p->data;
        sp[i].numel = p->n;
        sp[i].ndim = unet_param_file_ndim(u, i);
        for (int d = 0; d < sp[i].ndim; d++) sp[i].shape[d] = p->shape[d];
        for (int k = 0; k < q->n_q; k++) {
            if (q->q[k].layer->weight.data != p->data) continue;
            float *w = keep_alloc(bufs, p->n * sizeof(float));
            if (!w) return err_set(e, ERR_NOMEM, "compvis export: out of memory for layer '%s'", q->q[k].layer->name);
            qlayer_effective_weight(&q->q[k], w);
            qlayer_weight_unrotate(&q->q[k], w);
            sp[i].data = w;
            s->n_quantized++;
        }
        for (int k = 0; k < q->n_fp16; k++) {
            if (q->fp16[k].layer->weight.data != p->data) continue;
            sp[i].data = q->fp16[k].w16.data;
            s->n_fp_rounded++;
        }
    }
    return 0;
}

// The student parameter a teacher tensor name stands for (as model.diffusion_model.<param> or
// as its LitEma buffer), or -1. *ema: 1 for the latter.
static int student_index(const StudentParam *sp, int n, const char *name, int *ema) {
    size_t pl = strlen(UNET_PREFIX);
    *ema = !strncmp(name, "model_ema.", 10);
    for (int i = 0; i < n; i++) {
        if (*ema ? !strcmp(name, sp[i].ema) : (!strncmp(name, UNET_PREFIX, pl) && !strcmp(name + pl, sp[i].name)))
            return i;
    }
    return -1;
}

// 1 when a floating teacher tensor of this name is a network weight (F16 in compvis-fp16); the
// LatentDiffusion's own buffers (schedule, scale_factor, model_ema.decay) are not. (The
// student's values, model_ema.* copies included, always take the format's dtype.)
static int network_tensor(const char *name) {
    return !strncmp(name, UNET_PREFIX, strlen(UNET_PREFIX)) ||
           !strncmp(name, "first_stage_model.", 18) || !strncmp(name, "cond_stage_model.", 17);
}

// src (n floats) as dt (F32: src itself, no copy; F16: a rounded copy in bufs).
static const void *as_dtype(KeepList *bufs, const float *src, size_t n, DType dt) {
    if (dt == DT_F32) return src;
    uint16_t *h = keep_alloc(bufs, n * sizeof *h);
    if (h)
        for (size_t j = 0; j < n; j++) h[j] = f32_to_f16(src[j]);
    return h;
}

// The one-line notes: what the file cannot hold (export_compvis.h "What is lost"), and where
// its key set differs from the teacher's ("Tensors").
static void make_notes(CompvisSummary *s, const CompvisInfo *info, const UNetConfig *uc) {
    char bits[32], gains[160] = "", pruned[400] = "";
    int ff = 0, heads = 0;  // effdm compress: FeedForward widths other than mult=4, attentions with fewer heads
    for (int k = 0; k < UNET_MAX_TBLOCKS; k++) {
        ff |= uc->ff_inner[k] > 0;
        heads |= uc->attn_heads[k][0] > 0 || uc->attn_heads[k][1] > 0;
    }
    const char *both = ff && heads ? " and " : "";
    if (ff || heads)
        snprintf(pruned, sizeof pruned, "; its %s%s%s are pruned (effdm compress): CompVis's %s%s%s must be built with "
                 "%s%s%s to load it", ff ? "FeedForwards" : "", both, heads ? "attention heads" : "",
                 ff ? "FeedForward" : "", both, heads ? "CrossAttention" : "", ff ? "the widths of ff.net.2.weight" : "",
                 both, heads ? "each attention's head count (rows of to_q.weight / dim_head)" : "");
    if (s->a_bits_min == s->a_bits_max) snprintf(bits, sizeof bits, "A%d", s->a_bits_min);
    else snprintf(bits, sizeof bits, "A%d..A%d", s->a_bits_min, s->a_bits_max);
    if (info->guidance_gain || info->eps_gain)
        snprintf(gains, sizeof gains, ", nor the %s%s%s the run fits for its effdm-format export",
                 info->guidance_gain ? "guidance gain" : "", info->guidance_gain && info->eps_gain ? " and " : "",
                 info->eps_gain ? "eps gain" : "");
    snprintf(s->note, sizeof s->note,
             "a CompVis state dict holds no activation quantization (%s fake-quant of %d layers, %d TALSQ "
             "entr%s)%s: PyTorch runs these dequantized weights with FP activations and plain guidance%s",
             bits, s->n_quantized, s->entries, s->entries == 1 ? "y" : "ies", gains, pruned);
    size_t k = 0;
    s->keys_note[0] = '\0';
    if (s->sf_dropped)
        k += (size_t)snprintf(s->keys_note + k, sizeof s->keys_note - k, "%sthe teacher's scale_factor left out "
                              "(scale_by_std false: LatentDiffusion registers no such buffer)", k ? "; " : "");
    if (s->sf_added && k < sizeof s->keys_note)
        k += (size_t)snprintf(s->keys_note + k, sizeof s->keys_note - k, "%sscale_factor added (scale_by_std true: "
                              "LatentDiffusion registers it)", k ? "; " : "");
    if (s->n_ema_dropped && k < sizeof s->keys_note)
        k += (size_t)snprintf(s->keys_note + k, sizeof s->keys_note - k, "%sthe teacher's %d model_ema.* tensors "
                              "left out (use_ema false: no LitEma)", k ? "; " : "", s->n_ema_dropped);
    if (s->n_ema_added && k < sizeof s->keys_note)
        snprintf(s->keys_note + k, sizeof s->keys_note - k, "%s%d model_ema.* tensors added (use_ema true: LitEma's "
                 "buffers; the student's weights, decay 0.9999, num_updates 0 where the teacher has none)",
                 k ? "; " : "", s->n_ema_added);
}

// Adds one tensor; counts its bytes.
static int add(StWriter *w, CompvisSummary *s, const char *name, DType dt, int ndim, const int64_t *shape,
               const void *data, Err *e) {
    if (!data) return err_set(e, ERR_NOMEM, "compvis export: out of memory for '%s'", name);
    if (st_writer_add(w, name, dt, ndim, shape, data, e)) return e->code;
    s->total_bytes += w->tensors[w->n_tensors - 1].nbytes;
    return 0;
}

// The teacher's tensor wi as stored, floats as F32 (F16 when f16 and it is a network weight;
// an F32 tensor kept F32 is not converted at all: bit for bit), into bufs.
static int teacher_tensor(WeightFile *teacher, const WeightInfo *wi, int f16, KeepList *bufs, DType *dt,
                          const void **data, Err *e) {
    size_t nb;
    *data = NULL;
    if (!size_mul_ok(wi->numel, dtype_size(wi->dtype), &nb))
        return err_set(e, ERR_SHAPE, "%s: tensor '%s': too large", weights_path(teacher), wi->name);
    void *raw = keep_alloc(bufs, nb);
    if (!raw) return err_set(e, ERR_NOMEM, "compvis export: out of memory for '%s'", wi->name);
    if (weights_read_raw(teacher, wi->name, raw, nb, e)) return e->code;
    *dt = wi->dtype;
    *data = raw;
    if (!dtype_is_float(wi->dtype)) return 0;
    *dt = f16 && network_tensor(wi->name) ? DT_F16 : DT_F32;
    if (wi->dtype == *dt) return 0;
    float *f = keep_alloc(bufs, wi->numel * sizeof(float));
    if (!f) return err_set(e, ERR_NOMEM, "compvis export: out of memory for '%s'", wi->name);
    dtype_to_f32(f, raw, wi->dtype, wi->numel);
    *data = as_dtype(bufs, f, wi->numel, *dt);
    return 0;
}

int export_compvis_write(const QModel *q, Ldm *m, WeightFile *teacher, const CompvisInfo *info, const char *path,
                         CompvisSummary *s, Err *e) {
    CompvisSummary local;
    if (!s) s = &local;
    memset(s, 0, sizeof *s);
    if (!m->unet || m->unet != q->unet)
        return err_set(e, ERR_INTERNAL, "compvis export: the student does not wrap the model's UNet");
    if (!info || !info->yaml || !teacher)
        return err_set(e, ERR_INTERNAL, "compvis export: the teacher checkpoint and its YAML text are required");
    int np = unet_param_tensors(q->unet), rc = 0;
    StudentParam *sp = calloc((size_t)(np ? np : 1), sizeof *sp);
    KeepList bufs = {0};
    StWriter w = {0};
    char *json = NULL;
    float sf32 = 0.0f;  // an added scale_factor's value, until st_write
    if (!sp) return err_set(e, ERR_NOMEM, "compvis export: out of memory");
    if ((rc = student_params(q, &bufs, sp, s, e))) goto done;
    DType fdt = info->f16 ? DT_F16 : DT_F32;
    const char *tpath = weights_path(teacher);
    // strict loading compares with the model the YAML builds (export_compvis.h "Tensors")
    int keep_ema = m->cfg.use_ema, keep_sf = m->cfg.scale_by_std, has_sf = 0, has_decay = 0, has_nu = 0;
    int n_unet_seen = 0;
    for (int i = 0; i < weights_count(teacher) && !rc; i++) {
        const WeightInfo *wi = weights_info(teacher, i);
        int ema, k = student_index(sp, np, wi->name, &ema);
        const void *data;
        DType dt;
        if (!strcmp(wi->name, "scale_factor")) {
            if (!keep_sf) {
                s->sf_dropped = 1;
                continue;
            }
            has_sf = 1;
        }
        if (!strncmp(wi->name, "model_ema.", 10)) {
            if (!keep_ema) {
                s->n_ema_dropped++;
                continue;
            }
            has_decay |= !strcmp(wi->name, "model_ema.decay");
            has_nu |= !strcmp(wi->name, "model_ema.num_updates");
        }
        if (k >= 0) {  // the student's value, in the teacher's shape
            if (wi->numel != sp[k].numel) {
                rc = err_set(e, ERR_SHAPE, "%s: tensor '%s': %zu values, the loaded UNet's '%s' has %zu", tpath,
                             wi->name, wi->numel, sp[k].name, sp[k].numel);
                break;
            }
            dt = fdt;
            data = as_dtype(&bufs, sp[k].data, sp[k].numel, dt);
            s->n_ema += ema;
            sp[k].in_teacher_ema |= ema;
            n_unet_seen += !ema;
        } else if ((rc = teacher_tensor(teacher, wi, info->f16, &bufs, &dt, &data, e))) {
            break;
        }
        rc = add(&w, s, wi->name, dt, wi->ndim, wi->shape, data, e);
    }
    if (!rc && n_unet_seen != np)  // ldm_load read every one of them from this file
        rc = err_set(e, ERR_INTERNAL, "compvis export: %s holds %d of the UNet's %d parameters", tpath, n_unet_seen, np);
    if (!rc && keep_sf && !has_sf) {  // CompVis registers torch.tensor(scale_factor) from the YAML
        sf32 = (float)m->scale_factor;
        rc = add(&w, s, "scale_factor", DT_F32, 0, NULL, &sf32, e);
        s->sf_added = 1;
    }
    for (int k = 0; k < np && !rc && keep_ema; k++) {  // LitEma's buffers the teacher lacks: the student
        if (sp[k].in_teacher_ema) continue;
        rc = add(&w, s, sp[k].ema, fdt, sp[k].ndim, sp[k].shape, as_dtype(&bufs, sp[k].data, sp[k].numel, fdt), e);
        s->n_ema++;
        s->n_ema_added++;
    }
    static const float decay = 0.9999f;  // LitEma(model) defaults: decay 0.9999, num_updates int32 0
    static const int32_t num_updates = 0;
    if (!rc && keep_ema && !has_decay) {
        rc = add(&w, s, "model_ema.decay", DT_F32, 0, NULL, &decay, e);
        s->n_ema_added++;
    }
    if (!rc && keep_ema && !has_nu) {
        rc = add(&w, s, "model_ema.num_updates", DT_I32, 0, NULL, &num_updates, e);
        s->n_ema_added++;
    }
    if (rc) goto done;
    s->n_tensors = w.n_tensors;
    s->a_bits_min = 99;
    for (int k = 0; k < q->n_q; k++) {
        int b = q->q[k].aq.bits;
        if (b < s->a_bits_min) s->a_bits_min = b;
        if (b > s->a_bits_max) s->a_bits_max = b;
    }
    if (!q->n_q) s->a_bits_min = 0;
    s->entries = q->cfg.talsq ? q->train_sched.n : 1;
    make_notes(s, info, unet_config(q->unet));

    if (!(json = export_quant_json(q))) {
        rc = err_set(e, ERR_NOMEM, "compvis export: out of memory for the metadata");
        goto done;
    }
    if ((rc = st_writer_meta(&w, "effdm.kind", info->f16 ? "compvis-fp16" : "compvis-fp32", e)) ||
        (rc = st_writer_meta(&w, "effdm.ldm_config", info->yaml, e)) ||
        (rc = st_writer_meta(&w, "effdm.quant", json, e)) ||
        (rc = st_writer_meta(&w, "effdm.ema", m->using_ema ? "1" : "0", e)) ||
        (rc = st_writer_meta(&w, "effdm.not_in_file", s->note, e)))
        goto done;
    if (s->keys_note[0] && (rc = st_writer_meta(&w, "effdm.keys_vs_teacher", s->keys_note, e))) goto done;
    if (info->source && (rc = st_writer_meta(&w, "effdm.source", info->source, e))) goto done;
    if (info->source_config && (rc = st_writer_meta(&w, "effdm.source_config", info->source_config, e))) goto done;
    if (info->run_dir && (rc = st_writer_meta(&w, "effdm.run", info->run_dir, e))) goto done;
    if (info->epoch && (rc = st_writer_meta(&w, "effdm.epoch", info->epoch, e))) goto done;
    rc = st_write(&w, path, e);
done:
    cJSON_free(json);
    st_writer_free(&w);
    keep_free(&bufs);
    free(sp);
    return rc;
}
