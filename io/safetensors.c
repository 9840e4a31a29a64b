/* safetensors.c: the format of huggingface/safetensors (safetensors/src/tensor.rs:
   Metadata::validate for the reader's checks, prepare() for the writer's order). */
#include "io/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <zlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/dtype.h"
#include "io/fileio.h"
#include "io/strmap.h"
#include "util/grow.h"

// safetensors dtype names that are valid but have no DType here.
static const char *const st_other_dtypes[] = {"U16", "U32", "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64"};

// Rank of each DType in the reference's Dtype enum (declared in increasing alignment);
// the writer sorts by it, descending.
static int st_rank(DType t) {
    static const int rank[DT_COUNT] = {[DT_BOOL] = 0, [DT_U8] = 1, [DT_I8] = 2, [DT_I16] = 5, [DT_F16] = 7,
                                       [DT_BF16] = 8, [DT_I32] = 9, [DT_F32] = 11, [DT_F64] = 12, [DT_I64] = 13};
    return rank[t];
}

// 1 when s[0..n) is well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF).
static int utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned min, cp;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xc2 && c <= 0xdf) { k = 1; cp = c & 0x1f; min = 0x80; }
        else if (c >= 0xe0 && c <= 0xef) { k = 2; cp = c & 0x0f; min = 0x800; }
        else if (c >= 0xf0 && c <= 0xf4) { k = 3; cp = c & 0x07; min = 0x10000; }
        else return 0;
        if (k > n - i - 1) return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += k + 1;
    }
    return 1;
}

// A JSON number that is a non-negative integer exactly representable (<= 2^53).
static int json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || floor(d) != d) return 0;
    *out = (uint64_t)d;
    return 1;
}

