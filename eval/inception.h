/* inception.h: pytorch-fid's "FID Inception" (src/pytorch_fid/inception.py: torchvision
   Inception3(num_classes=1008, aux_logits=False) with Mixed_5b..5d = FIDInceptionA,
   Mixed_6b..6e = FIDInceptionC, Mixed_7b = FIDInceptionE_1, Mixed_7c = FIDInceptionE_2),
   the network of every published FID, run through the engine without gradients.

       Inception *net; Err e = {0};
       if (inception_load(&net, "pt_inception-2015-12-05-6726825d.pth", &e)) return e.code;
       if (inception_forward(net, &ctx, x, N, H, W, pool3, logits, spatial, NULL, NULL, &e)) ...;
       inception_free(net);

   Weights: the state dict of pytorch-fid's pt_inception-2015-12-05-6726825d.pth (float32;
   float16 copies work too), as .pth or .safetensors, opened with io/weights.h. Names
   `<block>.<branch>.conv.weight` and `.bn.{weight,bias,running_mean,running_var}`, plus
   `fc.weight` (1008, 2048), `fc.bias`; shapes are checked, other tensors ignored.
   BasicConv2d = conv (no bias) + BatchNorm(eps 0.001) + ReLU; the BatchNorm is folded
   into the conv at load time (in double): w' = w g / sqrt(v + eps), b' = beta - m g / sqrt(v + eps).

   Input: x (N, 3, H, W) RGB in [0, 1]. As InceptionV3(resize_input=True,
   normalize_input=True): bilinear resize to 299 x 299 (F.interpolate, align_corners=False,
   no antialias; 299 x 299 inputs pass unchanged), then x * 2 - 1.
   Outputs (each may be NULL):
   - pool3 (N, 2048): the final average pool (pytorch-fid's FID features, block 3);
   - logits (N, 1008): fc on pool3 (Inception Score takes their softmax);
   - spatial (N, INCEPTION_SPATIAL_DIM): sFID features. guided-diffusion's evaluator takes
     the first 7 channels of the TF graph's `mixed_6/conv`; in this PyTorch port we take the
     first 7 channels of the Mixed_6e output (7 x 17 x 17), flattened in (C, H, W) order.
   Pooling inside the FID blocks: avg_pool2d(3, 1, 1, count_include_pad=False) in
   FIDInceptionA/C/E_1, max_pool2d(3, 1, 1) in FIDInceptionE_2; max_pool2d(3, 2) in the
   stem, Mixed_6a and Mixed_7a.
   Memory: about 25 MB of activations per 299 x 299 image (batch it); the weights take 95 MB. */
#ifndef EFFDM_INCEPTION_H
#define EFFDM_INCEPTION_H

#include "autograd/tape.h"
#include "util/err.h"

#define INCEPTION_SIZE 299
#define INCEPTION_FEATURES 2048
#define INCEPTION_CLASSES 1008
#define INCEPTION_SPATIAL_CH 7
#define INCEPTION_SPATIAL_DIM (7 * 17 * 17)
#define INCEPTION_BN_EPS 0.001

typedef struct Inception Inception;

// Called after each named block ("Conv2d_4a_3x3", "Mixed_5b", ..., "Mixed_7c") with its
// output, for debugging against the pytorch-fid activations.
typedef void (*InceptionTap)(void *user, const char *block, const Tensor *out);

// Loads and folds the weights. 0 or an ERR_ code naming the file and tensor.
int inception_load(Inception **net, const char *path, Err *e);
// Frees the network; accepts NULL.
void inception_free(Inception *net);

// See above. H, W >= 1. Everything the pass allocates in c is released before returning.
// 0 or the arena's error (ERR_NOMEM) / ERR_SHAPE.
int inception_forward(Inception *net, Ctx *c, const float *x, int N, int H, int W, float *pool3, float *logits,
                      float *spatial, InceptionTap tap, void *tap_user, Err *e);

// Bilinear resize as F.interpolate(mode="bilinear", align_corners=False, antialias=False):
// x (N, C, H, W) -> y (N, C, Ho, Wo). Source coordinate (o + 0.5) * (in / out) - 0.5,
// clamped at 0, in float as torch computes it on the CPU.
void inception_resize_bilinear(const float *x, int N, int C, int H, int W, float *y, int Ho, int Wo);

#endif
