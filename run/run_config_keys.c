/* run_config_keys.c: the run config's key table. Every scalar key is one row of RC_KEYS: its
   path, type, place in RunConfig, range, defaults per recipe and whether resuming needs it
   unchanged; the two list keys (quant.fp_name_contains, quant.overrides) have rows whose
   values the reader and writer handle themselves. Also: defaults, and value texts for messages. */
#include "run/run_config_keys.h"

#include <stdio.h>
#include <string.h>

#include "io/cfg.h"
#include "qalora/qkind.h"

static const char *const RECIPE_NAMES[] = {"reference", "effdm"};
static const char *const EMA_NAMES[] = {"auto", "on", "off"};
static const char *const INIT_NAMES[] = {"max", "mse"};
static const char *const BRANCH_NAMES[] = {"guided", "both", "all"};
static const char *const REDUCE_NAMES[] = {"sum", "mean"};
static const char *const STEPW_NAMES[] = {"none", "equalize", "ddim"};
static const char *const SELECT_NAMES[] = {"last", "best_val", "best_sampled"};
static const char *const SCHED_NAMES[] = {"linear", "cosine", "constant"};
static const char *const DW_NAMES[] = {"reference", "single"};
static const char *const TRAJ_NAMES[] = {"teacher", "student"};
static const char *const GAIN_NAMES[] = {"off", "fit"};
static const char *const SAMPLER_NAMES[] = {"ddim", "plms"};
static const char *const FP_LAYERS_NAMES[] = {"f32", "f16"};
static const char *const ACT_RANGES_NAMES[] = {"shared", "per_step"};
#define N_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

const double RC_BIG = 1e9;

