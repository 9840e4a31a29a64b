/* run_config.c: the run config's key table, and loading / checking / writing / comparing
   through it. Every scalar key is one row of KEYS: its path, type, place in RunConfig, range,
   defaults per recipe and whether resuming needs it unchanged; the two list keys
   (quant.fp_name_contains, quant.overrides) have rows with their own readers. */
#include "train/run_config.h"

#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/cfg.h"

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
    int resume;                  // 1: resuming a run needs the same value
} KeyDesc;

static const char *const RECIPE_NAMES[] = {"reference", "effdm"};
static const char *const EMA_NAMES[] = {"auto", "on", "off"};
static const char *const INIT_NAMES[] = {"max", "mse"};
static const char *const BRANCH_NAMES[] = {"guided", "both", "all"};
static const char *const REDUCE_NAMES[] = {"sum", "mean"};
static const char *const STEPW_NAMES[] = {"none", "equalize"};
static const char *const SELECT_NAMES[] = {"last", "best_val"};
static const char *const SCHED_NAMES[] = {"linear", "cosine", "constant"};
static const char *const DW_NAMES[] = {"reference", "single"};
static const char *const SAMPLER_NAMES[] = {"ddim", "plms"};
#define N_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

static const double BIG = 1e9;  // "no upper limit" for counts that only have to fit an int