static int parse_tensor(StFile *f, StTensor *t, const cJSON *obj, Err *e) {
    const char *name = t->name;
    if (!cJSON_IsObject(obj)) return err_set(e, ERR_FORMAT, "%s: tensor '%s': expected an object {dtype, shape, data_offsets}", f->path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(obj, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(obj, "shape");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(obj, "data_offsets");
    if (!cJSON_IsString(dt)) return err_set(e, ERR_FORMAT, "%s: tensor '%s': missing string \"dtype\"", f->path, name);
    if (!cJSON_IsArray(sh)) return err_set(e, ERR_FORMAT, "%s: tensor '%s': missing array \"shape\"", f->path, name);
    if (!cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2)
        return err_set(e, ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" must be [begin, end]", f->path, name);
    int d = dtype_from_name(dt->valuestring);
    if (d < 0) {
        for (size_t i = 0; i < sizeof st_other_dtypes / sizeof st_other_dtypes[0]; i++)
            if (!strcmp(dt->valuestring, st_other_dtypes[i]))
                return err_set(e, ERR_DTYPE, "%s: tensor '%s': dtype %s not supported (expected F32, F16, BF16, F64, I64, I32, I16, I8, U8 or BOOL)",
                               f->path, name, dt->valuestring);
        return err_set(e, ERR_DTYPE, "%s: tensor '%s': unknown dtype '%.40s' (expected F32, F16, BF16, F64, I64, I32, I16, I8, U8 or BOOL)",
                       f->path, name, dt->valuestring);
    }
    t->dtype = (DType)d;
    int nd = cJSON_GetArraySize(sh);
    if (nd > WEIGHTS_MAX_DIMS) return err_set(e, ERR_FORMAT, "%s: tensor '%s': %d dims, at most %d supported", f->path, name, nd, WEIGHTS_MAX_DIMS);
    t->ndim = nd;
    size_t numel = 1;
    int k = 0;
    for (const cJSON *s = sh->child; s; s = s->next, k++) {
        uint64_t v;
        if (!json_uint(s, &v)) return err_set(e, ERR_FORMAT, "%s: tensor '%s': shape entry %d is not a non-negative integer", f->path, name, k);
        if (v > SIZE_MAX || !size_mul_ok(numel, (size_t)v, &numel))
            return err_set(e, ERR_FORMAT, "%s: tensor '%s': shape overflows", f->path, name);
        t->shape[k] = (int64_t)v;
    }
    t->numel = numel;
    uint64_t b, en;
    if (!json_uint(of->child, &b) || !json_uint(of->child->next, &en))
        return err_set(e, ERR_FORMAT, "%s: tensor '%s': data_offsets are not non-negative integers", f->path, name);
    size_t data_size = f->size - f->data_start, nbytes;
    if (en < b || en > data_size)
        return err_set(e, ERR_FORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] outside the data section (%zu bytes)",
                       f->path, name, b, en, data_size);
    if (!size_mul_ok(numel, dtype_size(t->dtype), &nbytes) || nbytes != en - b)
        return err_set(e, ERR_FORMAT, "%s: tensor '%s': %s x %zu elements need %zu bytes, data_offsets span %" PRIu64,
                       f->path, name, dtype_name(t->dtype), numel, numel * dtype_size(t->dtype), en - b);
    t->begin = (size_t)b;
    t->end = (size_t)en;
    return 0;
}

static int parse_meta(StFile *f, const cJSON *obj, Err *e) {
    if (!cJSON_IsObject(obj)) return err_set(e, ERR_FORMAT, "%s: \"__metadata__\" is not an object", f->path);
    int n = cJSON_GetArraySize(obj);
    f->meta = calloc(n ? (size_t)n : 1, sizeof *f->meta);
    if (!f->meta) return err_set(e, ERR_NOMEM, "%s: out of memory", f->path);
    StrMap seen = {0};
    int rc = 0;
    for (const cJSON *m = obj->child; m && !rc; m = m->next) {
        if (!cJSON_IsString(m)) { rc = err_set(e, ERR_FORMAT, "%s: metadata '%s': value is not a string", f->path, m->string); break; }
        StMeta *sm = &f->meta[f->n_meta];
        sm->key = strdup(m->string);
        sm->value = strdup(m->valuestring);
        if (!sm->key || !sm->value) { free(sm->key); free(sm->value); rc = err_set(e, ERR_NOMEM, "%s: out of memory", f->path); break; }
        f->n_meta++;
        int r = strmap_put(&seen, sm->key, 0, NULL);
        if (r < 0) rc = err_set(e, ERR_NOMEM, "%s: out of memory", f->path);
        else if (r == 1) rc = err_set(e, ERR_FORMAT, "%s: metadata key '%s' appears twice", f->path, sm->key);
    }
    strmap_free(&seen);
    return rc;
}

static int by_offset(const void *a, const void *b) {
    const StTensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int st_parse(StFile *f, Err *e) {
    const unsigned char *b = f->base;
    if (f->size < 8) return err_set(e, ERR_FORMAT, "%s: %zu bytes: too short for a safetensors header length", f->path, f->size);
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n |= (uint64_t)b[i] << (8 * i);
    if (n > ST_MAX_HEADER) return err_set(e, ERR_FORMAT, "%s: header length %" PRIu64 " exceeds the 100 MB limit", f->path, n);
    if (n > f->size - 8)
        return err_set(e, ERR_FORMAT, "%s: header length %" PRIu64 " runs past the end of the file (%zu bytes)", f->path, n, f->size);
    if (n < 2 || b[8] != '{') return err_set(e, ERR_FORMAT, "%s: safetensors header does not start with '{'", f->path);
    if (!utf8_valid(b + 8, (size_t)n)) return err_set(e, ERR_FORMAT, "%s: safetensors header is not valid UTF-8", f->path);
    f->data_start = 8 + (size_t)n;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)b + 8, (size_t)n, &end, 0);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return err_set(e, ERR_FORMAT, "%s: safetensors header is not a JSON object", f->path);
    }
    for (; end < (const char *)b + 8 + n; end++)
        if (*end != ' ' && *end != '\t' && *end != '\n' && *end != '\r') {
            cJSON_Delete(root);
            return err_set(e, ERR_FORMAT, "%s: safetensors header has bytes after its JSON object", f->path);
        }
    int count = cJSON_GetArraySize(root);
    f->tensors = calloc(count ? (size_t)count : 1, sizeof *f->tensors);
    StrMap seen = {0};
    int rc = f->tensors ? 0 : err_set(e, ERR_NOMEM, "%s: out of memory", f->path);
    for (const cJSON *it = root->child; it && !rc; it = it->next) {
        const char *name = it->string;
        int r = strmap_put(&seen, name, 0, NULL);
        if (r < 0) { rc = err_set(e, ERR_NOMEM, "%s: out of memory", f->path); break; }
        if (r == 1) { rc = err_set(e, ERR_FORMAT, "%s: tensor '%s' appears twice in the header", f->path, name); break; }
        if (!strcmp(name, "__metadata__")) { rc = parse_meta(f, it, e); continue; }
        StTensor *t = &f->tensors[f->n_tensors];
        if (!(t->name = strdup(name))) { rc = err_set(e, ERR_NOMEM, "%s: out of memory", f->path); break; }
        f->n_tensors++;
        rc = parse_tensor(f, t, it, e);
    }
    strmap_free(&seen);  // its keys were cJSON's strings
    cJSON_Delete(root);
    if (rc) return rc;
    qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, by_offset);
    size_t at = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const StTensor *t = &f->tensors[i];
        if (t->begin < at)
            return err_set(e, ERR_FORMAT, "%s: tensors '%s' and '%s' overlap (bytes [%zu, %zu) and [%zu, %zu))", f->path,
                           f->tensors[i - 1].name, t->name, f->tensors[i - 1].begin, f->tensors[i - 1].end, t->begin, t->end);
        if (t->begin > at)
            return err_set(e, ERR_FORMAT, "%s: tensor '%s': %zu unused bytes before its data_offsets [%zu, %zu)",
                           f->path, t->name, t->begin - at, t->begin, t->end);
        at = t->end;
    }
    if (at != f->size - f->data_start)
        return err_set(e, ERR_FORMAT, "%s: the tensors cover %zu bytes of a %zu-byte data section", f->path, at, f->size - f->data_start);
    return 0;
}

