/* stats_file_read.c: reading reference statistics (stats_file.h). The safetensors layout:
   8-byte little-endian header length L, L bytes of JSON {name: {dtype, shape, data_offsets
   [begin, end)}, "__metadata__": {str: str}}, then the data; offsets are relative to the
   end of the header. */
#include "eval/stats_file.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/fileio.h"

#define STATS_MAX_HEADER ((size_t)1 << 24)

typedef struct {
    const char *name;
    const unsigned char *buf;
    size_t size;
    const cJSON *hdr;
    size_t data_start;
} StReader;

// Finds tensor key with dtype ("F64"/"F32") and ndim dims; fills shape; returns a pointer
// to its bytes (little-endian) or NULL with e set. optional: missing -> NULL without error.
static const unsigned char *st_tensor(const StReader *r, const char *key, const char *dtype, int ndim, size_t *shape,
                                      int optional, Err *e) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(r->hdr, key);
    if (!t) {
        if (!optional) err_set(e, ERR_KEY, "%s: tensor '%s' missing (not an effdm statistics file?)", r->name, key);
        return NULL;
    }
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(t, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(t, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
    if (!cJSON_IsString(dt) || strcmp(dt->valuestring, dtype) != 0) {
        err_set(e, ERR_DTYPE, "%s: tensor '%s': expected dtype %s, found %s", r->name, key, dtype,
                cJSON_IsString(dt) ? dt->valuestring : "(none)");
        return NULL;
    }
    if (!cJSON_IsArray(sh) || cJSON_GetArraySize(sh) != ndim) {
        err_set(e, ERR_SHAPE, "%s: tensor '%s': expected %d dims, found %d", r->name, key, ndim,
                cJSON_IsArray(sh) ? cJSON_GetArraySize(sh) : -1);
        return NULL;
    }
    size_t n = 1;
    for (int d = 0; d < ndim; d++) {
        const cJSON *v = cJSON_GetArrayItem(sh, d);
        if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > 1e9 || v->valuedouble != (double)(size_t)v->valuedouble) {
            err_set(e, ERR_SHAPE, "%s: tensor '%s': dimension %d is not a positive integer", r->name, key, d);
            return NULL;
        }
        shape[d] = (size_t)v->valuedouble;
        if (!size_mul_ok(n, shape[d], &n)) {
            err_set(e, ERR_SHAPE, "%s: tensor '%s': shape overflows", r->name, key);
            return NULL;
        }
    }
    size_t es = !strcmp(dtype, "F64") ? 8 : 4, bytes;
    if (!size_mul_ok(n, es, &bytes)) {
        err_set(e, ERR_SHAPE, "%s: tensor '%s': size overflows", r->name, key);
        return NULL;
    }
    const cJSON *b0 = cJSON_IsArray(off) ? cJSON_GetArrayItem(off, 0) : NULL;
    const cJSON *b1 = cJSON_IsArray(off) ? cJSON_GetArrayItem(off, 1) : NULL;
    if (!cJSON_IsNumber(b0) || !cJSON_IsNumber(b1) || b0->valuedouble < 0 || b1->valuedouble < b0->valuedouble) {
        err_set(e, ERR_FORMAT, "%s: tensor '%s': bad data_offsets", r->name, key);
        return NULL;
    }
    size_t begin = (size_t)b0->valuedouble, end = (size_t)b1->valuedouble;
    if (end - begin != bytes) {
        err_set(e, ERR_FORMAT, "%s: tensor '%s': data_offsets span %zu bytes, shape and dtype need %zu", r->name, key,
                end - begin, bytes);
        return NULL;
    }
    if (end > r->size - r->data_start) {
        err_set(e, ERR_FORMAT, "%s: tensor '%s': data runs past the end of the file (truncated?)", r->name, key);
        return NULL;
    }
    return r->buf + r->data_start + begin;
}

static const char *st_meta(const StReader *r, const char *key, Err *e) {
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(r->hdr, "__metadata__");
    const cJSON *v = m ? cJSON_GetObjectItemCaseSensitive(m, key) : NULL;
    if (!cJSON_IsString(v)) {
        err_set(e, ERR_KEY, "%s: metadata key '%s' missing (not an effdm statistics file?)", r->name, key);
        return NULL;
    }
    return v->valuestring;
}

static double *read_f64(const unsigned char *p, size_t n) {
    double *d = malloc((n ? n : 1) * sizeof(double));
    if (d) memcpy(d, p, n * sizeof(double));  // little-endian host (x86-64, arm64), as safetensors
    return d;
}