// Rows of one group are contiguous (the writer opens each group once). EFFICIENTDM.md's
// reference defaults are in def[RC_RECIPE_REFERENCE]; effdm's differ only where the header says R.
static const KeyDesc KEYS[] = {
    {.path = "model.ldm_config", .type = K_STR, .off = offsetof(RunConfig, model.ldm_config),
     .size = RC_PATH_MAX, .sdef = "models/zoo/fmnist-ldm/config.yaml", .resume = 1},
    {.path = "model.ckpt", .type = K_STR, .off = offsetof(RunConfig, model.ckpt), .size = RC_PATH_MAX,
     .sdef = "models/zoo/fmnist-ldm/model.ckpt", .resume = 1},
    {.path = "model.ema", .type = K_ENUM, .off = offsetof(RunConfig, model.ema), .names = EMA_NAMES,
     .n_names = N_OF(EMA_NAMES), .def = {RC_EMA_AUTO, RC_EMA_AUTO}, .resume = 1},
    {.path = "model.uncond_label", .type = K_LABEL, .off = offsetof(RunConfig, model.uncond_label), .lo = 0,
     .hi = BIG, .def = {-1, -1}, .resume = 1},

    {.path = "quant.weight_bits", .type = K_INT, .off = offsetof(RunConfig, quant.weight_bits), .lo = 2, .hi = 8,
     .def = {4, 4}, .resume = 1},
    {.path = "quant.act_bits", .type = K_INT, .off = offsetof(RunConfig, quant.act_bits), .lo = 2, .hi = 8,
     .def = {4, 4}, .resume = 1},
    {.path = "quant.weight_init", .type = K_ENUM, .off = offsetof(RunConfig, quant.weight_init),
     .names = INIT_NAMES, .n_names = N_OF(INIT_NAMES), .def = {RC_INIT_MAX, RC_INIT_MAX}, .resume = 1},
    {.path = "quant.act_init", .type = K_ENUM, .off = offsetof(RunConfig, quant.act_init), .names = INIT_NAMES,
     .n_names = N_OF(INIT_NAMES), .def = {RC_INIT_MSE, RC_INIT_MSE}, .resume = 1},
    {.path = "quant.mse_candidates", .type = K_INT, .off = offsetof(RunConfig, quant.mse_candidates), .lo = 1,
     .hi = 100000, .def = {80, 80}, .resume = 1},
    {.path = "quant.mse_shrink", .type = K_DOUBLE, .off = offsetof(RunConfig, quant.mse_shrink), .lo = 0, .hi = 1,
     .hi_open = 1, .def = {0.01, 0.01}, .resume = 1},
    {.path = "quant.mse_norm", .type = K_DOUBLE, .off = offsetof(RunConfig, quant.mse_norm), .lo = 0, .hi = 100,
     .lo_open = 1, .def = {2.4, 2.4}, .resume = 1},
    {.path = "quant.special_bits", .type = K_INT, .off = offsetof(RunConfig, quant.special_bits), .lo = 2, .hi = 8,
     .def = {8, 8}, .resume = 1},
    {.path = "quant.special_first", .type = K_INT, .off = offsetof(RunConfig, quant.special_first), .lo = 0,
     .hi = BIG, .def = {3, 3}, .resume = 1},
    {.path = "quant.special_last", .type = K_INT, .off = offsetof(RunConfig, quant.special_last), .lo = 0,
     .hi = BIG, .def = {1, 1}, .resume = 1},
    {.path = "quant.fp_name_contains", .type = K_NAMES, .off = offsetof(RunConfig, quant.fp_name_contains),
     .resume = 1},
    {.path = "quant.quantize_attention_matmuls", .type = K_BOOL,
     .off = offsetof(RunConfig, quant.quantize_attention_matmuls), .def = {0, 0}, .resume = 1},
    {.path = "quant.lora_rank", .type = K_INT, .off = offsetof(RunConfig, quant.lora_rank), .lo = 1, .hi = 65536,
     .def = {32, 32}, .resume = 1},
    {.path = "quant.talsq", .type = K_BOOL, .off = offsetof(RunConfig, quant.talsq), .def = {1, 1}, .resume = 1},
    {.path = "quant.overrides", .type = K_OVERRIDES, .off = offsetof(RunConfig, quant.overrides), .resume = 1},

    {.path = "calib.steps", .type = K_INT, .off = offsetof(RunConfig, calib.steps), .lo = 1, .hi = 100000,
     .def = {250, 250}, .resume = 1},
    {.path = "calib.eta", .type = K_DOUBLE, .off = offsetof(RunConfig, calib.eta), .lo = 0, .hi = 1,
     .def = {1.0, 1.0}, .resume = 1},
    {.path = "calib.scale", .type = K_DOUBLE, .off = offsetof(RunConfig, calib.scale), .lo = 0, .hi = 1000,
     .def = {1.5, 1.5}, .resume = 1},
    {.path = "calib.n_samples", .type = K_INT, .off = offsetof(RunConfig, calib.n_samples), .lo = 1, .hi = BIG,
     .def = {16, 16}, .resume = 1},
    {.path = "calib.batch", .type = K_INT, .off = offsetof(RunConfig, calib.batch), .lo = 1, .hi = BIG,
     .def = {16, 16}, .resume = 0},
    {.path = "calib.n_inputs", .type = K_INT, .off = offsetof(RunConfig, calib.n_inputs), .lo = 1, .hi = BIG,
     .def = {32, 32}, .resume = 1},
    {.path = "calib.seed", .type = K_INT, .off = offsetof(RunConfig, calib.seed), .lo = 0, .hi = 2147483647.0,
     .def = {7, 7}, .resume = 1},

    {.path = "train.recipe", .type = K_ENUM, .off = offsetof(RunConfig, train.recipe), .names = RECIPE_NAMES,
     .n_names = N_OF(RECIPE_NAMES), .def = {RC_RECIPE_REFERENCE, RC_RECIPE_EFFDM}, .resume = 1},
    {.path = "train.epochs", .type = K_INT, .off = offsetof(RunConfig, train.epochs), .lo = 0, .hi = BIG,
     .def = {160, 160}, .resume = 1},
    {.path = "train.batch", .type = K_INT, .off = offsetof(RunConfig, train.batch), .lo = 1, .hi = BIG,
     .def = {2, 2}, .resume = 1},
    {.path = "train.steps", .type = K_INT, .off = offsetof(RunConfig, train.steps), .lo = 1, .hi = 100000,
     .def = {100, 20}, .resume = 1},
    {.path = "train.eta", .type = K_DOUBLE, .off = offsetof(RunConfig, train.eta), .lo = 0, .hi = 1,
     .def = {1.0, 0.0}, .resume = 1},
    {.path = "train.scale", .type = K_DOUBLE, .off = offsetof(RunConfig, train.scale), .lo = 0, .hi = 1000,
     .def = {1.5, 3.0}, .resume = 1},
    {.path = "train.loss_branches", .type = K_ENUM, .off = offsetof(RunConfig, train.loss_branches),
     .names = BRANCH_NAMES, .n_names = N_OF(BRANCH_NAMES), .def = {RC_BRANCHES_GUIDED, RC_BRANCHES_BOTH},
     .resume = 1},
    {.path = "train.loss_reduction", .type = K_ENUM, .off = offsetof(RunConfig, train.loss_reduction),
     .names = REDUCE_NAMES, .n_names = N_OF(REDUCE_NAMES), .def = {RC_REDUCE_SUM, RC_REDUCE_SUM}, .resume = 1},
    {.path = "train.step_weighting", .type = K_ENUM, .off = offsetof(RunConfig, train.step_weighting),
     .names = STEPW_NAMES, .n_names = N_OF(STEPW_NAMES), .def = {RC_STEPW_NONE, RC_STEPW_EQUALIZE}, .resume = 1},
    {.path = "train.select_epoch", .type = K_ENUM, .off = offsetof(RunConfig, train.select_epoch),
     .names = SELECT_NAMES, .n_names = N_OF(SELECT_NAMES), .def = {RC_SELECT_LAST, RC_SELECT_BEST_VAL},
     .resume = 1},
    {.path = "train.val_every", .type = K_INT, .off = offsetof(RunConfig, train.val_every), .lo = 0, .hi = BIG,
     .def = {10, 10}, .resume = 0},
    {.path = "train.val_inputs", .type = K_INT, .off = offsetof(RunConfig, train.val_inputs), .lo = 1, .hi = BIG,
     .def = {64, 64}, .resume = 1},
    {.path = "train.checkpoint_every", .type = K_INT, .off = offsetof(RunConfig, train.checkpoint_every), .lo = 0,
     .hi = BIG, .def = {1, 1}, .resume = 0},
    {.path = "train.sample_every", .type = K_INT, .off = offsetof(RunConfig, train.sample_every), .lo = 0,
     .hi = BIG, .def = {20, 20}, .resume = 0},
    {.path = "train.seed", .type = K_INT, .off = offsetof(RunConfig, train.seed), .lo = 0, .hi = 2147483647.0,
     .def = {3407, 3407}, .resume = 1},
    {.path = "train.optimizer.lr_lora_divisor", .type = K_DOUBLE,
     .off = offsetof(RunConfig, train.optimizer.lr_lora_divisor), .lo = 0, .lo_open = 1, .hi = 1e30,
     .def = {2500, 2500}, .resume = 1},
    {.path = "train.optimizer.lr_w_delta", .type = K_DOUBLE, .off = offsetof(RunConfig, train.optimizer.lr_w_delta),
     .lo = 0, .hi = 1e3, .def = {1e-6, 1e-6}, .resume = 1},
    {.path = "train.optimizer.lr_act", .type = K_DOUBLE, .off = offsetof(RunConfig, train.optimizer.lr_act),
     .lo = 0, .hi = 1e3, .def = {5e-4, 5e-4}, .resume = 1},
    {.path = "train.optimizer.beta1", .type = K_DOUBLE, .off = offsetof(RunConfig, train.optimizer.beta1), .lo = 0,
     .hi = 1, .hi_open = 1, .def = {0.9, 0.9}, .resume = 1},
    {.path = "train.optimizer.beta2", .type = K_DOUBLE, .off = offsetof(RunConfig, train.optimizer.beta2), .lo = 0,
     .hi = 1, .hi_open = 1, .def = {0.999, 0.999}, .resume = 1},
    {.path = "train.optimizer.eps", .type = K_DOUBLE, .off = offsetof(RunConfig, train.optimizer.eps), .lo = 0,
     .lo_open = 1, .hi = 1, .def = {1e-8, 1e-8}, .resume = 1},
    {.path = "train.optimizer.weight_decay", .type = K_DOUBLE,
     .off = offsetof(RunConfig, train.optimizer.weight_decay), .lo = 0, .hi = 1e3, .def = {0.01, 0.01},
     .resume = 1},
    {.path = "train.optimizer.schedule", .type = K_ENUM, .off = offsetof(RunConfig, train.optimizer.schedule),
     .names = SCHED_NAMES, .n_names = N_OF(SCHED_NAMES), .def = {RC_SCHED_LINEAR, RC_SCHED_LINEAR}, .resume = 1},
    {.path = "train.optimizer.warmup_steps", .type = K_INT,
     .off = offsetof(RunConfig, train.optimizer.warmup_steps), .lo = 0, .hi = BIG, .def = {0, 0}, .resume = 1},
    {.path = "train.optimizer.delta_w_update", .type = K_ENUM,
     .off = offsetof(RunConfig, train.optimizer.delta_w_update), .names = DW_NAMES, .n_names = N_OF(DW_NAMES),
     .def = {RC_DW_REFERENCE, RC_DW_SINGLE}, .resume = 1},

    {.path = "sample.sampler", .type = K_ENUM, .off = offsetof(RunConfig, sample.sampler), .names = SAMPLER_NAMES,
     .n_names = N_OF(SAMPLER_NAMES), .def = {RC_SAMPLER_DDIM, RC_SAMPLER_DDIM}},
    {.path = "sample.steps", .type = K_INT, .off = offsetof(RunConfig, sample.steps), .lo = 1, .hi = 100000,
     .def = {20, 20}},
    {.path = "sample.eta", .type = K_DOUBLE, .off = offsetof(RunConfig, sample.eta), .lo = 0, .hi = 1,
     .def = {0.0, 0.0}},
    {.path = "sample.scale", .type = K_DOUBLE, .off = offsetof(RunConfig, sample.scale), .lo = 0, .hi = 1000,
     .def = {3.0, 3.0}},
    {.path = "sample.grid_rows", .type = K_INT, .off = offsetof(RunConfig, sample.grid_rows), .lo = 0,
     .hi = 10000, .def = {0, 0}},
    {.path = "sample.grid_cols", .type = K_INT, .off = offsetof(RunConfig, sample.grid_cols), .lo = 1,
     .hi = 10000, .def = {8, 8}},
    {.path = "sample.seed", .type = K_INT, .off = offsetof(RunConfig, sample.seed), .lo = 0, .hi = 2147483647.0,
     .def = {1234, 1234}},

    {.path = "run.out", .type = K_STR, .off = offsetof(RunConfig, run.out), .size = RC_PATH_MAX,
     .sdef = "runs/run"},
    {.path = "run.threads", .type = K_INT, .off = offsetof(RunConfig, run.threads), .lo = 0, .hi = 4096,
     .def = {0, 0}},
    {.path = "run.arena_mb", .type = K_INT, .off = offsetof(RunConfig, run.arena_mb), .lo = 16, .hi = 1 << 24,
     .def = {1024, 1024}},
};