// Rows of one group are contiguous (the writer opens each group once). docs/METHOD.md's
// reference defaults are in def[RC_RECIPE_REFERENCE]; effdm's differ only where the header says R.
const KeyDesc RC_KEYS[] = {
    {.path = "model.ldm_config", .type = K_STR, .off = offsetof(RunConfig, model.ldm_config),
     .size = RC_PATH_MAX, .sdef = "models/zoo/fmnist-ldm/config.yaml", .resume = 1},
    {.path = "model.ckpt", .type = K_STR, .off = offsetof(RunConfig, model.ckpt), .size = RC_PATH_MAX,
     .sdef = "models/zoo/fmnist-ldm/model.ckpt", .resume = 1},
    {.path = "model.ema", .type = K_ENUM, .off = offsetof(RunConfig, model.ema), .names = EMA_NAMES,
     .n_names = N_OF(EMA_NAMES), .def = {RC_EMA_AUTO, RC_EMA_AUTO}, .resume = 1},
    {.path = "model.uncond_label", .type = K_LABEL, .off = offsetof(RunConfig, model.uncond_label), .lo = 0,
     .hi = RC_BIG, .def = {-1, -1}, .resume = 1},

    {.path = "quant.weight_bits", .type = K_INT, .off = offsetof(RunConfig, quant.weight_bits), .lo = 2, .hi = 8,
     .def = {4, 4}, .resume = 1},
    {.path = "quant.act_bits", .type = K_INT, .off = offsetof(RunConfig, quant.act_bits), .lo = 2, .hi = 8,
     .def = {4, 4}, .resume = 1},
    {.path = "quant.weight_init", .type = K_ENUM, .off = offsetof(RunConfig, quant.weight_init),
     .names = INIT_NAMES, .n_names = N_OF(INIT_NAMES), .def = {RC_INIT_MAX, RC_INIT_MAX}, .resume = 1},
    {.path = "quant.act_init", .type = K_ENUM, .off = offsetof(RunConfig, quant.act_init), .names = INIT_NAMES,
     .n_names = N_OF(INIT_NAMES), .def = {RC_INIT_MSE, RC_INIT_MSE}, .resume = 1},
    // the values are the kind table's names (qalora/qkind.h), so a new kind is a new value here
    {.path = "quant.weight_quantizer", .type = K_ENUM, .off = offsetof(RunConfig, quant.weight_quantizer),
     .names = QKIND_NAMES, .n_names = QUANT_KIND_COUNT, .def = {QUANT_UNIFORM, QUANT_UNIFORM}, .resume = 1},
    {.path = "quant.act_quantizer", .type = K_ENUM, .off = offsetof(RunConfig, quant.act_quantizer),
     .names = QKIND_NAMES, .n_names = QUANT_KIND_COUNT, .def = {QUANT_UNIFORM, QUANT_UNIFORM}, .resume = 1},
    // qalora/qlayer.h QLAYER_EQ_*
    {.path = "quant.easyquant_outlier_fraction", .type = K_DOUBLE,
     .off = offsetof(RunConfig, quant.easyquant_outlier_fraction), .lo = 0, .hi = 1, .hi_open = 1,
     .def = {0.005, 0.005}, .resume = 1},
    {.path = "quant.easyquant_steps", .type = K_INT, .off = offsetof(RunConfig, quant.easyquant_steps), .lo = 0,
     .hi = 1000000, .def = {100, 100}, .resume = 1},
    {.path = "quant.easyquant_lr", .type = K_DOUBLE, .off = offsetof(RunConfig, quant.easyquant_lr), .lo = 0,
     .hi = 1e3, .def = {0.01, 0.01}, .resume = 1},
    {.path = "quant.mse_candidates", .type = K_INT, .off = offsetof(RunConfig, quant.mse_candidates), .lo = 1,
     .hi = 100000, .def = {80, 80}, .resume = 1},
    {.path = "quant.mse_shrink", .type = K_DOUBLE, .off = offsetof(RunConfig, quant.mse_shrink), .lo = 0, .hi = 1,
     .hi_open = 1, .def = {0.01, 0.01}, .resume = 1},
    {.path = "quant.mse_norm", .type = K_DOUBLE, .off = offsetof(RunConfig, quant.mse_norm), .lo = 0, .hi = 100,
     .lo_open = 1, .def = {2.4, 2.4}, .resume = 1},
    {.path = "quant.special_bits", .type = K_INT, .off = offsetof(RunConfig, quant.special_bits), .lo = 2, .hi = 8,
     .def = {8, 8}, .resume = 1},
    {.path = "quant.special_first", .type = K_INT, .off = offsetof(RunConfig, quant.special_first), .lo = 0,
     .hi = RC_BIG, .def = {3, 3}, .resume = 1},
    {.path = "quant.special_last", .type = K_INT, .off = offsetof(RunConfig, quant.special_last), .lo = 0,
     .hi = RC_BIG, .def = {1, 1}, .resume = 1},
    {.path = "quant.fp_name_contains", .type = K_NAMES, .off = offsetof(RunConfig, quant.fp_name_contains),
     .resume = 1},
    {.path = "quant.quantize_attention_matmuls", .type = K_BOOL,
     .off = offsetof(RunConfig, quant.quantize_attention_matmuls), .def = {0, 0}, .resume = 1},
    {.path = "quant.lora_rank", .type = K_INT, .off = offsetof(RunConfig, quant.lora_rank), .lo = 1, .hi = 65536,
     .def = {32, 32}, .resume = 1},
    {.path = "quant.talsq", .type = K_BOOL, .off = offsetof(RunConfig, quant.talsq), .def = {1, 1}, .resume = 1},
    // f32 for the reference recipe: the reference code keeps those layers in float32 (parity)
    {.path = "quant.fp_layers", .type = K_ENUM, .off = offsetof(RunConfig, quant.fp_layers), .names = FP_LAYERS_NAMES,
     .n_names = N_OF(FP_LAYERS_NAMES), .def = {RC_FP_F32, RC_FP_F16}, .resume = 1},
    {.path = "quant.overrides", .type = K_OVERRIDES, .off = offsetof(RunConfig, quant.overrides), .resume = 1},

    {.path = "calib.steps", .type = K_INT, .off = offsetof(RunConfig, calib.steps), .lo = 1, .hi = 100000,
     .def = {250, 250}, .resume = 1},
    {.path = "calib.eta", .type = K_DOUBLE, .off = offsetof(RunConfig, calib.eta), .lo = 0, .hi = 1,
     .def = {1.0, 1.0}, .resume = 1},
    {.path = "calib.scale", .type = K_DOUBLE, .off = offsetof(RunConfig, calib.scale), .lo = 0, .hi = 1000,
     .def = {1.5, 1.5}, .resume = 1},
    {.path = "calib.n_samples", .type = K_INT, .off = offsetof(RunConfig, calib.n_samples), .lo = 1, .hi = RC_BIG,
     .def = {16, 16}, .resume = 1},
    {.path = "calib.batch", .type = K_INT, .off = offsetof(RunConfig, calib.batch), .lo = 1, .hi = RC_BIG,
     .def = {16, 16}, .resume = 0},
    {.path = "calib.n_inputs", .type = K_INT, .off = offsetof(RunConfig, calib.n_inputs), .lo = 1, .hi = RC_BIG,
     .def = {32, 32}, .resume = 1},
    {.path = "calib.seed", .type = K_INT, .off = offsetof(RunConfig, calib.seed), .lo = 0, .hi = 2147483647.0,
     .def = {7, 7}, .resume = 1},
    {.path = "calib.act_ranges", .type = K_ENUM, .off = offsetof(RunConfig, calib.act_ranges),
     .names = ACT_RANGES_NAMES, .n_names = N_OF(ACT_RANGES_NAMES), .def = {RC_ACTR_SHARED, RC_ACTR_SHARED},
     .resume = 1},

    {.path = "train.recipe", .type = K_ENUM, .off = offsetof(RunConfig, train.recipe), .names = RECIPE_NAMES,
     .n_names = N_OF(RECIPE_NAMES), .def = {RC_RECIPE_REFERENCE, RC_RECIPE_EFFDM}, .resume = 1},
    {.path = "train.epochs", .type = K_INT, .off = offsetof(RunConfig, train.epochs), .lo = 0, .hi = RC_BIG,
     .def = {160, 160}, .resume = 1},
    {.path = "train.batch", .type = K_INT, .off = offsetof(RunConfig, train.batch), .lo = 1, .hi = RC_BIG,
     .def = {2, 2}, .resume = 1},
    {.path = "train.grad_slots", .type = K_INT, .off = offsetof(RunConfig, train.grad_slots), .lo = 0, .hi = RC_BIG,
     .def = {0, 0}, .resume = 1},
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
    {.path = "train.trajectory", .type = K_ENUM, .off = offsetof(RunConfig, train.trajectory),
     .names = TRAJ_NAMES, .n_names = N_OF(TRAJ_NAMES), .def = {RC_TRAJ_TEACHER, RC_TRAJ_TEACHER}, .resume = 1},
    {.path = "train.guidance_gain", .type = K_ENUM, .off = offsetof(RunConfig, train.guidance_gain),
     .names = GAIN_NAMES, .n_names = N_OF(GAIN_NAMES), .def = {RC_GAIN_OFF, RC_GAIN_FIT}, .resume = 0},
    {.path = "train.eps_gain", .type = K_ENUM, .off = offsetof(RunConfig, train.eps_gain),
     .names = GAIN_NAMES, .n_names = N_OF(GAIN_NAMES), .def = {RC_GAIN_OFF, RC_GAIN_FIT}, .resume = 0},
    {.path = "train.guidance_fit_samples", .type = K_INT, .off = offsetof(RunConfig, train.guidance_fit_samples),
     .lo = 1, .hi = RC_BIG, .def = {256, 256}, .resume = 0},
    {.path = "train.select_epoch", .type = K_ENUM, .off = offsetof(RunConfig, train.select_epoch),
     .names = SELECT_NAMES, .n_names = N_OF(SELECT_NAMES), .def = {RC_SELECT_LAST, RC_SELECT_BEST_VAL},
     .resume = 1},
    {.path = "train.val_every", .type = K_INT, .off = offsetof(RunConfig, train.val_every), .lo = 0, .hi = RC_BIG,
     .def = {10, 10}, .resume = 0},
    {.path = "train.val_inputs", .type = K_INT, .off = offsetof(RunConfig, train.val_inputs), .lo = 1, .hi = RC_BIG,
     .def = {64, 64}, .resume = 1},
    {.path = "train.val_samples", .type = K_INT, .off = offsetof(RunConfig, train.val_samples), .lo = 0,
     .hi = RC_BIG, .def = {0, 32}, .resume = 1},
    {.path = "train.checkpoint_every", .type = K_INT, .off = offsetof(RunConfig, train.checkpoint_every), .lo = 0,
     .hi = RC_BIG, .def = {1, 1}, .resume = 0},
    {.path = "train.sample_every", .type = K_INT, .off = offsetof(RunConfig, train.sample_every), .lo = 0,
     .hi = RC_BIG, .def = {20, 20}, .resume = 0},
    {.path = "train.seed", .type = K_INT, .off = offsetof(RunConfig, train.seed), .lo = 0, .hi = 2147483647.0,
     .def = {3407, 3407}, .resume = 1},
    {.path = "train.optimizer.lr_lora_divisor", .type = K_DOUBLE,
     .off = offsetof(RunConfig, train.optimizer.lr_lora_divisor), .lo = 0, .lo_open = 1, .hi = 1e30,
     .def = {2500, 2500}, .resume = 1},
    {.path = "train.optimizer.lr_w_delta", .type = K_DOUBLE, .off = offsetof(RunConfig, train.optimizer.lr_w_delta),
     .lo = 0, .hi = 1e3, .def = {1e-6, 1e-6}, .resume = 1},
    {.path = "train.optimizer.lr_act", .type = K_DOUBLE, .off = offsetof(RunConfig, train.optimizer.lr_act),
     .lo = 0, .hi = 1e3, .def = {5e-4, 1e-4}, .resume = 1},
    {.path = "train.optimizer.lr_exponent", .type = K_DOUBLE, .off = offsetof(RunConfig, train.optimizer.lr_exponent),
     .lo = 0, .hi = 1e3, .def = {1e-4, 1e-4}, .resume = 1},
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
     .off = offsetof(RunConfig, train.optimizer.warmup_steps), .lo = 0, .hi = RC_BIG, .def = {0, 0}, .resume = 1},
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

