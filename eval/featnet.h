/* featnet.h: the feature networks of effdm eval / effdm stats behind one interface, and
   feature extraction over an image set (a folder of PNG/JPEG files or an idx file).

       FeatNet net; Err e = {0};
       if (featnet_open(&net, FEAT_JUDGE, "models/zoo/fmnist-ldm/judge.ckpt", &e)) return e.code;
       FeatOpts o = featnet_default_opts(&net);            // batch size, rows kept for P/R
       FeatSet s;
       if (featnet_extract(&net, "samples/", &o, &s, &e)) ...;   // mu, sigma, rows, logits, labels
       ... frechet_distance(s.mu, s.sigma, ...) ...
       featset_free(&s);
       featnet_close(&net);

   Networks:
   - FEAT_JUDGE: the Fashion-MNIST judge (eval/judge.h): features 128-d (fc1 after ReLU),
     10 logits, 1-channel 32 x 32 input (28 x 28 is padded; see judge.h).
   - FEAT_INCEPTION: pytorch-fid's Inception (eval/inception.h): pool3 2048-d, 1008 logits,
     sFID spatial features (7 x 17 x 17), 3-channel input of any size (resized to 299).
   Image channels: PNG/JPEG files are decoded with the channel count the network takes
   (gray -> RGB copies the gray value, RGB -> gray uses stb's luma; see io/image_read.h).
   idx files (images (N, 28, 28) bytes) are preprocessed as the teacher was trained:
   p / 127.5 - 1, padded to 32 x 32 with -1 (judge); for Inception, p / 255 copied to 3 channels.
   Labels: from numeric class folders (io/image_read.h), or, for an idx image file
   `X-images-idx3-ubyte[.gz]`, from `X-labels-idx1-ubyte[.gz]` beside it when that exists.
   Statistics stream over batches (frechet.h); the rows kept for precision/recall are an
   evenly strided subset (row floor(i n / cap)) when there are more than cap images, so
   class-ordered folders stay balanced. */
#ifndef EFFDM_FEATNET_H
#define EFFDM_FEATNET_H

#include <stddef.h>

#include "autograd/tape.h"
#include "eval/inception.h"
#include "eval/judge.h"
#include "util/err.h"

typedef enum { FEAT_JUDGE = 0, FEAT_INCEPTION = 1, FEAT_COUNT } FeatKind;

typedef struct {
    FeatKind kind;
    Judge judge;
    Inception *inception;
    int channels;     // input channels (1 judge, 3 inception)
    int dim;          // feature dimension (128, 2048)
    int n_classes;    // logits (10, 1008)
    int spatial_dim;  // sFID features per image (0, 7 * 17 * 17)
    Ctx ctx;          // arena for the forward passes
} FeatNet;

// Progress callback: done of total images have been through the network.
typedef void (*FeatProgress)(void *user, size_t done, size_t total);

typedef struct {
    int batch;             // images per forward pass
    size_t max_images;     // 0: all
    size_t max_rows;       // feature rows kept for precision/recall (0: none)
    int keep_logits;       // 1: FeatSet.logits gets every image's logits
    FeatProgress progress; // may be NULL
    void *progress_user;
} FeatOpts;

typedef struct {
    FeatKind kind;
    size_t n;              // images
    int dim;
    double *mu, *sigma;    // (dim), (dim, dim)
    int spatial_dim;       // 0 unless Inception
    double *mu_s, *sigma_s;// (spatial_dim), (spatial_dim, spatial_dim) or NULL
    float *rows;           // (n_rows, dim) or NULL
    size_t n_rows;
    int n_classes;
    float *logits;         // (n, n_classes) or NULL
    int *labels;           // (n), -1 where unknown; NULL when no image has a label
} FeatSet;

// "judge" / "inception".
const char *featnet_kind_name(FeatKind k);
// Parses a --features value. 0 or ERR_ARG naming the value.
int featnet_kind_parse(const char *s, FeatKind *k, Err *e);
// The judge shipped with the teacher, relative to the repository root (the working
// directory of effdm when no --weights is given).
#define FEATNET_DEFAULT_JUDGE "models/zoo/fmnist-ldm/judge.ckpt"

// Loads the network from weights (Inception needs a path: ERR_ARG when NULL; the judge
// defaults to FEATNET_DEFAULT_JUDGE). 0 or an ERR_ code.
int featnet_open(FeatNet *net, FeatKind kind, const char *weights, Err *e);
void featnet_close(FeatNet *net);
// Batch 256 (judge) / 8 (Inception), all images, 10000 rows, no logits, no progress.
FeatOpts featnet_default_opts(const FeatNet *net);

// Runs every image of path (folder or idx file) through the network. 0 or an ERR_ code
// naming the image at fault.
int featnet_extract(FeatNet *net, const char *path, const FeatOpts *o, FeatSet *s, Err *e);
// Network outputs for prepared inputs x (N, channels, H, W) (see judge_forward /
// inception_forward for the value ranges): feats (N, dim), logits (N, n_classes),
// spatial (N, spatial_dim); each may be NULL.
int featnet_forward(FeatNet *net, const float *x, int N, int H, int W, float *feats, float *logits, float *spatial,
                    Err *e);
void featset_free(FeatSet *s);

#endif
