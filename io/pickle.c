/* pickle.c: a stack machine over the pickle opcodes torch.save emits (see pickle.h); the
   torch callables (REDUCE, NEWOBJ, BINPERSID) are interpreted in pickle_torch.c.
   Opcode semantics follow CPython's Modules/_pickle.c (load_* functions) and
   Lib/pickletools.py; torch specifics follow torch/serialization.py (_load,
   persistent_load) and torch/_utils.py (_rebuild_tensor_v2). */
#include "io/pickle.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/pickle_impl.h"

int pkl_perr(Parser *p, const char *fmt, ...) {
    char what[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return err_set(p->e, ERR_FORMAT, "%s: offset %zu: %s", p->name, p->op_pos, what);
}

static int nomem(Parser *p) { return err_set(p->e, ERR_NOMEM, "%s: out of memory while parsing the pickle", p->name); }

// Grows *arr (elements of elsize) to hold at least need; 0 or -1.
static int grow(void **arr, size_t *cap, size_t need, size_t elsize) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 8;
    while (n < need) {
        if (n > SIZE_MAX / 2 / elsize) return -1;
        n *= 2;
    }
    void *a = realloc(*arr, n * elsize);
    if (!a) return -1;
    *arr = a;
    *cap = n;
    return 0;
}

PklValue *pkl_newval(Parser *p, PklType t) {
    if (grow((void **)&p->d->all, &p->d->cap_all, p->d->n_all + 1, sizeof(PklValue *))) { nomem(p); return NULL; }
    PklValue *v = calloc(1, sizeof *v);
    if (!v) { nomem(p); return NULL; }
    v->type = t;
    v->depth = 1;
    p->d->all[p->d->n_all++] = v;
    return v;
}

char *pkl_dupbytes(Parser *p, const unsigned char *s, size_t n) {
    char *c = malloc(n + 1);
    if (!c) { nomem(p); return NULL; }
    memcpy(c, s, n);
    c[n] = '\0';
    return c;
}

// --- input ---

static int need(Parser *p, size_t n, const char *what) {
    if (n > p->size - p->pos)
        return pkl_perr(p, "truncated: %s needs %zu bytes, %zu left", what, n, p->size - p->pos);
    return 0;
}

static uint64_t rd_le(Parser *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= (uint64_t)p->buf[p->pos + (size_t)i] << (8 * i);
    p->pos += (size_t)n;
    return v;
}

// --- stack ---

static size_t fence(const Parser *p) { return p->n_marks ? p->marks[p->n_marks - 1] : 0; }

static int push(Parser *p, PklValue *v) {
    if (!v) return p->e->code ? p->e->code : nomem(p);
    if (grow((void **)&p->stack, &p->stack_cap, p->sp + 1, sizeof(PklValue *))) return nomem(p);
    p->stack[p->sp++] = v;
    return 0;
}

static PklValue *pop(Parser *p, const char *op) {
    if (p->sp <= fence(p)) { pkl_perr(p, "%s: stack underflow", op); return NULL; }
    return p->stack[--p->sp];
}

static PklValue *top(Parser *p, const char *op) {
    if (p->sp <= fence(p)) { pkl_perr(p, "%s: stack underflow", op); return NULL; }
    return p->stack[p->sp - 1];
}

// The items above stack height start (no pointer arithmetic on an empty, NULL stack).
static PklValue **items_from(Parser *p, size_t start) { return p->sp > start ? p->stack + start : NULL; }

// Pops the innermost MARK; the items above it are stack[*start .. sp).
static int pop_mark(Parser *p, const char *op, size_t *start) {
    if (!p->n_marks) return pkl_perr(p, "%s without a MARK", op);
    *start = p->marks[--p->n_marks];
    return 0;
}

// --- containers ---

static int deepen(Parser *p, PklValue *c, const PklValue *item) {
    if (item->depth + 1 > c->depth) c->depth = item->depth + 1;
    if (c->depth > PKL_MAX_DEPTH) return pkl_perr(p, "containers nested deeper than %d", PKL_MAX_DEPTH);
    return 0;
}

static int seq_add(Parser *p, PklValue *c, PklValue *item) {
    if (grow((void **)&c->u.seq.items, &c->u.seq.cap, c->u.seq.n + 1, sizeof(PklValue *))) return nomem(p);
    c->u.seq.items[c->u.seq.n++] = item;
    return deepen(p, c, item);
}

