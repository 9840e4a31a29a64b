/* calib_inputs.h: the recorded teacher UNet inputs of a run directory's calib.safetensors,
   as the trainer's validation reads them.

       CalibInputs ci;
       if (calib_inputs_read(&ci, "runs/x/calib.safetensors", C, H, W, cond, &e)) return e.code;
       ... ci.x + i * C*H*W, ci.t[i], ci.y[i]; ci.used[0..n_used): inputs of the activation init
       calib_inputs_free(&ci);
*/
#ifndef EFFDM_CALIB_INPUTS_H
#define EFFDM_CALIB_INPUTS_H

#include "util/err.h"

typedef struct {
    int n;          // recorded inputs
    float *x;       // (n, C, H, W)
    float *t;       // (n) DDPM timesteps
    int *y;         // (n) labels (NULL for unconditional models)
    int n_used;
    int *used;      // indices of the inputs the activation initialisation used
} CalibInputs;

// Reads and checks path (shapes against C, H, W; labels present when cond). 0 or ERR_IO /
// ERR_KEY / ERR_SHAPE / ERR_VALUE naming the file and tensor.
int calib_inputs_read(CalibInputs *ci, const char *path, int C, int H, int W, int cond, Err *e);
// Accepts a zeroed CalibInputs.
void calib_inputs_free(CalibInputs *ci);

#endif
