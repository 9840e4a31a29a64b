/* idx.h: MNIST / Fashion-MNIST "idx" files (Y. LeCun's format), plain or gzip'ed, e.g.
   Debian's dataset-fashion-mnist: /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz.

       IdxArray a; Err e = {0};
       if (idx_read(path, &a, &e)) return e.code;     // e.msg names the file and the field
       ... a.data[i] (uint8), a.ndim, a.dims[0..ndim): images (N, 28, 28), labels (N) ...
       idx_free(&a);

   Format: 4-byte magic {0, 0, type, ndim}, ndim big-endian uint32 sizes, then the data
   row-major. Supported: type 0x08 (unsigned byte), 1 <= ndim <= IDX_MAX_DIMS; every size
   >= 1. Checked before allocating: magic, type, ndim, sizes (product through overflow
   checks, at most IDX_MAX_BYTES), and that the data has exactly the product of the sizes
   bytes (a truncated file or trailing bytes are ERR_FORMAT). Other types: ERR_UNSUPPORTED.
   Gzip: idx_read goes through zlib's gzread, which reads plain files unchanged, so both
   `x-idx3-ubyte` and `x-idx3-ubyte.gz` work; a corrupt gzip stream is ERR_FORMAT.
*/
#ifndef EFFDM_IDX_H
#define EFFDM_IDX_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

#define IDX_MAX_DIMS 4
#define IDX_MAX_BYTES ((size_t)1 << 31)  // 2 GiB of decompressed data

typedef struct {
    uint8_t *data;  // malloc'ed, n bytes
    size_t n;
    int ndim;
    int dims[IDX_MAX_DIMS];
} IdxArray;

// Reads (and gunzips when needed) path. 0 or an ERR_ code (ERR_IO: cannot open/read).
int idx_read(const char *path, IdxArray *a, Err *e);
// Parses an uncompressed idx image in memory (name is used in messages). 0 or an ERR_ code.
int idx_read_mem(const unsigned char *buf, size_t size, const char *name, IdxArray *a, Err *e);
// Frees a->data; accepts a zeroed array.
void idx_free(IdxArray *a);

#endif
