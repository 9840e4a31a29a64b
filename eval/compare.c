/* compare.c: paired comparison of two sample folders (compare.h). */
#include "eval/compare.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval/eval.h"
#include "eval/frechet.h"
#include "eval/prec_recall.h"
#include "eval/stats_file.h"
#include "io/image_read.h"

CompareOpts compare_default_opts(void) {
    CompareOpts o = {0};
    return o;
}

// The three passes (pixels, A's features, B's features) report as one count of 3 n.
typedef struct {
    const CompareOpts *o;
    size_t offset, total;
} Relay;

static void relay(void *user, size_t done, size_t total) {
    (void)total;
    Relay *r = user;
    r->o->progress(r->o->progress_user, r->offset + done, r->total);
}

// path relative to the folder it was listed from (image_list joins dir and the name with
// one '/' unless dir ends with one)
static const char *rel_name(const char *dir, const char *path) {
    size_t n = strlen(dir);
    return path + n + (n && dir[n - 1] == '/' ? 0 : 1);
}

static int has_name(const ImageList *l, const char *dir, const char *name) {
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(rel_name(dir, l->paths[i]), name)) return 1;
    return 0;
}

// Both lists are in the same (sorted) order, so equal sets give equal sequences; the first
// index where they part names the difference.
static int check_names(const char *a_dir, const ImageList *la, const char *b_dir, const ImageList *lb, Err *e) {
    size_t n = la->n > lb->n ? la->n : lb->n;
    for (size_t i = 0; i < n; i++) {
        const char *ra = i < la->n ? rel_name(a_dir, la->paths[i]) : NULL;
        const char *rb = i < lb->n ? rel_name(b_dir, lb->paths[i]) : NULL;
        if (ra && rb && !strcmp(ra, rb)) continue;
        if (ra && !has_name(lb, b_dir, ra))
            return err_set(e, ERR_VALUE,
                           "%s is missing in B (%s): the folders must hold the same images (%zu in A, %zu in B)",
                           la->paths[i], b_dir, la->n, lb->n);
        if (rb && !has_name(la, a_dir, rb))
            return err_set(e, ERR_VALUE,
                           "%s is missing in A (%s): the folders must hold the same images (%zu in A, %zu in B)",
                           lb->paths[i], a_dir, la->n, lb->n);
        return err_set(e, ERR_INTERNAL, "%s and %s: the same names listed in different orders", a_dir, b_dir);
    }
    return 0;
}

// RMSE over every pixel of every pair, and the mean of the per-image RMSE. Pixels are
// byte / 255 (io/image_read.h), taken back to bytes so the differences are exact.
static int pixel_pass(const ImageList *la, const ImageList *lb, CompareResult *r, Relay *p, Err *e) {
    double sum = 0, sum_img = 0, count = 0;
    int rc = 0;
    for (size_t i = 0; i < la->n && !rc; i++) {
        LoadedImage ia, ib;
        if ((rc = image_read(la->paths[i], 1, &ia, e))) break;
        if ((rc = image_read(lb->paths[i], 1, &ib, e))) {
            image_free(&ia);
            break;
        }
        if (ia.H != ib.H || ia.W != ib.W) {
            rc = err_set(e, ERR_SHAPE, "%s is %dx%d, %s is %dx%d: the folders must hold images of the same sizes",
                         la->paths[i], ia.W, ia.H, lb->paths[i], ib.W, ib.H);
        } else {
            size_t hw = (size_t)ia.H * ia.W;
            double s = 0;
            for (size_t k = 0; k < hw; k++) {
                double d = (rintf(ib.data[k] * 255.0f) - rintf(ia.data[k] * 255.0f)) / 255.0;
                s += d * d;
            }
            sum += s;
            count += (double)hw;
            sum_img += sqrt(s / (double)hw);
        }
        image_free(&ia);
        image_free(&ib);
        if (!rc && p->o->progress) relay(p, i + 1, 0);
    }
    if (rc) return rc;
    r->rmse = sqrt(sum / count);
    r->rmse_img_mean = sum_img / (double)la->n;
    return 0;
}

