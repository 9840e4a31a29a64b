/* fplayer.c: an unquantized layer of the student with its weight rounded to float16 (fplayer.h). */
#include "qalora/fplayer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/dtype.h"

void fp16_round(float *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(f32_to_f16(src[i]));
}

int fplayer_init(FpLayer *f, ModelLayer *l, Err *e) {
    memset(f, 0, sizeof *f);
    const Tensor *w = &l->weight;
    f->data = malloc((w->n ? w->n : 1) * sizeof(float));
    if (!f->data) return err_set(e, ERR_NOMEM, "layer '%s': out of memory for its float16 weight", l->name);
    fp16_round(f->data, w->data, w->n);
    for (size_t i = 0; i < w->n; i++)
        if (!isfinite(f->data[i]) && isfinite(w->data[i])) {
            free(f->data);
            f->data = NULL;
            return err_set(e, ERR_VALUE, "layer '%s': weight %g at %zu does not fit float16 (use quant.fp_layers: "
                           "f32)", l->name, (double)w->data[i], i);
        }
    f->layer = l;
    tensor_init_param(&f->w16, f->data, NULL, w->ndim, w->shape);
    return 0;
}

void fplayer_free(FpLayer *f) {
    if (!f) return;
    fplayer_detach(f);
    free(f->data);
    memset(f, 0, sizeof *f);
}

// layer_forward's FP op (models/layer.c) on the rounded weight; the bias stays float32.
static Tensor *fplayer_forward(Ctx *c, ModelLayer *l, Tensor *x) {
    FpLayer *f = l->quant;
    Tensor *b = l->bias.data ? &l->bias : NULL;
    if (l->kind == LAYER_LINEAR) return t_linear(c, x, &f->w16, b);
    return t_conv2d(c, x, &f->w16, b, l->stride, l->pad);
}

void fplayer_attach(FpLayer *f) {
    f->layer->quant = f;
    f->layer->quant_forward = fplayer_forward;
}

void fplayer_detach(FpLayer *f) {
    if (f->layer && f->layer->quant == f) {
        f->layer->quant = NULL;
        f->layer->quant_forward = NULL;
    }
}
