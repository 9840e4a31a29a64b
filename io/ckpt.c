/* ckpt.c: torch.save zip archives (see ckpt.h). Layout per torch/serialization.py
   (_save: data.pkl, data/<key>, byteorder, version) and caffe2's
   PyTorchStreamWriter (one top folder, records stored uncompressed). */
#include "io/ckpt.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/dtype.h"
#include "io/strmap.h"

// --- container ---

// Classifies the first bytes. 0 for a zip; otherwise an error naming what the file is.
static int ckpt_sniff(const unsigned char *b, size_t n, const char *name, Err *e) {
    if (n >= 4 && b[0] == 'P' && b[1] == 'K' && ((b[2] == 3 && b[3] == 4) || (b[2] == 5 && b[3] == 6))) return 0;
    if (n >= 1 && b[0] == 0x80)
        return err_set(e, ERR_UNSUPPORTED,
                       "%s: saved with the legacy (pre-1.6) torch format (a bare pickle stream); re-save it "
                       "with torch>=1.6: torch.save(torch.load(f), f)", name);
    if (n >= 262 && !memcmp(b + 257, "ustar", 5))
        return err_set(e, ERR_UNSUPPORTED,
                       "%s: saved with the legacy (pre-1.6) torch format (a tar archive); re-save it with "
                       "torch>=1.6: torch.save(torch.load(f), f)", name);
    return err_set(e, ERR_FORMAT, "%s: not a PyTorch checkpoint: expected a zip archive (\"PK\\3\\4\"), found %s",
                   name, n < 4 ? "fewer than 4 bytes" : "other bytes");
}

static int zip_fail(Err *e, const char *name, int code, zip_error_t *ze) {
    int zc = zip_error_code_zip(ze);
    int ec = (zc == ZIP_ER_OPEN || zc == ZIP_ER_READ || zc == ZIP_ER_NOENT) ? ERR_IO : code;
    return err_set(e, ec, "%s: cannot open as a zip archive: %s", name, zip_error_strerror(ze));
}

// Reads bytes [start, start + n) of archive entry idx into dst. whole: those are all the
// entry's bytes, so read on to the end, where libzip verifies the CRC.
static int entry_read(CkptFile *f, zip_uint64_t idx, int stored, size_t start, void *dst, size_t n, int whole, Err *e) {
    const char *ename = zip_get_name(f->zip, idx, 0);
    zip_file_t *zf = zip_fopen_index(f->zip, idx, 0);
    if (!zf) return err_set(e, ERR_FORMAT, "%s: entry '%s': cannot open: %s", f->path, ename, zip_strerror(f->zip));
    int rc = 0;
    if (start > 0 && stored && zip_fseek(zf, (zip_int64_t)start, SEEK_SET) == 0) start = 0;
    unsigned char skip[1 << 14];
    while (start > 0) {  // compressed entry: decompress and drop what comes before start
        size_t k = start < sizeof skip ? start : sizeof skip;
        zip_int64_t got = zip_fread(zf, skip, k);
        if (got <= 0) { rc = -1; break; }
        start -= (size_t)got;
    }
    for (size_t done = 0; rc == 0 && done < n;) {
        zip_int64_t got = zip_fread(zf, (unsigned char *)dst + done, n - done);
        if (got <= 0) { rc = -1; break; }
        done += (size_t)got;
    }
    if (rc == 0 && whole) {
        unsigned char extra;
        if (zip_fread(zf, &extra, 1) != 0) rc = -1;  // CRC mismatch (or more data than the directory said)
    }
    if (rc)
        err_set(e, ERR_FORMAT, "%s: entry '%s': truncated or corrupt: %s", f->path, ename,
                zip_error_code_zip(zip_file_get_error(zf)) != ZIP_ER_OK ? zip_file_strerror(zf) : "unexpected end of data");
    zip_fclose(zf);
    return rc ? e->code : 0;
}

