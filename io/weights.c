/* weights.c: io/weights.h over io/ckpt.c (torch.save zips) and io/safetensors.c. */
#include "io/weights.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/ckpt.h"
#include "io/dtype.h"
#include "io/safetensors.h"
#include "io/strmap.h"

typedef enum { WF_CKPT, WF_ST } WeightKind;

struct WeightFile {
    WeightKind kind;
    CkptFile ck;
    StFile st;
    WeightInfo *info;  // n entries, names owned by ck/st
    int n;
    StrMap by_name;
};

// The format from the first bytes: safetensors (u64 length, then '{'), else a torch file
// (zip, or a legacy pickle / tar that ckpt reports), else -1.
static int sniff(const unsigned char *b, size_t n) {
    if (n >= 9 && b[8] == '{') return WF_ST;
    if (n >= 2 && b[0] == 'P' && b[1] == 'K') return WF_CKPT;
    if (n >= 1 && b[0] == 0x80) return WF_CKPT;
    if (n >= 262 && !memcmp(b + 257, "ustar", 5)) return WF_CKPT;
    return -1;
}

static int not_weights(const char *name, Err *e) {
    return err_set(e, ERR_FORMAT, "%s: not a tensor file: expected a PyTorch checkpoint (zip) or a safetensors file", name);
}

static int build(WeightFile *w, Err *e) {
    int n = w->kind == WF_CKPT ? w->ck.n_tensors : w->st.n_tensors;
    w->info = calloc(n ? (size_t)n : 1, sizeof *w->info);
    if (!w->info) return err_set(e, ERR_NOMEM, "%s: out of memory", weights_path(w));
    for (int i = 0; i < n; i++) {
        WeightInfo *wi = &w->info[i];
        if (w->kind == WF_CKPT) {
            const CkptTensor *t = &w->ck.tensors[i];
            *wi = (WeightInfo){t->name, t->dtype, t->ndim, {0}, t->numel};
            memcpy(wi->shape, t->shape, sizeof wi->shape);
        } else {
            const StTensor *t = &w->st.tensors[i];
            *wi = (WeightInfo){t->name, t->dtype, t->ndim, {0}, t->numel};
            memcpy(wi->shape, t->shape, sizeof wi->shape);
        }
        // names are unique: ckpt merges repeated keys, safetensors rejects them
        if (strmap_put(&w->by_name, wi->name, i, NULL) < 0) return err_set(e, ERR_NOMEM, "%s: out of memory", weights_path(w));
        w->n++;
    }
    return 0;
}

static int open_kind(WeightFile **out, WeightFile *w, int rc, Err *e) {
    if (!rc) rc = build(w, e);
    if (rc) {
        weights_close(w);
        return rc;
    }
    *out = w;
    return 0;
}

int weights_open(WeightFile **f, const char *path, Err *e) {
    *f = NULL;
    unsigned char head[512];
    FILE *fp = fopen(path, "rb");
    if (!fp) return err_set(e, ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t n = fread(head, 1, sizeof head, fp);
    fclose(fp);
    int kind = sniff(head, n);
    if (kind < 0) return not_weights(path, e);
    WeightFile *w = calloc(1, sizeof *w);
    if (!w) return err_set(e, ERR_NOMEM, "%s: out of memory", path);
    w->kind = (WeightKind)kind;
    int rc = kind == WF_CKPT ? ckpt_open(&w->ck, path, e) : st_open(&w->st, path, e);
    return open_kind(f, w, rc, e);
}

int weights_open_mem(WeightFile **f, const void *buf, size_t size, const char *name, Err *e) {
    *f = NULL;
    int kind = sniff(buf, size);
    if (kind < 0) return not_weights(name, e);
    WeightFile *w = calloc(1, sizeof *w);
    if (!w) return err_set(e, ERR_NOMEM, "%s: out of memory", name);
    w->kind = (WeightKind)kind;
    int rc = kind == WF_CKPT ? ckpt_open_mem(&w->ck, buf, size, name, e) : st_open_mem(&w->st, buf, size, name, e);
    return open_kind(f, w, rc, e);
}

void weights_close(WeightFile *f) {
    if (!f) return;
    strmap_free(&f->by_name);
    free(f->info);
    if (f->kind == WF_CKPT) ckpt_close(&f->ck);
    else st_close(&f->st);
    free(f);
}

int weights_count(const WeightFile *f) { return f->n; }

const WeightInfo *weights_info(const WeightFile *f, int i) { return (i >= 0 && i < f->n) ? &f->info[i] : NULL; }

const WeightInfo *weights_find(const WeightFile *f, const char *name) {
    int i = strmap_get(&f->by_name, name);
    return i >= 0 ? &f->info[i] : NULL;
}

const char *weights_path(const WeightFile *f) { return f->kind == WF_CKPT ? f->ck.path : f->st.path; }

const char *weights_format(const WeightFile *f) { return f->kind == WF_CKPT ? "pytorch" : "safetensors"; }

const char *weights_metadata(const WeightFile *f, const char *key) { return f->kind == WF_ST ? st_meta(&f->st, key) : NULL; }

int weights_metadata_count(const WeightFile *f) { return f->kind == WF_ST ? f->st.n_meta : 0; }

const char *weights_metadata_key(const WeightFile *f, int i, const char **value) {
    if (f->kind != WF_ST || i < 0 || i >= f->st.n_meta) return NULL;
    if (value) *value = f->st.meta[i].value;
    return f->st.meta[i].key;
}

int weights_top_count(const WeightFile *f) { return f->kind == WF_CKPT ? f->ck.n_top : 0; }

const char *weights_top_key(const WeightFile *f, int i, const char **desc) {
    if (f->kind != WF_CKPT || i < 0 || i >= f->ck.n_top) return NULL;
    if (desc) *desc = f->ck.top_keys[i].desc;
    return f->ck.top_keys[i].key;
}

static int lookup(WeightFile *f, const char *name, Err *e) {
    int i = strmap_get(&f->by_name, name);
    if (i < 0) return -err_set(e, ERR_KEY, "%s: tensor '%s' not found (%d tensors in the file)", weights_path(f), name, f->n);
    return i;
}

static void shape_text(char *out, size_t cap, const int64_t *d, int n) {
    size_t k = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < n && k < cap; i++) k += (size_t)snprintf(out + k, cap - k, i ? ", %lld" : "%lld", (long long)d[i]);
    if (k < cap) snprintf(out + k, cap - k, "]");
}

