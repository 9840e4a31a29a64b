// UNet lifetime and parameter access: unet_new (counting pass, one allocation per table,
// filling pass), unet_free, lookups, trainable switch.
#include <stdlib.h>
#include <string.h>

#include "models/unet/unet_impl.h"

static int cmp_param_name(const void *a, const void *b) {
    const UNetParam *pa = *(const UNetParam *const *)a, *pb = *(const UNetParam *const *)b;
    return strcmp(pa->name, pb->name);
}

int unet_new(UNet **out, const UNetConfig *cfg, Err *e) {
    *out = NULL;
    if (unet_config_check(cfg, e)) return e->code;
    UNet *m = calloc(1, sizeof *m);
    if (!m) return err_set(e, ERR_NOMEM, "UNet: out of memory");
    m->cfg = *cfg;
    if (unet_build(m, e)) goto fail;  // counting pass
    m->layers = calloc((size_t)m->n_layers, sizeof *m->layers);
    m->layer_ptrs = calloc((size_t)m->n_layers, sizeof *m->layer_ptrs);
    m->norms = calloc((size_t)m->n_norms, sizeof *m->norms);
    m->tblocks = calloc((size_t)m->n_tblocks + 1, sizeof *m->tblocks);
    m->params = calloc((size_t)m->n_params, sizeof *m->params);
    m->params_sorted = calloc((size_t)m->n_params, sizeof *m->params_sorted);
    m->input_blocks = calloc((size_t)m->n_input_blocks, sizeof *m->input_blocks);
    m->output_blocks = calloc((size_t)m->n_output_blocks, sizeof *m->output_blocks);
    // Zero-filled: a parameter nobody loads is 0, never garbage (calloc maps big blocks lazily).
    m->weights = calloc(m->n_floats, sizeof(float));
    if (!m->layers || !m->layer_ptrs || !m->norms || !m->tblocks || !m->params || !m->params_sorted ||
        !m->input_blocks || !m->output_blocks || !m->weights) {
        err_set(e, ERR_NOMEM, "UNet: out of memory for %zu parameters (%zu MiB)", m->n_floats,
                m->n_floats * sizeof(float) >> 20);
        goto fail;
    }
    if (unet_build(m, e)) goto fail;  // filling pass
    for (int i = 0; i < m->n_layers; i++) m->layer_ptrs[i] = &m->layers[i];
    for (int i = 0; i < m->n_params; i++) m->params_sorted[i] = &m->params[i];
    qsort(m->params_sorted, (size_t)m->n_params, sizeof *m->params_sorted, cmp_param_name);
    *out = m;
    return 0;
fail:
    unet_free(m);
    return e->code;
}

UNet *unet_clone_layers(const UNet *src) {
    UNet *m = malloc(sizeof *m);
    if (!m) return NULL;
    *m = *src;
    m->borrowed = 1;
    m->hook = NULL;
    m->hook_user = NULL;
    m->layers = malloc((size_t)src->n_layers * sizeof *m->layers);
    m->layer_ptrs = malloc((size_t)src->n_layers * sizeof *m->layer_ptrs);
    if (!m->layers || !m->layer_ptrs) {
        free(m->layers);
        free(m->layer_ptrs);
        free(m);
        return NULL;
    }
    for (int i = 0; i < m->n_layers; i++) {
        m->layers[i] = src->layers[i];
        m->layers[i].quant_forward = NULL;  // the clone's own quantizer attaches itself
        m->layers[i].quant = NULL;
        m->layer_ptrs[i] = &m->layers[i];
    }
    return m;
}

void unet_free(UNet *m) {
    if (!m) return;
    if (m->borrowed) {
        free(m->layers);
        free(m->layer_ptrs);
        free(m);
        return;
    }
    free(m->layers);
    free(m->layer_ptrs);
    free(m->norms);
    free(m->tblocks);
    free(m->params);
    free(m->params_sorted);
    free(m->input_blocks);
    free(m->output_blocks);
    free(m->weights);
    free(m->grads);
    free(m);
}

const UNetConfig *unet_config(const UNet *m) { return &m->cfg; }

size_t unet_param_count(const UNet *m) { return m->n_floats; }

int unet_param_tensors(const UNet *m) { return m->n_params; }

Tensor *unet_param_at(UNet *m, int i, const char **name) {
    if (i < 0 || i >= m->n_params) return NULL;
    if (name) *name = m->params[i].name;
    return m->params[i].t;
}

int unet_param_file_ndim(const UNet *m, int i) {
    return (i < 0 || i >= m->n_params) ? 0 : m->params[i].file_ndim;
}

int unet_ff_blocks(const UNet *m) { return m->n_tblocks; }

void unet_ff_layers(UNet *m, int k, ModelLayer **proj, ModelLayer **out) {
    *proj = &m->layers[m->tblocks[k].ff_in];
    *out = &m->layers[m->tblocks[k].ff_out];
}

void unet_attn_layers(UNet *m, int k, int j, ModelLayer *l[4], int *heads, int *dim_head) {
    const UNetTransformerBlock *tb = &m->tblocks[k];
    for (int i = 0; i < 4; i++) l[i] = &m->layers[j ? tb->attn2[i] : tb->attn1[i]];
    *heads = tb->heads[j];
    *dim_head = tb->dim_head;
}

ModelLayer **unet_layers(UNet *m, int *n) {
    *n = m->n_layers;
    return m->layer_ptrs;
}

Tensor *unet_param(UNet *m, const char *name) {
    UNetParam key, *kp = &key;
    size_t len = strlen(name);
    if (len >= sizeof key.name) return NULL;
    memcpy(key.name, name, len + 1);
    UNetParam **hit = bsearch(&kp, m->params_sorted, (size_t)m->n_params, sizeof *m->params_sorted,
                              cmp_param_name);
    return hit ? (*hit)->t : NULL;
}

int unet_set_trainable(UNet *m, int trainable, Err *e) {
    if (trainable && !m->grads) {
        // One flat block in the weights' layout, so an optimizer or an allreduce is one loop.
        m->grads = calloc(m->n_floats, sizeof(float));
        if (!m->grads)
            return err_set(e, ERR_NOMEM, "UNet: out of memory for %zu parameter gradients", m->n_floats);
    }
    for (int i = 0; i < m->n_params; i++) {
        Tensor *t = m->params[i].t;
        t->grad = trainable ? m->grads + (t->data - m->weights) : NULL;
        t->requires_grad = trainable;
    }
    if (!trainable) {
        free(m->grads);
        m->grads = NULL;
    }
    return 0;
}

void unet_zero_grad(UNet *m) {
    if (m->grads) memset(m->grads, 0, m->n_floats * sizeof(float));
}

float *unet_grads(UNet *m) { return m->grads; }

void unet_set_act_hook(UNet *m, UNetActHook hook, void *user) {
    m->hook = hook;
    m->hook_user = user;
}

int unet_has_act_hook(const UNet *m) { return m->hook != NULL; }