int st_open_mem(StFile *f, const void *buf, size_t size, const char *name, Err *e) {
    memset(f, 0, sizeof *f);
    if (!(f->path = strdup(name))) return err_set(e, ERR_NOMEM, "%s: out of memory", name);
    f->base = buf;
    f->size = size;
    if (st_parse(f, e)) {
        st_close(f);
        return e->code;
    }
    return 0;
}

int st_open(StFile *f, const char *path, Err *e) {
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return err_set(e, ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return err_set(e, ERR_IO, "%s: not a regular file", path);
    }
    if (!(f->path = strdup(path))) {
        close(fd);
        return err_set(e, ERR_NOMEM, "%s: out of memory", path);
    }
    f->size = (size_t)st.st_size;
    if (f->size >= 8) {
        void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int saved = errno;
            close(fd);
            st_close(f);
            return err_set(e, ERR_IO, "%s: cannot map: %s", path, strerror(saved));
        }
        f->base = m;
        f->mapped = 1;
    }
    close(fd);
    if (st_parse(f, e)) {
        st_close(f);
        return e->code;
    }
    return 0;
}

const void *st_data(const StFile *f, int i) { return f->base + f->data_start + f->tensors[i].begin; }

const char *st_meta(const StFile *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta[i].key, key)) return f->meta[i].value;
    return NULL;
}

void st_close(StFile *f) {
    if (f->mapped) munmap((void *)f->base, f->size);
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->tensors);
    free(f->meta);
    free(f->path);
    memset(f, 0, sizeof *f);
}

// --- writer ---

