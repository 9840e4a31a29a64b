/* run_config.h: the effdm run config (YAML) as a RunConfig: every method default of
   docs/METHOD.md is a key, every value is type- and range-checked, unknown keys are errors.

       RunConfig rc;
       Err e = {0};
       if (run_config_load("configs/fmnist-ldm-w4a4.yaml", &rc, &e)) return e.code;  // e.msg: file, key, line
       ...
       run_config_write(&rc, "runs/fmnist-ldm-w4a4/config.yaml", &e);   // fully resolved, atomic
       // finetune --resume: the run directory's config against the given one
       const char *key;
       if (run_config_compare(&saved, &rc, &key, &e)) return e.code;    // "cannot resume: quant.weight_bits ..."

   A config file is a map of groups (model, quant, calib, train, train.optimizer, sample, run);
   an absent key takes its default, an empty file means "all defaults". `train.recipe` picks the
   defaults of the keys marked R below: `reference` reproduces the EfficientDM reference code
   exactly (parity runs), `effdm` (the default) is effdm's own recipe. A key given explicitly
   always wins over the recipe's default. The resolved config written into a run directory
   holds every key, so it does not depend on these defaults any more.

   Paths (model.ldm_config, model.ckpt, run.out) come out absolute: relative ones written in a
   file are taken from the file's folder, those of --set and the defaults from the working
   directory; a model path not given is the shipped teacher's (util/zoo.h). Integers accept exact number forms (1e3), reals any YAML number form
   (1e-4, .5); booleans true/false/yes/no/on/off.

   Command-line overrides: `effdm finetune` and `effdm calibrate` take --set KEY=VALUE
   (repeatable: --set train.epochs=4 --set run.out=/tmp/x; run_config_load_set). Each reads
   as if it were a line of the file after all others: VALUE is YAML text like the file's
   values, with the same types, ranges and messages (lists in flow form, e.g.
   --set 'quant.overrides=[{pattern: "out.*", keep_fp: true}]'), a later assignment wins, a
   --set of train.recipe picks the recipe's defaults as the file's key does, and an unknown
   key gets the same "did you mean". The run's config.yaml holds the result.

   Keys: every key, its default per recipe (R: the default depends on train.recipe) and its
   meaning is one row of RC_KEYS in run_config_keys.c; `effdm finetune --keys` prints them as
   the tables of docs/USER_GUIDE.md "The run config" (test_run_config checks the guide holds
   them verbatim). *: resuming needs the same value.

   The effdm recipe's values (the second column of R rows) were screened on the shipped
   teacher at W4A4 (docs/RESULTS.md, scripts/quality.sh): of lr_act 5e-4, 1e-4 and 0 (frozen
   tables), 1e-4 has the best class accuracy (one seed) and the lowest FID; loss_branches all
   ties with both (kept: both). With the guidance gain (train.guidance_gain fit, 256
   trajectories) the recipe's W4A4 model is closer to the FP teacher than naive PTQ on every
   one of 10 seeds by FID to the teacher's samples (13.65 -> 5.14), class accuracy (0.830 ->
   0.849, FP 0.861), pixel RMSE and judge agreement; test-set FID moves only within the
   noise (34.08 -> 33.77, FP 31.12). calib.act_ranges per_step, 480 epochs and a 5x LoRA
   rate were measured and not adopted (docs/RESULTS.md). quant.fp_layers f16 is there for the export's size (qalora/export.h
   "Size"), not for quality: at W4A4 PTQ over 3 seeds its effect is within the seed spread
   but leans slightly worse (accuracy -0.01, RMSE +0.6%; docs/RESULTS.md).

   Limitations: at most RC_MAX_OVERRIDES overrides and RC_MAX_FP_NAMES fp names; strings are
   limited to the buffer sizes below (longer: ERR_VALUE). Whether a step count fits the model's
   timesteps, or an uncond_label its classes, is checked where the model is known.
*/
#ifndef EFFDM_RUN_CONFIG_H
#define EFFDM_RUN_CONFIG_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "qalora/calibrate.h"     // RcCalib: the calib.* group is qalora's own plain struct
#include "train/train_config.h"   // RcTrain, RcSample: the train.* and sample.* groups are train's
#include "util/err.h"

