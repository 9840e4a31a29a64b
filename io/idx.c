/* idx.c: idx files (see idx.h). */
#include "io/idx.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

int idx_read_mem(const unsigned char *buf, size_t size, const char *name, IdxArray *a, Err *e) {
    memset(a, 0, sizeof *a);
    if (size < 4) return err_set(e, ERR_FORMAT, "%s: not an idx file: %zu bytes, shorter than the 4-byte magic", name, size);
    if (buf[0] != 0 || buf[1] != 0)
        return err_set(e, ERR_FORMAT, "%s: not an idx file: magic starts with %02x %02x, expected 00 00", name, buf[0],
                       buf[1]);
    int type = buf[2], ndim = buf[3];
    if (type != 0x08)
        return err_set(e, ERR_UNSUPPORTED, "%s: idx data type 0x%02x not supported (expected 0x08, unsigned byte)",
                       name, type);
    if (ndim < 1 || ndim > IDX_MAX_DIMS)
        return err_set(e, ERR_FORMAT, "%s: idx magic gives %d dimensions, expected 1..%d", name, ndim, IDX_MAX_DIMS);
    size_t hdr = 4 + 4 * (size_t)ndim;
    if (size < hdr)
        return err_set(e, ERR_FORMAT, "%s: truncated idx header: %zu bytes, expected %zu for %d dimensions", name, size,
                       hdr, ndim);
    size_t n = 1;
    for (int d = 0; d < ndim; d++) {
        uint32_t s = be32(buf + 4 + 4 * d);
        if (s == 0 || s > 0x7fffffffu)
            return err_set(e, ERR_FORMAT, "%s: idx dimension %d has size %u, expected 1..2147483647", name, d, s);
        if (!size_mul_ok(n, s, &n) || n > IDX_MAX_BYTES)
            return err_set(e, ERR_FORMAT, "%s: idx sizes multiply past %zu bytes (dimension %d)", name, IDX_MAX_BYTES, d);
        a->dims[d] = (int)s;
    }
    if (size - hdr != n) {
        memset(a, 0, sizeof *a);
        return err_set(e, ERR_FORMAT, "%s: idx data has %zu bytes, expected %zu (%s)", name, size - hdr, n,
                       size - hdr < n ? "truncated file" : "trailing bytes");
    }
    a->data = malloc(n);
    if (!a->data) {
        memset(a, 0, sizeof *a);
        return err_set(e, ERR_NOMEM, "%s: cannot allocate %zu bytes", name, n);
    }
    memcpy(a->data, buf + hdr, n);
    a->n = n;
    a->ndim = ndim;
    return 0;
}

int idx_read(const char *path, IdxArray *a, Err *e) {
    memset(a, 0, sizeof *a);
    gzFile gz = gzopen(path, "rb");
    if (!gz) return err_set(e, ERR_IO, "%s: cannot open: %s", path, strerror(errno ? errno : ENOENT));
    size_t cap = (size_t)1 << 20, len = 0;
    unsigned char *buf = malloc(cap);
    int rc = 0;
    if (!buf) {
        rc = err_set(e, ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (;;) {
        if (len == cap) {
            if (cap >= IDX_MAX_BYTES + 64) {
                rc = err_set(e, ERR_FORMAT, "%s: more than %zu bytes of data (not an idx file?)", path, IDX_MAX_BYTES);
                goto done;
            }
            unsigned char *nb = realloc(buf, cap * 2);
            if (!nb) {
                rc = err_set(e, ERR_NOMEM, "%s: out of memory at %zu bytes", path, cap * 2);
                goto done;
            }
            buf = nb;
            cap *= 2;
        }
        size_t want = cap - len > (1u << 30) ? (1u << 30) : cap - len;
        int got = gzread(gz, buf + len, (unsigned)want);
        if (got < 0) {
            int zerr;
            const char *msg = gzerror(gz, &zerr);
            rc = err_set(e, zerr == Z_ERRNO ? ERR_IO : ERR_FORMAT, "%s: %s after %zu bytes: %s", path,
                         zerr == Z_ERRNO ? "read error" : "corrupt gzip data", len,
                         zerr == Z_ERRNO ? strerror(errno) : msg);
            goto done;
        }
        if (got == 0) break;
        len += (size_t)got;
    }
    // gzread reports a gzip stream cut short as end of data plus Z_BUF_ERROR
    int zerr = Z_OK;
    gzerror(gz, &zerr);
    if (zerr != Z_OK && zerr != Z_STREAM_END) {
        rc = err_set(e, ERR_FORMAT, "%s: truncated or corrupt gzip data after %zu bytes", path, len);
        goto done;
    }
    rc = idx_read_mem(buf, len, path, a, e);
done:
    free(buf);
    gzclose(gz);
    return rc;
}

void idx_free(IdxArray *a) {
    free(a->data);
    memset(a, 0, sizeof *a);
}
