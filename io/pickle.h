/* pickle.h: the subset of Python's pickle format that torch.save writes (protocols 2-5),
   parsed into a tree of values without running anything.

       PklDoc d;
       if (pkl_parse(&d, buf, size, "model.ckpt: model/data.pkl", &e)) return e.code;
       const PklValue *sd = pkl_dict_get(d.root, "state_dict");   // NULL if absent
       ... sd->u.dict.vals[i]->type == PKL_TENSOR ...
       pkl_free(&d);

   What becomes what:
   - None, bool, int (up to 64 bits; longer ones are PKL_BIGINT, kept as raw bytes), float,
     str, bytes, tuple, list, dict, set/frozenset (as PKL_SET);
   - torch._utils._rebuild_tensor_v2 / _rebuild_tensor (storage, storage_offset, size,
     stride, ...) -> PKL_TENSOR: the view as saved (offset and strides in elements) and
     the storage it views; torch._utils._rebuild_parameter(_with_state) -> its tensor;
   - persistent ids ('storage', torch.<T>Storage, key, location, numel) -> PKL_STORAGE
     (dtype -1 for storage types effdm has no DType for, e.g. complex);
   - collections.OrderedDict -> dict, torch.Size -> tuple;
   - any other class (Lightning callbacks, optimizer objects, argparse.Namespace, numpy
     scalars, ...) -> PKL_OBJECT with its "module.name": opaque, its arguments and state
     are dropped, so the rest of the file still loads. Nothing is imported or called.
   Tensor views are only checked for shape sanity here (at most PKL_MAX_DIMS dims, Python
   ints); io/ckpt.c checks them against their storage, where the tensor's name is known.

   Limits against hostile input: nesting depth (containers in containers, and MARKs
   outstanding) at most PKL_MAX_DEPTH -> ERR_FORMAT; memo indexes at most the offset they
   appear at (a memo array never outgrows the input); every length is checked against the
   bytes left; every value is created by one opcode, so memory is O(input size).
   Values may be shared (memo) and containers may even contain themselves: walk them with
   care (nothing here recurses).
   Errors: ERR_FORMAT "<name>: offset N: <what>" (truncation, stack underflow, bad memo
   index, unsupported opcode, malformed tensor arguments); ERR_NOMEM.
*/
#ifndef EFFDM_PICKLE_H
#define EFFDM_PICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

#define PKL_MAX_DIMS 8
#define PKL_MAX_DEPTH 200

typedef enum {
    PKL_NONE,
    PKL_BOOL,
    PKL_INT,
    PKL_BIGINT,   // more than 64 bits: u.str holds the little-endian two's complement bytes
    PKL_FLOAT,
    PKL_STR,      // u.str, UTF-8 as stored (NUL-terminated copy; may hold NULs inside)
    PKL_BYTES,    // u.str
    PKL_TUPLE,    // u.seq
    PKL_LIST,     // u.seq
    PKL_SET,      // u.seq
    PKL_DICT,     // u.dict (insertion order; a repeated key appears twice, the last one wins)
    PKL_GLOBAL,   // u.cls: a class or function reference (module, name)
    PKL_OBJECT,   // u.cls: an instance of a class we do not interpret
    PKL_STORAGE,  // u.storage
    PKL_TENSOR,   // u.tensor
    PKL_TYPE_COUNT
} PklType;

typedef struct PklValue PklValue;

typedef struct {
    char *type_name;  // "FloatStorage", ...
    int dtype;        // a DType (io/weights.h), or -1 for a storage type we do not read
    char *key;        // the archive entry is <top>/data/<key>
    char *location;   // "cpu", "cuda:0", ...
    int64_t numel;    // elements of dtype
} PklStorage;

typedef struct {
    PklValue *storage;  // a PKL_STORAGE value
    int64_t offset;     // in elements
    int ndim;
    int64_t size[PKL_MAX_DIMS];
    int64_t stride[PKL_MAX_DIMS];  // in elements
} PklTensor;

struct PklValue {
    PklType type;
    int depth;  // 1 for a scalar, 1 + the deepest item for a container
    union {
        int64_t i;  // PKL_INT, PKL_BOOL
        double f;
        struct { char *s; size_t len; } str;
        struct { PklValue **items; size_t n, cap; } seq;
        struct { PklValue **keys, **vals; size_t n, cap; } dict;
        struct { char *module, *name; } cls;
        PklStorage storage;
        PklTensor tensor;
    } u;
};

typedef struct {
    PklValue *root;     // what STOP returned
    int protocol;       // from the PROTO opcode (0 when absent)
    PklValue **all;     // every value created, for pkl_free
    size_t n_all, cap_all;
} PklDoc;

// Parses buf (size bytes) into d. name prefixes every message. 0 or an ERR_ code; on error
// d is left empty (pkl_free is still allowed).
int pkl_parse(PklDoc *d, const unsigned char *buf, size_t size, const char *name, Err *e);
// Frees every value of d; accepts a zeroed or failed document.
void pkl_free(PklDoc *d);
// Value of str key in dict d (the last one if repeated), or NULL (also when d is not a dict).
const PklValue *pkl_dict_get(const PklValue *d, const char *key);
// "dict", "int", "str", ... (for messages and `effdm info`).
const char *pkl_type_name(PklType t);

#endif
