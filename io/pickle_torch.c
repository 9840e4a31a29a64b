/* pickle_torch.c: what torch.save's callables and persistent ids become (see pickle.h):
   torch/serialization.py (persistent_id, _load's persistent_load) and torch/_utils.py
   (_rebuild_tensor_v2, _rebuild_parameter). Nothing is imported or called. */
#include <string.h>

#include "io/pickle_impl.h"
#include "io/weights.h"

static const struct { const char *name; int dtype; } storage_types[] = {
    {"FloatStorage", DT_F32}, {"HalfStorage", DT_F16},  {"BFloat16Storage", DT_BF16}, {"DoubleStorage", DT_F64},
    {"LongStorage", DT_I64},  {"IntStorage", DT_I32},   {"ShortStorage", DT_I16},     {"CharStorage", DT_I8},
    {"ByteStorage", DT_U8},   {"BoolStorage", DT_BOOL}, {"UntypedStorage", DT_U8},
};

// BINPERSID: torch.serialization's persistent_id for storages:
// ('storage', storage_type, key, location, numel).
PklValue *pkl_persistent_load(Parser *p, const PklValue *pid) {
    if (pid->type != PKL_TUPLE || pid->u.seq.n < 5 || !pkl_is_str(pid->u.seq.items[0], "storage")) {
        pkl_perr(p, "BINPERSID: persistent id is not a ('storage', type, key, location, numel) tuple");
        return NULL;
    }
    PklValue **a = pid->u.seq.items;
    if (a[1]->type != PKL_GLOBAL || strncmp(a[1]->u.cls.module, "torch", 5) != 0 || a[2]->type != PKL_STR ||
        a[3]->type != PKL_STR || a[4]->type != PKL_INT || a[4]->u.i < 0) {
        pkl_perr(p, "BINPERSID: storage id fields are not (torch class, str key, str location, int numel >= 0)");
        return NULL;
    }
    PklValue *v = pkl_newval(p, PKL_STORAGE);
    if (!v) return NULL;
    PklStorage *s = &v->u.storage;
    s->dtype = -1;
    for (size_t i = 0; i < sizeof storage_types / sizeof storage_types[0]; i++)
        if (!strcmp(a[1]->u.cls.name, storage_types[i].name)) s->dtype = storage_types[i].dtype;
    s->type_name = pkl_dupbytes(p, (const unsigned char *)a[1]->u.cls.name, strlen(a[1]->u.cls.name));
    s->key = pkl_dupbytes(p, (const unsigned char *)a[2]->u.str.s, a[2]->u.str.len);
    s->location = pkl_dupbytes(p, (const unsigned char *)a[3]->u.str.s, a[3]->u.str.len);
    if (!s->type_name || !s->key || !s->location) return NULL;
    s->numel = a[4]->u.i;
    return v;
}

static int int_tuple(const PklValue *v, int64_t *out, int *n) {
    if (v->type != PKL_TUPLE && v->type != PKL_LIST) return -1;
    if (v->u.seq.n > PKL_MAX_DIMS) return -2;
    for (size_t i = 0; i < v->u.seq.n; i++) {
        if (v->u.seq.items[i]->type != PKL_INT) return -1;
        out[i] = v->u.seq.items[i]->u.i;
    }
    *n = (int)v->u.seq.n;
    return 0;
}