// Reads a whole (small) entry into a malloc'ed, NUL-terminated buffer, up to cap bytes.
static int entry_read_all(CkptFile *f, zip_uint64_t idx, size_t cap, unsigned char **out, size_t *len, Err *e) {
    const char *ename = zip_get_name(f->zip, idx, 0);
    zip_file_t *zf = zip_fopen_index(f->zip, idx, 0);
    if (!zf) return err_set(e, ERR_FORMAT, "%s: entry '%s': cannot open: %s", f->path, ename, zip_strerror(f->zip));
    // Grow as data actually arrives: the size the directory claims is not trusted.
    size_t n = 0, bcap = 1 << 16;
    unsigned char *b = malloc(bcap + 1);
    int rc = b ? 0 : err_set(e, ERR_NOMEM, "%s: cannot allocate %zu bytes", f->path, bcap);
    while (!rc) {
        if (n == bcap) {
            if (bcap >= cap) { rc = err_set(e, ERR_FORMAT, "%s: entry '%s' is larger than %zu bytes", f->path, ename, cap); break; }
            size_t nc = bcap * 2 > cap ? cap : bcap * 2;
            unsigned char *nb = realloc(b, nc + 1);
            if (!nb) { rc = err_set(e, ERR_NOMEM, "%s: cannot allocate %zu bytes", f->path, nc); break; }
            b = nb;
            bcap = nc;
        }
        zip_int64_t got = zip_fread(zf, b + n, bcap - n);
        if (got < 0) rc = err_set(e, ERR_FORMAT, "%s: entry '%s': truncated or corrupt: %s", f->path, ename, zip_file_strerror(zf));
        else if (got == 0) break;
        else n += (size_t)got;
    }
    zip_fclose(zf);
    if (rc) { free(b); return rc; }
    b[n] = '\0';
    *out = b;
    *len = n;
    return 0;
}

// Finds <top>/data.pkl (top: one folder level, any name) and sets f->top.
static int find_pickle(CkptFile *f, zip_uint64_t *idx, Err *e) {
    zip_int64_t n = zip_get_num_entries(f->zip, 0);
    int found = 0;
    const char *first = NULL;
    for (zip_int64_t i = 0; i < n; i++) {
        const char *name = zip_get_name(f->zip, (zip_uint64_t)i, 0);
        if (!name) continue;
        size_t len = strlen(name);
        if (len < 9 || strcmp(name + len - 9, "/data.pkl") != 0) continue;
        if (memchr(name, '/', len - 9)) continue;  // deeper than one folder: not torch's record
        if (found++) return err_set(e, ERR_FORMAT, "%s: several data.pkl records ('%s' and '%s'): not one torch.save archive",
                                    f->path, first, name);
        first = name;
        free(f->top);
        f->top = malloc(len - 7);
        if (!f->top) return err_set(e, ERR_NOMEM, "%s: out of memory", f->path);
        memcpy(f->top, name, len - 8);
        f->top[len - 8] = '\0';
        *idx = (zip_uint64_t)i;
    }
    if (!found) return err_set(e, ERR_FORMAT, "%s: no <folder>/data.pkl record: not a torch.save archive", f->path);
    return 0;
}

// torch >= 1.10 writes <top>/byteorder ("little" or "big"); absent means little.
static int check_byteorder(CkptFile *f, Err *e) {
    char name[4200];
    snprintf(name, sizeof name, "%sbyteorder", f->top);
    zip_int64_t i = zip_name_locate(f->zip, name, 0);
    if (i < 0) return 0;
    unsigned char *b;
    size_t n;
    if (entry_read_all(f, (zip_uint64_t)i, 64, &b, &n, e)) return e->code;
    int big = n >= 3 && !memcmp(b, "big", 3);
    int little = n >= 6 && !memcmp(b, "little", 6);
    free(b);
    if (big) return err_set(e, ERR_UNSUPPORTED, "%s: saved on a big-endian machine (byteorder 'big'); re-save it on a little-endian one", f->path);
    if (!little) return err_set(e, ERR_FORMAT, "%s: record '%s' is neither 'little' nor 'big'", f->path, name);
    return 0;
}

// --- describing values (for `effdm info`) ---

static void put_str(char *dst, size_t cap, const char *s, size_t len) {
    size_t k = 0;
    for (size_t i = 0; i < len && k + 4 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[k++] = (c >= 0x20 && c != 0x7f) ? (char)c : '?';
    }
    if (len > 0 && k + 4 >= cap && k >= 3) memcpy(dst + k - 3, "...", 3);
    dst[k] = '\0';
}