int pkl_dict_add(Parser *p, PklValue *c, PklValue *k, PklValue *v) {
    size_t cap = c->u.dict.cap;
    if (grow((void **)&c->u.dict.keys, &cap, c->u.dict.n + 1, sizeof(PklValue *))) return nomem(p);
    cap = c->u.dict.cap;
    if (grow((void **)&c->u.dict.vals, &cap, c->u.dict.n + 1, sizeof(PklValue *))) return nomem(p);
    c->u.dict.cap = cap;
    c->u.dict.keys[c->u.dict.n] = k;
    c->u.dict.vals[c->u.dict.n++] = v;
    if (deepen(p, c, k)) return p->e->code;
    return deepen(p, c, v);
}

// SETITEM(S) target: a dict, or an opaque object (whose items are dropped).
static int set_items(Parser *p, PklValue *target, PklValue **kv, size_t n, const char *op) {
    if (n % 2) return pkl_perr(p, "%s with an odd number of items (%zu)", op, n);
    if (target->type == PKL_OBJECT) return 0;
    if (target->type != PKL_DICT) return pkl_perr(p, "%s on a %s, expected a dict", op, pkl_type_name(target->type));
    for (size_t i = 0; i < n; i += 2)
        if (pkl_dict_add(p, target, kv[i], kv[i + 1])) return p->e->code;
    return 0;
}

// APPEND(S) to a list, ADDITEMS to a set (want), or to an opaque object (dropped).
static int append_items(Parser *p, PklValue *target, PklValue **items, size_t n, const char *op, PklType want) {
    if (target->type == PKL_OBJECT) return 0;
    if (target->type != want) return pkl_perr(p, "%s on a %s, expected a %s", op, pkl_type_name(target->type), pkl_type_name(want));
    for (size_t i = 0; i < n; i++)
        if (seq_add(p, target, items[i])) return p->e->code;
    return 0;
}

PklValue *pkl_make_seq(Parser *p, PklType t, PklValue **items, size_t n) {
    PklValue *v = pkl_newval(p, t);
    if (!v) return NULL;
    for (size_t i = 0; i < n; i++)
        if (seq_add(p, v, items[i])) return NULL;
    return v;
}

// --- memo ---

static int memo_put(Parser *p, uint64_t idx, const char *op) {
    // A well-formed pickle numbers its memo from 0 with one opcode per entry, so an index
    // past the current offset is corrupt; this also bounds the memo array by the input size.
    if (idx > p->op_pos) return pkl_perr(p, "%s %llu: memo index larger than the pickle offset", op, (unsigned long long)idx);
    PklValue *v = top(p, op);
    if (!v) return p->e->code;
    if (idx >= p->memo_cap) {
        size_t old = p->memo_cap;
        if (grow((void **)&p->memo, &p->memo_cap, (size_t)idx + 1, sizeof(PklValue *))) return nomem(p);
        memset(p->memo + old, 0, (p->memo_cap - old) * sizeof(PklValue *));
    }
    if (!p->memo[idx]) p->memo_count++;
    p->memo[idx] = v;
    return 0;
}

static int memo_get(Parser *p, uint64_t idx, const char *op) {
    if (idx >= p->memo_cap || !p->memo[idx]) return pkl_perr(p, "%s %llu: memo slot never set", op, (unsigned long long)idx);
    return push(p, p->memo[idx]);
}

// --- scalars ---

static PklValue *make_int(Parser *p, int64_t i) {
    PklValue *v = pkl_newval(p, PKL_INT);
    if (v) v->u.i = i;
    return v;
}

static PklValue *make_str(Parser *p, PklType t, size_t len, const char *what) {
    if (need(p, len, what)) return NULL;
    PklValue *v = pkl_newval(p, t);
    if (!v) return NULL;
    v->u.str.s = pkl_dupbytes(p, p->buf + p->pos, len);
    if (!v->u.str.s) return NULL;
    v->u.str.len = len;
    p->pos += len;
    return v;
}

