/* ckpt.h: PyTorch checkpoints written by torch.save (>= 1.6): a zip archive holding
   <top>/data.pkl (the pickled object, see io/pickle.h) and one entry <top>/data/<key> per
   storage (raw little-endian elements). <top> is whatever torch named it ("archive",
   the file's stem, ...): data.pkl is found by its name, not by the folder.
   Most code uses io/weights.h; this is the layer below it.

       CkptFile f;
       if (ckpt_open(&f, "model.ckpt", &e)) return e.code;
       for (int i = 0; i < f.n_tensors; i++) ... f.tensors[i].name, .dtype, .shape ...
       void *raw = malloc(f.tensors[i].numel * dtype_size(f.tensors[i].dtype));
       if (ckpt_read(&f, i, raw, &e)) ...;          // contiguous, in the tensor's own dtype
       ckpt_close(&f);

   Tensors listed: the entries of the top-level dict's `state_dict` dict when it has one
   (CompVis, Lightning), else the top-level dict's own tensor entries (a plain state dict);
   in the dict's order; a repeated key keeps its first position and its last value, as in
   Python. Other values (optimizer state, hyper-parameters, callbacks) are parsed but not
   listed; `top` describes the top-level keys for `effdm info`.
   Lazy: opening reads the zip directory and data.pkl only; tensor bytes are read by
   ckpt_read, a non-contiguous view (transpose, slice, shared storage) being copied out of
   the smallest span of its storage that holds it.
   Checked at open, for every listed tensor (messages name the file and the tensor): the
   storage type is one we read (else ERR_DTYPE), sizes/strides/offset are non-negative and
   their product fits, the view stays inside its storage, the storage entry exists and
   holds exactly numel x element size bytes, a size its compressed bytes in the archive can
   hold (so a small file cannot claim a huge tensor) (ERR_FORMAT). A broadcast view (stride 0)
   may have more elements than its storage, up to CKPT_MAX_BROADCAST.
   Limitations: the legacy (pre-1.6) formats are ERR_UNSUPPORTED; big-endian archives
   (byteorder "big") are ERR_UNSUPPORTED; complex/quantized/sparse tensors are not read.
*/
#ifndef EFFDM_CKPT_H
#define EFFDM_CKPT_H

#include <stddef.h>
#include <stdint.h>
#include <zip.h>

#include "io/pickle.h"
#include "io/weights.h"

#define CKPT_MAX_BROADCAST ((size_t)1 << 31)
#define CKPT_MAX_DEFLATE_RATIO 1032                   // deflate's largest expansion
#define CKPT_MAX_PICKLE ((size_t)1 << 30)  // data.pkl larger than this is refused (ERR_FORMAT)

typedef struct {
    char *name;
    DType dtype;
    int ndim;
    int64_t shape[WEIGHTS_MAX_DIMS];
    int64_t stride[WEIGHTS_MAX_DIMS];  // in elements
    int64_t offset;                    // first element, in elements of the storage
    size_t numel;
    int storage;                       // index into CkptFile.storages
} CkptTensor;

typedef struct {
    const char *key;     // owned by the pickle document
    DType dtype;
    size_t numel;
    zip_uint64_t entry;  // zip index of <top>/data/<key>
    int stored;          // entry is uncompressed (seekable)
} CkptStorage;

typedef struct {
    char *key;        // the key (non-str keys printed: "<int 3>")
    char desc[160];   // its value: "int 5054", "dict (476 entries)", "object argparse.Namespace", ...
} CkptTopKey;

typedef struct {
    char *path;           // file path, or the name given to ckpt_open_mem
    zip_t *zip;
    size_t archive_size;  // bytes of the whole archive
    char *top;            // "model/": the folder holding data.pkl, with its slash
    PklDoc doc;
    CkptTensor *tensors;
    int n_tensors;
    CkptStorage *storages;
    int n_storages;
    CkptTopKey *top_keys;
    int n_top;
    int from_state_dict;  // tensors are state_dict's entries (1) or the top level's (0)
    int n_other;          // entries of that dict that are not tensors (skipped)
} CkptFile;

// Opens path. 0 or an ERR_ code (ERR_IO, ERR_FORMAT, ERR_DTYPE, ERR_UNSUPPORTED, ERR_NOMEM);
// on error f is freed (ckpt_close is still allowed).
int ckpt_open(CkptFile *f, const char *path, Err *e);
// Same over an in-memory archive; buf must stay valid until ckpt_close. name is used in messages.
int ckpt_open_mem(CkptFile *f, const void *buf, size_t size, const char *name, Err *e);
// Reads tensor i into dst (numel x dtype_size bytes, C order). 0 or ERR_FORMAT (corrupt or
// truncated entry) / ERR_NOMEM.
int ckpt_read(CkptFile *f, int i, void *dst, Err *e);
// Frees everything; accepts a zeroed or failed CkptFile.
void ckpt_close(CkptFile *f);

#endif
