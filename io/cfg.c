/* cfg.c: YAML text -> CfgNode tree (libyaml event API), with the limits of cfg.h.
   Navigation and typed getters are in cfg_get.c, the writer in cfg_write.c. */
#include "io/cfg.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "io/cfg_node.h"
#include "io/fileio.h"

// ---------------------------------------------------------------- tree building

typedef struct {
    char *name;
    CfgNode *node;
} Anchor;

typedef struct {
    CfgNode *node;
    char *key;          // maps: a key read, waiting for its value
    int key_line;       // its line
    int merge_pending;  // maps: the key was "<<"
    int in_merge_list;  // this frame is the list value of a "<<" key (node is NULL)
    CfgNode **merges;   // maps: maps named by "<<", merged at the map's end
    int n_merges, cap_merges;
    char *anchor;       // anchor of this node, registered when it is complete
} Frame;

// The (map, key) pair of every map entry made so far, so a duplicate key is found in O(1)
// (a linear search per key makes a map of 100k keys a denial of service).
typedef struct {
    const CfgNode *map;
    const char *key;  // owned by map->keys
} KeySlot;

typedef struct {
    KeySlot *slots;  // open addressing, cap a power of 2, at most half full
    size_t cap, n;
} KeySet;

typedef struct {
    CfgDoc *doc;
    Err *e;
    KeySet keys;
    CfgNode *root;
    Frame stack[CFG_MAX_DEPTH + 1];
    int depth;
    Anchor *anchors;
    int n_anchors, cap_anchors;
    int line, col;      // position of the event being handled
} Builder;

// Where the builder is, for messages: the path of the node being read ("model.params.x"),
// else of the innermost open map or list; "(top level)" before the root.
static void where(const Builder *b, const char *key, char *buf, size_t size) {
    const Frame *f = NULL;
    for (int d = b->depth - 1; d >= 0 && !f; d--)
        if (b->stack[d].node) f = &b->stack[d];
    if (!f) {
        snprintf(buf, size, "(top level)");
        return;
    }
    const char *p = f->node->path;
    if (!key && f->node->kind == CFG_MAP) key = f->key;
    if (key)
        snprintf(buf, size, "%s%s%.200s", p, p[0] ? "." : "", key);
    else if (f->node->kind == CFG_LIST)
        snprintf(buf, size, "%s[%d]", p, f->node->n);
    else
        snprintf(buf, size, "%s", cfg_shown_path(p));
}

