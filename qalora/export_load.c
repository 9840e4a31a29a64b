/* export_load.c: an effdm export (export.h) as a sampleable model: the quantized layers keep
   their packed levels and run as export_int.h describes (integer kernels, or the float
   reference path: fake-quantized input, W_eff dequantized per call). */
#include "qalora/export.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/dtype.h"
#include "models/ldm_config.h"
#include "qalora/export_int.h"
#include "qalora/qkind.h"

#define UNET_PREFIX "model.diffusion_model."

void export_free(ExportModel *m) {
    if (!m) return;
    for (int k = 0; m->layers && k < m->n_layers; k++) {
        ExportLayer *L = &m->layers[k];
        if (L->layer && L->layer->quant == L) {
            L->layer->quant = NULL;
            L->layer->quant_forward = NULL;
        }
        export_layer_release(L);
    }
    free(m->layers);
    free(m->guidance_gain);
    free(m->eps_gain);
    ldm_free(m->ldm);
    free(m);
}

int export_set_kernel(ExportModel *m, const char *name, Err *e) {
    if (!name || !*name || !strcmp(name, "auto")) {
        m->use_float = 0;
        m->kernel = int_gemm_best();
        return 0;
    }
    if (!strcmp(name, "float")) {
        m->use_float = 1;
        m->kernel = int_gemm_best();
        return 0;
    }
    for (int k = 0; k < INT_GEMM_COUNT; k++) {
        if (strcmp(name, int_gemm_name((IntGemmKind)k)) != 0) continue;
        if (!int_gemm_supported((IntGemmKind)k))
            return err_set(e, ERR_UNSUPPORTED, "EFFDM_KERNEL '%s': this CPU (or build) cannot run it", name);
        m->use_float = 0;
        m->kernel = (IntGemmKind)k;
        return 0;
    }
    return err_set(e, ERR_ARG, "EFFDM_KERNEL '%s': expected auto, float, ref, avx2 or vnni", name);
}

const char *export_kernel_name(const ExportModel *m) { return m->use_float ? "float" : int_gemm_name(m->kernel); }

int export_layer_weight(const ExportModel *m, const char *name, float *w) {
    for (int k = 0; k < m->n_layers; k++)
        if (!strcmp(m->layers[k].layer->name, name)) return export_layer_dequant(&m->layers[k], w);
    return ERR_KEY;
}

void export_set_timestep(ExportModel *m, int t) {
    m->entry = talsq_entry(&m->train_sched, t);
    if (m->guidance_gain) m->ldm->guidance_gain = m->guidance_gain[m->entry];
    if (m->eps_gain) m->ldm->eps_gain = m->eps_gain[m->entry];
}

void export_on_eval(int step, int total, int timestep, void *user) { export_set_timestep(user, timestep); }

static int json_int(const cJSON *o, const char *key, int *out, const char *path, Err *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int)v->valuedouble)
        return err_set(e, ERR_FORMAT, "%s: metadata effdm.quant: '%s' is missing or not an integer", path, key);
    *out = (int)v->valuedouble;
    return 0;
}

// Reads a F32 tensor of n values and exact shape (n). ERR_KEY / ERR_SHAPE naming it.
static int read_vec(WeightFile *f, const char *name, float *dst, int n, Err *e) {
    if (!weights_find(f, name)) return err_set(e, ERR_KEY, "%s: tensor '%s' is missing", weights_path(f), name);
    return weights_read_f32(f, name, dst, 1, &n, e);
}

static int all_integers(const float *v, int n) {
    for (int i = 0; i < n; i++)
        if (v[i] != rintf(v[i])) return 0;
    return 1;
}