enum {
    RC_PATH_MAX = 1024,      // model paths and run.out, with the terminating NUL
    RC_PATTERN_MAX = 256,    // an override pattern
    RC_NAME_MAX = 32,        // a fp_name_contains entry
    RC_MAX_OVERRIDES = 64,   // (a uint64_t mask in RcLayerQuant.matched)
    RC_MAX_FP_NAMES = 16,
};

typedef enum { RC_EMA_AUTO, RC_EMA_ON, RC_EMA_OFF } RcEma;
typedef enum { RC_INIT_MAX, RC_INIT_MSE } RcInit;
typedef enum { RC_GRAN_TENSOR, RC_GRAN_TOKEN } RcGranularity;
typedef enum { RC_FP_F32, RC_FP_F16 } RcFpLayers;

typedef struct {
    char pattern[RC_PATTERN_MAX];  // fnmatch(3) glob on the layer name; '*' also matches dots
    int weight_bits;               // 0: unchanged
    int act_bits;                  // 0: unchanged
    int weight_quantizer;          // 1 + a quantizer kind (qalora/qkind.h QuantKind); 0: unchanged
    int act_quantizer;             // 1 + a quantizer kind; 0: unchanged
    int keep_fp;                   // 1: the layer stays FP (then no bits or kinds may be given)
} RcOverride;

typedef struct {
    char ldm_config[RC_PATH_MAX];
    char ckpt[RC_PATH_MAX];
    RcEma ema;
    int uncond_label;  // -1: auto (n_classes - 1)
} RcModel;

typedef struct {
    int weight_bits, act_bits;
    RcInit weight_init, act_init;
    int weight_quantizer, act_quantizer;  // quantizer kinds (qalora/qkind.h QuantKind)
    int act_granularity;                 // RcGranularity: static per-tensor or dynamic per-token activation ranges
    double easyquant_outlier_fraction;
    int easyquant_steps;
    double easyquant_lr;
    int mse_candidates;
    double mse_shrink, mse_norm;
    int special_bits, special_first, special_last;
    int rotate;                          // block-Hadamard rotation's largest block (0: none)
    char fp_name_contains[RC_MAX_FP_NAMES][RC_NAME_MAX];
    int n_fp_names;
    int lora_rank;
    int talsq;
    RcFpLayers fp_layers;
    RcOverride overrides[RC_MAX_OVERRIDES];
    int n_overrides;
} RcQuant;

typedef enum { RC_RECOMPUTE_AUTO, RC_RECOMPUTE_ON, RC_RECOMPUTE_OFF } RcRecompute;

typedef struct {
    char out[RC_PATH_MAX];
    int threads;
    int arena_mb;
    RcRecompute recompute_weights;
} RcRun;

// The calib, train and sample groups are the structs of the layers that read them
// (qalora/calibrate.h, train/train_config.h): RunConfig composes them, so those layers never
// include run/. model, quant and run are the run layer's own; run/run_wire.h maps them onto
// what qalora/ and train/ take (QModelConfig, TrainConfig).
typedef struct {
    RcModel model;
    RcQuant quant;
    RcCalib calib;
    RcTrain train;
    RcSample sample;
    RcRun run;
} RunConfig;

// The key reference as Markdown: per group a table of every key, its default (both recipes'
// where they differ) and its meaning (docs/USER_GUIDE.md holds this text verbatim).
void run_config_keys_markdown(FILE *f);

