/* eval.h: the evaluation entry point of effdm eval and effdm sample --eval: measure a
   folder of samples against reference statistics (stats_file.h).

       EvalOpts o = eval_default_opts();
       EvalResult r; Err e = {0};
       if (eval_run("samples/", "models/zoo/fmnist-ldm/fmnist_test_judge.safetensors", &o, &r, &e)) return e.code;
       char *json = eval_result_json(&r);   // malloc'ed

   Metrics (docs/EVALUATION.md has the definitions):
   - FID: Fréchet distance of the sample features to the reference mu/sigma (frechet.h);
   - sFID (Inception only): the same on the Mixed_6e[:7] spatial features;
   - IS: inception_score.h over the network's logits (10 splits). Samples are read in
     sorted order, which groups class-conditional samples by class; contiguous splits of a
     class-sorted set would each see one class, so the logits are first permuted with a
     fixed seed (EVAL_IS_SEED; the same permutation for the same sample count);
   - precision / recall (k = 3): the sample rows (at most as many as the reference keeps,
     strided) against the reference rows;
   - class accuracy (judge only, when every sample lies in a numeric class folder):
     the fraction whose argmax logit equals the folder's class. */
#ifndef EFFDM_EVAL_H
#define EFFDM_EVAL_H

#include <stddef.h>

#include "eval/featnet.h"
#include "util/err.h"

#define EVAL_IS_SPLITS 10
#define EVAL_PR_K 3
#define EVAL_IS_SEED 0

typedef struct EvalOpts {
    int features;           // FeatKind, or -1: the network the reference was made with
    const char *weights;    // network weights (NULL: judge_weights for the judge; Inception needs one)
    const char *judge_weights;  // the judge used when weights is NULL (NULL: FEATNET_DEFAULT_JUDGE)
    int batch;              // 0: the network's default
    size_t max_images;      // 0: every sample
    FeatProgress progress;  // may be NULL
    void *progress_user;
} EvalOpts;

typedef struct {
    FeatKind kind;
    size_t n_samples, n_ref;
    double fid;
    double fid_offset;      // 0, or the diagonal offset the Fréchet distance needed
    int has_sfid;
    double sfid;
    double is_mean, is_std;
    double precision, recall;
    int has_accuracy;
    double accuracy;
    char samples[1024], ref[1024];  // the paths measured
} EvalResult;

EvalOpts eval_default_opts(void);
// Measures the samples in samples_dir against ref_path. The network must be the one the
// reference was made with (ERR_VALUE otherwise). 0 or an ERR_ code.
int eval_run(const char *samples_dir, const char *ref_path, const EvalOpts *o, EvalResult *r, Err *e);
// The result as a JSON object (malloc'ed string, NULL when out of memory). Absent
// metrics (sFID with the judge, accuracy without labels) are null.
char *eval_result_json(const EvalResult *r);
// Fraction of rows of logits (n, K) whose argmax equals labels[i] (ties: the first max).
double eval_class_accuracy(const float *logits, const int *labels, size_t n, int K);
// Index of the largest of l[0..K) (ties: the first).
int eval_argmax(const float *l, int K);

#endif
