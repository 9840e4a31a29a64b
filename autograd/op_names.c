#include "autograd/ops.h"

static const char *const op_names[] = {
    "matmul", "linear", "conv2d", "add", "sub", "mul", "scale", "add_scalar", "silu", "gelu",
    "geglu", "relu", "softmax", "layer_norm", "group_norm", "upsample_nearest2x", "avg_pool2d",
    "max_pool2d", "pad2d", "reshape", "permute", "concat", "slice", "embedding",
    "timestep_embedding", "sum", "mean", "mse_loss", "attention", "fake_quant", "lora_weight", "rotate", "qweight",
};
_Static_assert(sizeof op_names / sizeof op_names[0] == OP_COUNT, "op name table out of step with OpKind");

const char *op_name(int op) { return (op >= 0 && op < OP_COUNT) ? op_names[op] : "?"; }