// The weight kind's side table (export.h w_side_idx / w_side_val), when the file has one:
// L->n_side, side_idx (ascending positions inside a channel), side_val. ERR_ codes naming the tensor.
static int load_side(ExportLayer *L, WeightFile *f, Err *e) {
    ModelLayer *l = L->layer;
    const char *path = weights_path(f);
    char ni[600], nv[600];
    snprintf(ni, sizeof ni, UNET_PREFIX "%s.w_side_idx", l->name);
    snprintf(nv, sizeof nv, UNET_PREFIX "%s.w_side_val", l->name);
    const WeightInfo *wi = weights_find(f, ni), *wv = weights_find(f, nv);
    if (!wi && !wv) return 0;
    if (!qkind_get(L->w_kind)->side)
        return err_set(e, ERR_FORMAT, "%s: tensor '%s': the layer's %s weight quantizer keeps no side table", path,
                       wi ? ni : nv, quant_kind_name(L->w_kind));
    if (!wi || !wv) return err_set(e, ERR_KEY, "%s: tensor '%s' is missing (it comes with '%s')", path, wi ? nv : ni,
                                   wi ? ni : nv);
    int co = l->weight.shape[0];
    size_t K = l->weight.n / (size_t)co;
    if (wi->dtype != DT_I16 && wi->dtype != DT_I32)
        return err_set(e, ERR_DTYPE, "%s: tensor '%s': expected I16 or I32, found %s", path, ni, dtype_name(wi->dtype));
    if (wi->ndim != 2 || wi->shape[0] != co || wi->shape[1] < 1 || (size_t)wi->shape[1] > K)
        return err_set(e, ERR_SHAPE, "%s: tensor '%s': expected (%d, m) with 1 <= m <= %zu", path, ni, co, K);
    int m = (int)wi->shape[1];
    size_t cnt = (size_t)co * (size_t)m, es = dtype_size(wi->dtype);
    void *raw = malloc(cnt * es);
    L->side_idx = malloc(cnt * sizeof *L->side_idx);
    L->side_val = malloc(cnt * sizeof *L->side_val);
    if (!raw || !L->side_idx || !L->side_val) {
        free(raw);
        return err_set(e, ERR_NOMEM, "out of memory loading layer '%s'", l->name);
    }
    int rc = weights_read_raw(f, ni, raw, cnt * es, e);
    for (size_t j = 0; !rc && j < cnt; j++) {
        int32_t p = es == 2 ? ((const int16_t *)raw)[j] : ((const int32_t *)raw)[j];
        int32_t prev = j % (size_t)m ? L->side_idx[j - 1] : -1;
        if (p <= prev || (size_t)p >= K)
            rc = err_set(e, ERR_VALUE, "%s: tensor '%s': channel %zu: position %d (expected ascending positions in "
                         "0..%zu)", path, ni, j / (size_t)m, (int)p, K - 1);
        L->side_idx[j] = p;
    }
    free(raw);
    if (rc) return rc;
    if ((rc = weights_read_f32(f, nv, L->side_val, 2, (int[]){co, m}, e))) return rc;
    for (size_t j = 0; j < cnt; j++)
        if (!isfinite(L->side_val[j]))
            return err_set(e, ERR_VALUE, "%s: tensor '%s': value %g at %zu is not finite", path, nv,
                           (double)L->side_val[j], j);
    L->n_side = m;
    return 0;
}

// An optional per-entry gain table (export.h guidance_gain, eps_gain): n gains in (0, 100] into a
// new *out, or *out NULL when the file has none.
static int read_gains(WeightFile *f, const char *name, int n, float **out, Err *e) {
    *out = NULL;
    if (!weights_find(f, name)) return 0;
    if (!(*out = malloc((size_t)n * sizeof(float)))) return err_set(e, ERR_NOMEM, "out of memory");
    int rc = read_vec(f, name, *out, n, e);
    for (int k = 0; !rc && k < n; k++)
        if (!isfinite((*out)[k]) || (*out)[k] <= 0 || (*out)[k] > 100)
            rc = err_set(e, ERR_VALUE, "%s: tensor '%s': entry %d is %g, expected a gain in (0, 100]", weights_path(f),
                         name, k, (double)(*out)[k]);
    return rc;
}

