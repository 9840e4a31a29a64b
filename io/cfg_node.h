/* cfg_node.h: the CfgNode tree's layout, shared by cfg.c (parsing) and cfg_get.c (navigation,
   typed getters). Internal to io/: everything else goes through cfg.h. */
#ifndef EFFDM_CFG_NODE_H
#define EFFDM_CFG_NODE_H

#include "io/cfg.h"

typedef struct CfgDoc {
    char *file;
    CfgNode **all;      // every node of the tree (cfg_free frees these)
    size_t n_all, cap_all;
    size_t bytes;       // keys + scalars + paths, against CFG_MAX_TREE_BYTES
} CfgDoc;

struct CfgNode {
    CfgKind kind;
    CfgDoc *doc;
    char *path;
    char *text;         // scalars: the value
    unsigned char quoted, null_;
    int line, col;      // 1-based
    int n, cap;
    char **keys;        // maps: n keys
    int *key_lines;     // maps: the line of each key
    CfgNode **items;    // maps and lists: n children
};

// "(top level)" for the root's empty path, for messages.
static inline const char *cfg_shown_path(const char *p) { return p[0] ? p : "(top level)"; }

#endif