static const int N_KEYS = N_OF(KEYS);

// ---------------------------------------------------------------- field access

static int *int_at(RunConfig *c, const KeyDesc *k) { return (int *)((char *)c + k->off); }
static const int *cint_at(const RunConfig *c, const KeyDesc *k) { return (const int *)((const char *)c + k->off); }
static double *dbl_at(RunConfig *c, const KeyDesc *k) { return (double *)((char *)c + k->off); }
static const double *cdbl_at(const RunConfig *c, const KeyDesc *k) {
    return (const double *)((const char *)c + k->off);
}
static char *str_at(RunConfig *c, const KeyDesc *k) { return (char *)c + k->off; }
static const char *cstr_at(const RunConfig *c, const KeyDesc *k) { return (const char *)c + k->off; }
// Enums are stored as their enum type, which is an int-sized integer here.
_Static_assert(sizeof(RcEma) == sizeof(int) && sizeof(RcRecipe) == sizeof(int) && sizeof(RcInit) == sizeof(int),
               "enum fields are read and written as int");

static const KeyDesc *key_find(const char *path) {
    for (int i = 0; i < N_KEYS; i++)
        if (!strcmp(KEYS[i].path, path)) return &KEYS[i];
    return NULL;
}

void run_config_defaults(RunConfig *c, RcRecipe recipe) {
    memset(c, 0, sizeof *c);
    for (int i = 0; i < N_KEYS; i++) {
        const KeyDesc *k = &KEYS[i];
        switch (k->type) {
        case K_INT: case K_BOOL: case K_ENUM: case K_LABEL: *int_at(c, k) = (int)k->def[recipe]; break;
        case K_DOUBLE: *dbl_at(c, k) = k->def[recipe]; break;
        case K_STR: snprintf(str_at(c, k), k->size, "%s", k->sdef); break;
        case K_NAMES:
            snprintf(c->quant.fp_name_contains[0], RC_NAME_MAX, "skip");
            snprintf(c->quant.fp_name_contains[1], RC_NAME_MAX, "op");
            c->quant.n_fp_names = 2;
            break;
        case K_OVERRIDES: c->quant.n_overrides = 0; break;
        }
    }
}