static int fid(const FeatSet *x, const FeatSet *y, double *out, CompareResult *r, Err *e) {
    double off = 0;
    int rc = frechet_distance(x->mu, x->sigma, y->mu, y->sigma, x->dim, out, &off, e);
    if (off > r->fid_offset) r->fid_offset = off;
    return rc;
}

// Agreement, accuracies, FIDs and precision/recall from the two feature sets.
static int measures(const FeatSet *fa, const FeatSet *fb, const FeatSet *ref, CompareResult *r, Err *e) {
    size_t n = fa->n;
    int K = fa->n_classes;
    int *pred_a = malloc(n * sizeof(int));
    if (!pred_a) return err_set(e, ERR_NOMEM, "out of memory for %zu predictions", n);
    for (size_t i = 0; i < n; i++) pred_a[i] = eval_argmax(fa->logits + i * K, K);
    r->agreement = eval_class_accuracy(fb->logits, pred_a, n, K);
    free(pred_a);
    int all = fa->labels != NULL;
    for (size_t i = 0; all && i < n; i++) all = fa->labels[i] >= 0 && fa->labels[i] < JUDGE_CLASSES;
    if (all) {  // the same relative paths, so B's labels are A's
        r->has_accuracy = 1;
        r->accuracy_a = eval_class_accuracy(fa->logits, fa->labels, n, K);
        r->accuracy_b = eval_class_accuracy(fb->logits, fa->labels, n, K);
        size_t right_a[JUDGE_CLASSES] = {0}, right_b[JUDGE_CLASSES] = {0};
        for (size_t i = 0; i < n; i++) {
            int c = fa->labels[i];
            r->class_count[c]++;
            right_a[c] += eval_argmax(fa->logits + i * K, K) == c;
            right_b[c] += eval_argmax(fb->logits + i * K, K) == c;
        }
        for (int c = 0; c < JUDGE_CLASSES; c++) {
            double m = (double)r->class_count[c];
            r->class_accuracy_a[c] = r->class_count[c] ? (double)right_a[c] / m : NAN;
            r->class_accuracy_b[c] = r->class_count[c] ? (double)right_b[c] / m : NAN;
        }
    }
    int rc = fid(fa, fb, &r->fid_a_b, r, e);
    if (!rc && ref) {
        if (!(rc = fid(fa, ref, &r->fid_a_ref, r, e))) rc = fid(fb, ref, &r->fid_b_ref, r, e);
        r->has_ref = !rc;
    }
    if (!rc)
        rc = prec_recall(fb->rows, fb->n_rows, fa->rows, fa->n_rows, fa->dim, EVAL_PR_K, &r->precision, &r->recall, e);
    return rc;
}

int compare_run(const char *a_dir, const char *b_dir, const char *ref_path, const CompareOpts *o, CompareResult *r,
                Err *e) {
    memset(r, 0, sizeof *r);
    snprintf(r->a, sizeof r->a, "%s", a_dir);
    snprintf(r->b, sizeof r->b, "%s", b_dir);
    snprintf(r->ref, sizeof r->ref, "%s", ref_path ? ref_path : "");
    FeatSet ref = {0}, fa = {0}, fb = {0};
    FeatNet net = {0};
    ImageList la = {0}, lb = {0};
    int rc = 0;
    // the cheap checks first: nothing long runs before a bad argument is reported
    if (ref_path && !(rc = stats_read(ref_path, &ref, e)) && ref.kind != FEAT_JUDGE)
        rc = err_set(e, ERR_VALUE, "%s: statistics of the %s network; effdm compare measures with the judge", ref_path,
                     featnet_kind_name(ref.kind));
    if (!rc) rc = featnet_open(&net, FEAT_JUDGE, o->judge_weights, e);
    if (!rc && (rc = image_list(a_dir, &la, e))) err_prefix(e, "A");
    if (!rc && (rc = image_list(b_dir, &lb, e))) err_prefix(e, "B");
    if (!rc) rc = check_names(a_dir, &la, b_dir, &lb, e);
    if (rc) goto done;
    r->n = la.n;
    Relay p = {o, 0, 3 * la.n};
    if ((rc = pixel_pass(&la, &lb, r, &p, e))) goto done;
    FeatOpts fo = featnet_default_opts(&net);
    if (o->batch > 0) fo.batch = o->batch;
    fo.max_rows = SIZE_MAX;  // every image is a precision/recall row
    fo.keep_logits = 1;
    fo.progress = o->progress ? relay : NULL;
    fo.progress_user = &p;
    p.offset = la.n;
    if ((rc = featnet_extract(&net, a_dir, &fo, &fa, e))) goto done;
    p.offset = 2 * la.n;
    if ((rc = featnet_extract(&net, b_dir, &fo, &fb, e))) goto done;
    if (fa.n != la.n || fb.n != la.n) {
        rc = err_set(e, ERR_VALUE, "%s / %s: %zu / %zu images, %zu before: the folders changed while being read", a_dir,
                     b_dir, fa.n, fb.n, la.n);
        goto done;
    }
    rc = measures(&fa, &fb, ref_path ? &ref : NULL, r, e);
done:
    featset_free(&ref);
    featset_free(&fa);
    featset_free(&fb);
    featnet_close(&net);
    image_list_free(&la);
    image_list_free(&lb);
    return rc;
}

