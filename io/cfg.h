/* cfg.h: YAML files (libyaml) as a tree of maps, lists and scalars, with typed getters
   whose errors name the file and the full key path ("model.params.unet_config.params.num_heads").

       CfgNode *root;
       if (cfg_load(path, &root, &e)) return e.code;
       const CfgNode *p = cfg_path(root, "model.params.unet_config.params");
       int heads = -1;
       if (cfg_get_int(p, "num_heads", &heads, &e) < 0) return e.code;   // 1: absent, heads unchanged
       cfg_free(root);

   Getter return values: 0 found and valid (*out set), 1 absent (*out unchanged),
   negative = -ERR_... code (e filled: "file: key.path: expected an integer, found 'abc' (line 7)").
   Duplicate keys in one map are an error at load time. Anchors/aliases are resolved.

   What is read (one YAML 1.1/1.2 document, as PyYAML / OmegaConf read CompVis configs):
   - block and flow maps and lists, plain and quoted scalars, comments;
   - anchors and aliases: an alias is a deep copy of the anchored node, so every node of
     the tree has its own path; the merge key `<<: *base` (or `<<: [*a, *b]`) adds the
     entries of the merged maps that the map does not set itself (earlier maps win);
   - the tags !!str, !!int, !!float, !!bool, !!null, !!map, !!seq (!!str makes a scalar a
     string: typed getters then refuse it); any other tag is an ERR_FORMAT.
   Scalar typing is done by the getters, not at load time:
   - integers: [-+]digits, or any number form below whose value is an exact integer in
     int range (1e3 is 1000, 2.0 is 2; 1.5 and 1e-3 are errors);
   - reals: [-+]digits[.digits][e[-+]digits] and [-+].digits... (1e-4, 0.0015, -1, .5),
     .inf/-.inf/.nan (also .Inf/.INF, .NaN/.NAN); a value overflowing a double is an error;
   - booleans: true/false/yes/no/on/off in lower, Capitalised and UPPER case;
   - null: an empty value, ~, null/Null/NULL. Typed getters report a null value as an error
     ("expected an integer, found null"), never as absent; test it with cfg_is_null.
   Quoted scalars are strings: cfg_get_int refuses "32" written in quotes.

   Limits against malicious input (each an ERR_FORMAT naming the file and line):
   CFG_MAX_FILE_BYTES of input, CFG_MAX_DEPTH nested maps/lists, CFG_MAX_NODES nodes and
   CFG_MAX_TREE_BYTES of keys, scalars and paths after alias expansion (a "billion laughs"
   document stops at the budget), no NUL characters inside scalars, no recursive aliases.
   Limitations: one document per file; map keys must be non-empty scalars; no custom tags, no
   anchors on keys; OmegaConf interpolations ("${model.x}") are plain strings, not resolved.

   Writing: CfgWriter builds block-style YAML text in memory and commits it atomically
   (path.tmp + rename, see fileio.h). Scalars are written so cfg_load reads them back as
   the same value (strings are quoted when they would read as a number, bool or null).

       CfgWriter w;
       cfg_writer_init(&w);
       cfg_writer_map_begin(&w, "quant");
       cfg_writer_int(&w, "weight_bits", 4);
       cfg_writer_map_end(&w);
       if (cfg_writer_commit(&w, "runs/x/config.yaml", &e)) return e.code;  // also frees w
*/
#ifndef EFFDM_CFG_H
#define EFFDM_CFG_H

#include <stddef.h>

#include "util/err.h"

typedef enum { CFG_SCALAR, CFG_MAP, CFG_LIST } CfgKind;

typedef struct CfgNode CfgNode;

enum {
    CFG_MAX_FILE_BYTES = 16 << 20,   // input size
    CFG_MAX_DEPTH = 64,              // nested maps and lists
    CFG_MAX_NODES = 200000,          // nodes after alias expansion
    CFG_MAX_TREE_BYTES = 64 << 20,   // keys + scalars + paths after alias expansion
};

// Parses a YAML file. 0 or an ERR_ code (ERR_IO, ERR_FORMAT with line/column).
// An empty document gives a null scalar root.
int cfg_load(const char *path, CfgNode **root, Err *e);
// Parses YAML text (name is used in messages).
int cfg_load_mem(const char *text, size_t len, const char *name, CfgNode **root, Err *e);
// Frees the whole tree (root may be NULL).
void cfg_free(CfgNode *root);