static void describe(const PklValue *v, char *out, size_t cap) {
    char s[72];
    switch (v->type) {
    case PKL_NONE: snprintf(out, cap, "None"); break;
    case PKL_BOOL: snprintf(out, cap, "bool %s", v->u.i ? "True" : "False"); break;
    case PKL_INT: snprintf(out, cap, "int %" PRId64, v->u.i); break;
    case PKL_BIGINT: snprintf(out, cap, "int (%zu bytes)", v->u.str.len); break;
    case PKL_FLOAT: snprintf(out, cap, "float %g", v->u.f); break;
    case PKL_STR: put_str(s, sizeof s, v->u.str.s, v->u.str.len); snprintf(out, cap, "str '%s'", s); break;
    case PKL_BYTES: snprintf(out, cap, "bytes (%zu)", v->u.str.len); break;
    case PKL_TUPLE: case PKL_LIST: case PKL_SET:
        snprintf(out, cap, "%s (%zu items)", pkl_type_name(v->type), v->u.seq.n); break;
    case PKL_DICT: snprintf(out, cap, "dict (%zu entries)", v->u.dict.n); break;
    case PKL_GLOBAL: snprintf(out, cap, "class %s.%s", v->u.cls.module, v->u.cls.name); break;
    case PKL_OBJECT: snprintf(out, cap, "object %s.%s", v->u.cls.module, v->u.cls.name); break;
    case PKL_TENSOR: snprintf(out, cap, "tensor (%d dims)", v->u.tensor.ndim); break;
    default: snprintf(out, cap, "%s", pkl_type_name(v->type)); break;
    }
}

static char *key_text(const PklValue *k) {
    char buf[160];
    if (k->type == PKL_STR) put_str(buf, sizeof buf, k->u.str.s, k->u.str.len);
    else if (k->type == PKL_INT) snprintf(buf, sizeof buf, "<int %" PRId64 ">", k->u.i);
    else snprintf(buf, sizeof buf, "<%s>", pkl_type_name(k->type));
    return strdup(buf);
}

// --- the tensor index ---

static void dims_text(char *out, size_t cap, const int64_t *d, int n) {
    size_t k = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < n && k < cap; i++) k += (size_t)snprintf(out + k, cap - k, i ? ", %" PRId64 : "%" PRId64, d[i]);
    if (k < cap) snprintf(out + k, cap - k, "]");
}

// Finds or adds the storage of tensor t (its archive entry checked once). Index or -1 (e set).
static int add_storage(CkptFile *f, StrMap *by_key, const PklStorage *s, const char *tname, Err *e) {
    int i = strmap_get(by_key, s->key);
    if (i >= 0) {
        CkptStorage *c = &f->storages[i];
        if ((int)c->dtype != s->dtype || c->numel != (size_t)s->numel) {
            err_set(e, ERR_FORMAT, "%s: tensor '%s': storage '%s' is described twice with different types or sizes (%s x %zu, %s x %" PRId64 ")",
                    f->path, tname, s->key, dtype_name(c->dtype), c->numel, s->type_name, s->numel);
            return -1;
        }
        return i;
    }
    size_t bytes;
    if ((uint64_t)s->numel > SIZE_MAX || !size_mul_ok((size_t)s->numel, dtype_size((DType)s->dtype), &bytes)) {
        err_set(e, ERR_FORMAT, "%s: tensor '%s': storage '%s' claims %" PRId64 " elements: too large", f->path, tname, s->key, s->numel);
        return -1;
    }
    char ename[4200];
    snprintf(ename, sizeof ename, "%sdata/%s", f->top, s->key);
    zip_int64_t idx = zip_name_locate(f->zip, ename, 0);
    if (idx < 0) {
        err_set(e, ERR_FORMAT, "%s: tensor '%s': storage record '%s' is missing from the archive", f->path, tname, ename);
        return -1;
    }
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(f->zip, (zip_uint64_t)idx, 0, &st) != 0 || !(st.valid & ZIP_STAT_SIZE)) {
        err_set(e, ERR_FORMAT, "%s: tensor '%s': cannot stat record '%s': %s", f->path, tname, ename, zip_strerror(f->zip));
        return -1;
    }
    // The directory's sizes are claims: bound them by the bytes the archive really has.
    int stored = (st.valid & ZIP_STAT_COMP_METHOD) && st.comp_method == ZIP_CM_STORE;
    uint64_t most = 0;
    if ((st.valid & ZIP_STAT_COMP_SIZE) && st.comp_size <= f->archive_size)
        most = stored ? st.comp_size : st.comp_size * CKPT_MAX_DEFLATE_RATIO;
    if (st.size > most) {
        err_set(e, ERR_FORMAT, "%s: tensor '%s': record '%s' claims %" PRIu64 " bytes, more than the %zu-byte archive can hold",
                f->path, tname, ename, (uint64_t)st.size, f->archive_size);
        return -1;
    }
    if (st.size != bytes) {
        err_set(e, ERR_FORMAT, "%s: tensor '%s': storage record '%s' holds %" PRIu64 " bytes, expected %zu (%" PRId64 " x %s)",
                f->path, tname, ename, (uint64_t)st.size, bytes, s->numel, s->type_name);
        return -1;
    }
    CkptStorage *ns = realloc(f->storages, (size_t)(f->n_storages + 1) * sizeof *ns);
    if (!ns) { err_set(e, ERR_NOMEM, "%s: out of memory", f->path); return -1; }
    f->storages = ns;
    i = f->n_storages++;
    ns[i] = (CkptStorage){s->key, (DType)s->dtype, (size_t)s->numel, (zip_uint64_t)idx, stored};
    if (strmap_put(by_key, s->key, i, NULL) < 0) { err_set(e, ERR_NOMEM, "%s: out of memory", f->path); return -1; }
    return i;
}

