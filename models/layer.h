/* layer.h: the weight-carrying conv/linear layers of the models, as one struct, so that
   qalora/ can wrap them without the models knowing about quantization.

   A model lists its layers in the order PyTorch registers the modules (the module's
   __init__ order, i.e. named_modules() order) - never the key order of a file. When
   `quant_forward` is set, layer_forward calls it instead of the FP op: that is how the
   fake-quantized student and the exported integer model run inside the same UNet code.
*/
#ifndef EFFDM_LAYER_H
#define EFFDM_LAYER_H

#include "autograd/ops.h"

typedef enum { LAYER_CONV2D, LAYER_LINEAR, LAYER_CONV1D } LayerKind;

typedef struct ModelLayer {
    LayerKind kind;        // LAYER_CONV1D: kernel-1 Conv1d of AttentionBlock (weight stored (Cout, Cin, 1, 1))
    char name[128];        // module name without the model prefix: "input_blocks.1.0.in_layers.2"
    int index;             // position in registration order among the model's layers
    Tensor weight;         // conv (Cout, Cin, kh, kw); linear (out, in)
    Tensor bias;           // (out); bias.data == NULL when the layer has none
    int stride, pad;       // conv only
    // Set by qalora/: replaces the FP op. Returns the layer output for input x.
    Tensor *(*quant_forward)(Ctx *c, struct ModelLayer *l, Tensor *x);
    void *quant;           // quantizer state owned by qalora/
} ModelLayer;

// Output of the layer for x: conv x (N, Cin, H, W) -> (N, Cout, Ho, Wo); linear x (..., in) -> (..., out).
// Calls l->quant_forward when set.
Tensor *layer_forward(Ctx *c, ModelLayer *l, Tensor *x);
// Last component of the layer's module name ("in_layers.2" -> "2", "skip_connection" -> "skip_connection").
const char *layer_leaf_name(const ModelLayer *l);

#endif