static void add_num(cJSON *j, const char *key, int has, double v) {
    if (has && isfinite(v)) cJSON_AddNumberToObject(j, key, v);
    else cJSON_AddNullToObject(j, key);
}

static void add_per_class(cJSON *j, const char *key, const CompareResult *r, const double *acc) {
    if (!r->has_accuracy) {
        cJSON_AddNullToObject(j, key);
        return;
    }
    cJSON *arr = cJSON_AddArrayToObject(j, key);
    for (int c = 0; arr && c < JUDGE_CLASSES; c++)
        cJSON_AddItemToArray(arr, isfinite(acc[c]) ? cJSON_CreateNumber(acc[c]) : cJSON_CreateNull());
}

char *compare_result_json(const CompareResult *r) {
    cJSON *j = cJSON_CreateObject();
    if (!j) return NULL;
    cJSON_AddStringToObject(j, "a", r->a);
    cJSON_AddStringToObject(j, "b", r->b);
    if (r->has_ref) cJSON_AddStringToObject(j, "ref", r->ref);
    else cJSON_AddNullToObject(j, "ref");
    cJSON_AddStringToObject(j, "features", featnet_kind_name(FEAT_JUDGE));
    cJSON_AddNumberToObject(j, "n", (double)r->n);
    cJSON_AddNumberToObject(j, "rmse", r->rmse);
    cJSON_AddNumberToObject(j, "rmse_img_mean", r->rmse_img_mean);
    cJSON_AddNumberToObject(j, "agreement", r->agreement);
    add_num(j, "class_accuracy_a", r->has_accuracy, r->accuracy_a);
    add_num(j, "class_accuracy_b", r->has_accuracy, r->accuracy_b);
    add_num(j, "judge_acc_model", r->has_accuracy, r->accuracy_a);
    add_num(j, "judge_acc_fp", r->has_accuracy, r->accuracy_b);
    add_per_class(j, "class_accuracy_per_class_a", r, r->class_accuracy_a);
    add_per_class(j, "class_accuracy_per_class_b", r, r->class_accuracy_b);
    if (r->has_accuracy) {
        cJSON *arr = cJSON_AddArrayToObject(j, "class_counts");
        for (int c = 0; arr && c < JUDGE_CLASSES; c++)
            cJSON_AddItemToArray(arr, cJSON_CreateNumber((double)r->class_count[c]));
    } else {
        cJSON_AddNullToObject(j, "class_counts");
    }
    add_num(j, "fid_a_ref", r->has_ref, r->fid_a_ref);
    add_num(j, "fid_b_ref", r->has_ref, r->fid_b_ref);
    cJSON_AddNumberToObject(j, "fid_a_b", r->fid_a_b);
    cJSON_AddNumberToObject(j, "precision_a_b", r->precision);
    cJSON_AddNumberToObject(j, "recall_a_b", r->recall);
    cJSON_AddNumberToObject(j, "fid_diagonal_offset", r->fid_offset);
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    return s;
}
