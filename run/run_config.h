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

   Paths are used as written (relative paths are relative to the working directory, as in
   the CompVis scripts). Integers accept exact number forms (1e3), reals any YAML number form
   (1e-4, .5); booleans true/false/yes/no/on/off.

   Command-line overrides: `effdm finetune` and `effdm calibrate` take --set KEY=VALUE
   (repeatable: --set train.epochs=4 --set run.out=/tmp/x; run_config_load_set). Each reads
   as if it were a line of the file after all others: VALUE is YAML text like the file's
   values, with the same types, ranges and messages (lists in flow form, e.g.
   --set 'quant.overrides=[{pattern: "out.*", keep_fp: true}]'), a later assignment wins, a
   --set of train.recipe picks the recipe's defaults as the file's key does, and an unknown
   key gets the same "did you mean". The run's config.yaml holds the result.

   Keys (R: the default is "reference / effdm" by train.recipe; *: resuming needs the same value):
   | key                              | default                 | meaning |
   |----------------------------------|-------------------------|---------|
   | model.ldm_config               * | models/zoo/fmnist-ldm/config.yaml | CompVis YAML of the FP teacher (the shipped teacher by default) |
   | model.ckpt                     * | models/zoo/fmnist-ldm/model.ckpt  | its weights: CompVis .ckpt or .safetensors |
   | model.ema                      * | auto                    | auto: the EMA weights when the config's use_ema (CompVis default true) and the file holds a complete EMA set; on: require them; off: raw weights |
   | model.uncond_label             * | auto                    | class label of the unconditional branch for guidance; auto = the last class index (n_classes - 1) |
   | quant.weight_bits              * | 4                       | weight bits of the trainable layers, 2..8 |
   | quant.act_bits                 * | 4                       | activation bits (layer inputs) of the trainable layers, 2..8 |
   | quant.weight_init              * | max                     | weight (Δ, z) init per output channel: max (naive PTQ: min/max incl. 0) or mse (search below) |
   | quant.act_init                 * | mse                     | activation (Δ, z) init per layer: mse or max |
   | quant.weight_quantizer         * | uniform                 | quantizer kind of the weights of every quantized layer (special ones too): a name of the kind table (qalora/qkind.h; docs/QUANTIZERS.md): uniform (EfficientDM's uniform affine) or easyquant (uniform with each channel's largest weights kept in float16, the range fitted by gradient descent) or nupes (uniform in a power-warped domain sign(x)|x|^a, the exponent a searched per channel and learned in fine-tuning) |
   | quant.act_quantizer            * | uniform                 | quantizer kind of the activations (layer inputs) of every quantized layer: uniform or nupes (its exponent searched per table entry on the calibration inputs); easyquant quantizes weights only |
   | quant.easyquant_outlier_fraction * | 0.005                 | easyquant: share of each output channel's weights (the largest in magnitude, rounded up to a whole count) kept unquantized in float16, 0 <= f < 1 |
   | quant.easyquant_steps          * | 100                     | easyquant: Adam steps of the range fit on the other weights' reconstruction error (0: the init range) |
   | quant.easyquant_lr             * | 0.01                    | easyquant: the range fit's learning rate, relative to the initial step Δ |
   | quant.mse_candidates           * | 80                      | mse search: candidate ranges i = 0..N-1, both ends scaled by (1 - shrink * i). Fixed at the reference's 80: another value is refused (the key names the search in resolved configs) |
   | quant.mse_shrink               * | 0.01                    | mse search: range shrink per candidate. Fixed at 0.01: another value is refused |
   | quant.mse_norm                 * | 2.4                     | mse search: score = mean(abs(x - q(x)) ^ norm). Fixed at 2.4: another value is refused |
   | quant.special_bits             * | 8                       | bits (weights and activations) of the special layers: static (Δ, z), no LoRA, not trained |
   | quant.special_first            * | 3                       | the first N quantized layers in registration order are special (time_embed.0, time_embed.2, input_blocks.0.0) |
   | quant.special_last             * | 1                       | the last N quantized layers are special (out.2) |
   | quant.fp_name_contains         * | [skip, op]              | Conv2d/Linear layers whose last name component contains one of these stay FP |
   | quant.quantize_attention_matmuls * | false                 | reserved: QK^T and softmax*V stay FP, as in the reference; true is refused (not implemented) |
   | quant.lora_rank                * | 32                      | LoRA rank r of every trainable layer, >= 1 |
   | quant.talsq                    * | true                    | TALSQ: one activation (Δ, z) per training timestep; false: one per layer |
   | quant.fp_layers              R * | f32 / f16               | precision of the weights of the conv/linear layers the student keeps FP (skip connections, Downsample ops, fp_name_contains, keep_fp): f16 rounds them to float16 in the student (the teacher stays f32), so the export stores them as F16 and is still exact |
   | quant.overrides                * | []                      | per-layer overrides, applied in order (a later match wins, field by field): {pattern: glob on the layer name, e.g. "output_blocks.*", weight_bits, act_bits, weight_quantizer, act_quantizer, keep_fp} |
   | calib.steps                    * | 250                     | DDIM steps of the teacher trajectories that provide calibration inputs |
   | calib.eta                      * | 1.0                     | their DDIM eta, 0..1 |
   | calib.scale                    * | 1.5                     | their classifier-free guidance scale, >= 0 |
   | calib.n_samples                * | 16                      | number of teacher trajectories (random classes) |
   | calib.batch                      | 16                      | trajectories sampled at once (memory only) |
   | calib.n_inputs                 * | 32                      | random UNet inputs of the one activation-init forward |
   | calib.seed                     * | 7                       | RNG seed of the calibration |
   | calib.act_ranges               * | shared                  | initial TALSQ tables: shared (reference: every entry = the range of the one calibration forward on n_inputs random inputs) or per_step (then each entry refitted in one more forward, with that entry active, on n_inputs recorded inputs of the timesteps nearest its training timestep) |
   | train.recipe                   * | effdm                   | reference or effdm: picks the defaults of the rows marked R |
   | train.epochs                   * | 160                     | epochs (one trajectory each, `steps` optimizer steps per epoch); 0 = naive PTQ only |
   | train.batch                    * | 2                       | random class labels (trajectories) per epoch |
   | train.grad_slots               * | 0                       | gradient slots per step, dividing batch; 0: one per trajectory. Each slot's trajectories run as one batch into its own gradient, the slots' gradients are summed in slot order: MPI ranks share the slots, so results are bit-identical for any rank count <= slots. 1: the whole batch at once, fastest on one process (another rounding, so another result) |
   | train.steps                  R * | 100 / 20                | DDIM steps of the training trajectory = TALSQ table entries |
   | train.eta                    R * | 1.0 / 0.0               | DDIM eta of the training trajectory, 0..1 |
   | train.scale                  R * | 1.5 / 3.0               | guidance scale of the training trajectory |
   | train.loss_branches          R * | guided / both           | guided: loss on the guided ε only (reference); both: on ε_c and ε_u separately; all: both + guided |
   | train.loss_reduction           * | sum                     | sum (reference) or mean of the squared error |
   | train.step_weighting         R * | none / equalize         | none: the raw per-step loss; equalize: each step's loss divided by its running mean over epochs; ddim: equalize times how far the step's ε error moves x_{t-1} |
   | train.guidance_gain          R   | off / fit               | fit: the export fits one gain (a scalar, the same at every step) on the guidance term to the teacher (qalora/guidance_gain.h); off: none |
   | train.eps_gain               R   | off / fit               | fit: the export fits one gain on every step's whole (guided) ε to the teacher, after the guidance gain (qalora/guidance_gain.h gain_fit; 7 more sampling passes); off: none |
   | train.guidance_fit_samples       | 256                     | teacher trajectories of that fit (64 gave gains 1.086-1.166 for one recipe: its error curve is flat) |
   | train.trajectory               * | teacher                 | whose guided ε moves the training trajectory x_t -> x_{t-1}: teacher (reference) or student (the student is trained where its own sampler goes) |
   | train.select_epoch           R * | last / best_val         | the model exported: the last epoch's; best_val: the lowest validation error; best_sampled: the lowest sampled score (mse/mse0 + fd/fd0) among the epochs at least as good as the starting model (0) on mse and fd with |real - 1| at most 0.02 above its (trainer.c), else the starting model (naive PTQ) - needs val_samples >= 8 |
   | train.val_every                  | 10                      | validation error every N epochs (0: never; best_val needs >= 1) |
   | train.val_inputs               * | 64                      | held-out calibration inputs of the validation error |
   | train.val_samples            R * | 0 / 32                  | images of the sampled validation (train/sample_check.c): sampled with the sample.* protocol by the teacher and by the student at every validation; logged: the final latents' mean squared difference (mse) and Fréchet distance (fd), and the teacher's denoising error on the student's samples relative to its own (real); finetune warns when the chosen epoch's |real - 1| exceeds the starting model's by > 0.02; 0: off |
   | train.checkpoint_every           | 1                       | checkpoint every N epochs (0: only at the end and on a signal) |
   | train.sample_every               | 20                      | sample grid every N epochs (0: never) |
   | train.seed                     * | 3407                    | RNG seed of the distillation (labels, x_T, eta noise) |
   | train.optimizer.lr_lora_divisor * | 2500                   | LoRA A/B learning rate = mean(Δ_w of the layer) / divisor, > 0 |
   | train.optimizer.lr_w_delta     * | 1e-6                    | learning rate of the weight quantizer steps Δ_w, >= 0 |
   | train.optimizer.lr_act       R * | 5e-4 / 1e-4             | learning rate of the activation tables Δ_a, z_a, >= 0 (0: frozen) |
   | train.optimizer.lr_exponent    * | 1e-4                    | learning rate of the quantizer kinds' own values (nupes: the exponent of each weight channel and activation table entry), >= 0 (0: frozen at their fit); no effect with uniform / easyquant |
   | train.optimizer.beta1          * | 0.9                     | AdamW beta1, 0 <= b < 1 |
   | train.optimizer.beta2          * | 0.999                   | AdamW beta2, 0 <= b < 1 |
   | train.optimizer.eps            * | 1e-8                    | AdamW eps, > 0 |
   | train.optimizer.weight_decay   * | 0.01                    | AdamW (decoupled) weight decay, >= 0 |
   | train.optimizer.schedule       * | linear                  | learning-rate schedule over epochs * steps: linear (to 0), cosine (to 0), constant |
   | train.optimizer.warmup_steps   * | 0                       | linear warm-up steps, <= epochs * steps |
   | train.optimizer.delta_w_update R * | reference / single    | reference: two AdamW updates per step for the shared Δ_w (base path, quantizer path); single: one update of the total gradient |
   | sample.sampler                   | ddim                    | ddim or plms, of the sample grids drawn during fine-tuning (`effdm sample` takes its own flags) |
   | sample.steps                     | 20                      | sampling steps (paper FID protocol: 20) |
   | sample.eta                       | 0.0                     | DDIM eta, 0..1 |
   | sample.scale                     | 3.0                     | guidance scale |
   | sample.grid_rows                 | 0                       | grid rows; 0: one per class (unconditional models: 8) |
   | sample.grid_cols                 | 8                       | grid columns (samples per row) |
   | sample.seed                      | 1234                    | sampling seed |
   | run.out                          | runs/<config file name without extension> | the run directory |
   | run.threads                      | 0                       | threads; 0: EFFDM_THREADS, else all cores |
   | run.arena_mb                     | 1024                    | per-step arena (MiB) |
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
    double easyquant_outlier_fraction;
    int easyquant_steps;
    double easyquant_lr;
    int mse_candidates;
    double mse_shrink, mse_norm;
    int special_bits, special_first, special_last;
    char fp_name_contains[RC_MAX_FP_NAMES][RC_NAME_MAX];
    int n_fp_names;
    int quantize_attention_matmuls;
    int lora_rank;
    int talsq;
    RcFpLayers fp_layers;
    RcOverride overrides[RC_MAX_OVERRIDES];
    int n_overrides;
} RcQuant;

typedef struct {
    char out[RC_PATH_MAX];
    int threads;
    int arena_mb;
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