// Every key at its default for the recipe; run.out = "runs/run". Zeroes c first (so two equal
// configs are equal byte for byte).
void run_config_defaults(RunConfig *c, RcRecipe recipe);
// Reads a run config file; run.out defaults to runs/<file name without extension>.
// 0 or ERR_IO / ERR_FORMAT (YAML) / ERR_KEY (unknown key, with "did you mean") / ERR_VALUE
// (type or range, naming the key path and line). On error *c is unspecified.
int run_config_load(const char *path, RunConfig *c, Err *e);
// The same from YAML text; name is used in messages and for the run.out default.
int run_config_load_mem(const char *text, size_t len, const char *name, RunConfig *c, Err *e);
// run_config_load, then the --set assignments sets[0..n_sets) ("train.epochs=4") over the file
// in order (see top), then the checks across keys. An assignment's errors name it ("--set
// train.epochs=x: train.epochs: expected an integer >= 0, found 'x'"): ERR_KEY (unknown key,
// with "did you mean"), ERR_VALUE, ERR_FORMAT (a value that is no YAML), ERR_ARG (no '=', a key
// that is not a dotted name, a value over several lines).
int run_config_load_set(const char *path, const char *const *sets, int n_sets, RunConfig *c, Err *e);
// The same over YAML text (name as in run_config_load_mem).
int run_config_load_mem_set(const char *text, size_t len, const char *name, const char *const *sets, int n_sets,
                            RunConfig *c, Err *e);
// Range and consistency checks of a filled RunConfig (e.g. after command-line overrides).
// 0 or ERR_VALUE naming the key ("run config: quant.weight_bits: expected 2..8, found 9").
int run_config_validate(const RunConfig *c, Err *e);
// The fully resolved config as YAML text (every key), malloc'ed into *text (caller frees).
// run_config_load_mem of that text gives back an identical RunConfig. 0 or ERR_NOMEM.
int run_config_to_yaml(const RunConfig *c, char **text, size_t *len, Err *e);
// Writes run_config_to_yaml's text to path atomically. 0 or ERR_IO / ERR_NOMEM.
int run_config_write(const RunConfig *c, const char *path, Err *e);
// Resuming a run saved with config `run` under config `now`: 0 when every key marked * in the
// table is equal; else ERR_VALUE ("cannot resume: quant.weight_bits is 4 in the run, 8 now")
// and *key (if not NULL) the first such key's path (train.recipe before all others: it sets the
// defaults of the R keys, so it is the cause to name).
int run_config_compare(const RunConfig *run, const RunConfig *now, const char **key, Err *e);
// Path of the first key whose value differs between a and b (any key; train.recipe first), or NULL when equal.
const char *run_config_first_diff(const RunConfig *a, const RunConfig *b);
// Short name of an enum value as written in the YAML ("mse", "best_val", ...); key is the path.
const char *run_config_enum_name(const char *key, int value);

// How one quantizable layer is quantized.
typedef struct {
    int quantized;          // 0: the layer stays FP (fp_name_contains, or an override's keep_fp)
    int weight_bits, act_bits;
    int weight_quantizer, act_quantizer;  // quantizer kinds (0, uniform, for FP layers)
    uint64_t matched;       // bit i set: override i matched the layer (report patterns that match nothing)
} RcLayerQuant;
// For a Conv2d/Linear layer named `name` (module path without the model prefix,
// "input_blocks.1.0.in_layers.2"): FP if its last name component contains a fp_name_contains
// entry; else special_bits when `special` (first/last layers) or weight_bits/act_bits, and the
// weight_quantizer/act_quantizer kinds; then every override whose pattern matches, in order:
// bits replace bits, kinds replace kinds, keep_fp makes the layer FP.
// Overrides never quantize a layer that is FP (remove the name part from fp_name_contains for
// that); `matched` records matches either way. FP layers get weight_bits = act_bits = 0.
void run_config_layer_quant(const RunConfig *c, const char *name, int special, RcLayerQuant *out);

#endif