// A kind's own values (export.h w_param / a_param): n floats, each a positive finite exponent,
// into a new *out; n = 0: the kind has none (*out NULL, the tensor must be absent).
static int load_param(WeightFile *f, const char *layer, const char *suffix, int n, float **out, Err *e) {
    char name[600];
    snprintf(name, sizeof name, UNET_PREFIX "%s.%s", layer, suffix);
    *out = NULL;
    if (n == 0) {
        if (weights_find(f, name))
            return err_set(e, ERR_FORMAT, "%s: tensor '%s': the layer's quantizer kind has no values of its own",
                           weights_path(f), name);
        return 0;
    }
    if (!weights_find(f, name)) return err_set(e, ERR_KEY, "%s: tensor '%s' is missing", weights_path(f), name);
    *out = malloc((size_t)n * sizeof(float));
    if (!*out) return err_set(e, ERR_NOMEM, "out of memory");
    int rc = weights_read_f32(f, name, *out, 1, (int[]){n}, e);
    for (int i = 0; !rc && i < n; i++)
        if (!((*out)[i] > 0.0f && (*out)[i] <= 100.0f))
            rc = err_set(e, ERR_VALUE, "%s: tensor '%s': value %g at %d (expected a positive exponent)",
                         weights_path(f), name, (double)(*out)[i], i);
    return rc;
}

// One quantized layer: packed levels, per-channel Δ_w / z_w, the activation table. The
// levels' bytes are the weight kind's (qkind.h packed_size / unpack).
// v1: an effdm.format "1" file, whose 3-bit levels sit in 4-bit containers.
static int load_layer(ExportLayer *L, WeightFile *f, int w_bits, int a_bits, int entries, int v1, Err *e) {
    ModelLayer *l = L->layer;
    const char *path = weights_path(f);
    char name[600];
    int co = l->weight.shape[0];
    Quantizer wq;  // the kind and bits, for the byte layout
    quantizer_setup(&wq, L->w_kind, v1 && w_bits == 3 ? 4 : w_bits, 1, co, NULL, NULL, NULL, NULL);
    const QKindOps *wops = quantizer_ops(&wq);
    size_t n = l->weight.n, nb = wops->packed_size(&wq, n);
    snprintf(name, sizeof name, UNET_PREFIX "%s.qweight", l->name);
    const WeightInfo *wi = weights_find(f, name);
    if (!wi) return err_set(e, ERR_KEY, "%s: tensor '%s' is missing", path, name);
    if (wi->dtype != DT_U8)
        return err_set(e, ERR_DTYPE, "%s: tensor '%s': expected U8, found %s", path, name, dtype_name(wi->dtype));
    if (wi->ndim != 1 || wi->numel != nb)
        return err_set(e, ERR_SHAPE, "%s: tensor '%s': expected (%zu) bytes for %zu %d-bit %s levels, found %zu in %d "
                       "dims", path, name, nb, n, w_bits, wops->name, wi->numel, wi->ndim);
    uint8_t *packed = malloc(nb), *lv = malloc(n);
    float *wd = malloc((size_t)co * sizeof(float)), *wz = malloc((size_t)co * sizeof(float));
    L->a_delta = malloc((size_t)entries * sizeof(float));
    L->a_zero = malloc((size_t)entries * sizeof(float));
    int rc = 0;
    if (!packed || !lv || !wd || !wz || !L->a_delta || !L->a_zero) {
        rc = err_set(e, ERR_NOMEM, "out of memory loading layer '%s'", l->name);
        goto done;
    }
    if ((rc = weights_read_raw(f, name, packed, nb, e))) goto done;
    wops->unpack(&wq, lv, packed, n);
    int qmax = (1 << w_bits) - 1;
    for (size_t i = 0; i < n; i++)
        if (lv[i] > qmax) {
            rc = err_set(e, ERR_VALUE, "%s: tensor '%s': level %d at %zu exceeds %d (%d bits)", path, name, lv[i], i,
                         qmax, w_bits);
            goto done;
        }
    snprintf(name, sizeof name, UNET_PREFIX "%s.w_delta", l->name);
    if ((rc = read_vec(f, name, wd, co, e))) goto done;
    snprintf(name, sizeof name, UNET_PREFIX "%s.w_zero", l->name);
    if ((rc = read_vec(f, name, wz, co, e))) goto done;
    if (!all_integers(wz, co)) {
        rc = err_set(e, ERR_VALUE, "%s: tensor '%s': zero points must be integers", path, name);
        goto done;
    }
    snprintf(name, sizeof name, UNET_PREFIX "%s.a_delta", l->name);
    if ((rc = read_vec(f, name, L->a_delta, entries, e))) goto done;
    snprintf(name, sizeof name, UNET_PREFIX "%s.a_zero", l->name);
    if ((rc = read_vec(f, name, L->a_zero, entries, e))) goto done;
    if (!all_integers(L->a_zero, entries)) {
        rc = err_set(e, ERR_VALUE, "%s: tensor '%s': zero points must be integers", path, name);
        goto done;
    }
    quantizer_setup(&L->aq, L->a_kind, a_bits, 0, entries, L->a_delta, L->a_zero, NULL, NULL);
    if ((rc = load_param(f, l->name, "w_param", co * qkind_get(L->w_kind)->n_param, &L->w_param, e)) ||
        (rc = load_param(f, l->name, "a_param", entries * qkind_get(L->a_kind)->n_param, &L->a_param, e)))
        goto done;
    if (L->a_param) quantizer_setup_param(&L->aq, L->a_param, NULL);
    if ((rc = load_side(L, f, e))) goto done;
    // the levels stay packed (export_int.h); W_eff is never written into the UNet's weight
    rc = export_layer_prepare(L, lv, wd, wz, e);
done:
    free(packed);
    free(lv);
    free(wd);
    free(wz);
    return rc;
}

