/* fplayer.h: a conv/linear layer the student keeps unquantized (skip connections, Downsample
   ops, fp_name_contains, keep_fp overrides), run with its weight rounded to float16 when the
   run config says quant.fp_layers: f16. The export then stores that weight as F16 and still
   computes exactly what the student computed (export.h "Size": this is what brings the W4
   UNet part under 1/6 of the FP32 UNet).

   The teacher and the student share one UNet (qmodel.h), and the teacher must stay the FP32
   model: the rounded weight is a separate frozen copy (no gradient buffer; the input gradient
   flows through the conv/linear as through any frozen weight), and layer_forward uses it only
   while the layer is attached - qmodel_enable(q, 1) attaches, qmodel_enable(q, 0) detaches.
   Nothing is saved in run states: the copy follows from the teacher's weight.

       FpLayer f;
       if (fplayer_init(&f, layer, &e)) goto fail;   // rounds a copy of layer->weight
       fplayer_attach(&f);                           // layer_forward: the F16-rounded weight
       fplayer_detach(&f);                           // layer_forward: the FP32 weight again
       fplayer_free(&f);

   Limitations: a weight beyond float16's range (|w| >= 65520) is refused (ERR_VALUE), not
   clamped.
*/
#ifndef EFFDM_FPLAYER_H
#define EFFDM_FPLAYER_H

#include <stddef.h>

#include "models/layer.h"

typedef struct {
    ModelLayer *layer;
    Tensor w16;      // weight-shaped copy, every value exactly a float16; grad NULL (frozen)
    float *data;     // owns w16's data
} FpLayer;

// Rounds n floats to the nearest float16 (half to even, as io/dtype.h's f32_to_f16 that the
// export writes with), kept as float32. dst may be src.
void fp16_round(float *dst, const float *src, size_t n);
// Wraps l (not attached): its weight rounded to float16 into a copy. 0, ERR_NOMEM, or ERR_VALUE
// naming the layer when a weight does not fit float16.
int fplayer_init(FpLayer *f, ModelLayer *l, Err *e);
// Detaches and frees; accepts a zeroed FpLayer.
void fplayer_free(FpLayer *f);
// layer_forward(l) runs the rounded copy from now on / runs the FP32 weight again.
void fplayer_attach(FpLayer *f);
void fplayer_detach(FpLayer *f);

#endif