// ERR_FORMAT "file: path: message (line L, column C)"; key names the key being read, if any.
static int fail(Builder *b, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(Builder *b, const char *key, const char *fmt, ...) {
    char msg[320], at[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    where(b, key, at, sizeof at);
    return err_set(b->e, ERR_FORMAT, "%s: %s: %s (line %d, column %d)", b->doc->file, at, msg, b->line, b->col);
}

static int budget_bytes(Builder *b, size_t n) {
    if (n > CFG_MAX_TREE_BYTES || b->doc->bytes > (size_t)CFG_MAX_TREE_BYTES - n)
        return fail(b, NULL,
                    "the document expands to more than %d bytes of keys, values and paths after alias expansion",
                    CFG_MAX_TREE_BYTES);
    b->doc->bytes += n;
    return 0;
}

static char *dup_n(Builder *b, const char *s, size_t n) {
    if (budget_bytes(b, n + 1)) return NULL;
    char *d = malloc(n + 1);
    if (!d) {
        err_set(b->e, ERR_NOMEM, "%s: out of memory", b->doc->file);
        return NULL;
    }
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

static CfgNode *node_new(Builder *b, CfgKind kind, int line, int col) {
    CfgDoc *d = b->doc;
    if (d->n_all >= CFG_MAX_NODES) {
        fail(b, NULL, "the document has more than %d nodes after alias expansion", CFG_MAX_NODES);
        return NULL;
    }
    if (d->n_all == d->cap_all) {
        size_t cap = d->cap_all ? 2 * d->cap_all : 64;
        CfgNode **all = realloc(d->all, cap * sizeof *all);
        if (!all) {
            err_set(b->e, ERR_NOMEM, "%s: out of memory", d->file);
            return NULL;
        }
        d->all = all;
        d->cap_all = cap;
    }
    CfgNode *n = calloc(1, sizeof *n);
    if (!n) {
        err_set(b->e, ERR_NOMEM, "%s: out of memory", d->file);
        return NULL;
    }
    n->kind = kind;
    n->doc = d;
    n->line = line;
    n->col = col;
    d->all[d->n_all++] = n;
    return n;
}

static size_t key_hash(const CfgNode *map, const char *key) {
    uint64_t h = 1469598103934665603ull ^ (uint64_t)(uintptr_t)map;  // FNV-1a, seeded by the map
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        h ^= *p;
        h *= 1099511628211ull;
    }
    return (size_t)(h ^ (h >> 31));
}

static int map_has(const Builder *b, const CfgNode *map, const char *key) {
    const KeySet *s = &b->keys;
    if (!s->cap) return 0;
    for (size_t i = key_hash(map, key) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (!s->slots[i].map) return 0;
        if (s->slots[i].map == map && !strcmp(s->slots[i].key, key)) return 1;
    }
}

static void keyset_put(KeySet *s, const CfgNode *map, const char *key) {
    size_t i = key_hash(map, key) & (s->cap - 1);
    while (s->slots[i].map) i = (i + 1) & (s->cap - 1);
    s->slots[i].map = map;
    s->slots[i].key = key;
    s->n++;
}

static int keyset_add(Builder *b, const CfgNode *map, const char *key) {
    KeySet *s = &b->keys;
    if (2 * (s->n + 1) > s->cap) {
        KeySet bigger = {NULL, s->cap ? 2 * s->cap : 256, 0};
        bigger.slots = calloc(bigger.cap, sizeof *bigger.slots);
        if (!bigger.slots) return err_set(b->e, ERR_NOMEM, "%s: out of memory", b->doc->file);
        for (size_t i = 0; i < s->cap; i++)
            if (s->slots[i].map) keyset_put(&bigger, s->slots[i].map, s->slots[i].key);
        free(s->slots);
        *s = bigger;
    }
    keyset_put(s, map, key);
    return 0;
}

// Adds child under parent (key for maps) and gives it its path. Root: parent NULL.
static int attach(Builder *b, CfgNode *parent, const char *key, int key_line, CfgNode *child) {
    char idx[32];
    const char *pp = parent ? parent->path : "";
    const char *seg = key;
    if (parent && parent->kind == CFG_LIST) {
        snprintf(idx, sizeof idx, "[%d]", parent->n);
        seg = idx;
    }
    if (!parent) {
        child->path = dup_n(b, "", 0);
        return child->path ? 0 : b->e->code;
    }
    size_t lp = strlen(pp), ls = strlen(seg);
    int dot = lp > 0 && parent->kind == CFG_MAP;
    size_t n = lp + (size_t)dot + ls;
    if (budget_bytes(b, n + 1)) return b->e->code;
    char *path = malloc(n + 1);
    if (!path) return err_set(b->e, ERR_NOMEM, "%s: out of memory", b->doc->file);
    memcpy(path, pp, lp);
    if (dot) path[lp] = '.';
    memcpy(path + lp + dot, seg, ls);
    path[n] = 0;
    child->path = path;
    if (parent->n == parent->cap) {
        int cap = parent->cap ? 2 * parent->cap : 4;
        CfgNode **items = realloc(parent->items, (size_t)cap * sizeof *items);
        if (!items) return err_set(b->e, ERR_NOMEM, "%s: out of memory", b->doc->file);
        parent->items = items;
        if (parent->kind == CFG_MAP) {
            char **keys = realloc(parent->keys, (size_t)cap * sizeof *keys);
            if (!keys) return err_set(b->e, ERR_NOMEM, "%s: out of memory", b->doc->file);
            parent->keys = keys;
            int *lines = realloc(parent->key_lines, (size_t)cap * sizeof *lines);
            if (!lines) return err_set(b->e, ERR_NOMEM, "%s: out of memory", b->doc->file);
            parent->key_lines = lines;
        }
        parent->cap = cap;
    }
    if (parent->kind == CFG_MAP) {
        char *k = dup_n(b, key, strlen(key));
        if (!k) return b->e->code;
        if (keyset_add(b, parent, k)) {
            free(k);
            return b->e->code;
        }
        parent->keys[parent->n] = k;
        parent->key_lines[parent->n] = key_line;
    }
    parent->items[parent->n++] = child;
    return 0;
}

// Deep copy of src as a new child of parent (an alias or merged entry), placed at line/col.
static int copy_node(Builder *b, const CfgNode *src, CfgNode *parent, const char *key, int line, int col,
                     int depth) {
    if (src->kind != CFG_SCALAR && depth > CFG_MAX_DEPTH)
        return fail(b, NULL, "nesting deeper than %d levels (through an alias)", CFG_MAX_DEPTH);
    CfgNode *n = node_new(b, src->kind, line, col);
    if (!n) return b->e->code;
    n->quoted = src->quoted;
    n->null_ = src->null_;
    if (src->text && !(n->text = dup_n(b, src->text, strlen(src->text)))) return b->e->code;
    if (attach(b, parent, key, line, n)) return b->e->code;
    for (int i = 0; i < src->n; i++)
        if (copy_node(b, src->items[i], n, src->kind == CFG_MAP ? src->keys[i] : NULL, line, col, depth + 1))
            return b->e->code;
    return 0;
}

static CfgNode *anchor_find(Builder *b, const char *name) {
    for (int i = b->n_anchors - 1; i >= 0; i--)  // a redefined anchor: the latest definition
        if (!strcmp(b->anchors[i].name, name)) return b->anchors[i].node;
    return NULL;
}

static int anchor_add(Builder *b, const char *name, CfgNode *node) {
    if (!name) return 0;
    if (b->n_anchors == b->cap_anchors) {
        int cap = b->cap_anchors ? 2 * b->cap_anchors : 8;
        Anchor *a = realloc(b->anchors, (size_t)cap * sizeof *a);
        if (!a) return err_set(b->e, ERR_NOMEM, "%s: out of memory", b->doc->file);
        b->anchors = a;
        b->cap_anchors = cap;
    }
    char *nm = strdup(name);
    if (!nm) return err_set(b->e, ERR_NOMEM, "%s: out of memory", b->doc->file);
    b->anchors[b->n_anchors].name = nm;
    b->anchors[b->n_anchors].node = node;
    b->n_anchors++;
    return 0;
}

// Checks a tag: 0 and *is_str when it is !!str; other core tags are accepted; the rest are errors.
static int check_tag(Builder *b, const yaml_char_t *tag, int *is_str) {
    *is_str = 0;
    if (!tag) return 0;
    static const char *const core[] = {"tag:yaml.org,2002:str", "tag:yaml.org,2002:int",
                                       "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool",
                                       "tag:yaml.org,2002:null", "tag:yaml.org,2002:map",
                                       "tag:yaml.org,2002:seq", "!"};
    for (size_t i = 0; i < sizeof core / sizeof core[0]; i++)
        if (!strcmp((const char *)tag, core[i])) {
            *is_str = (i == 0 || i == 7);  // "!" is the non-specific tag of a quoted scalar
            return 0;
        }
    return fail(b, NULL, "unsupported tag '%.100s'", (const char *)tag);
}

static int is_null_text(const char *s) {
    return !s[0] || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

// The frame that receives the next node, and the key it goes under (maps).
static int place(Builder *b, CfgNode *n) {
    if (b->depth == 0) {
        if (b->root)
            return fail(b, NULL, "more than one root node");
        b->root = n;
        return attach(b, NULL, NULL, 0, n);
    }
    Frame *f = &b->stack[b->depth - 1];
    if (f->node->kind == CFG_LIST) return attach(b, f->node, NULL, 0, n);
    int r = attach(b, f->node, f->key, f->key_line, n);
    free(f->key);
    f->key = NULL;
    return r;
}

static int add_merge(Builder *b, Frame *f, CfgNode *src) {
    if (src->kind != CFG_MAP)
        return fail(b, "<<", "the merge key needs maps, found a %s", src->kind == CFG_LIST ? "list" : "scalar");
    if (f->n_merges == f->cap_merges) {
        int cap = f->cap_merges ? 2 * f->cap_merges : 4;
        CfgNode **m = realloc(f->merges, (size_t)cap * sizeof *m);
        if (!m) return err_set(b->e, ERR_NOMEM, "%s: out of memory", b->doc->file);
        f->merges = m;
        f->cap_merges = cap;
    }
    f->merges[f->n_merges++] = src;
    return 0;
}

// A map frame waiting for a key: scalar text becomes the key.
static int take_key(Builder *b, Frame *f, const char *text, size_t len, int plain) {
    if (len == 0)
        return fail(b, NULL, "empty key");
    if (memchr(text, 0, len))
        return fail(b, NULL, "NUL character in a key");
    if (plain && len == 2 && !memcmp(text, "<<", 2)) {
        f->merge_pending = 1;
        return 0;
    }
    char *k = malloc(len + 1);
    if (!k) return err_set(b->e, ERR_NOMEM, "%s: out of memory", b->doc->file);
    memcpy(k, text, len);
    k[len] = 0;
    if (map_has(b, f->node, k)) {
        fail(b, k, "duplicate key '%.200s' in one map", k);
        free(k);
        return ERR_FORMAT;
    }
    f->key = k;
    f->key_line = b->line;
    return 0;
}

static int on_scalar(Builder *b, const yaml_event_t *ev) {
    const char *text = (const char *)ev->data.scalar.value;
    size_t len = ev->data.scalar.length;
    int is_str;
    if (check_tag(b, ev->data.scalar.tag, &is_str)) return b->e->code;
    int plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && !is_str;
    if (b->depth > 0) {
        Frame *f = &b->stack[b->depth - 1];
        if (f->in_merge_list)
            return fail(b, "<<", "the merge key takes aliases (*name), found a scalar");
        if (f->node->kind == CFG_MAP && !f->key && !f->merge_pending) {
            if (ev->data.scalar.anchor)
                return fail(b, NULL, "anchors on keys are not supported");
            return take_key(b, f, text, len, plain);
        }
        if (f->merge_pending)
            return fail(b, "<<", "the merge key takes an alias (*name) or a list of aliases, found a scalar");
    }
    if (memchr(text, 0, len))
        return fail(b, NULL, "NUL character in a value");
    CfgNode *n = node_new(b, CFG_SCALAR, b->line, b->col);
    if (!n) return b->e->code;
    if (!(n->text = dup_n(b, text, len))) return b->e->code;
    n->quoted = !plain;
    n->null_ = plain && is_null_text(n->text);
    if (place(b, n)) return b->e->code;
    return anchor_add(b, (const char *)ev->data.scalar.anchor, n);
}

static int on_alias(Builder *b, const yaml_event_t *ev) {
    const char *name = (const char *)ev->data.alias.anchor;
    CfgNode *src = anchor_find(b, name);
    if (!src)
        return fail(b, NULL, "alias *%.100s: no complete node has that anchor (undefined, or used inside itself)",
                    name);
    if (b->depth == 0) return fail(b, NULL, "an alias as the root node");
    Frame *f = &b->stack[b->depth - 1];
    if (f->in_merge_list) return add_merge(b, &b->stack[b->depth - 2], src);
    if (f->node->kind == CFG_MAP && f->merge_pending) {
        f->merge_pending = 0;
        return add_merge(b, f, src);
    }
    if (f->node->kind == CFG_MAP && !f->key) {
        if (src->kind != CFG_SCALAR)
            return fail(b, NULL, "map keys must be scalars");
        return take_key(b, f, src->text, strlen(src->text), !src->quoted);
    }
    char *key = f->key;
    f->key = NULL;
    int r = copy_node(b, src, f->node, key, b->line, b->col, b->depth + 1);
    free(key);
    return r;
}

static int on_start(Builder *b, const yaml_event_t *ev, CfgKind kind) {
    const yaml_char_t *tag = kind == CFG_MAP ? ev->data.mapping_start.tag : ev->data.sequence_start.tag;
    const yaml_char_t *anchor = kind == CFG_MAP ? ev->data.mapping_start.anchor : ev->data.sequence_start.anchor;
    int is_str;
    if (check_tag(b, tag, &is_str)) return b->e->code;
    if (b->depth >= CFG_MAX_DEPTH)
        return fail(b, NULL, "nesting deeper than %d levels", CFG_MAX_DEPTH);
    Frame *parent = b->depth > 0 ? &b->stack[b->depth - 1] : NULL;
    if (parent && parent->in_merge_list)
        return fail(b, "<<", "the merge key takes aliases (*name)");
    Frame *f = &b->stack[b->depth];
    memset(f, 0, sizeof *f);
    if (parent && parent->node->kind == CFG_MAP && parent->merge_pending) {
        if (kind != CFG_LIST || anchor)
            return fail(b, "<<", "the merge key takes an alias (*name) or a list of aliases");
        parent->merge_pending = 0;
        f->in_merge_list = 1;
        b->depth++;
        return 0;
    }
    if (parent && parent->node->kind == CFG_MAP && !parent->key)
        return fail(b, NULL, "map keys must be scalars");
    CfgNode *n = node_new(b, kind, b->line, b->col);
    if (!n) return b->e->code;
    if (place(b, n)) return b->e->code;
    f->node = n;
    if (anchor && !(f->anchor = strdup((const char *)anchor)))
        return err_set(b->e, ERR_NOMEM, "%s: out of memory", b->doc->file);
    b->depth++;
    return 0;
}

static void frame_clear(Frame *f) {
    free(f->key);
    free(f->merges);
    free(f->anchor);
    memset(f, 0, sizeof *f);
}

static int on_end(Builder *b) {
    if (b->depth == 0) return err_set(b->e, ERR_INTERNAL, "%s: unbalanced YAML events", b->doc->file);
    Frame *f = &b->stack[b->depth - 1];
    int r = 0;
    if (f->node && f->node->kind == CFG_MAP) {
        if (f->merge_pending)  // "<<:" with nothing after it
            r = fail(b, "<<", "the merge key has no value");
        // Merged entries: keys the map does not set itself; earlier merged maps win.
        for (int m = 0; !r && m < f->n_merges; m++) {
            const CfgNode *src = f->merges[m];
            for (int i = 0; !r && i < src->n; i++)
                if (!map_has(b, f->node, src->keys[i]))
                    r = copy_node(b, src->items[i], f->node, src->keys[i], f->node->line, f->node->col, b->depth + 1);
        }
    }
    if (!r && f->node) r = anchor_add(b, f->anchor, f->node);
    frame_clear(f);
    b->depth--;
    return r;
}

static int yaml_error(Builder *b, const yaml_parser_t *p) {
    const char *what = p->problem ? p->problem : "unknown error";
    if (p->error == YAML_MEMORY_ERROR) return err_set(b->e, ERR_NOMEM, "%s: out of memory while parsing", b->doc->file);
    if (p->error == YAML_READER_ERROR)
        return err_set(b->e, ERR_FORMAT, "%s: not readable as YAML text at byte %zu: %s", b->doc->file,
                       p->problem_offset, what);
    int line = (int)p->problem_mark.line + 1, col = (int)p->problem_mark.column + 1;
    char at[256];
    where(b, NULL, at, sizeof at);
    if (p->context)
        return err_set(b->e, ERR_FORMAT, "%s: YAML syntax error at line %d, column %d: %s %s that starts at line %d "
                       "(near %s)", b->doc->file, line, col, what, p->context, (int)p->context_mark.line + 1, at);
    return err_set(b->e, ERR_FORMAT, "%s: YAML syntax error at line %d, column %d: %s (near %s)", b->doc->file,
                   line, col, what, at);
}

void cfg_free(CfgNode *root) {
    if (!root) return;
    CfgDoc *d = root->doc;
    for (size_t i = 0; i < d->n_all; i++) {
        CfgNode *n = d->all[i];
        for (int k = 0; n->kind == CFG_MAP && k < n->n; k++) free(n->keys[k]);
        free(n->keys);
        free(n->key_lines);
        free(n->items);
        free(n->text);
        free(n->path);
        free(n);
    }
    free(d->all);
    free(d->file);
    free(d);
}

static void doc_free_nodes(CfgDoc *d) {
    // A failed parse may not have a root: free the nodes through a temporary one.
    if (d->n_all > 0) {
        cfg_free(d->all[0]);
        return;
    }
    free(d->all);
    free(d->file);
    free(d);
}

int cfg_load_mem(const char *text, size_t len, const char *name, CfgNode **root, Err *e) {
    *root = NULL;
    if (!name) name = "(memory)";
    if (len > CFG_MAX_FILE_BYTES)
        return err_set(e, ERR_FORMAT, "%s: %zu bytes, more than the %d a config may have", name, len,
                       CFG_MAX_FILE_BYTES);
    Err local = {0};
    if (!e) e = &local;
    CfgDoc *d = calloc(1, sizeof *d);
    if (!d || !(d->file = strdup(name))) {
        free(d);
        return err_set(e, ERR_NOMEM, "%s: out of memory", name);
    }
    Builder b;
    memset(&b, 0, sizeof b);
    b.doc = d;
    b.e = e;
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) {
        doc_free_nodes(d);
        return err_set(e, ERR_NOMEM, "%s: cannot initialise the YAML parser", name);
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    int docs = 0, done = 0, r = 0;
    while (!done && !r) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            r = yaml_error(&b, &p);
            break;
        }
        b.line = (int)ev.start_mark.line + 1;
        b.col = (int)ev.start_mark.column + 1;
        switch (ev.type) {
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1)
                r = fail(&b, NULL, "a second YAML document ('---'); a config holds one");
            break;
        case YAML_SCALAR_EVENT: r = on_scalar(&b, &ev); break;
        case YAML_ALIAS_EVENT: r = on_alias(&b, &ev); break;
        case YAML_MAPPING_START_EVENT: r = on_start(&b, &ev, CFG_MAP); break;
        case YAML_SEQUENCE_START_EVENT: r = on_start(&b, &ev, CFG_LIST); break;
        case YAML_MAPPING_END_EVENT:
        case YAML_SEQUENCE_END_EVENT: r = on_end(&b); break;
        case YAML_STREAM_END_EVENT: done = 1; break;
        default: break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    while (b.depth > 0) frame_clear(&b.stack[--b.depth]);
    for (int i = 0; i < b.n_anchors; i++) free(b.anchors[i].name);
    free(b.keys.slots);
    free(b.anchors);
    if (!r && !b.root) {  // empty document: a null root
        CfgNode *n = node_new(&b, CFG_SCALAR, 1, 1);
        if (n && (n->text = dup_n(&b, "", 0))) {
            n->null_ = 1;
            r = attach(&b, NULL, NULL, 0, n);
            b.root = n;
        } else {
            r = e->code ? e->code : ERR_NOMEM;
        }
    }
    if (r) {
        if (e == &local) r = local.code;
        doc_free_nodes(d);
        return r;
    }
    // The root must be the first node so cfg_free(root) reaches the document.
    if (d->all[0] != b.root) {
        for (size_t i = 0; i < d->n_all; i++)
            if (d->all[i] == b.root) {
                d->all[i] = d->all[0];
                d->all[0] = b.root;
                break;
            }
    }
    *root = b.root;
    return 0;
}

int cfg_load(const char *path, CfgNode **root, Err *e) {
    *root = NULL;
    unsigned char *buf;
    size_t n;
    int r = file_read_all(path, &buf, &n, e);
    if (r) return r;
    r = cfg_load_mem((const char *)buf, n, path, root, e);
    free(buf);
    return r;
}