// A layer's quantizer kind: its name under `key` ("w_quantizer", "a_quantizer"); absent:
// uniform (exports written before kinds existed). ERR_FORMAT / ERR_UNSUPPORTED naming it.
static int json_kind(const cJSON *L, const char *key, const char *layer, QuantKind *out, const char *path, Err *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(L, key);
    *out = QUANT_UNIFORM;
    if (!v) return 0;
    if (!cJSON_IsString(v))
        return err_set(e, ERR_FORMAT, "%s: metadata effdm.quant: layer '%s': '%s' is not a string", path, layer, key);
    if (qkind_find(v->valuestring, out)) {
        char known[256];
        return err_set(e, ERR_UNSUPPORTED, "%s: metadata effdm.quant: layer '%s': %s '%s' is not a quantizer kind "
                       "this build knows (%s)", path, layer, key, v->valuestring, qkind_list(known, sizeof known));
    }
    return 0;
}

static ModelLayer *find_layer(ModelLayer **all, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(all[i]->name, name)) return all[i];
    return NULL;
}

// effdm.quant -> layers, schedule, bits. ERR_FORMAT naming the key.
// rot_ok: effdm.format is EXPORT_FORMAT_ROT or _TOKEN, whose layers may carry "rotate"; token_ok: it
// is EXPORT_FORMAT_TOKEN, whose layers may carry "a_granularity".
static int parse_quant(ExportModel *em, const char *json, ModelLayer **all, int n_all, int rot_ok, int token_ok,
                       const char *path, Err *e) {
    cJSON *o = cJSON_Parse(json);
    int rc = 0;
    if (!o || !cJSON_IsObject(o)) {
        rc = err_set(e, ERR_FORMAT, "%s: metadata effdm.quant is not a JSON object", path);
        goto done;
    }
    if ((rc = json_int(o, "w_bits", &em->w_bits, path, e)) || (rc = json_int(o, "a_bits", &em->a_bits, path, e)) ||
        (rc = json_int(o, "special_bits", &em->special_bits, path, e)) ||
        (rc = json_int(o, "rank", &em->rank, path, e)))
        goto done;
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(o, "timesteps");
    int nts = cJSON_IsArray(ts) ? cJSON_GetArraySize(ts) : -1;
    if (nts < 1 || nts > TALSQ_MAX_ENTRIES) {
        rc = err_set(e, ERR_FORMAT, "%s: metadata effdm.quant: 'timesteps' must be an array of 1..%d integers", path,
                     TALSQ_MAX_ENTRIES);
        goto done;
    }
    int t[TALSQ_MAX_ENTRIES];
    for (int i = 0; i < nts; i++) {
        const cJSON *v = cJSON_GetArrayItem(ts, i);
        if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int)v->valuedouble) {
            rc = err_set(e, ERR_FORMAT, "%s: metadata effdm.quant: timesteps[%d] is not an integer", path, i);
            goto done;
        }
        t[i] = (int)v->valuedouble;
    }
    if ((rc = talsq_from_timesteps(&em->train_sched, t, nts, e))) {
        err_prefix(e, "%s: metadata effdm.quant", path);
        goto done;
    }
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(o, "layers");
    int nl = cJSON_IsArray(layers) ? cJSON_GetArraySize(layers) : -1;
    if (nl < 0 || nl > n_all) {
        rc = err_set(e, ERR_FORMAT, "%s: metadata effdm.quant: 'layers' must be an array of at most %d layers", path,
                     n_all);
        goto done;
    }
    em->layers = calloc((size_t)(nl ? nl : 1), sizeof *em->layers);
    if (!em->layers) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int k = 0; k < nl; k++) {
        const cJSON *L = cJSON_GetArrayItem(layers, k);
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(L, "name"), *role = cJSON_GetObjectItemCaseSensitive(L, "role");
        if (!cJSON_IsString(nm) || !cJSON_IsString(role)) {
            rc = err_set(e, ERR_FORMAT, "%s: metadata effdm.quant: layers[%d] needs 'name' and 'role'", path, k);
            goto done;
        }
        ModelLayer *ml = find_layer(all, n_all, nm->valuestring);
        if (!ml || (ml->kind != LAYER_CONV2D && ml->kind != LAYER_LINEAR) || ml->quant) {
            rc = err_set(e, ERR_FORMAT, "%s: metadata effdm.quant: layers[%d] '%s' is not a conv2d/linear layer of "
                         "this UNet (or listed twice)", path, k, nm->valuestring);
            goto done;
        }
        int special = !strcmp(role->valuestring, "special");
        if (!special && strcmp(role->valuestring, "trainable") != 0) {
            rc = err_set(e, ERR_FORMAT, "%s: metadata effdm.quant: layer '%s': role '%s' (expected trainable or "
                         "special)", path, nm->valuestring, role->valuestring);
            goto done;
        }
        int wb = 0, ab = 0, entries = 0;
        QuantKind wk, ak;
        if ((rc = json_int(L, "w_bits", &wb, path, e)) || (rc = json_int(L, "a_bits", &ab, path, e)) ||
            (rc = json_int(L, "entries", &entries, path, e)) ||
            (rc = json_kind(L, "w_quantizer", nm->valuestring, &wk, path, e)) ||
            (rc = json_kind(L, "a_quantizer", nm->valuestring, &ak, path, e)))
            goto done;
        if (wb < QUANT_MIN_BITS || wb > QUANT_MAX_BITS || ab < QUANT_MIN_BITS || ab > QUANT_MAX_BITS ||
            (entries != 1 && entries != nts) || (special && entries != 1)) {
            rc = err_set(e, ERR_FORMAT, "%s: metadata effdm.quant: layer '%s': W%d/A%d with %d entries (expected "
                         "%d..%d bits, 1 or %d entries)", path, nm->valuestring, wb, ab, entries, QUANT_MIN_BITS,
                         QUANT_MAX_BITS, nts);
            goto done;
        }
        // "rotate": the Hadamard block of the input channels (absent: 0, not rotated)
        int rot = 0;
        if (cJSON_GetObjectItemCaseSensitive(L, "rotate")) {
            if (!rot_ok) {
                rc = err_set(e, ERR_FORMAT, "%s: metadata effdm.quant: layer '%s' is rotated in a file of effdm.format "
                             "other than '%s' and '%s'", path, nm->valuestring, EXPORT_FORMAT_ROT, EXPORT_FORMAT_TOKEN);
                goto done;
            }
            if ((rc = json_int(L, "rotate", &rot, path, e))) goto done;
        }
        if (rot && (rot < 2 || (rot & (rot - 1)) || ml->weight.shape[1] % rot)) {
            rc = err_set(e, ERR_FORMAT, "%s: metadata effdm.quant: layer '%s': rotate %d (expected a power of two "
                         ">= 2 dividing its %d input channels)", path, nm->valuestring, rot, ml->weight.shape[1]);
            goto done;
        }
        // "a_granularity": "token" (token_quant.h; absent: "tensor", one static range per entry)
        int token = 0;
        const cJSON *gr = cJSON_GetObjectItemCaseSensitive(L, "a_granularity");
        if (gr) {
            if (!token_ok) {
                rc = err_set(e, ERR_FORMAT, "%s: metadata effdm.quant: layer '%s' has an a_granularity in a file of "
                             "effdm.format other than '%s'", path, nm->valuestring, EXPORT_FORMAT_TOKEN);
                goto done;
            }
            if (!cJSON_IsString(gr) || (strcmp(gr->valuestring, "token") && strcmp(gr->valuestring, "tensor"))) {
                rc = err_set(e, ERR_FORMAT, "%s: metadata effdm.quant: layer '%s': a_granularity %s (expected \"token\" "
                             "or \"tensor\")", path, nm->valuestring, cJSON_IsString(gr) ? gr->valuestring : "(not a string)");
                goto done;
            }
            token = !strcmp(gr->valuestring, "token");
            if (token && (special || ak != QUANT_UNIFORM)) {
                rc = err_set(e, ERR_FORMAT, "%s: metadata effdm.quant: layer '%s': per-token activations on a %s "
                             "layer with %s activations (expected a trainable layer, uniform)", path, nm->valuestring,
                             special ? "special" : "trainable", quant_kind_name(ak));
                goto done;
            }
        }
        ExportLayer *X = &em->layers[k];
        X->a_token = token;
        X->rot = rot;
        X->layer = ml;
        X->special = special;
        X->model = em;
        X->w_bits = wb;
        X->a_bits = ab;
        X->w_kind = wk;
        X->a_kind = ak;
        X->entries = entries;
        ml->quant = X;  // marks the layer as listed until it is attached
        em->n_layers = k + 1;
    }