// Checks the view of tensor `name` against its storage and fills t. 0 or an ERR_ code.
static int add_tensor(CkptFile *f, StrMap *by_key, const char *name, const PklTensor *v, CkptTensor *t, Err *e) {
    const PklStorage *s = &v->storage->u.storage;
    char sz[200], st[200];
    dims_text(sz, sizeof sz, v->size, v->ndim);
    dims_text(st, sizeof st, v->stride, v->ndim);
    if (s->dtype < 0)
        return err_set(e, ERR_DTYPE, "%s: tensor '%s': storage type %s not supported (expected Float, Half, BFloat16, "
                       "Double, Long, Int, Short, Char, Byte or Bool storage)", f->path, name, s->type_name);
    size_t numel = 1, hi = (size_t)v->offset, broadcast = 0;
    if (v->offset < 0) return err_set(e, ERR_FORMAT, "%s: tensor '%s': negative storage offset %" PRId64, f->path, name, v->offset);
    for (int d = 0; d < v->ndim; d++) {
        if (v->size[d] < 0 || v->stride[d] < 0)
            return err_set(e, ERR_FORMAT, "%s: tensor '%s': negative size or stride (size %s, stride %s)", f->path, name, sz, st);
        if ((uint64_t)v->size[d] > SIZE_MAX || !size_mul_ok(numel, (size_t)v->size[d], &numel))
            return err_set(e, ERR_FORMAT, "%s: tensor '%s': shape %s overflows", f->path, name, sz);
        if (v->stride[d] == 0 && v->size[d] > 1) broadcast = 1;
    }
    if (numel > 0) {
        for (int d = 0; d < v->ndim; d++) {
            size_t step;
            if ((uint64_t)v->stride[d] > SIZE_MAX || !size_mul_ok((size_t)v->size[d] - 1, (size_t)v->stride[d], &step) ||
                !size_add_ok(hi, step, &hi))
                return err_set(e, ERR_FORMAT, "%s: tensor '%s': view (size %s, stride %s) overflows", f->path, name, sz, st);
        }
        if (hi >= (size_t)s->numel)
            return err_set(e, ERR_FORMAT, "%s: tensor '%s': view (offset %" PRId64 ", size %s, stride %s) reaches element %zu, "
                           "its storage '%s' holds %" PRId64, f->path, name, v->offset, sz, st, hi, s->key, s->numel);
        if (numel > (size_t)s->numel && (!broadcast || numel > CKPT_MAX_BROADCAST))
            return err_set(e, ERR_FORMAT, "%s: tensor '%s': %zu elements (size %s) from a storage of %" PRId64,
                           f->path, name, numel, sz, s->numel);
    }
    int si = add_storage(f, by_key, s, name, e);
    if (si < 0) return e->code;
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) return err_set(e, ERR_NOMEM, "%s: out of memory", f->path);
    t->dtype = (DType)s->dtype;
    t->ndim = v->ndim;
    memcpy(t->shape, v->size, sizeof v->size);
    memcpy(t->stride, v->stride, sizeof v->stride);
    t->offset = v->offset;
    t->numel = numel;
    t->storage = si;
    return 0;
}

