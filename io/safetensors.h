/* safetensors.h: read and write .safetensors files: an 8-byte little-endian header
   length N, N bytes of JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets":
   [begin, end]}, ..., "__metadata__": {"key": "value", ...}}, then the data section
   (offsets are relative to its start; little-endian, C order).
   Most code uses io/weights.h; this is the layer below it, plus the writer.

       StFile f;
       if (st_open(&f, "model.safetensors", &e)) return e.code;     // mmap'ed, data read on demand
       const StTensor *t = &f.tensors[i];  const void *raw = st_data(&f, i);
       st_close(&f);

       StWriter w = {0};
       st_writer_add(&w, "w", DT_F32, 2, (int64_t[]){3, 4}, data, &e);   // data kept by the caller until st_write
       st_writer_meta(&w, "effdm.format", "1", &e);
       if (st_write(&w, "out.safetensors", &e)) ...;                     // path.tmp + rename
       st_writer_free(&w);

   Reader checks (as the reference implementation, huggingface/safetensors): N <= 100 MB and
   inside the file; the header is a JSON object; every tensor has a dtype among F32 F16
   BF16 F64 I64 I32 I16 I8 U8 BOOL (other names: ERR_DTYPE naming the tensor), a shape of
   non-negative integers (at most WEIGHTS_MAX_DIMS) and data_offsets [begin, end] with
   end - begin == numel x element size; the tensors, sorted by offset, tile the data
   section exactly (no overlap, no gap, nothing after the last): ERR_FORMAT naming the
   tensor(s). Repeated names are ERR_FORMAT. `__metadata__` must map strings to strings.
   Tensors are listed by offset (file order).
   Writer: tensors sorted as the reference does (dtype alignment descending, then name by
   bytes), compact JSON with `__metadata__` first (keys sorted), the header padded with
   spaces to a multiple of 8 bytes, so data offsets stay aligned.
*/
#ifndef EFFDM_SAFETENSORS_H
#define EFFDM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "io/weights.h"

#define ST_MAX_HEADER 100000000u

typedef struct {
    char *name;
    DType dtype;
    int ndim;
    int64_t shape[WEIGHTS_MAX_DIMS];
    size_t numel;
    size_t begin, end;  // byte offsets in the data section
} StTensor;

typedef struct {
    char *key, *value;
} StMeta;

typedef struct {
    char *path;                 // file path or the name given to st_open_mem
    const unsigned char *base;  // the whole file (mmap'ed, or the caller's buffer)
    size_t size;
    int mapped;
    size_t data_start;          // 8 + N
    StTensor *tensors;          // sorted by offset
    int n_tensors;
    StMeta *meta;               // `__metadata__`, in header order
    int n_meta;
} StFile;

// Maps path and parses its header. 0 or ERR_IO / ERR_FORMAT / ERR_DTYPE / ERR_NOMEM with a
// message naming the file (and the tensor at fault). On error f is freed.
int st_open(StFile *f, const char *path, Err *e);
// Same over a buffer that must outlive f (name is used in messages).
int st_open_mem(StFile *f, const void *buf, size_t size, const char *name, Err *e);
// Raw little-endian bytes of tensor i (tensors[i].end - begin bytes; not aligned in general).
const void *st_data(const StFile *f, int i);
// Value of metadata key, or NULL.
const char *st_meta(const StFile *f, const char *key);
// Unmaps and frees; accepts a zeroed or failed StFile.
void st_close(StFile *f);

typedef struct {
    const char *name;  // copied: owned by the writer
    DType dtype;
    int ndim;
    int64_t shape[WEIGHTS_MAX_DIMS];
    size_t nbytes;
    const void *data;  // the caller's, until st_write returns
} StWriterTensor;

typedef struct {
    StWriterTensor *tensors;
    int n_tensors, cap_tensors;
    StMeta *meta;
    int n_meta, cap_meta;
    int checksum;  // 1: st_write adds metadata effdm.crc32 (st_verify checks it)
} StWriter;

// Adds a tensor (numel x dtype_size bytes at data, C order). ERR_KEY for a repeated or
// empty name or "__metadata__", ERR_SHAPE for a bad shape, ERR_NOMEM.
int st_writer_add(StWriter *w, const char *name, DType dtype, int ndim, const int64_t *shape, const void *data, Err *e);
// Adds a metadata entry (both strings copied). ERR_KEY for a repeated key.
int st_writer_meta(StWriter *w, const char *key, const char *value, Err *e);
// Writes everything to path atomically (path.tmp, checked writes, rename). 0 or ERR_IO/ERR_NOMEM.
int st_write(const StWriter *w, const char *path, Err *e);
// With metadata effdm.crc32 (a writer with .checksum = 1 adds it: the zlib CRC-32 of the
// data section, 8 hex digits), checks the data against it: ERR_FORMAT naming the file when
// they differ (a disk or copy error, a torn write). 0 without the key.
int st_verify(const StFile *f, Err *e);
// Frees the writer (not the tensors' data); accepts a zeroed writer.
void st_writer_free(StWriter *w);

#endif
