/* tensor.h: float32, contiguous (row-major, NCHW for images), up to 5 dims.

   A Tensor never owns its data. Two kinds exist:
   - parameters: the struct lives in a model, data points into the model's one weight
     block (tensor_init_param); a trainable parameter also points `grad` into the model's
     gradient block and has requires_grad = 1; frozen ones have grad == NULL.
   - per-step tensors: struct and data come from the Ctx arena (tensor_new); their
     gradient buffer is allocated lazily, zero-filled, when backward first reaches them.
*/
#ifndef EFFDM_TENSOR_H
#define EFFDM_TENSOR_H

#include <stddef.h>

#define TENSOR_MAX_DIMS 5

typedef struct Tensor {
    float *data;
    float *grad;           // d loss / d data, same layout; NULL until needed (or frozen)
    size_t n;              // number of elements = product of shape
    int ndim;
    int shape[TENSOR_MAX_DIMS];
    int requires_grad;     // 1: backward must compute a gradient for this tensor
    int is_param;          // 1: persistent (model-owned); its grad is never arena memory
    struct TapeNode *remat;  // non-NULL: data may be dropped after the forward; this node (its
                             // producer) rebuilds it when the backward needs it (tape.h)
} Tensor;

// Points t at caller-owned data (a model's weight block); grad may be NULL (frozen).
// requires_grad is set to (grad != NULL). Returns t.
Tensor *tensor_init_param(Tensor *t, float *data, float *grad, int ndim, const int *shape);
// Number of elements of a shape (0 dims: 1).
size_t tensor_shape_numel(int ndim, const int *shape);
// 1 if a and b have identical shapes.
int tensor_same_shape(const Tensor *a, const Tensor *b);
// Writes "(2, 3, 4)" into buf; returns buf.
char *tensor_shape_str(const Tensor *t, char *buf, size_t size);
// Size of dimension d, counting negative d from the end (-1 = last).
int tensor_dim(const Tensor *t, int d);

#endif
