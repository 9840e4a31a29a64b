#include "models/layer.h"

#include <string.h>

Tensor *layer_forward(Ctx *c, ModelLayer *l, Tensor *x) {
    if (l->quant_forward) return l->quant_forward(c, l, x);
    Tensor *b = l->bias.data ? &l->bias : NULL;
    if (l->kind == LAYER_LINEAR) return t_linear(c, x, &l->weight, b);
    return t_conv2d(c, x, &l->weight, b, l->stride, l->pad);
}

const char *layer_leaf_name(const ModelLayer *l) {
    const char *dot = strrchr(l->name, '.');
    return dot ? dot + 1 : l->name;
}
