/* image.h: 8-bit PNG output (libpng) of float images, single images and sample grids.

       Err e = {0};
       // x: (3, 32, 32) floats in [0, 1]
       if (image_write_png("out/0001.png", x, 3, 32, 32, &e)) return e.code;
       // xs: (N, 1, 32, 32); 8 images per row, 2-pixel black padding as torchvision's make_grid
       if (image_write_grid("grid.png", xs, N, 1, 32, 32, 8, &e)) return e.code;

   Pixels: value = round(clamp(x, 0, 1) * 255) with round = roundf (halves away from zero, so
   0.5 -> 128 as torchvision's save_image, which adds 0.5 and truncates); NaN -> 0.
   Input is planar CHW float (one image) or NCHW (a batch); C = 1 writes a grayscale PNG,
   C = 3 an RGB PNG. Files are written atomically (path.tmp, then rename): an error leaves
   no file behind, and never a half-written one.

   Grid layout (torchvision.utils.make_grid with its defaults padding=2, pad_value=0):
   ncol = min(per_row, N) images per row, nrow = ceil(N / ncol) rows, a canvas of
   (nrow * (H + 2) + 2) x (ncol * (W + 2) + 2) filled with 0, image k at row k / ncol,
   column k % ncol, top-left corner (row * (H + 2) + 2, column * (W + 2) + 2). As in
   make_grid, a single image (N = 1) is the image itself, without padding. Unlike make_grid,
   a grayscale batch stays a grayscale PNG (make_grid repeats it to 3 equal channels: the
   same pixels).

   Limits: 1 <= H, W <= IMAGE_MAX_DIM (libpng's default limit), grids included.
*/
#ifndef EFFDM_IMAGE_H
#define EFFDM_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

enum { IMAGE_MAX_DIM = 1000000, IMAGE_GRID_PAD = 2 };

// The 8-bit value of one float sample: round(clamp(x, 0, 1) * 255); NaN -> 0.
uint8_t image_to_u8(float x);
// Writes x (C, H, W), C = 1 or 3, to path as an 8-bit PNG. 0, or ERR_SHAPE (C, H, W out of
// range), ERR_IO (cannot write; the message names the file), ERR_NOMEM.
int image_write_png(const char *path, const float *x, int C, int H, int W, Err *e);
// Writes 8-bit pixels, H rows `stride` bytes apart of W interleaved C-channel pixels (C = 1
// or 3). fast: for drawings (large flat areas), zlib level 1 and one filter for every row -
// several times faster, a few percent larger. 0, or as image_write_png.
int image_write_png_u8(const char *path, const uint8_t *pix, int C, int H, int W, size_t stride, int fast, Err *e);
// Size of the grid of N images of H x W with per_row images per row (layout above). 0 or ERR_SHAPE.
int image_grid_size(int N, int H, int W, int per_row, int *grid_h, int *grid_w, Err *e);
// Fills out (C, grid_h, grid_w) with the grid of x (N, C, H, W) (layout above). 0 or ERR_SHAPE.
int image_grid(float *out, const float *x, int N, int C, int H, int W, int per_row, Err *e);
// image_grid + image_write_png. 0, or the errors of both.
int image_write_grid(const char *path, const float *x, int N, int C, int H, int W, int per_row, Err *e);

#endif
