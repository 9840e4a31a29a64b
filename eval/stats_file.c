/* stats_file.c: reference statistics files over io/safetensors.h (see stats_file.h). */
#include "eval/stats_file.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/fileio.h"
#include "io/safetensors.h"

int stats_write(const char *path, const FeatSet *s, const char *source, const char *weights, Err *e) {
    StWriter w = {0};
    char count[32], dim[32];
    snprintf(count, sizeof count, "%zu", s->n);
    snprintf(dim, sizeof dim, "%d", s->dim);
    int64_t D = s->dim, S = s->spatial_dim, R = (int64_t)s->n_rows;
    int rc = st_writer_add(&w, "mu", DT_F64, 1, (int64_t[]){D}, s->mu, e);
    if (!rc) rc = st_writer_add(&w, "sigma", DT_F64, 2, (int64_t[]){D, D}, s->sigma, e);
    if (!rc) rc = st_writer_add(&w, "features", DT_F32, 2, (int64_t[]){R, D}, s->rows, e);
    if (!rc && S) rc = st_writer_add(&w, "mu_spatial", DT_F64, 1, (int64_t[]){S}, s->mu_s, e);
    if (!rc && S) rc = st_writer_add(&w, "sigma_spatial", DT_F64, 2, (int64_t[]){S, S}, s->sigma_s, e);
    if (!rc) rc = st_writer_meta(&w, "format", STATS_FORMAT, e);
    if (!rc) rc = st_writer_meta(&w, "features", featnet_kind_name(s->kind), e);
    if (!rc) rc = st_writer_meta(&w, "count", count, e);
    if (!rc) rc = st_writer_meta(&w, "feature_dim", dim, e);
    if (!rc && source) rc = st_writer_meta(&w, "source", source, e);
    if (!rc && weights) rc = st_writer_meta(&w, "weights", weights, e);
    if (!rc) rc = st_write(&w, path, e);
    st_writer_free(&w);
    return rc;
}

// Index of tensor key with dtype and ndim dims (shape copied to shape[]), or -1 with e set.
static int find_tensor(const StFile *f, const char *key, DType dt, int ndim, size_t *shape, Err *e) {
    for (int i = 0; i < f->n_tensors; i++) {
        const StTensor *t = &f->tensors[i];
        if (strcmp(t->name, key) != 0) continue;
        if (t->dtype != dt)
            return err_set(e, ERR_DTYPE, "%s: tensor '%s': expected dtype %s, found %s", f->path, key, dtype_name(dt),
                           dtype_name(t->dtype)), -1;
        if (t->ndim != ndim)
            return err_set(e, ERR_SHAPE, "%s: tensor '%s': expected %d dims, found %d", f->path, key, ndim, t->ndim), -1;
        for (int d = 0; d < ndim; d++) shape[d] = (size_t)t->shape[d];
        return i;
    }
    err_set(e, ERR_KEY, "%s: tensor '%s' missing (not an effdm statistics file?)", f->path, key);
    return -1;
}

// Copies tensor i (n elements of esize bytes) into a new buffer; NULL when out of memory.
static void *copy_tensor(const StFile *f, int i, size_t n, size_t esize) {
    void *d = malloc(n ? n * esize : 1);
    if (d) memcpy(d, st_data(f, i), n * esize);  // little-endian host (x86-64, arm64), as safetensors
    return d;
}

static int check_finite(const StFile *f, const char *key, const double *d, const float *fl, size_t n, Err *e) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(d ? d[i] : fl[i]))
            return err_set(e, ERR_VALUE, "%s: tensor '%s': element %zu is not finite", f->path, key, i);
    return 0;
}

static const char *need_meta(const StFile *f, const char *key, Err *e) {
    const char *v = st_meta(f, key);
    if (!v) err_set(e, ERR_KEY, "%s: metadata key '%s' missing (not an effdm statistics file?)", f->path, key);
    return v;
}

