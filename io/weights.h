/* weights.h: one read interface over the tensor files users have: PyTorch `.ckpt` /
   `.pth` (torch.save zip archives: CompVis LDM checkpoints, Lightning training
   checkpoints, plain state dicts) and `.safetensors`. The format is picked by the file's
   magic, never by its extension.

       WeightFile *f;
       if (weights_open(&f, "model.ckpt", &e)) return e.code;
       const WeightInfo *wi = weights_find(f, "model.diffusion_model.out.2.weight");
       float *w = malloc(wi->numel * sizeof(float));
       if (weights_read_f32(f, wi->name, w, 4, (int[]){4, 32, 3, 3}, &e)) ...;  // converted, shape-checked
       weights_close(f);

   Tensor names: for a .ckpt whose top level holds a `state_dict` dict (CompVis, Lightning)
   the names are that dict's keys; for a plain state dict, its keys. Tensors elsewhere in
   the pickle (e.g. optimizer state) are not listed. Tensor data is read on demand (lazily),
   so opening a 2 GB checkpoint does not read 2 GB.
   dtypes: F32, F16, BF16, F64 are converted to float32 by weights_read_f32; integer and
   bool tensors are listed (and read by weights_read_f32 as converted values) as well.
*/
#ifndef EFFDM_WEIGHTS_H
#define EFFDM_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

#define WEIGHTS_MAX_DIMS 8

typedef enum { DT_F32, DT_F16, DT_BF16, DT_F64, DT_I64, DT_I32, DT_I16, DT_I8, DT_U8, DT_BOOL, DT_COUNT } DType;

typedef struct {
    const char *name;       // tensor name (owned by the WeightFile)
    DType dtype;
    int ndim;
    int64_t shape[WEIGHTS_MAX_DIMS];
    size_t numel;
} WeightInfo;

typedef struct WeightFile WeightFile;

// Opens a .ckpt/.pth (zip) or .safetensors file and indexes its tensors. 0 or an ERR_ code
// whose message names the file (and the entry/tensor/key when one is at fault).
int weights_open(WeightFile **f, const char *path, Err *e);
// Closes the file and frees everything; accepts NULL.
void weights_close(WeightFile *f);
// Number of tensors, and the i-th (0 <= i < count) in file order.
int weights_count(const WeightFile *f);
const WeightInfo *weights_info(const WeightFile *f, int i);
// Tensor by exact name, or NULL.
const WeightInfo *weights_find(const WeightFile *f, const char *name);
// Reads tensor `name` as float32 into dst (numel floats). If shape != NULL the tensor's shape
// must equal (ndim, shape): otherwise ERR_SHAPE naming the tensor, expected and found shapes.
// Missing tensor: ERR_KEY naming it. NaN/Inf values: ERR_VALUE naming the tensor.
int weights_read_f32(WeightFile *f, const char *name, float *dst, int ndim, const int *shape, Err *e);
// Path the file was opened from.
const char *weights_path(const WeightFile *f);
// safetensors `__metadata__` value for key, or NULL (always NULL for .ckpt).
const char *weights_metadata(const WeightFile *f, const char *key);
// Name of a dtype ("F32", "BF16", ...).
const char *dtype_name(DType t);

// --- Added with the readers (io/weights.c): memory input, raw reads, what `effdm info` shows.
// Same as weights_open over an in-memory file image, which must stay valid until
// weights_close; name is used in messages. This is what the fuzz targets call.
int weights_open_mem(WeightFile **f, const void *buf, size_t size, const char *name, Err *e);
// Reads tensor `name` in its stored dtype (C order, little-endian): dst_bytes must be
// numel x element size (else ERR_SHAPE). No conversion, no NaN check. ERR_KEY when missing.
int weights_read_raw(WeightFile *f, const char *name, void *dst, size_t dst_bytes, Err *e);
// "pytorch" (a torch.save zip archive) or "safetensors".
const char *weights_format(const WeightFile *f);
// safetensors `__metadata__` entries in header order (0 for .ckpt); key i, value in *value.
int weights_metadata_count(const WeightFile *f);
const char *weights_metadata_key(const WeightFile *f, int i, const char **value);
// Top-level entries of a .ckpt's pickled dict (0 for safetensors): key i, and in *desc a
// one-line description of its value ("int 5054", "dict (476 entries)", "object argparse.Namespace").
int weights_top_count(const WeightFile *f);
const char *weights_top_key(const WeightFile *f, int i, const char **desc);

#endif