int st_writer_add(StWriter *w, const char *name, DType dtype, int ndim, const int64_t *shape, const void *data, Err *e) {
    if (!name[0] || !strcmp(name, "__metadata__")) return err_set(e, ERR_KEY, "safetensors: tensor name '%s' not allowed", name);
    if (dtype < 0 || dtype >= DT_COUNT) return err_set(e, ERR_DTYPE, "safetensors: tensor '%s': invalid dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > WEIGHTS_MAX_DIMS) return err_set(e, ERR_SHAPE, "safetensors: tensor '%s': %d dims (0..%d)", name, ndim, WEIGHTS_MAX_DIMS);
    for (int i = 0; i < w->n_tensors; i++)
        if (!strcmp(w->tensors[i].name, name)) return err_set(e, ERR_KEY, "safetensors: tensor '%s' added twice", name);
    size_t n = dtype_size(dtype);
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0 || (uint64_t)shape[d] > SIZE_MAX || !size_mul_ok(n, (size_t)shape[d], &n))
            return err_set(e, ERR_SHAPE, "safetensors: tensor '%s': bad shape entry %" PRId64, name, shape[d]);
    if (grow_array((void **)&w->tensors, &w->cap_tensors, w->n_tensors + 1, 16, sizeof *w->tensors))
        return err_set(e, ERR_NOMEM, "safetensors: out of memory");
    StWriterTensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return err_set(e, ERR_NOMEM, "safetensors: out of memory");
    t->dtype = dtype;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    t->nbytes = n;
    t->data = data;
    w->n_tensors++;
    return 0;
}

int st_writer_meta(StWriter *w, const char *key, const char *value, Err *e) {
    for (int i = 0; i < w->n_meta; i++)
        if (!strcmp(w->meta[i].key, key)) return err_set(e, ERR_KEY, "safetensors: metadata key '%s' added twice", key);
    if (grow_array((void **)&w->meta, &w->cap_meta, w->n_meta + 1, 8, sizeof *w->meta))
        return err_set(e, ERR_NOMEM, "safetensors: out of memory");
    StMeta *m = &w->meta[w->n_meta];
    m->key = strdup(key);
    m->value = strdup(value);
    if (!m->key || !m->value) {
        free(m->key);
        free(m->value);
        return err_set(e, ERR_NOMEM, "safetensors: out of memory");
    }
    w->n_meta++;
    return 0;
}

typedef struct {
    char *s;
    size_t n, cap;
    int failed;
} Buf;

static void buf_put(Buf *b, const char *s, size_t n) {
    if (!b->failed && grow_text_append(&b->s, &b->n, &b->cap, s, n)) b->failed = 1;
}

static void buf_puts(Buf *b, const char *s) { buf_put(b, s, strlen(s)); }

// A JSON string as serde_json writes it: \" \\ \b \f \n \r \t, other controls as \u00xx.
static void buf_json_str(Buf *b, const char *s) {
    buf_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        switch (c) {
        case '"': buf_puts(b, "\\\""); break;
        case '\\': buf_puts(b, "\\\\"); break;
        case '\b': buf_puts(b, "\\b"); break;
        case '\f': buf_puts(b, "\\f"); break;
        case '\n': buf_puts(b, "\\n"); break;
        case '\r': buf_puts(b, "\\r"); break;
        case '\t': buf_puts(b, "\\t"); break;
        default:
            if (c < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", c);
                buf_puts(b, esc);
            } else {
                buf_put(b, s, 1);
            }
        }
    }
    buf_put(b, "\"", 1);
}

static int by_rank_name(const void *a, const void *b) {
    const StWriterTensor *x = *(const StWriterTensor *const *)a, *y = *(const StWriterTensor *const *)b;
    int rx = st_rank(x->dtype), ry = st_rank(y->dtype);
    if (rx != ry) return ry - rx;
    return strcmp(x->name, y->name);
}

static int by_key(const void *a, const void *b) { return strcmp(((const StMeta *)a)->key, ((const StMeta *)b)->key); }