done:
    cJSON_Delete(o);
    return rc;
}

int export_load(ExportModel **out, const char *path, Err *e) {
    *out = NULL;
    ExportModel *em = calloc(1, sizeof *em);
    LdmConfig *cfg = malloc(sizeof *cfg);
    WeightFile *f = NULL;
    UNet *u = NULL;
    int rc = 0;
    if (!em || !cfg) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto fail;
    }
    if ((rc = weights_open(&f, path, e))) goto fail;
    const char *fmt = weights_metadata(f, "effdm.format");
    const char *kind = weights_metadata(f, "effdm.kind");
    if (!fmt && kind && !strncmp(kind, "compvis-", 8)) {  // export_compvis.h: an FP checkpoint
        rc = err_set(e, ERR_FORMAT, "%s: a CompVis state dict (effdm export --format %s), not an effdm export: "
                     "sample it as a checkpoint, --ldm-config C.yaml --ckpt %s", path, kind, path);
        goto fail;
    }
    if (!fmt) {
        rc = err_set(e, ERR_FORMAT, "%s: not an effdm export (no metadata 'effdm.format')", path);
        goto fail;
    }
    int v1 = !strcmp(fmt, EXPORT_FORMAT_V1), token_ok = !strcmp(fmt, EXPORT_FORMAT_TOKEN);
    int rot_ok = token_ok || !strcmp(fmt, EXPORT_FORMAT_ROT);
    if (strcmp(fmt, EXPORT_FORMAT) != 0 && !v1 && !rot_ok) {
        rc = err_set(e, ERR_UNSUPPORTED, "%s: effdm.format '%s' (this build reads '%s', '%s', '%s' and '%s')", path, fmt,
                     EXPORT_FORMAT, EXPORT_FORMAT_V1, EXPORT_FORMAT_ROT, EXPORT_FORMAT_TOKEN);
        goto fail;
    }
    const char *yaml = weights_metadata(f, "effdm.ldm_config"), *quant = weights_metadata(f, "effdm.quant");
    if (!yaml || !quant) {
        rc = err_set(e, ERR_FORMAT, "%s: metadata '%s' is missing", path, !yaml ? "effdm.ldm_config" : "effdm.quant");
        goto fail;
    }
    char cname[1200];
    snprintf(cname, sizeof cname, "%s (effdm.ldm_config)", path);
    if ((rc = ldm_config_load_mem(cfg, yaml, strlen(yaml), cname, e))) goto fail;
    static const char *const gains[] = {"guidance_gain", "eps_gain", NULL};  // read below
    LdmLoadOpts lo = {LDM_EMA_OFF, LDM_PART_FIRST_STAGE | LDM_PART_COND_STAGE, gains};
    if ((rc = ldm_load_from(&em->ldm, cfg, f, &lo, e))) goto fail;
    if ((rc = unet_config_read_widths(&cfg->unet, f, "model.diffusion_model.", e))) goto fail;  // pruned widths, heads
    em->ldm->cfg.unet = cfg->unet;
    if ((rc = unet_new(&u, &cfg->unet, e))) {
        err_prefix(e, "%s: effdm.ldm_config: model.params.unet_config", path);
        goto fail;
    }
    em->ldm->unet = u;
    int n_all;
    ModelLayer **all = unet_layers(u, &n_all);
    if ((rc = parse_quant(em, quant, all, n_all, rot_ok, token_ok, path, e))) goto fail;
    // FP parameters: everything that is not the weight of a listed layer
    for (int i = 0; i < unet_param_tensors(u); i++) {
        const char *pn;
        Tensor *p = unet_param_at(u, i, &pn);
        int quantized = 0;
        for (int k = 0; k < em->n_layers && !quantized; k++) quantized = em->layers[k].layer->weight.data == p->data;
        if (quantized) continue;
        char name[600];
        snprintf(name, sizeof name, UNET_PREFIX "%s", pn);
        if (!weights_find(f, name)) {
            rc = err_set(e, ERR_KEY, "%s: tensor '%s' is missing", path, name);
            goto fail;
        }
        int nd = unet_param_file_ndim(u, i);
        if ((rc = weights_read_f32(f, name, p->data, nd, p->shape, e))) goto fail;
    }
    for (int k = 0; k < em->n_layers; k++) {
        ExportLayer *X = &em->layers[k];
        if ((rc = load_layer(X, f, X->w_bits, X->a_bits, X->entries, v1, e))) goto fail;
        X->layer->quant = X;
        X->layer->quant_forward = export_layer_forward;
        em->n_int_layers += X->int_ok;
        em->n_token_layers += X->a_token;
        em->n_lut_layers += X->lut;
        em->qlevel_bytes += export_layer_level_bytes(X);
        em->qscale_bytes += export_layer_scale_bytes(X);
        em->qoperand_bytes += export_layer_operand_bytes(X);
        em->qfp32_bytes += X->layer->weight.n * sizeof(float);
    }
    if ((rc = read_gains(f, "guidance_gain", em->train_sched.n, &em->guidance_gain, e)) ||  // optional (guidance_gain.h)
        (rc = read_gains(f, "eps_gain", em->train_sched.n, &em->eps_gain, e)))
        goto fail;
    if ((rc = export_set_kernel(em, getenv("EFFDM_KERNEL"), e))) goto fail;
    em->unet_fp32_bytes = unet_param_count(u) * sizeof(float);
    for (int i = 0; i < weights_count(f); i++) {
        const WeightInfo *wi = weights_info(f, i);
        if (!strncmp(wi->name, UNET_PREFIX, strlen(UNET_PREFIX)))
            em->unet_bytes += wi->numel * dtype_size(wi->dtype);
    }
    const char *src = weights_metadata(f, "effdm.source");
    snprintf(em->source, sizeof em->source, "%s", src ? src : "");
    const char *ema = weights_metadata(f, "effdm.ema");
    em->ema = ema && !strcmp(ema, "1");
    em->entry = 0;
    weights_close(f);
    free(cfg);
    *out = em;
    return 0;
fail:
    // layers marked but not attached: clear the marks before the UNet goes
    if (em && em->layers)
        for (int k = 0; k < em->n_layers; k++)
            if (em->layers[k].layer && em->layers[k].layer->quant_forward != export_layer_forward)
                em->layers[k].layer->quant = NULL;
    export_free(em);
    weights_close(f);
    free(cfg);
    return rc;
}
