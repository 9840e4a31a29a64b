/* cfg.h: YAML files (libyaml) as a tree of maps, lists and scalars, with typed getters
   whose errors name the file and the full key path ("model.params.unet_config.params.num_heads").

       CfgNode *root;
       if (cfg_load(path, &root, &e)) return e.code;
       const CfgNode *p = cfg_path(root, "model.params.unet_config.params");
       int heads = -1;
       if (cfg_get_int(p, "num_heads", &heads, &e) < 0) return e.code;   // 1: absent, heads unchanged
       cfg_free(root);

   Getter return values: 0 found and valid (*out set), 1 absent (*out unchanged),
   negative = -ERR_... code (e filled: "file: key.path: expected an integer, found 'abc'").
   Duplicate keys in one map are an error at load time. Anchors/aliases are resolved.
*/
#ifndef EFFDM_CFG_H
#define EFFDM_CFG_H

#include "util/err.h"

typedef enum { CFG_SCALAR, CFG_MAP, CFG_LIST } CfgKind;

typedef struct CfgNode CfgNode;

// Parses a YAML file. 0 or an ERR_ code (ERR_IO, ERR_FORMAT with line/column).
int cfg_load(const char *path, CfgNode **root, Err *e);
// Parses YAML text (name is used in messages).
int cfg_load_mem(const char *text, size_t len, const char *name, CfgNode **root, Err *e);
void cfg_free(CfgNode *root);

CfgKind cfg_kind(const CfgNode *n);
// Full dotted path of the node from the root ("model.params.timesteps"; list items as "[2]").
const char *cfg_node_path(const CfgNode *n);
// File the tree was read from.
const char *cfg_file(const CfgNode *n);
// Child of a map by key, or NULL (also NULL when n is not a map).
const CfgNode *cfg_child(const CfgNode *map, const char *key);
// Descendant by dotted path of map keys, or NULL.
const CfgNode *cfg_path(const CfgNode *root, const char *dotted);
// Number of entries of a map or list (0 for scalars); i-th entry, and for maps its key.
int cfg_len(const CfgNode *n);
const CfgNode *cfg_at(const CfgNode *n, int i);
const char *cfg_key_at(const CfgNode *map, int i);
// Scalar text, or NULL if not a scalar.
const char *cfg_scalar(const CfgNode *n);

// Typed getters on a map's child `key` (see return values above). Booleans accept
// true/false/True/False/yes/no; numbers accept YAML forms like 1e-4 and 0.0015.
int cfg_get_int(const CfgNode *map, const char *key, int *out, Err *e);
int cfg_get_double(const CfgNode *map, const char *key, double *out, Err *e);
int cfg_get_bool(const CfgNode *map, const char *key, int *out, Err *e);
int cfg_get_str(const CfgNode *map, const char *key, const char **out, Err *e);  // *out owned by the tree
// A list of integers (a scalar is accepted as a one-element list); up to max entries.
int cfg_get_int_list(const CfgNode *map, const char *key, int *out, int max, int *count, Err *e);
// Fails with ERR_KEY naming the first key of map not in allowed[0..n) (typo protection).
int cfg_check_keys(const CfgNode *map, const char *const *allowed, int n, Err *e);

#endif
