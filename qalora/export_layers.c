/* export_layers.c: the per-layer view of a loaded export (export.h export_layer_rows):
   bits, kinds, shapes, activation step ranges, and the deployed weight against the teacher's. */
#include "qalora/export.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qalora/export_int.h"

static ModelLayer *teacher_layer(UNet *u, const char *name) {
    int n;
    ModelLayer **all = unet_layers(u, &n);
    for (int i = 0; i < n; i++)
        if (!strcmp(all[i]->name, name)) return all[i];
    return NULL;
}

int export_layer_rows(const ExportModel *m, UNet *teacher, ExportLayerRow *rows, Err *e) {
    size_t cap = 0;
    for (int k = 0; k < m->n_layers; k++)
        if (m->layers[k].layer->weight.n > cap) cap = m->layers[k].layer->weight.n;
    float *w = teacher ? malloc((cap ? cap : 1) * sizeof(float)) : NULL;
    if (teacher && !w) return err_set(e, ERR_NOMEM, "out of memory");
    int rc = 0;
    for (int k = 0; k < m->n_layers && !rc; k++) {
        const ExportLayer *L = &m->layers[k];
        const ModelLayer *l = L->layer;
        ExportLayerRow *r = &rows[k];
        memset(r, 0, sizeof *r);
        r->name = l->name;
        r->special = L->special;
        r->w_kind = quant_kind_name(L->w_kind);
        r->a_kind = quant_kind_name(L->a_kind);
        r->w_bits = L->w_bits;
        r->a_bits = L->a_bits;
        r->entries = L->entries;
        r->ndim = l->weight.ndim;
        for (int d = 0; d < l->weight.ndim && d < 4; d++) r->shape[d] = l->weight.shape[d];
        r->a_delta_min = INFINITY;
        r->a_delta_max = -INFINITY;
        for (int i = 0; i < L->entries; i++) {
            r->a_delta_min = fmin(r->a_delta_min, L->a_delta[i]);
            r->a_delta_max = fmax(r->a_delta_max, L->a_delta[i]);
        }
        r->rel_err = NAN;
        r->path = !L->int_ok ? "float" : L->lut ? "int-lut" : "int";
        r->w_lut_err = L->w_lut_err;
        r->a_lut_err = L->a_lut_err;
        r->rot = L->rot;
        r->a_token = L->a_token;
        if (!teacher) continue;
        const ModelLayer *t = teacher_layer(teacher, l->name);
        if (!t) {
            rc = err_set(e, ERR_KEY, "layer '%s' of the export is not a layer of the teacher's UNet", l->name);
            break;
        }
        if (t->weight.ndim != l->weight.ndim ||
            memcmp(t->weight.shape, l->weight.shape, sizeof(int) * (size_t)l->weight.ndim) != 0) {
            rc = err_set(e, ERR_SHAPE, "layer '%s': the teacher's weight has another shape than the export's (is it "
                         "the teacher of this export?)", l->name);
            break;
        }
        if ((rc = export_layer_dequant(L, w))) {
            err_set(e, rc, "out of memory dequantizing layer '%s'", l->name);
            break;
        }
        double num = 0, den = 0;  // in double, in order: the same number on any machine
        for (size_t i = 0; i < l->weight.n; i++) {
            double d = (double)w[i] - (double)t->weight.data[i];
            num += d * d;
            den += (double)t->weight.data[i] * (double)t->weight.data[i];
        }
        r->rel_err = den > 0 ? sqrt(num / den) : sqrt(num);
    }
    free(w);
    return rc;
}