const int RC_N_KEYS = N_OF(RC_KEYS);

const KeyDesc *rc_key_find(const char *path) {
    for (int i = 0; i < RC_N_KEYS; i++)
        if (!strcmp(RC_KEYS[i].path, path)) return &RC_KEYS[i];
    return NULL;
}

void run_config_defaults(RunConfig *c, RcRecipe recipe) {
    memset(c, 0, sizeof *c);
    for (int i = 0; i < RC_N_KEYS; i++) {
        const KeyDesc *k = &RC_KEYS[i];
        switch (k->type) {
        case K_INT: case K_BOOL: case K_ENUM: case K_LABEL: *rc_int_at(c, k) = (int)k->def[recipe]; break;
        case K_DOUBLE: *rc_dbl_at(c, k) = k->def[recipe]; break;
        case K_STR: snprintf(rc_str_at(c, k), k->size, "%s", k->sdef); break;
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
    const KeyDesc *k = rc_key_find(key);
    if (!k || k->type != K_ENUM || value < 0 || value >= k->n_names) return "?";
    return k->names[value];
}

// Value text of a scalar key, for messages ("4", "0.0015", "mse", "auto").
void rc_value_text(const RunConfig *c, const KeyDesc *k, char *buf, size_t n) {
    switch (k->type) {
    case K_INT: snprintf(buf, n, "%d", *rc_cint_at(c, k)); break;
    case K_BOOL: snprintf(buf, n, "%s", *rc_cint_at(c, k) ? "true" : "false"); break;
    case K_ENUM: snprintf(buf, n, "%s", run_config_enum_name(k->path, *rc_cint_at(c, k))); break;
    case K_LABEL:
        if (*rc_cint_at(c, k) < 0) snprintf(buf, n, "auto");
        else snprintf(buf, n, "%d", *rc_cint_at(c, k));
        break;
    case K_DOUBLE: cfg_format_double(*rc_cdbl_at(c, k), buf, n); break;
    case K_STR: snprintf(buf, n, "'%s'", rc_cstr_at(c, k)); break;
    case K_NAMES: snprintf(buf, n, "%d names", c->quant.n_fp_names); break;
    case K_OVERRIDES: snprintf(buf, n, "%d overrides", c->quant.n_overrides); break;
    }
}

// "2..8", "> 0", "0 <= x < 1" for range messages.
void rc_range_text(const KeyDesc *k, char *buf, size_t n) {
    char lo[40], hi[40];
    snprintf(lo, sizeof lo, "%.10g", k->lo);
    snprintf(hi, sizeof hi, "%.10g", k->hi);
    if (k->type == K_INT || k->type == K_LABEL) {
        if (k->hi >= RC_BIG) snprintf(buf, n, "an integer >= %s", lo);
        else snprintf(buf, n, "an integer in %s..%s", lo, hi);
    } else if (k->lo_open) {
        snprintf(buf, n, "a number > %s and <= %s", lo, hi);
    } else if (k->hi_open) {
        snprintf(buf, n, "a number >= %s and < %s", lo, hi);
    } else {
        snprintf(buf, n, "a number in %s..%s", lo, hi);
    }
}

int rc_in_range(const KeyDesc *k, double v) {
    if (!(v >= k->lo && v <= k->hi)) return 0;  // NaN fails here
    if (k->lo_open && v == k->lo) return 0;
    if (k->hi_open && v == k->hi) return 0;
    return 1;
}