static int build_index(CkptFile *f, Err *e) {
    const PklValue *root = f->doc.root;
    if (root->type != PKL_DICT)
        return err_set(e, ERR_FORMAT, "%s: the pickled object is a %s, expected a dict (a state dict or a checkpoint)",
                       f->path, pkl_type_name(root->type));
    f->top_keys = calloc(root->u.dict.n ? root->u.dict.n : 1, sizeof *f->top_keys);
    if (!f->top_keys) return err_set(e, ERR_NOMEM, "%s: out of memory", f->path);
    for (size_t i = 0; i < root->u.dict.n; i++) {
        CkptTopKey *k = &f->top_keys[f->n_top++];
        if (!(k->key = key_text(root->u.dict.keys[i]))) return err_set(e, ERR_NOMEM, "%s: out of memory", f->path);
        describe(root->u.dict.vals[i], k->desc, sizeof k->desc);
    }
    const PklValue *sd = pkl_dict_get(root, "state_dict");
    f->from_state_dict = sd && sd->type == PKL_DICT;
    const PklValue *src = f->from_state_dict ? sd : root;

    size_t n = src->u.dict.n;
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    if (!f->tensors) return err_set(e, ERR_NOMEM, "%s: out of memory", f->path);
    StrMap by_name = {0}, by_key = {0};
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        const PklValue *k = src->u.dict.keys[i], *v = src->u.dict.vals[i];
        if (v->type != PKL_TENSOR || k->type != PKL_STR) {
            f->n_other++;
            continue;
        }
        int pos = strmap_get(&by_name, k->u.str.s);
        CkptTensor t;
        if ((rc = add_tensor(f, &by_key, k->u.str.s, &v->u.tensor, &t, e))) break;
        if (pos >= 0) {  // repeated key: first position, last value (Python dict semantics)
            free(t.name);
            t.name = f->tensors[pos].name;  // by_name points at this copy
            f->tensors[pos] = t;
        } else {
            f->tensors[f->n_tensors] = t;
            if (strmap_put(&by_name, t.name, f->n_tensors, NULL) < 0) {
                free(t.name);
                rc = err_set(e, ERR_NOMEM, "%s: out of memory", f->path);
                break;
            }
            f->n_tensors++;
        }
    }
    strmap_free(&by_name);
    strmap_free(&by_key);
    return rc;
}

// --- open / read / close ---

static int ckpt_load(CkptFile *f, Err *e) {
    zip_uint64_t pidx = 0;
    unsigned char *pkl = NULL;
    size_t plen;
    if (find_pickle(f, &pidx, e) || check_byteorder(f, e)) return e->code;
    if (entry_read_all(f, pidx, CKPT_MAX_PICKLE, &pkl, &plen, e)) return e->code;
    char pname[4400];
    snprintf(pname, sizeof pname, "%s: %sdata.pkl", f->path, f->top);
    int rc = pkl_parse(&f->doc, pkl, plen, pname, e);
    free(pkl);
    if (rc) return rc;
    return build_index(f, e);
}

