/* plot_layers.h: one number per quantized UNet layer (effdm info --layers --plot: the relative
   error of each deployed weight against the teacher's) as a bar chart PNG.

       if (plot_layers_png(names, err, n, "x.safetensors: W4A4", "relative L2 error", "e.png", &e)) return e.code;

   Bars in registration order (the UNet's module order), named under the x axis by block
   (time_embed, input_blocks.N -> "in N", middle_block -> "mid", output_blocks.N -> "out N",
   out) and coloured by what the layer is in its block, from its CompVis name: ResBlock convs
   (in_layers, out_layers, skip_connection), the ResBlock's time-embedding projection
   (emb_layers), attention projections (attn1/attn2 to_q, to_k, to_v, to_out), the
   feed-forward (ff.net), the transformer's proj_in/proj_out, anything else ("other": the
   time embedding MLP, the first and last convs). y is log10 when the values span more than
   1.5 decades. Non-finite values are left out.
*/
#ifndef EFFDM_PLOT_LAYERS_H
#define EFFDM_PLOT_LAYERS_H

#include "util/err.h"

#define PLOT_LAYERS_W 1200
#define PLOT_LAYERS_H 600

// Draws v[0..n) of the layers names[0..n) to path (1200 x 600 PNG, atomically). 0, or
// ERR_VALUE (n < 1 or no finite value), ERR_IO, ERR_NOMEM.
int plot_layers_png(const char *const *names, const double *v, int n, const char *title, const char *ylabel,
                    const char *path, Err *e);

#endif
