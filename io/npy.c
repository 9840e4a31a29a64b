#include "io/npy.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/fileio.h"

// Finds 'key': in the header dict and returns the text after the colon (skipping spaces).
static const char *npy_header_value(const char *hdr, const char *key) {
    const char *p = strstr(hdr, key);
    if (!p) return NULL;
    p += strlen(key);
    while (*p == ' ' || *p == ':') p++;
    return p;
}

int npy_read_mem(const unsigned char *buf, size_t size, const char *name, NpyArray *a, Err *e) {
    memset(a, 0, sizeof *a);
    if (size < 10 || memcmp(buf, "\x93NUMPY", 6) != 0)
        return err_set(e, ERR_FORMAT, "%s: not a .npy file (bad magic)", name);
    int major = buf[6];
    size_t hlen, hstart;
    if (major == 1) {
        hlen = (size_t)buf[8] | ((size_t)buf[9] << 8);
        hstart = 10;
    } else if (major == 2 || major == 3) {
        if (size < 12) return err_set(e, ERR_FORMAT, "%s: truncated .npy header", name);
        hlen = (size_t)buf[8] | ((size_t)buf[9] << 8) | ((size_t)buf[10] << 16) | ((size_t)buf[11] << 24);
        hstart = 12;
    } else {
        return err_set(e, ERR_UNSUPPORTED, "%s: .npy format version %d not supported", name, major);
    }
    if (hlen > size - hstart) return err_set(e, ERR_FORMAT, "%s: .npy header runs past the end of the file", name);
    char hdr[4096];
    if (hlen >= sizeof hdr) return err_set(e, ERR_FORMAT, "%s: .npy header too long (%zu bytes)", name, hlen);
    memcpy(hdr, buf + hstart, hlen);
    hdr[hlen] = '\0';

    const char *descr = npy_header_value(hdr, "'descr'");
    const char *fortran = npy_header_value(hdr, "'fortran_order'");
    const char *shape = npy_header_value(hdr, "'shape'");
    if (!descr || !fortran || !shape) return err_set(e, ERR_FORMAT, "%s: .npy header lacks descr/fortran_order/shape", name);
    if (strncmp(fortran, "False", 5) != 0) return err_set(e, ERR_DTYPE, "%s: Fortran-order .npy arrays are not supported", name);

    int kind;  // 0 f4, 1 f8, 2 i8, 3 i4, 4 u1/b1
    size_t esize;
    if (!strncmp(descr, "'<f4'", 5)) { kind = 0; esize = 4; }
    else if (!strncmp(descr, "'<f8'", 5)) { kind = 1; esize = 8; }
    else if (!strncmp(descr, "'<i8'", 5)) { kind = 2; esize = 8; }
    else if (!strncmp(descr, "'<i4'", 5)) { kind = 3; esize = 4; }
    else if (!strncmp(descr, "'|u1'", 5) || !strncmp(descr, "'|b1'", 5)) { kind = 4; esize = 1; }
    else return err_set(e, ERR_DTYPE, "%s: .npy dtype %.8s not supported (expected <f4, <f8, <i8, <i4, |u1)", name, descr);

    if (*shape != '(') return err_set(e, ERR_FORMAT, "%s: .npy shape is not a tuple", name);
    const char *p = shape + 1;
    size_t n = 1;
    int nd = 0;
    for (;;) {
        while (*p == ' ' || *p == ',') p++;
        if (*p == ')') break;
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p || v < 0 || v > INT32_MAX) return err_set(e, ERR_FORMAT, "%s: bad .npy shape entry", name);
        if (nd == NPY_MAX_DIMS) return err_set(e, ERR_FORMAT, "%s: .npy has more than %d dims", name, NPY_MAX_DIMS);
        a->shape[nd++] = (int)v;
        if (!size_mul_ok(n, (size_t)v, &n)) return err_set(e, ERR_FORMAT, "%s: .npy shape overflows", name);
        p = end;
    }
    a->ndim = nd;
    size_t bytes, dstart = hstart + hlen;
    if (!size_mul_ok(n, esize, &bytes) || bytes > size - dstart)
        return err_set(e, ERR_FORMAT, "%s: .npy data truncated (need %zu elements)", name, n);
    a->data = malloc((n ? n : 1) * sizeof(float));
    if (!a->data) return err_set(e, ERR_NOMEM, "%s: cannot allocate %zu floats", name, n);
    a->n = n;
    const unsigned char *d = buf + dstart;
    for (size_t i = 0; i < n; i++) {
        switch (kind) {
        case 0: { float v; memcpy(&v, d + 4 * i, 4); a->data[i] = v; break; }
        case 1: { double v; memcpy(&v, d + 8 * i, 8); a->data[i] = (float)v; break; }
        case 2: { int64_t v; memcpy(&v, d + 8 * i, 8); a->data[i] = (float)v; break; }
        case 3: { int32_t v; memcpy(&v, d + 4 * i, 4); a->data[i] = (float)v; break; }
        default: a->data[i] = (float)d[i]; break;
        }
    }
    return 0;
}

int npy_read(const char *path, NpyArray *a, Err *e) {
    memset(a, 0, sizeof *a);
    unsigned char *buf;
    size_t size;
    int rc = file_read_all(path, &buf, &size, e);
    if (rc) return rc;
    rc = npy_read_mem(buf, size, path, a, e);
    free(buf);
    return rc;
}

int npy_write(const char *path, const float *data, int ndim, const int *shape, Err *e) {
    char hdr[256];
    int k = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        k += snprintf(hdr + k, sizeof hdr - (size_t)k, ndim == 1 ? "%d," : (i ? ", %d" : "%d"), shape[i]);
        n *= (size_t)shape[i];
    }
    k += snprintf(hdr + k, sizeof hdr - (size_t)k, "), }");
    // pad with spaces so that magic(6) + version(2) + len(2) + header ends on a 64-byte boundary
    int total = 10 + k + 1;
    int pad = (64 - total % 64) % 64;
    memset(hdr + k, ' ', (size_t)pad);
    k += pad;
    hdr[k++] = '\n';
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(k & 0xff), (unsigned char)(k >> 8)};
    AtomicFile f;
    if (atomic_open(&f, path, e)) return e->code;
    atomic_write(&f, pre, sizeof pre);
    atomic_write(&f, hdr, (size_t)k);
    atomic_write(&f, data, n * sizeof(float));
    return atomic_commit(&f, e);
}

void npy_free(NpyArray *a) {
    free(a->data);
    memset(a, 0, sizeof *a);
}