const char *run_config_enum_name(const char *key, int value) {
    const KeyDesc *k = key_find(key);
    if (!k || k->type != K_ENUM || value < 0 || value >= k->n_names) return "?";
    return k->names[value];
}

// Value text of a scalar key, for messages ("4", "0.0015", "mse", "auto").
static void value_text(const RunConfig *c, const KeyDesc *k, char *buf, size_t n) {
    switch (k->type) {
    case K_INT: snprintf(buf, n, "%d", *cint_at(c, k)); break;
    case K_BOOL: snprintf(buf, n, "%s", *cint_at(c, k) ? "true" : "false"); break;
    case K_ENUM: snprintf(buf, n, "%s", run_config_enum_name(k->path, *cint_at(c, k))); break;
    case K_LABEL:
        if (*cint_at(c, k) < 0) snprintf(buf, n, "auto");
        else snprintf(buf, n, "%d", *cint_at(c, k));
        break;
    case K_DOUBLE: cfg_format_double(*cdbl_at(c, k), buf, n); break;
    case K_STR: snprintf(buf, n, "'%s'", cstr_at(c, k)); break;
    case K_NAMES: snprintf(buf, n, "%d names", c->quant.n_fp_names); break;
    case K_OVERRIDES: snprintf(buf, n, "%d overrides", c->quant.n_overrides); break;
    }
}

// "2..8", "> 0", "0 <= x < 1" for range messages.
static void range_text(const KeyDesc *k, char *buf, size_t n) {
    char lo[40], hi[40];
    snprintf(lo, sizeof lo, "%.10g", k->lo);
    snprintf(hi, sizeof hi, "%.10g", k->hi);
    if (k->type == K_INT || k->type == K_LABEL) {
        if (k->hi >= BIG) snprintf(buf, n, "an integer >= %s", lo);
        else snprintf(buf, n, "an integer in %s..%s", lo, hi);
    } else if (k->lo_open) {
        snprintf(buf, n, "a number > %s and <= %s", lo, hi);
    } else if (k->hi_open) {
        snprintf(buf, n, "a number >= %s and < %s", lo, hi);
    } else {
        snprintf(buf, n, "a number in %s..%s", lo, hi);
    }
}

static int in_range(const KeyDesc *k, double v) {
    if (!(v >= k->lo && v <= k->hi)) return 0;  // NaN fails here
    if (k->lo_open && v == k->lo) return 0;
    if (k->hi_open && v == k->hi) return 0;
    return 1;
}

// ---------------------------------------------------------------- reading

typedef struct {
    const char *file;
    Err *e;
} Reader;

static int node_error(const CfgNode *n, Err *e, const char *expected, const char *found) {
    return err_set(e, ERR_VALUE, "%s: %s: expected %s, found %s (line %d)", cfg_file(n), cfg_node_path(n), expected,
                   found, cfg_line(n));
}

static int read_enum(const CfgNode *n, const KeyDesc *k, int *out, Err *e) {
    const char *s;
    if (cfg_as_str(n, &s, e) < 0 || cfg_kind(n) != CFG_SCALAR) return ERR_VALUE;
    for (int i = 0; i < k->n_names; i++)
        if (!strcmp(s, k->names[i])) {
            *out = i;
            return 0;
        }
    char expected[160] = "one of ";
    for (int i = 0; i < k->n_names; i++) {
        strncat(expected, k->names[i], sizeof expected - strlen(expected) - 1);
        if (i + 1 < k->n_names) strncat(expected, ", ", sizeof expected - strlen(expected) - 1);
    }
    char found[96];
    snprintf(found, sizeof found, "'%.60s'", s);
    int sug = cfg_suggest(s, k->names, k->n_names);
    if (sug >= 0)
        return err_set(e, ERR_VALUE, "%s: %s: expected %s, found %s (line %d); did you mean '%s'?", cfg_file(n),
                       cfg_node_path(n), expected, found, cfg_line(n), k->names[sug]);
    return node_error(n, e, expected, found);
}

static int read_int_ranged(const CfgNode *n, const KeyDesc *k, int *out, Err *e) {
    int v;
    if (cfg_as_int(n, &v, e) < 0) return ERR_VALUE;
    if (!in_range(k, v)) {
        char expected[96], found[32];
        range_text(k, expected, sizeof expected);
        snprintf(found, sizeof found, "%d", v);
        return node_error(n, e, expected, found);
    }
    *out = v;
    return 0;
}

static int read_string(const CfgNode *n, const char *what, char *out, size_t size, Err *e) {
    const char *s;
    if (cfg_as_str(n, &s, e) < 0 || cfg_kind(n) != CFG_SCALAR) return ERR_VALUE;
    if (!s[0]) return node_error(n, e, what, "an empty string");
    if (strlen(s) >= size) {
        char expected[96];
        snprintf(expected, sizeof expected, "%s of at most %zu characters", what, size - 1);
        char found[48];
        snprintf(found, sizeof found, "%zu characters", strlen(s));
        return node_error(n, e, expected, found);
    }
    memset(out, 0, size);  // no bytes of an earlier value behind the NUL: equal configs are equal bytes
    memcpy(out, s, strlen(s) + 1);
    return 0;
}

