/* image_read.h: images into float pixels for the feature networks, and image folders as
   effdm sample writes them.

       LoadedImage im; Err e = {0};
       if (image_read("samples/3/00012.png", 1, &im, &e)) return e.code;
       ... im.data[c * im.H * im.W + y * im.W + x] in [0, 1] (= byte / 255), im.C == 1 ...
       image_free(&im);

       ImageList l;
       if (image_list("samples/", &l, &e)) return e.code;
       ... l.paths[i], l.labels[i] (class from the folder name, or -1), i < l.n ...
       image_list_free(&l);

   Reading (stb_image): PNG (8 and 16 bit; 16-bit is reduced to 8 bits by stb) and JPEG
   (baseline and progressive). The pixels come back with the channel count asked for:
   - 1 channel from RGB: stb's integer luma, (77 R + 150 G + 29 B) >> 8 (ITU-R 601 weights);
   - 3 channels from gray: the gray value copied to R, G and B;
   - alpha is dropped (not composited). Layout (C, H, W), values byte / 255.
   Width and height are at most IMAGE_READ_MAX_DIM. Failures name the file and stb's reason.

   Listing: every .png/.jpg/.jpeg (any case) under dir, recursively (at most
   IMAGE_READ_MAX_DEPTH levels), in sorted order: folder by folder, names compared with runs of
   digits taken as numbers ("2" < "10"), so effdm's DIR/<class>/<NNNNN>.png layout lists
   class 0 first. Skipped: names starting with '.', and files named grid.png (the sample
   grid effdm sample writes beside the samples). Label: when the image's parent folder
   (below dir) is named by a decimal number (e.g. samples/7/00001.png), that number; else -1.
   An empty listing is ERR_VALUE ("no images"). */
#ifndef EFFDM_IMAGE_READ_H
#define EFFDM_IMAGE_READ_H

#include <stddef.h>

#include "util/err.h"

#define IMAGE_READ_MAX_DIM 16384
#define IMAGE_READ_MAX_DEPTH 16

typedef struct {
    float *data;  // malloc'ed, C * H * W floats, (C, H, W)
    int C, H, W;
} LoadedImage;

typedef struct {
    size_t n;
    char **paths;  // malloc'ed strings, dir joined with the relative path
    int *labels;   // (n), class from the parent folder name or -1
} ImageList;

// Decodes path with `channels` (1 or 3) channels. 0 or ERR_IO / ERR_FORMAT / ERR_VALUE.
int image_read(const char *path, int channels, LoadedImage *img, Err *e);
// Same from memory (name used in messages).
int image_read_mem(const unsigned char *buf, size_t size, const char *name, int channels, LoadedImage *img, Err *e);
// Frees img->data; accepts a zeroed image.
void image_free(LoadedImage *img);

// Lists the images under dir (see above). 0 or ERR_IO (cannot open a folder), ERR_VALUE
// (no images, too deep), ERR_NOMEM.
int image_list(const char *dir, ImageList *l, Err *e);
// Frees the list; accepts a zeroed one.
void image_list_free(ImageList *l);

#endif