int stats_read_mem(const unsigned char *buf, size_t size, const char *name, FeatSet *s, Err *e) {
    memset(s, 0, sizeof *s);
    if (size < 8) return err_set(e, ERR_FORMAT, "%s: not a safetensors file (%zu bytes)", name, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen > STATS_MAX_HEADER || hlen > size - 8)
        return err_set(e, ERR_FORMAT, "%s: safetensors header length %llu does not fit the file (%zu bytes)", name,
                       (unsigned long long)hlen, size);
    cJSON *hdr = cJSON_ParseWithLength((const char *)buf + 8, (size_t)hlen);
    if (!cJSON_IsObject(hdr)) {
        cJSON_Delete(hdr);
        return err_set(e, ERR_FORMAT, "%s: safetensors header is not a JSON object", name);
    }
    StReader r = {name, buf, size, hdr, 8 + (size_t)hlen};
    int rc = 0;
    const char *fmt = st_meta(&r, "format", e);
    const char *feat = fmt ? st_meta(&r, "features", e) : NULL;
    const char *count = feat ? st_meta(&r, "count", e) : NULL;
    if (!count) {
        rc = e ? e->code : ERR_KEY;
        goto done;
    }
    if (strcmp(fmt, STATS_FORMAT) != 0) {
        rc = err_set(e, ERR_FORMAT, "%s: metadata format '%s', expected '%s'", name, fmt, STATS_FORMAT);
        goto done;
    }
    if ((rc = featnet_kind_parse(feat, &s->kind, e))) {
        rc = err_set(e, ERR_VALUE, "%s: metadata features '%s' is not a known network", name, feat);
        goto done;
    }
    char *end;
    unsigned long long cnt = strtoull(count, &end, 10);
    if (*count == '\0' || *end || cnt < 2) {
        rc = err_set(e, ERR_VALUE, "%s: metadata count '%s', expected an integer >= 2", name, count);
        goto done;
    }
    s->n = (size_t)cnt;
    size_t sh[2], sh2[2];
    const unsigned char *p = st_tensor(&r, "mu", "F64", 1, sh, 0, e);
    if (!p) goto fail;
    size_t D = sh[0];
    int want = s->kind == FEAT_JUDGE ? JUDGE_FEATURES : INCEPTION_FEATURES;
    if (D != (size_t)want) {
        rc = err_set(e, ERR_SHAPE, "%s: tensor 'mu': %s features have %d dims, found %zu", name, feat, want, D);
        goto done;
    }
    s->dim = (int)D;
    s->mu = read_f64(p, D);
    if (!(p = st_tensor(&r, "sigma", "F64", 2, sh2, 0, e))) goto fail;
    if (sh2[0] != D || sh2[1] != D) {
        rc = err_set(e, ERR_SHAPE, "%s: tensor 'sigma': expected (%zu, %zu), found (%zu, %zu)", name, D, D, sh2[0], sh2[1]);
        goto done;
    }
    s->sigma = read_f64(p, D * D);
    if (!(p = st_tensor(&r, "features", "F32", 2, sh2, 0, e))) goto fail;
    if (sh2[1] != D || sh2[0] > s->n) {
        rc = err_set(e, ERR_SHAPE, "%s: tensor 'features': expected (<= %zu, %zu), found (%zu, %zu)", name, s->n, D,
                     sh2[0], sh2[1]);
        goto done;
    }
    s->n_rows = sh2[0];
    s->rows = malloc(s->n_rows * D * sizeof(float));
    if (s->rows) memcpy(s->rows, p, s->n_rows * D * sizeof(float));
    if (s->kind == FEAT_INCEPTION) {
        if (!(p = st_tensor(&r, "mu_spatial", "F64", 1, sh, 0, e))) goto fail;
        if (sh[0] != INCEPTION_SPATIAL_DIM) {
            rc = err_set(e, ERR_SHAPE, "%s: tensor 'mu_spatial': expected (%d), found (%zu)", name, INCEPTION_SPATIAL_DIM,
                         sh[0]);
            goto done;
        }
        s->spatial_dim = INCEPTION_SPATIAL_DIM;
        s->mu_s = read_f64(p, sh[0]);
        if (!(p = st_tensor(&r, "sigma_spatial", "F64", 2, sh2, 0, e))) goto fail;
        if (sh2[0] != sh[0] || sh2[1] != sh[0]) {
            rc = err_set(e, ERR_SHAPE, "%s: tensor 'sigma_spatial': expected (%zu, %zu), found (%zu, %zu)", name, sh[0],
                         sh[0], sh2[0], sh2[1]);
            goto done;
        }
        s->sigma_s = read_f64(p, sh[0] * sh[0]);
        if (!s->mu_s || !s->sigma_s) goto nomem;
    }
    if (!s->mu || !s->sigma || !s->rows) goto nomem;
    goto done;
nomem:
    rc = err_set(e, ERR_NOMEM, "%s: out of memory", name);
    goto done;
fail:
    rc = e ? e->code : ERR_FORMAT;
done:
    cJSON_Delete(hdr);
    if (rc) featset_free(s);
    return rc;
}

int stats_read(const char *path, FeatSet *s, Err *e) {
    memset(s, 0, sizeof *s);
    unsigned char *buf;
    size_t size;
    if (file_read_all(path, &buf, &size, e)) return e ? e->code : ERR_IO;
    int rc = stats_read_mem(buf, size, path, s, e);
    free(buf);
    return rc;
}