static int read_names(const CfgNode *n, RunConfig *c, Err *e) {
    if (cfg_kind(n) != CFG_LIST) return node_error(n, e, "a list of name parts like [skip, op]", "a non-list");
    if (cfg_len(n) > RC_MAX_FP_NAMES) {
        char found[32];
        snprintf(found, sizeof found, "%d", cfg_len(n));
        char expected[64];
        snprintf(expected, sizeof expected, "at most %d entries", RC_MAX_FP_NAMES);
        return node_error(n, e, expected, found);
    }
    for (int i = 0; i < cfg_len(n); i++)
        if (read_string(cfg_at(n, i), "a name part", c->quant.fp_name_contains[i], RC_NAME_MAX, e)) return ERR_VALUE;
    for (int i = cfg_len(n); i < RC_MAX_FP_NAMES; i++) memset(c->quant.fp_name_contains[i], 0, RC_NAME_MAX);
    c->quant.n_fp_names = cfg_len(n);
    return 0;
}

static const char *const OVERRIDE_KEYS[] = {"pattern", "weight_bits", "act_bits", "keep_fp"};

static int read_overrides(const CfgNode *n, RunConfig *c, Err *e) {
    if (cfg_kind(n) != CFG_LIST)
        return node_error(n, e, "a list of {pattern, weight_bits, act_bits, keep_fp} maps", "a non-list");
    if (cfg_len(n) > RC_MAX_OVERRIDES) {
        char found[32], expected[64];
        snprintf(found, sizeof found, "%d", cfg_len(n));
        snprintf(expected, sizeof expected, "at most %d overrides", RC_MAX_OVERRIDES);
        return node_error(n, e, expected, found);
    }
    static const KeyDesc bits = {.path = "bits", .type = K_INT, .lo = 2, .hi = 8};
    memset(c->quant.overrides, 0, sizeof c->quant.overrides);
    for (int i = 0; i < cfg_len(n); i++) {
        const CfgNode *m = cfg_at(n, i);
        RcOverride *o = &c->quant.overrides[i];
        if (cfg_kind(m) != CFG_MAP)
            return node_error(m, e, "a map {pattern, weight_bits, act_bits, keep_fp}", "a non-map");
        if (cfg_check_keys(m, OVERRIDE_KEYS, N_OF(OVERRIDE_KEYS), e)) return e->code;
        const CfgNode *p = cfg_child(m, "pattern");
        if (!p)
            return err_set(e, ERR_KEY, "%s: %s: missing key 'pattern' (a glob on layer names) (line %d)", cfg_file(m),
                           cfg_node_path(m), cfg_line(m));
        if (read_string(p, "a glob pattern", o->pattern, RC_PATTERN_MAX, e)) return ERR_VALUE;
        const CfgNode *wb = cfg_child(m, "weight_bits"), *ab = cfg_child(m, "act_bits");
        const CfgNode *kf = cfg_child(m, "keep_fp");
        if (wb && read_int_ranged(wb, &bits, &o->weight_bits, e)) return ERR_VALUE;
        if (ab && read_int_ranged(ab, &bits, &o->act_bits, e)) return ERR_VALUE;
        if (kf && cfg_as_bool(kf, &o->keep_fp, e) < 0) return ERR_VALUE;
        if (o->keep_fp && (wb || ab))
            return err_set(e, ERR_VALUE, "%s: %s: keep_fp: true leaves the layer FP; it cannot also set bits "
                           "(line %d)", cfg_file(m), cfg_node_path(m), cfg_line(m));
        if (!wb && !ab && !kf)
            return err_set(e, ERR_VALUE, "%s: %s: an override needs weight_bits, act_bits or keep_fp (line %d)",
                           cfg_file(m), cfg_node_path(m), cfg_line(m));
    }
    c->quant.n_overrides = cfg_len(n);
    return 0;
}

static int read_key(const CfgNode *n, const KeyDesc *k, RunConfig *c, Err *e) {
    switch (k->type) {
    case K_INT: return read_int_ranged(n, k, int_at(c, k), e);
    case K_BOOL: return cfg_as_bool(n, int_at(c, k), e) < 0 ? ERR_VALUE : 0;
    case K_ENUM: return read_enum(n, k, int_at(c, k), e);
    case K_STR: return read_string(n, "a path", str_at(c, k), k->size, e);
    case K_NAMES: return read_names(n, c, e);
    case K_OVERRIDES: return read_overrides(n, c, e);
    case K_LABEL:
        if (cfg_kind(n) == CFG_SCALAR && !cfg_is_quoted(n) && !strcmp(cfg_scalar(n), "auto")) {
            *int_at(c, k) = -1;
            return 0;
        }
        if (cfg_kind(n) == CFG_SCALAR && cfg_is_quoted(n)) return node_error(n, e, "auto or an integer >= 0", "a string");
        {
            int v;
            if (cfg_as_int(n, &v, NULL) < 0 || v < 0) {
                char found[96];
                const char *s = cfg_scalar(n);
                if (s) snprintf(found, sizeof found, "'%.60s'", s);
                else snprintf(found, sizeof found, "a %s", cfg_kind(n) == CFG_MAP ? "map" : "list");
                return node_error(n, e, "auto or an integer >= 0", found);
            }
            *int_at(c, k) = v;
        }
        return 0;
    case K_DOUBLE: {
        double v;
        if (cfg_as_double(n, &v, e) < 0) return ERR_VALUE;
        if (!in_range(k, v)) {
            char expected[96], found[40];
            range_text(k, expected, sizeof expected);
            cfg_format_double(v, found, sizeof found);
            return node_error(n, e, expected, found);
        }
        *dbl_at(c, k) = v;
        return 0;
    }
    }
    return err_set(e, ERR_INTERNAL, "run config: key type of %s", k->path);
}

// 1 when some key lives under prefix ("train" or "train.optimizer").
static int is_group(const char *prefix) {
    size_t n = strlen(prefix);
    for (int i = 0; i < N_KEYS; i++)
        if (!strncmp(KEYS[i].path, prefix, n) && KEYS[i].path[n] == '.') return 1;
    return 0;
}

