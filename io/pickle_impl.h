/* pickle_impl.h: internals shared by pickle.c (the opcode machine) and pickle_torch.c
   (what torch's callables and persistent ids become). Not a public interface. */
#ifndef EFFDM_PICKLE_IMPL_H
#define EFFDM_PICKLE_IMPL_H

#include "io/pickle.h"

typedef struct {
    const unsigned char *buf;
    size_t size, pos;
    size_t op_pos;  // offset of the opcode being run, for messages
    const char *name;
    Err *e;
    PklDoc *d;
    PklValue **stack;
    size_t sp, stack_cap;
    size_t *marks;  // stack heights at each outstanding MARK (CPython's metastack)
    size_t n_marks, marks_cap;
    PklValue **memo;
    size_t memo_cap, memo_count;
} Parser;

// ERR_FORMAT "<name>: offset N: <what>"; returns the code.
int pkl_perr(Parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// A new value owned by the document (NULL and e set when out of memory).
PklValue *pkl_newval(Parser *p, PklType t);
// A NUL-terminated copy of n bytes (NULL and e set when out of memory).
char *pkl_dupbytes(Parser *p, const unsigned char *s, size_t n);
// Appends k: v to dict c. 0 or an ERR_ code (depth limit, memory).
int pkl_dict_add(Parser *p, PklValue *c, PklValue *k, PklValue *v);
// A tuple/list/set of n items (items may be NULL when n == 0).
PklValue *pkl_make_seq(Parser *p, PklType t, PklValue **items, size_t n);
// 1 when v is the str s / the class module.name.
int pkl_is_str(const PklValue *v, const char *s);
int pkl_is_cls(const PklValue *v, const char *module, const char *name);
// An opaque instance of class cls.
PklValue *pkl_make_object(Parser *p, const PklValue *cls);

// pickle_torch.c: REDUCE fn(*args), NEWOBJ cls(*args), BINPERSID pid. NULL with e set on error.
PklValue *pkl_reduce(Parser *p, const PklValue *fn, const PklValue *args);
PklValue *pkl_newobj(Parser *p, const PklValue *cls, const char *op);
PklValue *pkl_persistent_load(Parser *p, const PklValue *pid);

#endif
