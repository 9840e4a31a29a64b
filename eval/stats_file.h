/* stats_file.h: reference statistics files (`effdm stats --out ref.safetensors`), read by
   `effdm eval --ref`. A .safetensors file holding:
       mu             F64 (D)           mean of the features
       sigma          F64 (D, D)        covariance (N - 1)
       features       F32 (R, D)        feature rows for precision/recall (R <= 10000 by default,
                                        an evenly strided subset when there are more images)
       mu_spatial     F64 (S)           } Inception only: sFID statistics of the
       sigma_spatial  F64 (S, S)        } Mixed_6e[:7] features (S = 7 * 17 * 17)
   and in `__metadata__`: "format": "effdm-stats-1", "features": "judge" | "inception",
   "count": number of images, "feature_dim", "source" (the images' path as given),
   "weights" (the network's weights file as given).

       FeatSet ref; Err e = {0};
       if (stats_read("ref.safetensors", &ref, &e)) return e.code;
       ... ref.kind, ref.n, ref.mu, ref.sigma, ref.rows (ref.n_rows), ref.mu_s ...
       featset_free(&ref);

   float64 is kept exactly (read through io/safetensors.h, not converted to float32).
   Every field is checked (dtype, shape, metadata, finite values); errors name the file
   and the tensor or key. */
#ifndef EFFDM_STATS_FILE_H
#define EFFDM_STATS_FILE_H

#include "eval/featnet.h"
#include "util/err.h"

#define STATS_FORMAT "effdm-stats-1"

// Writes s (mu, sigma, rows, spatial statistics when present) atomically.
// source / weights go to the metadata (may be NULL). 0 or an ERR_ code.
int stats_write(const char *path, const FeatSet *s, const char *source, const char *weights, Err *e);
// Reads a statistics file into s (logits and labels stay NULL). 0 or an ERR_ code.
int stats_read(const char *path, FeatSet *s, Err *e);
// Same from memory (name used in messages), for the fuzz target.
int stats_read_mem(const unsigned char *buf, size_t size, const char *name, FeatSet *s, Err *e);

#endif
