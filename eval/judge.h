/* judge.h: the Fashion-MNIST judge, effdm's FID feature network for the shipped teacher
   (models/zoo/fmnist-ldm/judge.ckpt; architecture in that folder's README):
       x (N, 1, 32, 32) in [-1, 1]
       conv1 3x3 1->32 pad 1, ReLU; conv2 3x3 32->32 pad 1, ReLU; maxpool 2
       conv3 3x3 32->64 pad 1, ReLU; conv4 3x3 64->64 pad 1, ReLU; maxpool 2
       flatten (C, H, W) -> fc1 4096->128, ReLU  = features (N, 128)
       fc2 128->10                              = logits (N, 10)
   Tensor names in the file: conv{1..4}.{weight,bias}, fc{1,2}.{weight,bias} (shapes checked).

       Judge j; Err e = {0};
       if (judge_load(&j, "models/zoo/fmnist-ldm/judge.ckpt", &e)) return e.code;
       judge_prep_u8_28(pixels28x28, x);            // or judge_prep_unit for [0, 1] images
       if (judge_forward(&j, &ctx, x, N, feats, logits, &e)) ...;
       judge_free(&j);

   Preprocessing, exactly as the teacher was trained (README "Data preparation"):
   idx bytes p (28 x 28): p / 127.5 - 1, padded to 32 x 32 with 2 pixels of -1 each side.
   Images in [0, 1] (decoded PNG bytes / 255): 32 x 32 -> x * 2 - 1; 28 x 28 -> the same,
   then padded as above. Other sizes are ERR_SHAPE (the judge is not resized). */
#ifndef EFFDM_JUDGE_H
#define EFFDM_JUDGE_H

#include <stdint.h>

#include "autograd/tape.h"
#include "util/err.h"

#define JUDGE_SIZE 32       // input is JUDGE_SIZE x JUDGE_SIZE, 1 channel
#define JUDGE_FEATURES 128
#define JUDGE_CLASSES 10

typedef struct {
    Tensor conv_w[4], conv_b[4];  // (Cout, Cin, 3, 3), (Cout)
    Tensor fc1_w, fc1_b;          // (128, 4096), (128)
    Tensor fc2_w, fc2_b;          // (10, 128), (10)
    float *block;                 // owns every weight
} Judge;

// Reads the judge's weights (any file io/weights.h opens). 0 or an ERR_ code naming the
// file and the tensor.
int judge_load(Judge *j, const char *path, Err *e);
// Frees the weights; accepts a zeroed or half-loaded judge.
void judge_free(Judge *j);

// x (N, 1, 32, 32) in [-1, 1] -> feats (N, 128), logits (N, 10); either may be NULL.
// No gradient; everything the pass allocates in c is released before returning.
// 0 or the arena's error (ERR_NOMEM).
int judge_forward(const Judge *j, Ctx *c, const float *x, int N, float *feats, float *logits, Err *e);

// One 28 x 28 idx image (bytes) -> (32, 32) input.
void judge_prep_u8_28(const uint8_t *px, float *out);
// One (H, W) gray image in [0, 1] -> (32, 32) input; H = W = 32 or 28, else ERR_SHAPE
// (name is used in the message).
int judge_prep_unit(const float *x, int H, int W, float *out, const char *name, Err *e);

#endif
