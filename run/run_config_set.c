/* run_config_set.c: --set KEY=VALUE over a run config file (run_config.h "Command-line
   overrides"). Each assignment becomes a one-key YAML document,

       --set train.optimizer.lr_act=1e-4   ->   train:
                                                  optimizer:
                                                    lr_act: 1e-4

   read by the file's own reader after the file (rc_load_tree): one parser, one key table,
   the same type and range checks, the same "did you mean" for unknown keys, and list keys
   in YAML flow form (quant.fp_name_contains=[skip, op]). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/cfg.h"
#include "run/run_config_keys.h"
#include "util/path.h"

enum { SET_KEY_MAX = 256 };  // longer than any key path of the table

// 1 when key is a dotted path of names ([A-Za-z0-9_]+ separated by single dots).
static int key_path_ok(const char *key, size_t n) {
    if (n == 0 || n >= SET_KEY_MAX || key[0] == '.' || key[n - 1] == '.') return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = key[i];
        if (ch == '.') {
            if (key[i + 1] == '.') return 0;
            continue;
        }
        if (!(ch == '_' || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))) return 0;
    }
    return 1;
}

// The YAML document of one assignment (see top), parsed; its name in messages is "--set <arg>".
static int set_doc(const char *arg, CfgNode **doc, Err *e) {
    *doc = NULL;
    const char *eq = strchr(arg, '=');
    if (!eq || !key_path_ok(arg, (size_t)(eq - arg)))
        return err_set(e, ERR_ARG, "--set %.300s: expected KEY=VALUE with a run-config key path (train.epochs=4)",
                       arg);
    const char *value = eq + 1;
    if (strpbrk(value, "\r\n"))
        return err_set(e, ERR_ARG, "--set %.300s: the value must be one line", arg);
    size_t klen = (size_t)(eq - arg), vlen = strlen(value);
    int depth = 0;
    for (size_t i = 0; i < klen; i++) depth += arg[i] == '.';
    // per component: indentation, the name, ":\n" (the last one ": " and the value)
    size_t cap = klen + (size_t)(depth + 1) * (2 * (size_t)depth + 3) + vlen + 2;
    char *text = malloc(cap);
    if (!text) return err_set(e, ERR_NOMEM, "out of memory");
    size_t n = 0;
    const char *s = arg;
    for (int level = 0; level <= depth; level++) {
        size_t len = strcspn(s, ".=");
        n += (size_t)snprintf(text + n, cap - n, "%*s%.*s:%s", 2 * level, "", (int)len, s, level < depth ? "\n" : " ");
        s += len + 1;
    }
    n += (size_t)snprintf(text + n, cap - n, "%s\n", value);
    char name[400];
    snprintf(name, sizeof name, "--set %.380s", arg);
    int rc = cfg_load_mem(text, n, name, doc, e);
    free(text);
    if (rc && e->code == ERR_FORMAT) {  // libyaml's lines and columns are those of the document above
        *e = (Err){0};                  // (err_set keeps a first error)
        return err_set(e, ERR_FORMAT, "--set %.300s: the value is not valid YAML (write it as in the config file; "
                       "quote a string with special characters)", arg);
    }
    return rc;
}

// An assignment's document has its key on line depth + 1: not a line the user wrote, so its
// messages drop "(line N)".
static void drop_line(Err *e) {
    if (strncmp(e->msg, "--set ", 6) != 0) return;
    char *p = strstr(e->msg, " (line ");
    if (!p) return;
    char *q = p + 7;
    while (*q >= '0' && *q <= '9') q++;
    if (*q != ')') return;
    memmove(p, q + 1, strlen(q + 1) + 1);
}

// Parses the assignments, then reads root and them. Frees the documents.
static int load_with_sets(const CfgNode *root, const char *name, const char *base_dir, const char *const *sets,
                          int n_sets, RunConfig *c, Err *e) {
    CfgNode **docs = calloc((size_t)(n_sets > 0 ? n_sets : 1), sizeof *docs);
    if (!docs) return err_set(e, ERR_NOMEM, "out of memory");
    int rc = 0;
    for (int i = 0; i < n_sets && !rc; i++) rc = set_doc(sets[i], &docs[i], e);
    if (!rc) rc = rc_load_tree(root, name, base_dir, docs, n_sets, c, e);
    if (rc) drop_line(e);
    for (int i = 0; i < n_sets; i++) cfg_free(docs[i]);
    free(docs);
    return rc;
}

int run_config_load_set(const char *path, const char *const *sets, int n_sets, RunConfig *c, Err *e) {
    CfgNode *root;
    int r = cfg_load(path, &root, e);
    if (r) return r;
    char dir[RC_PATH_MAX];
    path_dir(dir, sizeof dir, path);
    r = load_with_sets(root, path, dir, sets, n_sets, c, e);
    cfg_free(root);
    return r;
}

int run_config_load_mem_set(const char *text, size_t len, const char *name, const char *const *sets, int n_sets,
                            RunConfig *c, Err *e) {
    CfgNode *root;
    if (!name) name = "(memory)";
    int r = cfg_load_mem(text, len, name, &root, e);
    if (r) return r;
    r = load_with_sets(root, name, NULL, sets, n_sets, c, e);
    cfg_free(root);
    return r;
}