static int read_stats(const StFile *f, FeatSet *s, Err *e) {
    const char *fmt = need_meta(f, "format", e), *feat = fmt ? need_meta(f, "features", e) : NULL;
    const char *count = feat ? need_meta(f, "count", e) : NULL;
    if (!count) return e ? e->code : ERR_KEY;
    if (strcmp(fmt, STATS_FORMAT) != 0)
        return err_set(e, ERR_FORMAT, "%s: metadata format '%s', expected '%s'", f->path, fmt, STATS_FORMAT);
    Err ignore = {0};
    if (featnet_kind_parse(feat, &s->kind, &ignore))
        return err_set(e, ERR_VALUE, "%s: metadata features '%s', expected 'judge' or 'inception'", f->path, feat);
    char *end;
    unsigned long long cnt = strtoull(count, &end, 10);
    if (*count < '0' || *count > '9' || *end || cnt < 2)
        return err_set(e, ERR_VALUE, "%s: metadata count '%s', expected an integer >= 2", f->path, count);
    s->n = (size_t)cnt;
    size_t sh[2], sh2[2];
    int i = find_tensor(f, "mu", DT_F64, 1, sh, e);
    if (i < 0) return e ? e->code : ERR_KEY;
    size_t D = sh[0], want = s->kind == FEAT_JUDGE ? JUDGE_FEATURES : INCEPTION_FEATURES;
    if (D != want)
        return err_set(e, ERR_SHAPE, "%s: tensor 'mu': %s features have %zu dims, found %zu", f->path, feat, want, D);
    s->dim = (int)D;
    if (!(s->mu = copy_tensor(f, i, D, 8))) goto nomem;
    if ((i = find_tensor(f, "sigma", DT_F64, 2, sh2, e)) < 0) return e ? e->code : ERR_KEY;
    if (sh2[0] != D || sh2[1] != D)
        return err_set(e, ERR_SHAPE, "%s: tensor 'sigma': expected (%zu, %zu), found (%zu, %zu)", f->path, D, D, sh2[0],
                       sh2[1]);
    if (!(s->sigma = copy_tensor(f, i, D * D, 8))) goto nomem;
    if ((i = find_tensor(f, "features", DT_F32, 2, sh2, e)) < 0) return e ? e->code : ERR_KEY;
    if (sh2[1] != D || sh2[0] > s->n)
        return err_set(e, ERR_SHAPE, "%s: tensor 'features': expected (<= %zu, %zu), found (%zu, %zu)", f->path, s->n, D,
                       sh2[0], sh2[1]);
    s->n_rows = sh2[0];
    if (!(s->rows = copy_tensor(f, i, s->n_rows * D, 4))) goto nomem;
    int rc = check_finite(f, "mu", s->mu, NULL, D, e);
    if (!rc) rc = check_finite(f, "sigma", s->sigma, NULL, D * D, e);
    if (!rc) rc = check_finite(f, "features", NULL, s->rows, s->n_rows * D, e);
    if (rc) return rc;
    if (s->kind == FEAT_INCEPTION) {
        if ((i = find_tensor(f, "mu_spatial", DT_F64, 1, sh, e)) < 0) return e ? e->code : ERR_KEY;
        if (sh[0] != INCEPTION_SPATIAL_DIM)
            return err_set(e, ERR_SHAPE, "%s: tensor 'mu_spatial': expected (%d), found (%zu)", f->path,
                           INCEPTION_SPATIAL_DIM, sh[0]);
        s->spatial_dim = INCEPTION_SPATIAL_DIM;
        if (!(s->mu_s = copy_tensor(f, i, sh[0], 8))) goto nomem;
        if ((i = find_tensor(f, "sigma_spatial", DT_F64, 2, sh2, e)) < 0) return e ? e->code : ERR_KEY;
        if (sh2[0] != sh[0] || sh2[1] != sh[0])
            return err_set(e, ERR_SHAPE, "%s: tensor 'sigma_spatial': expected (%zu, %zu), found (%zu, %zu)", f->path,
                           sh[0], sh[0], sh2[0], sh2[1]);
        if (!(s->sigma_s = copy_tensor(f, i, sh[0] * sh[0], 8))) goto nomem;
        rc = check_finite(f, "mu_spatial", s->mu_s, NULL, sh[0], e);
        if (!rc) rc = check_finite(f, "sigma_spatial", s->sigma_s, NULL, sh[0] * sh[0], e);
        if (rc) return rc;
    }
    return 0;
nomem:
    return err_set(e, ERR_NOMEM, "%s: out of memory", f->path);
}

int stats_read_mem(const unsigned char *buf, size_t size, const char *name, FeatSet *s, Err *e) {
    memset(s, 0, sizeof *s);
    StFile f;
    int rc = st_open_mem(&f, buf, size, name, e);
    if (rc) return rc;
    rc = read_stats(&f, s, e);
    st_close(&f);
    if (rc) featset_free(s);
    return rc;
}

int stats_read(const char *path, FeatSet *s, Err *e) {
    memset(s, 0, sizeof *s);
    StFile f;
    int rc = st_open(&f, path, e);
    if (rc) return rc;
    rc = read_stats(&f, s, e);
    st_close(&f);
    if (rc) featset_free(s);
    return rc;
}