// Raw bytes of tensor i into dst (numel x element size).
static int read_raw(WeightFile *f, int i, void *dst, Err *e) {
    if (f->kind == WF_CKPT) return ckpt_read(&f->ck, i, dst, e);
    const StTensor *t = &f->st.tensors[i];
    if (t->end > t->begin) memcpy(dst, st_data(&f->st, i), t->end - t->begin);
    return 0;
}

int weights_read_raw(WeightFile *f, const char *name, void *dst, size_t dst_bytes, Err *e) {
    int i = lookup(f, name, e);
    if (i < 0) return -i;
    const WeightInfo *wi = &f->info[i];
    if (dst_bytes != wi->numel * dtype_size(wi->dtype))
        return err_set(e, ERR_SHAPE, "%s: tensor '%s': %zu bytes (%zu x %s) do not fit a buffer of %zu", weights_path(f), name,
                       wi->numel * dtype_size(wi->dtype), wi->numel, dtype_name(wi->dtype), dst_bytes);
    return read_raw(f, i, dst, e);
}

int weights_read_f32(WeightFile *f, const char *name, float *dst, int ndim, const int *shape, Err *e) {
    int i = lookup(f, name, e);
    if (i < 0) return -i;
    const WeightInfo *wi = &f->info[i];
    if (shape) {
        int same = ndim == wi->ndim;
        for (int d = 0; same && d < ndim; d++) same = shape[d] == wi->shape[d];
        if (!same) {
            int64_t want[WEIGHTS_MAX_DIMS];
            int nd = ndim < WEIGHTS_MAX_DIMS ? ndim : WEIGHTS_MAX_DIMS;
            for (int d = 0; d < nd; d++) want[d] = shape[d];
            char a[200], b[200];
            shape_text(a, sizeof a, want, nd);
            shape_text(b, sizeof b, wi->shape, wi->ndim);
            return err_set(e, ERR_SHAPE, "%s: tensor '%s': expected shape %s, found %s", weights_path(f), name, a, b);
        }
    }
    if (wi->dtype == DT_F32) {
        if (read_raw(f, i, dst, e)) return e->code;
    } else if (f->kind == WF_ST) {
        dtype_to_f32(dst, st_data(&f->st, i), wi->dtype, wi->numel);
    } else {
        size_t bytes = wi->numel * dtype_size(wi->dtype);
        void *tmp = malloc(bytes ? bytes : 1);
        if (!tmp) return err_set(e, ERR_NOMEM, "%s: tensor '%s': cannot allocate %zu bytes", weights_path(f), name, bytes);
        if (read_raw(f, i, tmp, e)) {
            free(tmp);
            return e->code;
        }
        dtype_to_f32(dst, tmp, wi->dtype, wi->numel);
        free(tmp);
    }
    if (dtype_is_float(wi->dtype)) {
        for (size_t k = 0; k < wi->numel; k++)
            if (!isfinite(dst[k]))
                return err_set(e, ERR_VALUE, "%s: tensor '%s': element %zu is %s; weights must be finite", weights_path(f), name, k,
                               isnan(dst[k]) ? "NaN" : "Inf");
    }
    return 0;
}
