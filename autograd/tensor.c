#include "autograd/tensor.h"

#include <stdio.h>
#include <string.h>

size_t tensor_shape_numel(int ndim, const int *shape) {
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    return n;
}

Tensor *tensor_init_param(Tensor *t, float *data, float *grad, int ndim, const int *shape) {
    memset(t, 0, sizeof *t);
    t->data = data;
    t->grad = grad;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->n = tensor_shape_numel(ndim, shape);
    t->requires_grad = grad != NULL;
    t->is_param = 1;
    return t;
}

int tensor_same_shape(const Tensor *a, const Tensor *b) {
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

char *tensor_shape_str(const Tensor *t, char *buf, size_t size) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, size - k, "(");
    for (int i = 0; i < t->ndim && k < size; i++)
        k += (size_t)snprintf(buf + k, size - k, i ? ", %d" : "%d", t->shape[i]);
    if (k < size) snprintf(buf + k, size - k, ")");
    return buf;
}

int tensor_dim(const Tensor *t, int d) {
    if (d < 0) d += t->ndim;
    return t->shape[d];
}