int ckpt_open(CkptFile *f, const char *path, Err *e) {
    memset(f, 0, sizeof *f);
    unsigned char head[512];
    FILE *fp = fopen(path, "rb");
    if (!fp) return err_set(e, ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t n = fread(head, 1, sizeof head, fp);
    struct stat sb;
    int have_size = fstat(fileno(fp), &sb) == 0;
    fclose(fp);
    if (ckpt_sniff(head, n, path, e)) return e->code;
    f->archive_size = have_size ? (size_t)sb.st_size : 0;
    if (!(f->path = strdup(path))) return err_set(e, ERR_NOMEM, "%s: out of memory", path);
    int zerr = 0;
    f->zip = zip_open(path, ZIP_RDONLY, &zerr);
    if (!f->zip) {
        zip_error_t ze;
        zip_error_init_with_code(&ze, zerr);
        zip_fail(e, path, ERR_FORMAT, &ze);
        zip_error_fini(&ze);
        ckpt_close(f);
        return e->code;
    }
    if (ckpt_load(f, e)) {
        ckpt_close(f);
        return e->code;
    }
    return 0;
}

int ckpt_open_mem(CkptFile *f, const void *buf, size_t size, const char *name, Err *e) {
    memset(f, 0, sizeof *f);
    if (ckpt_sniff(buf, size, name, e)) return e->code;
    f->archive_size = size;
    if (!(f->path = strdup(name))) return err_set(e, ERR_NOMEM, "%s: out of memory", name);
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *src = zip_source_buffer_create(buf, size, 0, &ze);
    if (src) {
        f->zip = zip_open_from_source(src, ZIP_RDONLY, &ze);
        if (!f->zip) zip_source_free(src);
    }
    if (!f->zip) {
        zip_fail(e, name, ERR_FORMAT, &ze);
        zip_error_fini(&ze);
        ckpt_close(f);
        return e->code;
    }
    zip_error_fini(&ze);
    if (ckpt_load(f, e)) {
        ckpt_close(f);
        return e->code;
    }
    return 0;
}

static int is_contiguous(const CkptTensor *t) {
    int64_t expect = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != expect) return 0;
        expect *= t->shape[d];
    }
    return 1;
}

int ckpt_read(CkptFile *f, int i, void *dst, Err *e) {
    if (i < 0 || i >= f->n_tensors) return err_set(e, ERR_INTERNAL, "%s: tensor index %d out of range", f->path, i);
    const CkptTensor *t = &f->tensors[i];
    const CkptStorage *s = &f->storages[t->storage];
    size_t es = dtype_size(t->dtype);
    if (t->numel == 0) return 0;
    // sizes were checked against the storage at open: these products cannot overflow
    if (is_contiguous(t)) {
        int whole = t->offset == 0 && t->numel == s->numel;
        if (entry_read(f, s->entry, s->stored, (size_t)t->offset * es, dst, t->numel * es, whole, e))
            return err_prefix(e, "tensor '%s'", t->name);
        return 0;
    }
    // A strided view: read the span of the storage it touches, then gather in C order.
    size_t span = 1;
    for (int d = 0; d < t->ndim; d++) span += (size_t)(t->shape[d] - 1) * (size_t)t->stride[d];
    unsigned char *tmp = malloc(span * es);
    if (!tmp) return err_set(e, ERR_NOMEM, "%s: tensor '%s': cannot allocate %zu bytes", f->path, t->name, span * es);
    if (entry_read(f, s->entry, s->stored, (size_t)t->offset * es, tmp, span * es, t->offset == 0 && span == s->numel, e)) {
        free(tmp);
        return err_prefix(e, "tensor '%s'", t->name);
    }
    int64_t idx[WEIGHTS_MAX_DIMS] = {0};
    size_t src = 0;  // element offset of idx within the span: sum of idx[d] * stride[d]
    unsigned char *out = dst;
    for (size_t k = 0; k < t->numel; k++) {
        memcpy(out + k * es, tmp + src * es, es);
        for (int d = t->ndim - 1; d >= 0; d--) {  // odometer step, last dim fastest
            if (++idx[d] < t->shape[d]) { src += (size_t)t->stride[d]; break; }
            src -= (size_t)(idx[d] - 1) * (size_t)t->stride[d];
            idx[d] = 0;
        }
    }
    free(tmp);
    return 0;
}

void ckpt_close(CkptFile *f) {
    if (f->zip) zip_discard(f->zip);
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    for (int i = 0; i < f->n_top; i++) free(f->top_keys[i].key);
    free(f->tensors);
    free(f->storages);
    free(f->top_keys);
    free(f->top);
    free(f->path);
    pkl_free(&f->doc);
    memset(f, 0, sizeof *f);
}