// The next path component of key path `full` below group `prefix` ("" for the top), into buf.
static void child_name(const char *full, const char *prefix, char *buf, size_t n) {
    const char *s = full + strlen(prefix) + (prefix[0] ? 1 : 0);
    size_t len = strcspn(s, ".");
    if (len >= n) len = n - 1;
    memcpy(buf, s, len);
    buf[len] = 0;
}

static int unknown_key(const CfgNode *map, const char *prefix, const char *key, int line, Err *e) {
    // Candidates: the valid names at this level.
    const char *cands[128];
    char names[128][48];
    int nc = 0;
    size_t pl = strlen(prefix);
    for (int i = 0; i < N_KEYS && nc < 128; i++) {
        if (pl && (strncmp(KEYS[i].path, prefix, pl) || KEYS[i].path[pl] != '.')) continue;
        child_name(KEYS[i].path, prefix, names[nc], sizeof names[nc]);
        int dup = 0;
        for (int j = 0; j < nc && !dup; j++) dup = !strcmp(names[j], names[nc]);
        if (!dup) {
            cands[nc] = names[nc];
            nc++;
        }
    }
    char full[320];
    snprintf(full, sizeof full, "%s%s%s", prefix, pl ? "." : "", key);
    int s = cfg_suggest(key, cands, nc);
    if (s >= 0)
        return err_set(e, ERR_KEY, "%s: %s: unknown key (line %d); did you mean '%s%s%s'?", cfg_file(map), full,
                       line, prefix, pl ? "." : "", cands[s]);
    // The same name in another group ("train.weight_bits" -> "quant.weight_bits").
    for (int i = 0; i < N_KEYS; i++) {
        const char *leaf = strrchr(KEYS[i].path, '.');
        if (leaf && !strcmp(leaf + 1, key))
            return err_set(e, ERR_KEY, "%s: %s: unknown key (line %d); did you mean '%s'?", cfg_file(map), full,
                           line, KEYS[i].path);
    }
    char valid[400] = "";
    for (int i = 0; i < nc; i++) {
        strncat(valid, cands[i], sizeof valid - strlen(valid) - 1);
        if (i + 1 < nc) strncat(valid, ", ", sizeof valid - strlen(valid) - 1);
    }
    return err_set(e, ERR_KEY, "%s: %s: unknown key (line %d); valid here: %s", cfg_file(map), full, line, valid);
}

static int read_group(const CfgNode *map, const char *prefix, RunConfig *c, Err *e) {
    if (cfg_is_null(map)) return 0;  // "quant:" with every key commented out
    if (cfg_kind(map) != CFG_MAP) {
        char expected[128];
        snprintf(expected, sizeof expected, "a map of %s keys", prefix[0] ? prefix : "groups (model, quant, ...)");
        const char *s = cfg_scalar(map);
        char found[96];
        if (s) snprintf(found, sizeof found, "'%.60s'", s);
        else snprintf(found, sizeof found, "a list");
        if (!prefix[0])
            return err_set(e, ERR_VALUE, "%s: expected %s at the top level, found %s", cfg_file(map), expected, found);
        return node_error(map, e, expected, found);
    }
    for (int i = 0; i < cfg_len(map); i++) {
        const char *key = cfg_key_at(map, i);
        const CfgNode *child = cfg_at(map, i);
        char full[320];
        snprintf(full, sizeof full, "%s%s%s", prefix, prefix[0] ? "." : "", key);
        const KeyDesc *k = key_find(full);
        if (k) {
            if (read_key(child, k, c, e)) return e->code ? e->code : ERR_VALUE;
        } else if (is_group(full)) {
            if (read_group(child, full, c, e)) return e->code;
        } else {
            return unknown_key(map, prefix, key, cfg_key_line(map, i), e);
        }
    }
    return 0;
}

// Checks that involve several keys. file: for messages ("run config" without one).
static int check_consistency(const RunConfig *c, const char *file, Err *e) {
    const RcTrain *t = &c->train;
    if (t->select_epoch == RC_SELECT_BEST_VAL && t->val_every < 1)
        return err_set(e, ERR_VALUE, "%s: train.select_epoch: best_val needs train.val_every >= 1, found %d", file,
                       t->val_every);
    double span = (c->quant.mse_candidates - 1) * c->quant.mse_shrink;
    if (!(span < 1.0))
        return err_set(e, ERR_VALUE, "%s: quant.mse_shrink: (mse_candidates - 1) * mse_shrink must be < 1 (the "
                       "smallest range would be empty), found (%d - 1) * %g", file, c->quant.mse_candidates,
                       c->quant.mse_shrink);
    if (t->epochs > 0 && (double)t->optimizer.warmup_steps > (double)t->epochs * t->steps)
        return err_set(e, ERR_VALUE, "%s: train.optimizer.warmup_steps: expected at most epochs * steps = %.0f, found %d",
                       file, (double)t->epochs * t->steps, t->optimizer.warmup_steps);
    return 0;
}

