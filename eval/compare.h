/* compare.h: the paired comparison of two sample folders made from the same seeds (same
   noise per image), e.g. a quantized model's samples (A) against the FP teacher's (B):
   effdm compare.

       CompareOpts o = compare_default_opts();
       CompareResult r; Err e = {0};
       if (compare_run("samples/w4a4", "samples/fp", "ref.safetensors", &o, &r, &e)) return e.code;
       char *json = compare_result_json(&r);   // malloc'ed

   The folders must hold the same image files (relative paths, as io/image_read.h lists
   them) of the same sizes; image i of A is paired with image i of B. Otherwise ERR_VALUE
   (a file in one folder only) or ERR_SHAPE (sizes), naming the first difference.
   Measures (docs/EVALUATION.md has the definitions; the judge network only):
   - rmse: sqrt(mean over every pixel of every image of (a - b)^2), pixels gray in [0, 1]
     (byte / 255; RGB files are reduced to gray as the judge reads them, io/image_read.h);
     rmse_img_mean: the mean over images of each image's RMSE;
   - agreement: the fraction of images whose judge argmax is the same in A and B;
   - class accuracy of A and of B (overall and per class), when every image lies in a
     numeric class folder (absent for unconditional, flat folders);
   - FID of A and of B against reference statistics (when a reference is given);
   - FID of A against B (B's features as the reference) and precision/recall (k = 3) of A
     against B (B the real set, every image a row). */
#ifndef EFFDM_COMPARE_H
#define EFFDM_COMPARE_H

#include <stddef.h>

#include "eval/featnet.h"
#include "util/err.h"

typedef struct {
    const char *judge_weights;  // NULL: FEATNET_DEFAULT_JUDGE
    int batch;                  // 0: the judge's default
    FeatProgress progress;      // may be NULL; counts 3 n images (pixels, A's, B's features)
    void *progress_user;
} CompareOpts;

typedef struct {
    size_t n;                        // image pairs
    double rmse, rmse_img_mean;
    double agreement;
    int has_accuracy;                // every image has a class label in [0, JUDGE_CLASSES)
    double accuracy_a, accuracy_b;
    size_t class_count[JUDGE_CLASSES];
    double class_accuracy_a[JUDGE_CLASSES], class_accuracy_b[JUDGE_CLASSES];  // NAN for an empty class
    int has_ref;
    double fid_a_ref, fid_b_ref;
    double fid_a_b;
    double precision, recall;        // A against B
    double fid_offset;               // 0, or the largest diagonal offset a Fréchet distance needed
    char a[1024], b[1024], ref[1024];
} CompareResult;

CompareOpts compare_default_opts(void);
// Compares the folders a_dir and b_dir; ref_path (judge statistics, stats_file.h) may be
// NULL. 0 or an ERR_ code.
int compare_run(const char *a_dir, const char *b_dir, const char *ref_path, const CompareOpts *o, CompareResult *r,
                Err *e);
// The result as a JSON object (malloc'ed string, NULL when out of memory). Absent
// measures are null. judge_acc_model / judge_acc_fp repeat class_accuracy_a / _b under the
// names scripts/quality/compare.py used (A played the model, B the FP teacher).
char *compare_result_json(const CompareResult *r);

#endif