CfgKind cfg_kind(const CfgNode *n);
// Full dotted path of the node from the root ("model.params.timesteps"; list items as "[2]",
// e.g. "model.params.unet_config.params.channel_mult[1]"); "" for the root.
const char *cfg_node_path(const CfgNode *n);
// File the tree was read from.
const char *cfg_file(const CfgNode *n);
// 1-based line and column where the node starts in the file (for an alias copy: where the
// alias is; for a merged entry: where its map starts).
int cfg_line(const CfgNode *n);
int cfg_column(const CfgNode *n);
// Child of a map by key, or NULL (also NULL when n is not a map).
const CfgNode *cfg_child(const CfgNode *map, const char *key);
// Descendant by dotted path of map keys, or NULL. A segment may end in [i] to index a
// list ("params.channel_mult[1]"). "" gives root.
const CfgNode *cfg_path(const CfgNode *root, const char *dotted);
// Number of entries of a map or list (0 for scalars); i-th entry, and for maps its key.
int cfg_len(const CfgNode *n);
const CfgNode *cfg_at(const CfgNode *n, int i);
const char *cfg_key_at(const CfgNode *map, int i);
// 1-based line of a map's i-th key (0 when out of range).
int cfg_key_line(const CfgNode *map, int i);
// Scalar text, or NULL if not a scalar.
const char *cfg_scalar(const CfgNode *n);
// 1 when n is a null scalar (empty, ~, null), 0 otherwise (also for NULL n).
int cfg_is_null(const CfgNode *n);
// 1 when n is a quoted scalar or tagged !!str (a string, never a number/bool/null).
int cfg_is_quoted(const CfgNode *n);

// Typed getters on a map's child `key` (see return values above). Booleans accept
// true/false/True/False/yes/no; numbers accept YAML forms like 1e-4 and 0.0015.
// A NULL map counts as empty (1: absent); a non-map `map` is -ERR_VALUE.
int cfg_get_int(const CfgNode *map, const char *key, int *out, Err *e);
int cfg_get_double(const CfgNode *map, const char *key, double *out, Err *e);
int cfg_get_bool(const CfgNode *map, const char *key, int *out, Err *e);
// Any non-null scalar has a string: `ckpt: 5` gives "5". *out is owned by the tree.
int cfg_get_str(const CfgNode *map, const char *key, const char **out, Err *e);
// A list of integers (a scalar is accepted as a one-element list); up to max entries.
// *count is set with *out; more than max entries is -ERR_VALUE.
int cfg_get_int_list(const CfgNode *map, const char *key, int *out, int max, int *count, Err *e);
// The same conversions on a node itself (a list item): 0 or -ERR_VALUE (n NULL: -ERR_INTERNAL).
int cfg_as_int(const CfgNode *n, int *out, Err *e);
int cfg_as_double(const CfgNode *n, double *out, Err *e);
int cfg_as_bool(const CfgNode *n, int *out, Err *e);
int cfg_as_str(const CfgNode *n, const char **out, Err *e);
// Fails with ERR_KEY naming the first key of map not in allowed[0..n) (typo protection), with
// its line and the closest allowed key ("did you mean 'num_heads'?"). Returns 0 or ERR_KEY
// (positive, like cfg_load); a NULL map passes; a non-map is ERR_VALUE.
int cfg_check_keys(const CfgNode *map, const char *const *allowed, int n, Err *e);
// Index of the candidate closest to word (edit distance, case-insensitive) when it is close
// enough to be a likely typo (distance <= max(1, strlen(word) / 3)), else -1.
int cfg_suggest(const char *word, const char *const *cands, int n);

// ---- writing ----
typedef struct {
    char *buf;          // text written so far (malloc'ed; NUL-terminated when len > 0)
    size_t len, cap;
    int failed;         // 1: a misuse (unbalanced begin/end, a key in a list); 2: out of memory
    int depth;          // open maps/lists
    struct { int list; int indent; int items; int dash; } stack[CFG_MAX_DEPTH];
    int open_key;       // a "key:" waits for its first child (an empty map/list then writes {} or [])
} CfgWriter;

void cfg_writer_init(CfgWriter *w);
void cfg_writer_free(CfgWriter *w);
// "# text" lines at the current indentation (text may hold several lines).
void cfg_writer_comment(CfgWriter *w, const char *text);
// Opens a nested map / list under key (key NULL: as the next item of the enclosing list).
void cfg_writer_map_begin(CfgWriter *w, const char *key);
void cfg_writer_map_end(CfgWriter *w);
void cfg_writer_list_begin(CfgWriter *w, const char *key);
void cfg_writer_list_end(CfgWriter *w);
// key: value in the enclosing map (key NULL: a list item).
void cfg_writer_int(CfgWriter *w, const char *key, long long v);
void cfg_writer_double(CfgWriter *w, const char *key, double v);  // shortest text that reads back exactly
void cfg_writer_bool(CfgWriter *w, const char *key, int v);
void cfg_writer_str(CfgWriter *w, const char *key, const char *s);  // quoted when needed
void cfg_writer_null(CfgWriter *w, const char *key);
// The text written so far (NUL-terminated, owned by w), or NULL after a failure.
const char *cfg_writer_text(const CfgWriter *w, size_t *len);
// Writes the text to path atomically and frees w. 0 or ERR_IO / ERR_NOMEM / ERR_INTERNAL
// (unbalanced begin/end).
int cfg_writer_commit(CfgWriter *w, const char *path, Err *e);
// Shortest decimal text of v that strtod reads back as exactly v ("0.0015", "1e-06", ".inf");
// whole numbers below 1e15 as "2500.0".
void cfg_format_double(double v, char *buf, size_t n);

#endif