// _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
// and the older _rebuild_tensor(storage, storage_offset, size, stride).
static PklValue *rebuild_tensor(Parser *p, const char *fn, const PklValue *args) {
    PklValue **a = args->u.seq.items;
    if (args->u.seq.n < 4) { pkl_perr(p, "%s: %zu arguments, expected at least 4", fn, args->u.seq.n); return NULL; }
    if (a[0]->type != PKL_STORAGE) { pkl_perr(p, "%s: argument 0 is a %s, expected a storage", fn, pkl_type_name(a[0]->type)); return NULL; }
    if (a[1]->type != PKL_INT) { pkl_perr(p, "%s: storage_offset is a %s, expected an int", fn, pkl_type_name(a[1]->type)); return NULL; }
    PklValue *v = pkl_newval(p, PKL_TENSOR);
    if (!v) return NULL;
    PklTensor *t = &v->u.tensor;
    int nd_size = 0, nd_stride = 0;
    int rs = int_tuple(a[2], t->size, &nd_size), rt = int_tuple(a[3], t->stride, &nd_stride);
    if (rs == -2 || rt == -2) { pkl_perr(p, "%s: more than %d dims", fn, PKL_MAX_DIMS); return NULL; }
    if (rs || rt) { pkl_perr(p, "%s: size and stride must be tuples of ints", fn); return NULL; }
    if (nd_size != nd_stride) { pkl_perr(p, "%s: size has %d dims, stride %d", fn, nd_size, nd_stride); return NULL; }
    t->storage = a[0];
    t->offset = a[1]->u.i;
    t->ndim = nd_size;
    return v;
}

// REDUCE callable(*args): the few callables torch.save uses are interpreted, everything
// else becomes an opaque object of that class.
PklValue *pkl_reduce(Parser *p, const PklValue *fn, const PklValue *args) {
    if (fn->type != PKL_GLOBAL) { pkl_perr(p, "REDUCE: callable is a %s, expected a class or function", pkl_type_name(fn->type)); return NULL; }
    if (args->type != PKL_TUPLE) { pkl_perr(p, "REDUCE: arguments are a %s, expected a tuple", pkl_type_name(args->type)); return NULL; }
    size_t n = args->u.seq.n;
    PklValue **a = args->u.seq.items;
    if (pkl_is_cls(fn, "torch._utils", "_rebuild_tensor_v2")) return rebuild_tensor(p, "_rebuild_tensor_v2", args);
    if (pkl_is_cls(fn, "torch._utils", "_rebuild_tensor")) return rebuild_tensor(p, "_rebuild_tensor", args);
    if ((pkl_is_cls(fn, "torch._utils", "_rebuild_parameter") || pkl_is_cls(fn, "torch._utils", "_rebuild_parameter_with_state")) && n >= 1)
        return a[0];
    if (pkl_is_cls(fn, "torch", "Size") && n == 1 && (a[0]->type == PKL_TUPLE || a[0]->type == PKL_LIST))
        return pkl_make_seq(p, PKL_TUPLE, a[0]->u.seq.items, a[0]->u.seq.n);
    if (pkl_is_cls(fn, "collections", "OrderedDict")) {
        PklValue *d = pkl_newval(p, PKL_DICT);
        if (!d) return NULL;
        // OrderedDict([(k, v), ...]) (Python 2 era reduce); Python 3 sends () + SETITEMS
        if (n == 1 && (a[0]->type == PKL_LIST || a[0]->type == PKL_TUPLE)) {
            for (size_t i = 0; i < a[0]->u.seq.n; i++) {
                const PklValue *kv = a[0]->u.seq.items[i];
                if ((kv->type != PKL_TUPLE && kv->type != PKL_LIST) || kv->u.seq.n != 2) {
                    pkl_perr(p, "OrderedDict: item %zu is not a (key, value) pair", i);
                    return NULL;
                }
                if (pkl_dict_add(p, d, kv->u.seq.items[0], kv->u.seq.items[1])) return NULL;
            }
        }
        return d;
    }
    return pkl_make_object(p, fn);
}

PklValue *pkl_newobj(Parser *p, const PklValue *cls, const char *op) {
    if (cls->type != PKL_GLOBAL) { pkl_perr(p, "%s: class is a %s", op, pkl_type_name(cls->type)); return NULL; }
    if (pkl_is_cls(cls, "collections", "OrderedDict")) return pkl_newval(p, PKL_DICT);
    return pkl_make_object(p, cls);
}

