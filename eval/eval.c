/* eval.c: eval_run and its result (see eval.h). */
#include "eval/eval.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval/frechet.h"
#include "eval/inception_score.h"
#include "eval/prec_recall.h"
#include "eval/stats_file.h"
#include "util/rng.h"

EvalOpts eval_default_opts(void) {
    EvalOpts o = {0};
    o.features = -1;
    return o;
}

int eval_argmax(const float *l, int K) {
    int best = 0;
    for (int k = 1; k < K; k++)
        if (l[k] > l[best]) best = k;
    return best;
}

double eval_class_accuracy(const float *logits, const int *labels, size_t n, int K) {
    if (n == 0) return NAN;
    size_t right = 0;
    for (size_t i = 0; i < n; i++) right += eval_argmax(logits + i * K, K) == labels[i];
    return (double)right / (double)n;
}

// IS on the logits rows in a fixed pseudo-random order (see eval.h).
static int shuffled_is(const float *logits, size_t n, int K, double *mean, double *std, Err *e) {
    float *perm = malloc(n * (size_t)K * sizeof(float));
    size_t *idx = malloc(n * sizeof(size_t));
    if (!perm || !idx) {
        free(perm);
        free(idx);
        return err_set(e, ERR_NOMEM, "Inception Score: out of memory for %zu logits", n);
    }
    for (size_t i = 0; i < n; i++) idx[i] = i;
    Rng r;
    rng_seed(&r, EVAL_IS_SEED, 0);
    for (size_t i = n; i > 1; i--) {  // Fisher-Yates
        size_t j = rng_below(&r, (uint32_t)i);
        size_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
    for (size_t i = 0; i < n; i++) memcpy(perm + i * K, logits + idx[i] * K, (size_t)K * sizeof(float));
    int rc = inception_score(perm, n, K, EVAL_IS_SPLITS, mean, std, e);
    free(perm);
    free(idx);
    return rc;
}

int eval_run(const char *samples_dir, const char *ref_path, const EvalOpts *o, EvalResult *r, Err *e) {
    memset(r, 0, sizeof *r);
    snprintf(r->samples, sizeof r->samples, "%s", samples_dir);
    snprintf(r->ref, sizeof r->ref, "%s", ref_path);
    FeatSet ref = {0}, smp = {0};
    FeatNet net = {0};
    int rc = stats_read(ref_path, &ref, e);
    if (rc) return rc;
    if (o->features >= 0 && o->features != (int)ref.kind) {
        rc = err_set(e, ERR_VALUE, "%s: statistics were made with the %s network, --features asks for %s", ref_path,
                     featnet_kind_name(ref.kind), featnet_kind_name((FeatKind)o->features));
        goto done;
    }
    const char *w = o->weights ? o->weights : (ref.kind == FEAT_JUDGE ? o->judge_weights : NULL);
    if ((rc = featnet_open(&net, ref.kind, w, e))) goto done;
    FeatOpts fo = featnet_default_opts(&net);
    if (o->batch > 0) fo.batch = o->batch;
    fo.max_images = o->max_images;
    fo.max_rows = ref.n_rows;
    fo.keep_logits = 1;
    fo.progress = o->progress;
    fo.progress_user = o->progress_user;
    if ((rc = featnet_extract(&net, samples_dir, &fo, &smp, e))) goto done;
    r->kind = ref.kind;
    r->n_samples = smp.n;
    r->n_ref = ref.n;
    if ((rc = frechet_distance(smp.mu, smp.sigma, ref.mu, ref.sigma, smp.dim, &r->fid, &r->fid_offset, e))) goto done;
    if (smp.spatial_dim && ref.spatial_dim) {
        double off;
        if ((rc = frechet_distance(smp.mu_s, smp.sigma_s, ref.mu_s, ref.sigma_s, smp.spatial_dim, &r->sfid, &off, e)))
            goto done;
        r->has_sfid = 1;
    }
    if (smp.n < EVAL_IS_SPLITS) {
        rc = err_set(e, ERR_VALUE, "%s: %zu samples, at least %d are needed (Inception Score splits)", samples_dir, smp.n,
                     EVAL_IS_SPLITS);
        goto done;
    }
    if ((rc = shuffled_is(smp.logits, smp.n, smp.n_classes, &r->is_mean, &r->is_std, e))) goto done;
    if ((rc = prec_recall(ref.rows, ref.n_rows, smp.rows, smp.n_rows, smp.dim, EVAL_PR_K, &r->precision, &r->recall, e)))
        goto done;
    if (ref.kind == FEAT_JUDGE && smp.labels) {
        int all = 1;
        for (size_t i = 0; i < smp.n; i++) all &= smp.labels[i] >= 0 && smp.labels[i] < smp.n_classes;
        if (all) {
            r->has_accuracy = 1;
            r->accuracy = eval_class_accuracy(smp.logits, smp.labels, smp.n, smp.n_classes);
        }
    }
done:
    featset_free(&ref);
    featset_free(&smp);
    featnet_close(&net);
    return rc;
}

char *eval_result_json(const EvalResult *r) {
    cJSON *j = cJSON_CreateObject();
    if (!j) return NULL;
    cJSON_AddStringToObject(j, "samples", r->samples);
    cJSON_AddStringToObject(j, "ref", r->ref);
    cJSON_AddStringToObject(j, "features", featnet_kind_name(r->kind));
    cJSON_AddNumberToObject(j, "n_samples", (double)r->n_samples);
    cJSON_AddNumberToObject(j, "n_ref", (double)r->n_ref);
    cJSON_AddNumberToObject(j, "fid", r->fid);
    if (r->has_sfid) cJSON_AddNumberToObject(j, "sfid", r->sfid);
    else cJSON_AddNullToObject(j, "sfid");
    cJSON_AddNumberToObject(j, "is_mean", r->is_mean);
    cJSON_AddNumberToObject(j, "is_std", r->is_std);
    cJSON_AddNumberToObject(j, "precision", r->precision);
    cJSON_AddNumberToObject(j, "recall", r->recall);
    if (r->has_accuracy) cJSON_AddNumberToObject(j, "class_accuracy", r->accuracy);
    else cJSON_AddNullToObject(j, "class_accuracy");
    cJSON_AddNumberToObject(j, "fid_diagonal_offset", r->fid_offset);
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    return s;
}