// LONG1/LONG4 payload: n bytes of little-endian two's complement.
static PklValue *make_long(Parser *p, size_t n) {
    if (need(p, n, "LONG")) return NULL;
    if (n > 8) return make_str(p, PKL_BIGINT, n, "LONG");
    uint64_t u = 0;
    for (size_t i = 0; i < n; i++) u |= (uint64_t)p->buf[p->pos + i] << (8 * i);
    if (n > 0 && n < 8 && (p->buf[p->pos + n - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * n);  // sign-extend
    p->pos += n;
    int64_t i;
    memcpy(&i, &u, sizeof i);
    return make_int(p, i);
}

int pkl_is_str(const PklValue *v, const char *s) {
    return v && v->type == PKL_STR && v->u.str.len == strlen(s) && !memcmp(v->u.str.s, s, v->u.str.len);
}

int pkl_is_cls(const PklValue *v, const char *module, const char *name) {
    return (v->type == PKL_GLOBAL || v->type == PKL_OBJECT) && !strcmp(v->u.cls.module, module) && !strcmp(v->u.cls.name, name);
}

static PklValue *make_cls(Parser *p, PklType t, const char *module, size_t mlen, const char *name, size_t nlen) {
    PklValue *v = pkl_newval(p, t);
    if (!v) return NULL;
    v->u.cls.module = pkl_dupbytes(p, (const unsigned char *)module, mlen);
    v->u.cls.name = pkl_dupbytes(p, (const unsigned char *)name, nlen);
    if (!v->u.cls.module || !v->u.cls.name) return NULL;
    return v;
}

PklValue *pkl_make_object(Parser *p, const PklValue *cls) {
    return make_cls(p, PKL_OBJECT, cls->u.cls.module, strlen(cls->u.cls.module), cls->u.cls.name, strlen(cls->u.cls.name));
}

// GLOBAL's argument: "module\nname\n".
static int read_line(Parser *p, const char **s, size_t *len) {
    const unsigned char *nl = memchr(p->buf + p->pos, '\n', p->size - p->pos);
    if (!nl) return pkl_perr(p, "truncated: GLOBAL name without a newline");
    *s = (const char *)p->buf + p->pos;
    *len = (size_t)(nl - (p->buf + p->pos));
    p->pos += *len + 1;
    return 0;
}

// --- the machine ---

static int run(Parser *p) {
    const unsigned char *b = p->buf;
    for (;;) {
        p->op_pos = p->pos;
        if (p->pos >= p->size) return pkl_perr(p, "truncated: pickle ends without STOP");
        unsigned op = b[p->pos++];
        PklValue *v, *k, *t;
        size_t start = 0, len;
        uint64_t u;
        switch (op) {
        case 0x80:  // PROTO
            if (need(p, 1, "PROTO")) return p->e->code;
            p->d->protocol = b[p->pos++];
            if (p->d->protocol > 5) return pkl_perr(p, "pickle protocol %d not supported (2-5)", p->d->protocol);
            break;
        case 0x95:  // FRAME: advisory framing, the opcodes simply follow
            if (need(p, 8, "FRAME")) return p->e->code;
            p->pos += 8;
            break;
        case '.':  // STOP
            if (!(v = pop(p, "STOP"))) return p->e->code;
            p->d->root = v;
            return 0;
        case 'N':
            if (push(p, pkl_newval(p, PKL_NONE))) return p->e->code;
            break;
        case 0x88:  // NEWTRUE
        case 0x89:  // NEWFALSE
            if (!(v = pkl_newval(p, PKL_BOOL))) return p->e->code;
            v->u.i = op == 0x88;
            if (push(p, v)) return p->e->code;
            break;
        case 'J':  // BININT: 4-byte signed
            if (need(p, 4, "BININT")) return p->e->code;
            if (push(p, make_int(p, (int32_t)(uint32_t)rd_le(p, 4)))) return p->e->code;
            break;
        case 'K':  // BININT1
            if (need(p, 1, "BININT1")) return p->e->code;
            if (push(p, make_int(p, (int64_t)rd_le(p, 1)))) return p->e->code;
            break;
        case 'M':  // BININT2
            if (need(p, 2, "BININT2")) return p->e->code;
            if (push(p, make_int(p, (int64_t)rd_le(p, 2)))) return p->e->code;
            break;
        case 0x8a:  // LONG1
            if (need(p, 1, "LONG1")) return p->e->code;
            len = (size_t)rd_le(p, 1);
            if (push(p, make_long(p, len))) return p->e->code;
            break;
        case 0x8b: {  // LONG4
            if (need(p, 4, "LONG4")) return p->e->code;
            int32_t n = (int32_t)(uint32_t)rd_le(p, 4);
            if (n < 0) return pkl_perr(p, "LONG4 with negative length %d", n);
            if (push(p, make_long(p, (size_t)n))) return p->e->code;
            break;
        }
        case 'G': {  // BINFLOAT: 8-byte big-endian double
            if (need(p, 8, "BINFLOAT")) return p->e->code;
            uint64_t bits = 0;
            for (int i = 0; i < 8; i++) bits = bits << 8 | b[p->pos + (size_t)i];
            p->pos += 8;
            if (!(v = pkl_newval(p, PKL_FLOAT))) return p->e->code;
            memcpy(&v->u.f, &bits, 8);
            if (push(p, v)) return p->e->code;
            break;
        }
        case 0x8c:  // SHORT_BINUNICODE
        case 'U':   // SHORT_BINSTRING
        case 'C':   // SHORT_BINBYTES
            if (need(p, 1, "string length")) return p->e->code;
            len = (size_t)rd_le(p, 1);
            if (push(p, make_str(p, op == 'C' ? PKL_BYTES : PKL_STR, len, "string"))) return p->e->code;
            break;
        case 'X':  // BINUNICODE
        case 'B':  // BINBYTES
            if (need(p, 4, "string length")) return p->e->code;
            len = (size_t)rd_le(p, 4);
            if (push(p, make_str(p, op == 'B' ? PKL_BYTES : PKL_STR, len, "string"))) return p->e->code;
            break;
        case 'T': {  // BINSTRING: 4-byte signed length
            if (need(p, 4, "string length")) return p->e->code;
            int32_t n = (int32_t)(uint32_t)rd_le(p, 4);
            if (n < 0) return pkl_perr(p, "BINSTRING with negative length %d", n);
            if (push(p, make_str(p, PKL_STR, (size_t)n, "string"))) return p->e->code;
            break;
        }
        case 0x8d:  // BINUNICODE8
        case 0x8e:  // BINBYTES8
        case 0x96:  // BYTEARRAY8
            if (need(p, 8, "string length")) return p->e->code;
            u = rd_le(p, 8);
            if (u > p->size - p->pos) return pkl_perr(p, "truncated: string of %llu bytes, %zu left", (unsigned long long)u, p->size - p->pos);
            if (push(p, make_str(p, op == 0x8d ? PKL_STR : PKL_BYTES, (size_t)u, "string"))) return p->e->code;
            break;
        case '}':
            if (push(p, pkl_newval(p, PKL_DICT))) return p->e->code;
            break;
        case ']':
            if (push(p, pkl_newval(p, PKL_LIST))) return p->e->code;
            break;
        case ')':
            if (push(p, pkl_newval(p, PKL_TUPLE))) return p->e->code;
            break;
        case 0x8f:  // EMPTY_SET
            if (push(p, pkl_newval(p, PKL_SET))) return p->e->code;
            break;
        case '(':  // MARK
            if (p->n_marks >= PKL_MAX_DEPTH) return pkl_perr(p, "MARKs nested deeper than %d", PKL_MAX_DEPTH);
            if (grow((void **)&p->marks, &p->marks_cap, p->n_marks + 1, sizeof(size_t))) return nomem(p);
            p->marks[p->n_marks++] = p->sp;
            break;
        case 't':    // TUPLE
        case 'l':    // LIST
        case 0x91:   // FROZENSET
            if (pop_mark(p, "TUPLE/LIST", &start)) return p->e->code;
            v = pkl_make_seq(p, op == 't' ? PKL_TUPLE : op == 'l' ? PKL_LIST : PKL_SET, items_from(p, start), p->sp - start);
            p->sp = start;
            if (push(p, v)) return p->e->code;
            break;
        case 0x85:  // TUPLE1
        case 0x86:  // TUPLE2
        case 0x87:  // TUPLE3
            len = op - 0x84;
            if (p->sp - fence(p) < len) return pkl_perr(p, "TUPLE%zu: stack underflow", len);
            v = pkl_make_seq(p, PKL_TUPLE, p->stack + p->sp - len, len);
            p->sp -= len;
            if (push(p, v)) return p->e->code;
            break;
        case 'd':  // DICT
            if (pop_mark(p, "DICT", &start)) return p->e->code;
            if (!(v = pkl_newval(p, PKL_DICT))) return p->e->code;
            if (set_items(p, v, items_from(p, start), p->sp - start, "DICT")) return p->e->code;
            p->sp = start;
            if (push(p, v)) return p->e->code;
            break;
        case 's':  // SETITEM
            if (!(v = pop(p, "SETITEM")) || !(k = pop(p, "SETITEM")) || !(t = top(p, "SETITEM"))) return p->e->code;
            {
                PklValue *kv[2] = {k, v};
                if (set_items(p, t, kv, 2, "SETITEM")) return p->e->code;
            }
            break;
        case 'u':  // SETITEMS
            if (pop_mark(p, "SETITEMS", &start)) return p->e->code;
            if (start <= fence(p)) return pkl_perr(p, "SETITEMS: stack underflow (no target below the MARK)");
            if (set_items(p, p->stack[start - 1], items_from(p, start), p->sp - start, "SETITEMS")) return p->e->code;
            p->sp = start;
            break;
        case 'a':  // APPEND
            if (!(v = pop(p, "APPEND")) || !(t = top(p, "APPEND"))) return p->e->code;
            if (append_items(p, t, &v, 1, "APPEND", PKL_LIST)) return p->e->code;
            break;
        case 'e':   // APPENDS
        case 0x90:  // ADDITEMS
            if (pop_mark(p, op == 'e' ? "APPENDS" : "ADDITEMS", &start)) return p->e->code;
            if (start <= fence(p)) return pkl_perr(p, "%s: stack underflow (no target below the MARK)", op == 'e' ? "APPENDS" : "ADDITEMS");
            if (append_items(p, p->stack[start - 1], items_from(p, start), p->sp - start, op == 'e' ? "APPENDS" : "ADDITEMS",
                             op == 'e' ? PKL_LIST : PKL_SET))
                return p->e->code;
            p->sp = start;
            break;
        case 'q':  // BINPUT
            if (need(p, 1, "BINPUT")) return p->e->code;
            if (memo_put(p, rd_le(p, 1), "BINPUT")) return p->e->code;
            break;
        case 'r':  // LONG_BINPUT
            if (need(p, 4, "LONG_BINPUT")) return p->e->code;
            if (memo_put(p, rd_le(p, 4), "LONG_BINPUT")) return p->e->code;
            break;
        case 0x94:  // MEMOIZE: the next index is the memo's size
            if (memo_put(p, p->memo_count, "MEMOIZE")) return p->e->code;
            break;
        case 'h':  // BINGET
            if (need(p, 1, "BINGET")) return p->e->code;
            if (memo_get(p, rd_le(p, 1), "BINGET")) return p->e->code;
            break;
        case 'j':  // LONG_BINGET
            if (need(p, 4, "LONG_BINGET")) return p->e->code;
            if (memo_get(p, rd_le(p, 4), "LONG_BINGET")) return p->e->code;
            break;
        case 'c': {  // GLOBAL "module\nname\n"
            const char *m = NULL, *n = NULL;
            size_t ml = 0, nl = 0;
            if (read_line(p, &m, &ml) || read_line(p, &n, &nl)) return p->e->code;
            if (push(p, make_cls(p, PKL_GLOBAL, m, ml, n, nl))) return p->e->code;
            break;
        }
        case 0x93: {  // STACK_GLOBAL
            PklValue *n = pop(p, "STACK_GLOBAL"), *m = n ? pop(p, "STACK_GLOBAL") : NULL;
            if (!m) return p->e->code;
            if (m->type != PKL_STR || n->type != PKL_STR) return pkl_perr(p, "STACK_GLOBAL: module and name must be str");
            if (push(p, make_cls(p, PKL_GLOBAL, m->u.str.s, m->u.str.len, n->u.str.s, n->u.str.len))) return p->e->code;
            break;
        }
        case 'R': {  // REDUCE
            PklValue *args = pop(p, "REDUCE"), *fn = args ? pop(p, "REDUCE") : NULL;
            if (!fn) return p->e->code;
            if (push(p, pkl_reduce(p, fn, args))) return p->e->code;
            break;
        }
        case 0x81: {  // NEWOBJ cls args
            PklValue *args = pop(p, "NEWOBJ"), *cls = args ? pop(p, "NEWOBJ") : NULL;
            if (!cls) return p->e->code;
            if (push(p, pkl_newobj(p, cls, "NEWOBJ"))) return p->e->code;
            break;
        }
        case 0x92: {  // NEWOBJ_EX cls args kwargs
            PklValue *kw = pop(p, "NEWOBJ_EX"), *args = kw ? pop(p, "NEWOBJ_EX") : NULL;
            PklValue *cls = args ? pop(p, "NEWOBJ_EX") : NULL;
            if (!cls) return p->e->code;
            if (push(p, pkl_newobj(p, cls, "NEWOBJ_EX"))) return p->e->code;
            break;
        }
        case 'b':  // BUILD: the state (OrderedDict._metadata, object attributes) is dropped
            if (!pop(p, "BUILD") || !top(p, "BUILD")) return p->e->code;
            break;
        case 'Q':  // BINPERSID
            if (!(v = pop(p, "BINPERSID"))) return p->e->code;
            if (push(p, pkl_persistent_load(p, v))) return p->e->code;
            break;
        case '0':  // POP: a value, or the MARK when the stack is at the fence (as CPython)
            if (p->sp > fence(p)) p->sp--;
            else if (p->n_marks) p->n_marks--;
            else return pkl_perr(p, "POP: stack underflow");
            break;
        case '1':  // POP_MARK
            if (pop_mark(p, "POP_MARK", &start)) return p->e->code;
            p->sp = start;
            break;
        case '2':  // DUP
            if (!(v = top(p, "DUP"))) return p->e->code;
            if (push(p, v)) return p->e->code;
            break;
        default:
            return pkl_perr(p, "pickle opcode 0x%02x not supported (not one torch.save writes)", op);
        }
    }
}

int pkl_parse(PklDoc *d, const unsigned char *buf, size_t size, const char *name, Err *e) {
    memset(d, 0, sizeof *d);
    Err local = {0};
    if (!e) e = &local;
    Parser p = {.buf = buf, .size = size, .name = name, .e = e, .d = d};
    int rc = run(&p);
    free(p.stack);
    free(p.marks);
    free(p.memo);
    if (rc) {
        pkl_free(d);
        return e->code ? e->code : rc;
    }
    return 0;
}

void pkl_free(PklDoc *d) {
    for (size_t i = 0; i < d->n_all; i++) {
        PklValue *v = d->all[i];
        switch (v->type) {
        case PKL_BIGINT:
        case PKL_STR:
        case PKL_BYTES:
            free(v->u.str.s);
            break;
        case PKL_TUPLE:
        case PKL_LIST:
        case PKL_SET:
            free(v->u.seq.items);
            break;
        case PKL_DICT:
            free(v->u.dict.keys);
            free(v->u.dict.vals);
            break;
        case PKL_GLOBAL:
        case PKL_OBJECT:
            free(v->u.cls.module);
            free(v->u.cls.name);
            break;
        case PKL_STORAGE:
            free(v->u.storage.type_name);
            free(v->u.storage.key);
            free(v->u.storage.location);
            break;
        default:
            break;
        }
        free(v);
    }
    free(d->all);
    memset(d, 0, sizeof *d);
}

const PklValue *pkl_dict_get(const PklValue *d, const char *key) {
    if (!d || d->type != PKL_DICT) return NULL;
    for (size_t i = d->u.dict.n; i-- > 0;)
        if (pkl_is_str(d->u.dict.keys[i], key)) return d->u.dict.vals[i];
    return NULL;
}

const char *pkl_type_name(PklType t) {
    static const char *const names[] = {"None", "bool", "int", "int", "float", "str", "bytes", "tuple", "list",
                                        "set", "dict", "class", "object", "storage", "tensor"};
    _Static_assert(sizeof names / sizeof names[0] == PKL_TYPE_COUNT, "pickle type names out of step");
    return (t >= 0 && t < PKL_TYPE_COUNT) ? names[t] : "?";
}