int run_config_validate(const RunConfig *c, Err *e) {
    for (int i = 0; i < N_KEYS; i++) {
        const KeyDesc *k = &KEYS[i];
        char expected[96], found[64];
        int bad = 0;
        switch (k->type) {
        case K_INT: bad = !in_range(k, *cint_at(c, k)); break;
        case K_DOUBLE: bad = !in_range(k, *cdbl_at(c, k)); break;
        case K_BOOL: bad = *cint_at(c, k) != 0 && *cint_at(c, k) != 1; break;
        case K_ENUM: bad = *cint_at(c, k) < 0 || *cint_at(c, k) >= k->n_names; break;
        case K_LABEL: bad = *cint_at(c, k) < -1; break;
        case K_STR: {
            const char *s = cstr_at(c, k);
            bad = !s[0] || !memchr(s, 0, k->size);
            break;
        }
        case K_NAMES: {
            bad = c->quant.n_fp_names < 0 || c->quant.n_fp_names > RC_MAX_FP_NAMES;
            for (int j = 0; !bad && j < c->quant.n_fp_names; j++)
                bad = !c->quant.fp_name_contains[j][0] || !memchr(c->quant.fp_name_contains[j], 0, RC_NAME_MAX);
            break;
        }
        case K_OVERRIDES: {
            bad = c->quant.n_overrides < 0 || c->quant.n_overrides > RC_MAX_OVERRIDES;
            for (int j = 0; !bad && j < c->quant.n_overrides; j++) {
                const RcOverride *o = &c->quant.overrides[j];
                int wb = o->weight_bits, ab = o->act_bits;
                bad = !o->pattern[0] || !memchr(o->pattern, 0, RC_PATTERN_MAX) || (wb && (wb < 2 || wb > 8)) ||
                      (ab && (ab < 2 || ab > 8)) || (o->keep_fp != 0 && o->keep_fp != 1) ||
                      (o->keep_fp && (wb || ab)) || (!o->keep_fp && !wb && !ab);
            }
            break;
        }
        }
        if (!bad) continue;
        if (k->type == K_INT || k->type == K_DOUBLE) {
            range_text(k, expected, sizeof expected);
            value_text(c, k, found, sizeof found);
            return err_set(e, ERR_VALUE, "run config: %s: expected %s, found %s", k->path, expected, found);
        }
        return err_set(e, ERR_VALUE, "run config: %s: invalid value", k->path);
    }
    return check_consistency(c, "run config", e);
}

// "runs/<stem>" from a config file name.
static void default_out(const char *name, char *out, size_t n) {
    memset(out, 0, n);
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    size_t len = strcspn(base, ".");
    if (len == 0 || len > 200) {
        snprintf(out, n, "runs/run");
        return;
    }
    snprintf(out, n, "runs/%.*s", (int)len, base);
}

static int load_tree(const CfgNode *root, const char *name, RunConfig *c, Err *e) {
    // The recipe first: it picks the defaults of the other keys.
    RcRecipe recipe = RC_RECIPE_EFFDM;
    const CfgNode *train = cfg_child(root, "train");
    const CfgNode *rn = cfg_child(train, "recipe");
    if (rn) {
        int r;
        if (read_enum(rn, key_find("train.recipe"), &r, e)) return ERR_VALUE;
        recipe = (RcRecipe)r;
    }
    run_config_defaults(c, recipe);
    default_out(name, c->run.out, sizeof c->run.out);
    if (read_group(root, "", c, e)) return e->code;
    return check_consistency(c, name, e);
}

int run_config_load_mem(const char *text, size_t len, const char *name, RunConfig *c, Err *e) {
    CfgNode *root;
    if (!name) name = "(memory)";
    int r = cfg_load_mem(text, len, name, &root, e);
    if (r) return r;
    r = load_tree(root, name, c, e);
    cfg_free(root);
    return r;
}

int run_config_load(const char *path, RunConfig *c, Err *e) {
    CfgNode *root;
    int r = cfg_load(path, &root, e);
    if (r) return r;
    r = load_tree(root, path, c, e);
    cfg_free(root);
    return r;
}

// ---------------------------------------------------------------- writing

static void write_key(CfgWriter *w, const RunConfig *c, const KeyDesc *k, const char *leaf) {
    switch (k->type) {
    case K_INT: cfg_writer_int(w, leaf, *cint_at(c, k)); break;
    case K_BOOL: cfg_writer_bool(w, leaf, *cint_at(c, k)); break;
    case K_ENUM: cfg_writer_str(w, leaf, run_config_enum_name(k->path, *cint_at(c, k))); break;
    case K_LABEL:
        if (*cint_at(c, k) < 0) cfg_writer_str(w, leaf, "auto");
        else cfg_writer_int(w, leaf, *cint_at(c, k));
        break;
    case K_DOUBLE: cfg_writer_double(w, leaf, *cdbl_at(c, k)); break;
    case K_STR: cfg_writer_str(w, leaf, cstr_at(c, k)); break;
    case K_NAMES:
        cfg_writer_list_begin(w, leaf);
        for (int i = 0; i < c->quant.n_fp_names; i++) cfg_writer_str(w, NULL, c->quant.fp_name_contains[i]);
        cfg_writer_list_end(w);
        break;
    case K_OVERRIDES:
        cfg_writer_list_begin(w, leaf);
        for (int i = 0; i < c->quant.n_overrides; i++) {
            const RcOverride *o = &c->quant.overrides[i];
            cfg_writer_map_begin(w, NULL);
            cfg_writer_str(w, "pattern", o->pattern);
            if (o->weight_bits) cfg_writer_int(w, "weight_bits", o->weight_bits);
            if (o->act_bits) cfg_writer_int(w, "act_bits", o->act_bits);
            if (o->keep_fp) cfg_writer_bool(w, "keep_fp", 1);
            cfg_writer_map_end(w);
        }
        cfg_writer_list_end(w);
        break;
    }
}

