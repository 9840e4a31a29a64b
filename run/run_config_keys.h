/* run_config_keys.h: the run config's key table, shared by run_config.c (reading, checking),
   run_config_write.c (writing, comparing), run_config_set.c (--set) and run_config_keys.c
   (the table, defaults, texts).
   Internal to run/: everything else goes through run_config.h. */
#ifndef EFFDM_RUN_CONFIG_KEYS_H
#define EFFDM_RUN_CONFIG_KEYS_H

#include <stddef.h>

#include "io/cfg.h"
#include "run/run_config.h"

typedef enum { K_INT, K_DOUBLE, K_BOOL, K_ENUM, K_STR, K_LABEL, K_NAMES, K_OVERRIDES } KeyType;

typedef struct {
    const char *path;
    KeyType type;
    size_t off;                  // offset of the value in RunConfig
    size_t size;                 // K_STR: buffer size
    double lo, hi;               // K_INT, K_DOUBLE: inclusive range
    int hi_open;                 // the range excludes hi (AdamW betas < 1)
    int lo_open;                 // the range excludes lo (eps > 0)
    const char *const *names;    // K_ENUM: the YAML names, in enum order
    int n_names;
    double def[RC_RECIPE_COUNT]; // K_INT, K_DOUBLE, K_BOOL, K_ENUM, K_LABEL defaults (reference, effdm)
    const char *sdef;            // K_STR default
    int is_path;                 // K_STR: a file path (relative ones are resolved, see rc_load_tree)
    const char *zoo;             // path keys: when not given, this file of the shipped teacher (util/zoo.h)
    const char *doc;             // what the key means (Markdown): the key reference is made from these
    const char *ddoc;            // the default as the reference shows it, where it is not a plain value
    int resume;                  // 1: resuming a run needs the same value
} KeyDesc;

// Every scalar key, and one row for each list key (quant.fp_name_contains, quant.overrides).
extern const KeyDesc RC_KEYS[];
extern const int RC_N_KEYS;
extern const double RC_BIG;  // "no upper limit" for counts that only have to fit an int

// Field access through a row's offset.
static inline int *rc_int_at(RunConfig *c, const KeyDesc *k) { return (int *)((char *)c + k->off); }
static inline const int *rc_cint_at(const RunConfig *c, const KeyDesc *k) {
    return (const int *)((const char *)c + k->off);
}
static inline double *rc_dbl_at(RunConfig *c, const KeyDesc *k) { return (double *)((char *)c + k->off); }
static inline const double *rc_cdbl_at(const RunConfig *c, const KeyDesc *k) {
    return (const double *)((const char *)c + k->off);
}
static inline char *rc_str_at(RunConfig *c, const KeyDesc *k) { return (char *)c + k->off; }
static inline const char *rc_cstr_at(const RunConfig *c, const KeyDesc *k) { return (const char *)c + k->off; }
// Enums are stored as their enum type, which is an int-sized integer here.
_Static_assert(sizeof(RcEma) == sizeof(int) && sizeof(RcRecipe) == sizeof(int) && sizeof(RcInit) == sizeof(int) &&
                   sizeof(SamplerKind) == sizeof(int),
               "enum fields are read and written as int");

// The row of a key path, or NULL.
const KeyDesc *rc_key_find(const char *path);
// Value text of a key, for messages ("4", "0.0015", "mse", "auto", "'path'").
void rc_value_text(const RunConfig *c, const KeyDesc *k, char *buf, size_t n);
// The range of a numeric key as text ("an integer in 2..8", "a number > 0 and <= 1").
void rc_range_text(const KeyDesc *k, char *buf, size_t n);
// 1 when v is inside the row's range (NaN never is).
int rc_in_range(const KeyDesc *k, double v);
// A run config from a parsed file (name: for messages and the run.out default) and then the
// one-key documents of --set assignments (sets[0..n_sets), applied in order over the file as
// later lines of it; NULL, 0 for none), then the checks across keys. 0 or an ERR_ code.
// Path keys come out absolute: a relative path written in the file is taken from base_dir (the
// file's folder; NULL: the working directory), one given by --set or a default from the
// working directory; a model path not given at all is the shipped teacher's file.
int rc_load_tree(const CfgNode *root, const char *name, const char *base_dir, CfgNode *const *sets, int n_sets,
                 RunConfig *c, Err *e);

#endif