int st_write(const StWriter *w, const char *path, Err *e) {
    int n = w->n_tensors;
    const StWriterTensor **order = malloc((size_t)(n ? n : 1) * sizeof *order);
    StMeta *meta = malloc((size_t)(w->n_meta ? w->n_meta : 1) * sizeof *meta);
    if (!order || !meta) {
        free(order);
        free(meta);
        return err_set(e, ERR_NOMEM, "%s: out of memory", path);
    }
    for (int i = 0; i < n; i++) order[i] = &w->tensors[i];
    qsort(order, (size_t)n, sizeof *order, by_rank_name);
    int n_meta = w->n_meta;
    char crc_hex[16];
    if (w->checksum) {  // the data section in file order
        StMeta *m2 = realloc(meta, (size_t)(n_meta + 1) * sizeof *meta);
        if (!m2) {
            free(order);
            free(meta);
            return err_set(e, ERR_NOMEM, "%s: out of memory", path);
        }
        meta = m2;
        uLong crc = crc32(0L, Z_NULL, 0);
        for (int k = 0; k < n; k++)
            for (size_t o = 0; o < order[k]->nbytes; o += 1u << 30) {  // crc32's length is a uInt
                size_t len = order[k]->nbytes - o < (1u << 30) ? order[k]->nbytes - o : (1u << 30);
                crc = crc32(crc, (const Bytef *)order[k]->data + o, (uInt)len);
            }
        snprintf(crc_hex, sizeof crc_hex, "%08lx", (unsigned long)crc);
        meta[n_meta++] = (StMeta){(char *)"effdm.crc32", crc_hex};
    }
    if (w->n_meta) memcpy(meta, w->meta, (size_t)w->n_meta * sizeof *meta);  // w->meta is NULL without metadata
    qsort(meta, (size_t)n_meta, sizeof *meta, by_key);

    Buf h = {0};
    char num[64];
    buf_puts(&h, "{");
    if (n_meta) {
        buf_puts(&h, "\"__metadata__\":{");
        for (int i = 0; i < n_meta; i++) {
            if (i) buf_puts(&h, ",");
            buf_json_str(&h, meta[i].key);
            buf_puts(&h, ":");
            buf_json_str(&h, meta[i].value);
        }
        buf_puts(&h, "}");
    }
    size_t off = 0;
    for (int k = 0; k < n; k++) {
        const StWriterTensor *t = order[k];
        if (k || n_meta) buf_puts(&h, ",");
        buf_json_str(&h, t->name);
        buf_puts(&h, ":{\"dtype\":\"");
        buf_puts(&h, dtype_name(t->dtype));
        buf_puts(&h, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            snprintf(num, sizeof num, d ? ",%" PRId64 : "%" PRId64, t->shape[d]);
            buf_puts(&h, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%zu,%zu]}", off, off + t->nbytes);
        buf_puts(&h, num);
        off += t->nbytes;
    }
    buf_puts(&h, "}");
    while (h.n % 8) buf_puts(&h, " ");  // data starts 8-aligned, as the reference pads
    free(meta);
    if (h.failed) {
        free(order);
        free(h.s);
        return err_set(e, ERR_NOMEM, "%s: out of memory", path);
    }
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)h.n >> (8 * i));
    AtomicFile af;
    if (atomic_open(&af, path, e)) {
        free(order);
        free(h.s);
        return e->code;
    }
    atomic_write(&af, len, 8);
    atomic_write(&af, h.s, h.n);
    for (int k = 0; k < n; k++) atomic_write(&af, order[k]->data, order[k]->nbytes);
    free(order);
    free(h.s);
    return atomic_commit(&af, e);
}

int st_verify(const StFile *f, Err *e) {
    const char *want = st_meta(f, "effdm.crc32");
    if (!want) return 0;
    uLong crc = crc32(0L, Z_NULL, 0);
    for (size_t o = f->data_start; o < f->size; o += 1u << 30) {
        size_t len = f->size - o < (1u << 30) ? f->size - o : (1u << 30);
        crc = crc32(crc, f->base + o, (uInt)len);
    }
    char got[16];
    snprintf(got, sizeof got, "%08lx", (unsigned long)crc);
    if (strcmp(got, want) != 0)
        return err_set(e, ERR_FORMAT, "%s: the data does not match its checksum (effdm.crc32 %s, computed %s): the file "
                       "is corrupt", f->path, want, got);
    return 0;
}

void st_writer_free(StWriter *w) {
    for (int i = 0; i < w->n_tensors; i++) free((char *)w->tensors[i].name);
    for (int i = 0; i < w->n_meta; i++) {
        free(w->meta[i].key);
        free(w->meta[i].value);
    }
    free(w->tensors);
    free(w->meta);
    memset(w, 0, sizeof *w);
}