static int build_yaml(const RunConfig *c, CfgWriter *w) {
    cfg_writer_init(w);
    cfg_writer_comment(w, "effdm run config, fully resolved: every key with its value (defaults filled in).\n"
                          "Keys and defaults: train/run_config.h. Written by effdm " EFFDM_VERSION ".");
    char open[4][48];  // the groups open now, outermost first
    int n_open = 0;
    for (int i = 0; i < N_KEYS; i++) {
        const KeyDesc *k = &KEYS[i];
        char segs[4][48];
        int ns = 0;
        const char *s = k->path;
        while (ns < 4) {
            size_t len = strcspn(s, ".");
            if (len >= sizeof segs[0]) return ERR_INTERNAL;
            memcpy(segs[ns], s, len);
            segs[ns][len] = 0;
            ns++;
            if (!s[len]) break;
            s += len + 1;
        }
        int groups = ns - 1, same = 0;
        while (same < n_open && same < groups && !strcmp(open[same], segs[same])) same++;
        while (n_open > same) {
            cfg_writer_map_end(w);
            n_open--;
        }
        for (int g = same; g < groups; g++) {
            cfg_writer_map_begin(w, segs[g]);
            snprintf(open[n_open++], sizeof open[0], "%s", segs[g]);
        }
        write_key(w, c, k, segs[ns - 1]);
    }
    while (n_open-- > 0) cfg_writer_map_end(w);
    return 0;
}

int run_config_to_yaml(const RunConfig *c, char **text, size_t *len, Err *e) {
    CfgWriter w;
    *text = NULL;
    if (build_yaml(c, &w)) {
        cfg_writer_free(&w);
        return err_set(e, ERR_INTERNAL, "run config: key table nested too deeply");
    }
    size_t n;
    const char *t = cfg_writer_text(&w, &n);
    if (!t) {
        cfg_writer_free(&w);
        return err_set(e, ERR_NOMEM, "run config: out of memory while writing YAML");
    }
    *text = malloc(n + 1);
    if (!*text) {
        cfg_writer_free(&w);
        return err_set(e, ERR_NOMEM, "run config: out of memory while writing YAML");
    }
    memcpy(*text, t, n + 1);
    if (len) *len = n;
    cfg_writer_free(&w);
    return 0;
}

int run_config_write(const RunConfig *c, const char *path, Err *e) {
    CfgWriter w;
    if (build_yaml(c, &w)) {
        cfg_writer_free(&w);
        return err_set(e, ERR_INTERNAL, "%s: run config key table nested too deeply", path);
    }
    return cfg_writer_commit(&w, path, e);
}

// ---------------------------------------------------------------- comparing

static int key_equal(const RunConfig *a, const RunConfig *b, const KeyDesc *k) {
    switch (k->type) {
    case K_INT: case K_BOOL: case K_ENUM: case K_LABEL: return *cint_at(a, k) == *cint_at(b, k);
    case K_DOUBLE: return !memcmp(cdbl_at(a, k), cdbl_at(b, k), sizeof(double));
    case K_STR: return !strcmp(cstr_at(a, k), cstr_at(b, k));
    case K_NAMES:
        if (a->quant.n_fp_names != b->quant.n_fp_names) return 0;
        for (int i = 0; i < a->quant.n_fp_names; i++)
            if (strcmp(a->quant.fp_name_contains[i], b->quant.fp_name_contains[i])) return 0;
        return 1;
    case K_OVERRIDES:
        if (a->quant.n_overrides != b->quant.n_overrides) return 0;
        for (int i = 0; i < a->quant.n_overrides; i++) {
            const RcOverride *x = &a->quant.overrides[i], *y = &b->quant.overrides[i];
            if (strcmp(x->pattern, y->pattern) || x->weight_bits != y->weight_bits || x->act_bits != y->act_bits ||
                x->keep_fp != y->keep_fp)
                return 0;
        }
        return 1;
    }
    return 0;
}

const char *run_config_first_diff(const RunConfig *a, const RunConfig *b) {
    for (int i = 0; i < N_KEYS; i++)
        if (!key_equal(a, b, &KEYS[i])) return KEYS[i].path;
    return NULL;
}

int run_config_compare(const RunConfig *run, const RunConfig *now, const char **key, Err *e) {
    if (key) *key = NULL;
    for (int i = 0; i < N_KEYS; i++) {
        const KeyDesc *k = &KEYS[i];
        if (!k->resume || key_equal(run, now, k)) continue;
        if (key) *key = k->path;
        char va[RC_PATH_MAX + 8], vb[RC_PATH_MAX + 8];
        value_text(run, k, va, sizeof va);
        value_text(now, k, vb, sizeof vb);
        if (k->type == K_NAMES || k->type == K_OVERRIDES)
            return err_set(e, ERR_VALUE, "cannot resume: %s differ between the run's config and the new one "
                           "(%s in the run, %s now)", k->path, va, vb);
        return err_set(e, ERR_VALUE, "cannot resume: %s is %.200s in the run and %.200s now; resuming needs the "
                       "same value", k->path, va, vb);
    }
    return 0;
}

// ---------------------------------------------------------------- layers

void run_config_layer_quant(const RunConfig *c, const char *name, int special, RcLayerQuant *out) {
    memset(out, 0, sizeof *out);
    const char *leaf = strrchr(name, '.');
    leaf = leaf ? leaf + 1 : name;
    out->quantized = 1;
    for (int i = 0; i < c->quant.n_fp_names; i++)
        if (strstr(leaf, c->quant.fp_name_contains[i])) out->quantized = 0;
    out->weight_bits = special ? c->quant.special_bits : c->quant.weight_bits;
    out->act_bits = special ? c->quant.special_bits : c->quant.act_bits;
    for (int i = 0; i < c->quant.n_overrides; i++) {
        const RcOverride *o = &c->quant.overrides[i];
        if (fnmatch(o->pattern, name, 0) != 0) continue;
        out->matched |= (uint64_t)1 << i;
        if (o->keep_fp) out->quantized = 0;
        if (o->weight_bits) out->weight_bits = o->weight_bits;
        if (o->act_bits) out->act_bits = o->act_bits;
    }
    if (!out->quantized) out->weight_bits = out->act_bits = 0;
}
