// unet_load: every UNet parameter from a tensor file, by state-dict name, shape-checked.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/unet/unet_impl.h"

static void shape_str(char *buf, size_t size, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, size, "(");
    for (int i = 0; i < ndim && k < size; i++)
        k += (size_t)snprintf(buf + k, size - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < size) snprintf(buf + k, size - k, ")");
}

static int cmp_name_param(const void *key, const void *elem) {
    return strcmp((const char *)key, (*(const UNetParam *const *)elem)->name);
}

int unet_load(UNet *m, WeightFile *f, const char *prefix, int *unknown, Err *e) {
    char full[UNET_NAME_MAX + 256];
    size_t plen = strlen(prefix);
    if (plen >= 256) return err_set(e, ERR_VALUE, "unet_load: prefix '%.40s...' too long", prefix);
    for (int i = 0; i < m->n_params; i++) {
        const UNetParam *p = &m->params[i];
        Tensor *t = p->t;
        // Conv1d weights are (Cout, Cin, 1) in files and (Cout, Cin, 1, 1) here: same data.
        int64_t want[WEIGHTS_MAX_DIMS];
        int shape[WEIGHTS_MAX_DIMS];
        for (int d = 0; d < p->file_ndim; d++) want[d] = shape[d] = t->shape[d];
        char ws[128], fs[128];
        shape_str(ws, sizeof ws, p->file_ndim, want);
        snprintf(full, sizeof full, "%s%s", prefix, p->name);
        const WeightInfo *wi = weights_find(f, full);
        if (!wi)
            return err_set(e, ERR_KEY, "%s: missing tensor '%s' (UNet parameter of shape %s)",
                           weights_path(f), full, ws);
        int same = wi->ndim == p->file_ndim;
        for (int d = 0; same && d < p->file_ndim; d++) same = wi->shape[d] == want[d];
        if (!same) {
            shape_str(fs, sizeof fs, wi->ndim, wi->shape);
            return err_set(e, ERR_SHAPE, "%s: tensor '%s': expected shape %s for this UNet config, found %s",
                           weights_path(f), full, ws, fs);
        }
        if (weights_read_f32(f, full, t->data, p->file_ndim, shape, e)) return e->code;
    }
    if (unknown) {
        // Tensors under prefix the architecture does not have (reported, not an error:
        // docs/DESIGN.md "Unknown keys are reported").
        *unknown = 0;
        for (int i = 0; i < weights_count(f); i++) {
            const char *name = weights_info(f, i)->name;
            if (strncmp(name, prefix, plen) != 0) continue;
            if (!bsearch(name + plen, m->params_sorted, (size_t)m->n_params, sizeof *m->params_sorted,
                         cmp_name_param))
                (*unknown)++;
        }
    }
    return 0;
}
