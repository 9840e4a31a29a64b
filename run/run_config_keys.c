/* run_config_keys.c: the run config's key table. Every scalar key is one row of RC_KEYS: its
   path, type, place in RunConfig, range, defaults per recipe and whether resuming needs it
   unchanged; the two list keys (quant.fp_name_contains, quant.overrides) have rows whose
   values the reader and writer handle themselves. Also: defaults, and value texts for messages. */
#include "run/run_config_keys.h"

#include <stdio.h>
#include <string.h>

#include "io/cfg.h"
#include "qalora/qkind.h"
#include "sample/sampler.h"

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
static const char *const SELECTION_NAMES[] = {"uniform", "adaptive"};
static const char *const GAIN_NAMES[] = {"off", "fit"};
static const char *const FP_LAYERS_NAMES[] = {"f32", "f16"};
static const char *const ACT_RANGES_NAMES[] = {"shared", "per_step"};
static const char *const ACT_GRAN_NAMES[] = {"tensor", "token"};
#define N_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

const double RC_BIG = 1e9;

// Rows of one group are contiguous (the writer opens each group once). docs/METHOD.md's
// reference defaults are in def[RC_RECIPE_REFERENCE]; effdm's differ only where the header says R.
const KeyDesc RC_KEYS[] = {
    {.path = "model.ldm_config", .type = K_STR, .off = offsetof(RunConfig, model.ldm_config),
     .size = RC_PATH_MAX, .sdef = "models/zoo/fmnist-ldm/config.yaml", .resume = 1,
     .is_path = 1, .zoo = "config.yaml", .ddoc = "the shipped teacher's",
     .doc =
     "CompVis YAML of the FP teacher; a relative path is taken from the config file's folder"},
    {.path = "model.ckpt", .type = K_STR, .off = offsetof(RunConfig, model.ckpt), .size = RC_PATH_MAX,
     .sdef = "models/zoo/fmnist-ldm/model.ckpt", .resume = 1, .is_path = 1, .zoo = "model.ckpt",
     .ddoc = "the shipped teacher's",
     .doc =
     "its weights: CompVis `.ckpt` or `.safetensors` (relative: from the config file's folder)"},
    {.path = "model.ema", .type = K_ENUM, .off = offsetof(RunConfig, model.ema), .names = EMA_NAMES,
     .n_names = N_OF(EMA_NAMES), .def = {RC_EMA_AUTO, RC_EMA_AUTO}, .resume = 1,
     .doc =
     "`auto`: the EMA weights when the config's `use_ema` (CompVis default true) and the file holds a "
     "complete EMA set; `on`: require them; `off`: raw weights"},
    {.path = "model.uncond_label", .type = K_LABEL, .off = offsetof(RunConfig, model.uncond_label), .lo = 0,
     .hi = RC_BIG, .def = {-1, -1}, .resume = 1,
     .doc =
     "class label of the unconditional branch for guidance; `auto` = the last class index (n_classes -"
     " 1)"},

    {.path = "quant.weight_bits", .type = K_INT, .off = offsetof(RunConfig, quant.weight_bits), .lo = 2, .hi = 8,
     .def = {4, 4}, .resume = 1,
     .doc =
     "weight bits of the trainable layers, 2..8"},
    {.path = "quant.act_bits", .type = K_INT, .off = offsetof(RunConfig, quant.act_bits), .lo = 2, .hi = 8,
     .def = {4, 4}, .resume = 1,
     .doc =
     "activation bits (layer inputs) of the trainable layers, 2..8"},
    {.path = "quant.weight_init", .type = K_ENUM, .off = offsetof(RunConfig, quant.weight_init),
     .names = INIT_NAMES, .n_names = N_OF(INIT_NAMES), .def = {RC_INIT_MAX, RC_INIT_MAX}, .resume = 1,
     .doc =
     "weight (Δ, z) init per output channel: `max` (naive PTQ: min/max including 0) or `mse` (the "
     "search below)"},
    {.path = "quant.act_init", .type = K_ENUM, .off = offsetof(RunConfig, quant.act_init), .names = INIT_NAMES,
     .n_names = N_OF(INIT_NAMES), .def = {RC_INIT_MSE, RC_INIT_MSE}, .resume = 1,
     .doc =
     "activation (Δ, z) init per layer: `mse` or `max`"},
    // the values are the kind table's names (qalora/qkind.h), so a new kind is a new value here
    {.path = "quant.weight_quantizer", .type = K_ENUM, .off = offsetof(RunConfig, quant.weight_quantizer),
     .names = QKIND_NAMES, .n_names = QUANT_KIND_COUNT, .def = {QUANT_UNIFORM, QUANT_UNIFORM}, .resume = 1,
     .doc =
     "quantizer kind of the weights of every quantized layer (the special ones too): a name of the "
     "[kind table](QUANTIZERS.md) - `uniform` (EfficientDM's uniform affine quantizer), `easyquant` "
     "(uniform with each output channel's largest weights kept in float16, the range of the rest "
     "fitted by gradient descent) or `nupes` (uniform in a power-warped domain sign(x)\\|x\\|^a: 16 "
     "levels per channel at 4 bits, denser near 0; the exponent searched per channel and learned in "
     "fine-tuning); any other name is refused with the list of known kinds"},
    {.path = "quant.act_quantizer", .type = K_ENUM, .off = offsetof(RunConfig, quant.act_quantizer),
     .names = QKIND_NAMES, .n_names = QUANT_KIND_COUNT, .def = {QUANT_UNIFORM, QUANT_UNIFORM}, .resume = 1,
     .doc =
     "quantizer kind of the activations (layer inputs) of every quantized layer: `uniform` or `nupes` "
     "(its exponent searched per table entry on the calibration inputs); `easyquant` quantizes weights"
     " only"},
    {.path = "quant.act_granularity", .type = K_ENUM, .off = offsetof(RunConfig, quant.act_granularity),
     .names = ACT_GRAN_NAMES, .n_names = N_OF(ACT_GRAN_NAMES), .def = {RC_GRAN_TENSOR, RC_GRAN_TENSOR}, .resume = 1,
     .doc =
     "activation ranges of the trainable layers: `tensor` (EfficientDM: one static (Δ, z) per layer and "
     "TALSQ entry) or `token` (dynamic: each token - a linear input's row, a conv input's pixel - "
     "quantized over its channels with its own range, measured at run time; the TALSQ table then "
     "holds a learned clipping ratio per entry, 1 = the whole range; `uniform` activations only)"},
    // qalora/qlayer.h QLAYER_EQ_*
    {.path = "quant.easyquant_outlier_fraction", .type = K_DOUBLE,
     .off = offsetof(RunConfig, quant.easyquant_outlier_fraction), .lo = 0, .hi = 1, .hi_open = 1,
     .def = {0.005, 0.005}, .resume = 1,
     .doc =
     "`easyquant`: share of each output channel's weights, the largest in magnitude, kept unquantized "
     "in float16 (rounded up to a whole count per channel), 0 <= f < 1"},
    {.path = "quant.easyquant_steps", .type = K_INT, .off = offsetof(RunConfig, quant.easyquant_steps), .lo = 0,
     .hi = 1000000, .def = {100, 100}, .resume = 1,
     .doc =
     "`easyquant`: Adam steps of the range fit on the other weights' reconstruction error; 0: the init"
     " range (`weight_init`) on them"},
    {.path = "quant.easyquant_lr", .type = K_DOUBLE, .off = offsetof(RunConfig, quant.easyquant_lr), .lo = 0,
     .hi = 1e3, .def = {0.01, 0.01}, .resume = 1,
     .doc =
     "`easyquant`: the range fit's learning rate, relative to the initial step Δ"},
    {.path = "quant.mse_candidates", .type = K_INT, .off = offsetof(RunConfig, quant.mse_candidates), .lo = 1,
     .hi = QUANT_MSE_MAX_STEPS, .def = {QUANT_MSE_STEPS, QUANT_MSE_STEPS}, .resume = 1,
     .doc =
     "the `mse` range search (`weight_init` / `act_init` `mse`, every kind that fits ranges): candidate "
     "ranges i = 0..N-1, both ends of [min, max] scaled by (1 - `mse_shrink` · i), 1..1000 (the "
     "reference: 80)"},
    {.path = "quant.mse_shrink", .type = K_DOUBLE, .off = offsetof(RunConfig, quant.mse_shrink), .lo = 0, .hi = 1,
     .lo_open = 1, .hi_open = 1, .def = {QUANT_MSE_SHRINK, QUANT_MSE_SHRINK}, .resume = 1,
     .doc =
     "the `mse` search's range shrink per candidate, > 0; (`mse_candidates` - 1) · `mse_shrink` < 1"},
    {.path = "quant.mse_norm", .type = K_DOUBLE, .off = offsetof(RunConfig, quant.mse_norm), .lo = 0, .hi = 100,
     .lo_open = 1, .def = {2.4, 2.4}, .resume = 1,
     .doc =
     "the `mse` search's score: mean(abs(x - q(x)) ^ norm), the best candidate kept (LAPQ's L_p; the "
     "reference: 2.4)"},
    {.path = "quant.rotate", .type = K_INT, .off = offsetof(RunConfig, quant.rotate), .lo = 0, .hi = 4096,
     .def = {0, 0}, .resume = 1,
     .doc =
     "block-Hadamard rotation of every quantized layer's input channels (QuaRot / convrot): x -> H x at "
     "run time, W -> W H folded into the weights, both quantized in the rotated basis; the value is the "
     "largest block (a layer takes the largest power of two <= it that divides its input channels); 0: off"},
    {.path = "quant.special_bits", .type = K_INT, .off = offsetof(RunConfig, quant.special_bits), .lo = 2, .hi = 8,
     .def = {8, 8}, .resume = 1,
     .doc =
     "bits (weights and activations) of the special layers: static (Δ, z), no LoRA, not trained"},
    {.path = "quant.special_first", .type = K_INT, .off = offsetof(RunConfig, quant.special_first), .lo = 0,
     .hi = RC_BIG, .def = {3, 3}, .resume = 1,
     .doc =
     "the first N quantized layers in registration order are special (`time_embed.0`, `time_embed.2`, "
     "`input_blocks.0.0`)"},
    {.path = "quant.special_last", .type = K_INT, .off = offsetof(RunConfig, quant.special_last), .lo = 0,
     .hi = RC_BIG, .def = {1, 1}, .resume = 1,
     .doc =
     "the last N quantized layers are special (`out.2`)"},
    {.path = "quant.fp_name_contains", .type = K_NAMES, .off = offsetof(RunConfig, quant.fp_name_contains),
     .resume = 1,
     .doc =
     "Conv2d/Linear layers whose last name component contains one of these stay FP"},
    {.path = "quant.lora_rank", .type = K_INT, .off = offsetof(RunConfig, quant.lora_rank), .lo = 1, .hi = 65536,
     .def = {32, 32}, .resume = 1,
     .doc =
     "LoRA rank r of every trainable layer, >= 1"},
    {.path = "quant.talsq", .type = K_BOOL, .off = offsetof(RunConfig, quant.talsq), .def = {1, 1}, .resume = 1,
     .doc =
     "TALSQ: one activation (Δ, z) per training timestep; false: one per layer"},
    // f32 for the reference recipe: the reference code keeps those layers in float32 (parity)
    {.path = "quant.fp_layers", .type = K_ENUM, .off = offsetof(RunConfig, quant.fp_layers), .names = FP_LAYERS_NAMES,
     .n_names = N_OF(FP_LAYERS_NAMES), .def = {RC_FP_F32, RC_FP_F16}, .resume = 1,
     .doc =
     "precision of the weights of the conv/linear layers the student keeps FP (skip connections, "
     "Downsample ops, `fp_name_contains`, `keep_fp`): `f16` rounds them to float16 in the student (a "
     "copy: the teacher stays float32), so the export stores them as F16 and is still exact - the W4 "
     "UNet part drops under 1/6 of FP32 ([export](#export)); `f32` keeps them as the reference code "
     "does. Quality at W4A4 PTQ: inside the seed spread, leaning slightly worse (`docs/RESULTS.md`)"},
    {.path = "quant.overrides", .type = K_OVERRIDES, .off = offsetof(RunConfig, quant.overrides), .resume = 1,
     .doc =
     "per-layer overrides, applied in order: see [below](#per-layer-overrides)"},

    {.path = "calib.steps", .type = K_INT, .off = offsetof(RunConfig, calib.steps), .lo = 1, .hi = 100000,
     .def = {250, 250}, .resume = 1,
     .doc =
     "DDIM steps of the teacher trajectories that provide calibration inputs"},
    {.path = "calib.eta", .type = K_DOUBLE, .off = offsetof(RunConfig, calib.eta), .lo = 0, .hi = 1,
     .def = {1.0, 1.0}, .resume = 1,
     .doc =
     "their DDIM eta, 0..1"},
    {.path = "calib.scale", .type = K_DOUBLE, .off = offsetof(RunConfig, calib.scale), .lo = 0, .hi = 1000,
     .def = {1.5, 1.5}, .resume = 1,
     .doc =
     "their classifier-free guidance scale, >= 0"},
    {.path = "calib.n_samples", .type = K_INT, .off = offsetof(RunConfig, calib.n_samples), .lo = 1, .hi = RC_BIG,
     .def = {16, 16}, .resume = 1,
     .doc =
     "number of teacher trajectories (random classes)"},
    {.path = "calib.batch", .type = K_INT, .off = offsetof(RunConfig, calib.batch), .lo = 1, .hi = RC_BIG,
     .def = {16, 16}, .resume = 0,
     .doc =
     "trajectories sampled at once (memory only)"},
    {.path = "calib.n_inputs", .type = K_INT, .off = offsetof(RunConfig, calib.n_inputs), .lo = 1, .hi = RC_BIG,
     .def = {32, 32}, .resume = 1,
     .doc =
     "random UNet inputs of the one activation-init forward"},
    {.path = "calib.seed", .type = K_INT, .off = offsetof(RunConfig, calib.seed), .lo = 0, .hi = 2147483647.0,
     .def = {7, 7}, .resume = 1,
     .doc =
     "RNG seed of the calibration"},
    {.path = "calib.act_ranges", .type = K_ENUM, .off = offsetof(RunConfig, calib.act_ranges),
     .names = ACT_RANGES_NAMES, .n_names = N_OF(ACT_RANGES_NAMES), .def = {RC_ACTR_SHARED, RC_ACTR_SHARED},
     .resume = 1,
     .doc =
     "initial TALSQ tables: `shared` (reference) gives every entry the range of the one calibration "
     "forward on `calib.n_inputs` random recorded inputs; `per_step` then refits each entry in one "
     "more forward (that entry active, the layers before already quantized with it) on up to "
     "`calib.n_inputs` recorded inputs of the timesteps nearest the entry's training timestep. Special"
     " layers keep their one range. Needs `quant.talsq: true`"},

    {.path = "train.recipe", .type = K_ENUM, .off = offsetof(RunConfig, train.recipe), .names = RECIPE_NAMES,
     .n_names = N_OF(RECIPE_NAMES), .def = {RC_RECIPE_REFERENCE, RC_RECIPE_EFFDM}, .resume = 1,
     .ddoc = "`effdm`",
     .doc =
     "`reference` or `effdm`: picks the R defaults"},
    {.path = "train.epochs", .type = K_INT, .off = offsetof(RunConfig, train.epochs), .lo = 0, .hi = RC_BIG,
     .def = {160, 160}, .resume = 1,
     .doc =
     "epochs (one trajectory batch each, `train.steps` optimizer steps per epoch); 0 = naive PTQ only"},
    {.path = "train.batch", .type = K_INT, .off = offsetof(RunConfig, train.batch), .lo = 1, .hi = RC_BIG,
     .def = {2, 2}, .resume = 1,
     .doc =
     "random class labels (trajectories) per epoch"},
    {.path = "train.grad_slots", .type = K_INT, .off = offsetof(RunConfig, train.grad_slots), .lo = 0, .hi = RC_BIG,
     .def = {0, 0}, .resume = 1,
     .doc =
     "gradient slots per step, dividing `train.batch`; 0: one per trajectory. Each slot's trajectories"
     " run as one UNet batch into their own gradient; the slots' gradients are summed in slot order, "
     "so MPI ranks share the slots and the result is bit-identical for any rank count up to the slot "
     "count (see \"Several machines\"). 1: the whole batch at once, fastest on one process, another "
     "rounding and so another (equally good) result"},
    {.path = "train.steps", .type = K_INT, .off = offsetof(RunConfig, train.steps), .lo = 1, .hi = 100000,
     .def = {100, 20}, .resume = 1,
     .doc =
     "DDIM steps of the training trajectory = TALSQ table entries"},
    {.path = "train.eta", .type = K_DOUBLE, .off = offsetof(RunConfig, train.eta), .lo = 0, .hi = 1,
     .def = {1.0, 0.0}, .resume = 1,
     .doc =
     "DDIM eta of the training trajectory, 0..1"},
    {.path = "train.scale", .type = K_DOUBLE, .off = offsetof(RunConfig, train.scale), .lo = 0, .hi = 1000,
     .def = {1.5, 3.0}, .resume = 1,
     .doc =
     "guidance scale of the training trajectory"},
    {.path = "train.loss_branches", .type = K_ENUM, .off = offsetof(RunConfig, train.loss_branches),
     .names = BRANCH_NAMES, .n_names = N_OF(BRANCH_NAMES), .def = {RC_BRANCHES_GUIDED, RC_BRANCHES_BOTH},
     .resume = 1,
     .doc =
     "`guided`: loss on the guided ε only (reference); `both`: on ε_c and ε_u separately; `all`: both "
     "+ guided"},
    {.path = "train.loss_reduction", .type = K_ENUM, .off = offsetof(RunConfig, train.loss_reduction),
     .names = REDUCE_NAMES, .n_names = N_OF(REDUCE_NAMES), .def = {RC_REDUCE_SUM, RC_REDUCE_SUM}, .resume = 1,
     .doc =
     "`sum` (reference) or `mean` of the squared error"},
    {.path = "train.step_weighting", .type = K_ENUM, .off = offsetof(RunConfig, train.step_weighting),
     .names = STEPW_NAMES, .n_names = N_OF(STEPW_NAMES), .def = {RC_STEPW_NONE, RC_STEPW_EQUALIZE}, .resume = 1,
     .doc =
     "`none`: the raw per-step loss; `equalize`: each step's loss divided by its running mean over "
     "epochs; `ddim`: `equalize` times the squared factor by which an ε error at that step moves the "
     "next sample x_{t-1} (normalized to mean 1: ~0.25 at t = 51 up to ~3.5 at t = 951 on 20 steps; "
     "stresses the noisy steps that set an image's layout and class)"},
    {.path = "train.trajectory", .type = K_ENUM, .off = offsetof(RunConfig, train.trajectory),
     .names = TRAJ_NAMES, .n_names = N_OF(TRAJ_NAMES), .def = {RC_TRAJ_TEACHER, RC_TRAJ_TEACHER}, .resume = 1,
     .doc =
     "whose guided ε moves the training trajectory from x_t to x_{t-1}: `teacher` (the reference) or "
     "`student` (the student is trained on the states its own sampler visits, with the teacher's ε "
     "there as the target)"},
    {.path = "train.sample_selection", .type = K_ENUM, .off = offsetof(RunConfig, train.sample_selection),
     .names = SELECTION_NAMES, .n_names = N_OF(SELECTION_NAMES), .def = {RC_SELECTION_UNIFORM, RC_SELECTION_UNIFORM},
     .resume = 1,
     .doc =
     "which trajectories each epoch learns from: `uniform` (the reference: random labels and x_T) or "
     "`adaptive` (AdaDFQ's lesson: every `train.selection_refresh` epochs the teacher and the student "
     "sample a pool of `train.selection_pool` candidates from the same noise with the training "
     "sampler; the candidates whose final-latent disagreement ranks between the `train.selection_band_lo`"
     " and `_hi` quantiles are kept, each epoch draws from them; train/sample_select.c). Costs two "
     "samplings of the pool per refresh"},
    {.path = "train.selection_pool", .type = K_INT, .off = offsetof(RunConfig, train.selection_pool), .lo = 2,
     .hi = 100000, .def = {64, 64}, .resume = 1,
     .doc =
     "candidate trajectories scored per refresh (`adaptive`), >= `train.batch`"},
    {.path = "train.selection_refresh", .type = K_INT, .off = offsetof(RunConfig, train.selection_refresh), .lo = 1,
     .hi = RC_BIG, .def = {20, 20}, .resume = 1,
     .doc =
     "epochs between pool refreshes (`adaptive`): the pool is rescored with the current student"},
    {.path = "train.selection_band_lo", .type = K_DOUBLE, .off = offsetof(RunConfig, train.selection_band_lo),
     .lo = 0, .hi = 1, .hi_open = 1, .def = {0.25, 0.25}, .resume = 1,
     .doc =
     "agreement boundary (`adaptive`): the candidates below this quantile of disagreement are left out"},
    {.path = "train.selection_band_hi", .type = K_DOUBLE, .off = offsetof(RunConfig, train.selection_band_hi),
     .lo = 0, .hi = 1, .def = {0.75, 0.75}, .resume = 1,
     .doc =
     "disagreement boundary (`adaptive`): the candidates above this quantile are left out; > "
     "`train.selection_band_lo`"},
    {.path = "train.guidance_gain", .type = K_ENUM, .off = offsetof(RunConfig, train.guidance_gain),
     .names = GAIN_NAMES, .n_names = N_OF(GAIN_NAMES), .def = {RC_GAIN_OFF, RC_GAIN_FIT}, .resume = 0,
     .doc =
     "`fit`: `effdm export` fits a gain on the guidance term so that the student's sampled latents are"
     " closest to the teacher's (DDIM `train.steps`, `train.eta`, guidance `train.scale`, on "
     "`train.guidance_fit_samples` trajectories of their own seeds; grid 0.9..1.6 by 0.1, walked on "
     "down to 0.5 or up to 2.5 while its best point is at an end, refined by the parabola's vertex), "
     "stores it in the export, and `effdm sample --model` multiplies the guidance term by "
     "it (it prints the gain and the effective scale). The distilled student's ε_c - ε_u comes out "
     "weaker than the teacher's; this restores its guidance (see docs/RESULTS.md). `off`: no gain (the"
     " naive PTQ baseline of docs/RESULTS.md)"},
    {.path = "train.eps_gain", .type = K_ENUM, .off = offsetof(RunConfig, train.eps_gain),
     .names = GAIN_NAMES, .n_names = N_OF(GAIN_NAMES), .def = {RC_GAIN_OFF, RC_GAIN_FIT}, .resume = 0,
     .doc =
     "`fit`: after the guidance gain, `effdm export` fits one more gain, on every step's whole "
     "(guided) ε, the same way (grid 0.985..1.015 by 0.005, walked on within 0.95..1.05, refined by "
     "the parabola's vertex; 7 or more sampling passes); `effdm sample --model` multiplies ε by it. Sample statistics are very sensitive to this"
     " scale (1% moves a 1000-sample FID by 2 to 27 points on the test teachers, "
     "[RESULTS_TEACHERS](RESULTS_TEACHERS.md)); `off`: none"},
    {.path = "train.guidance_fit_samples", .type = K_INT, .off = offsetof(RunConfig, train.guidance_fit_samples),
     .lo = 1, .hi = RC_BIG, .def = {256, 256}, .resume = 0,
     .doc =
     "trajectories of that fit (about two minutes of `effdm export` on the shipped teacher). The fit's"
     " error curve is flat near its minimum: with 64 trajectories the same recipe got gains from 1.086"
     " to 1.166; 256 gave 1.196 and the better class accuracy (docs/RESULTS.md)"},
    {.path = "train.select_epoch", .type = K_ENUM, .off = offsetof(RunConfig, train.select_epoch),
     .names = SELECT_NAMES, .n_names = N_OF(SELECT_NAMES), .def = {RC_SELECT_LAST, RC_SELECT_BEST_VAL},
     .resume = 1,
     .doc =
     "`last`: the last epoch's model; `best_val`: also keep the epoch with the lowest validation error"
     " in `best.safetensors` (export it with `effdm export --epoch best`); `best_sampled`: keep the "
     "epoch with the lowest sampled score (`mse/mse0 + fd/fd0`) among those at least as close to the "
     "teacher as the starting model on the sampled validation's `mse` and `fd` and with `|real - 1|` "
     "at most 0.02 above its; the starting model (naive PTQ) when none is (needs `train.val_samples >="
     " 8`)"},
    {.path = "train.val_every", .type = K_INT, .off = offsetof(RunConfig, train.val_every), .lo = 0, .hi = RC_BIG,
     .def = {10, 10}, .resume = 0,
     .doc =
     "validation error every N epochs (0: never; `best_val` needs >= 1)"},
    {.path = "train.val_inputs", .type = K_INT, .off = offsetof(RunConfig, train.val_inputs), .lo = 1, .hi = RC_BIG,
     .def = {64, 64}, .resume = 1,
     .doc =
     "held-out calibration inputs of the validation error"},
    {.path = "train.val_samples", .type = K_INT, .off = offsetof(RunConfig, train.val_samples), .lo = 0,
     .hi = RC_BIG, .def = {0, 32}, .resume = 1,
     .doc =
     "the sampled validation: at every validation the teacher (once) and the student sample this many "
     "images with the `sample.*` protocol; logged: `val_sample_mse` (mean squared difference of the "
     "final latents, same noise), `val_sample_fd` (Fréchet distance of the two latent sets, pooled to "
     "at most 256 features) and `val_sample_real` (the teacher's denoising error on the student's "
     "samples at t = T/50 and T/10, over the same on its own samples: 1 = as plausible to the teacher "
     "as its own). `effdm finetune` warns when the chosen epoch's `|real - 1|` exceeds the starting "
     "model's by more than 0.02 (below 1 the samples are smoother than the teacher's own, above 1 "
     "rougher or off its manifold): on test teachers that went with lower precision and, on one, a "
     "worse test FID than naive PTQ (docs/RESULTS_TEACHERS.md). 0: off"},
    {.path = "train.checkpoint_every", .type = K_INT, .off = offsetof(RunConfig, train.checkpoint_every), .lo = 0,
     .hi = RC_BIG, .def = {1, 1}, .resume = 0,
     .doc =
     "checkpoint every N epochs (0: only at the end and on a signal)"},
    {.path = "train.sample_every", .type = K_INT, .off = offsetof(RunConfig, train.sample_every), .lo = 0,
     .hi = RC_BIG, .def = {20, 20}, .resume = 0,
     .doc =
     "sample grid every N epochs (0: never)"},
    {.path = "train.seed", .type = K_INT, .off = offsetof(RunConfig, train.seed), .lo = 0, .hi = 2147483647.0,
     .def = {3407, 3407}, .resume = 1,
     .doc =
     "RNG seed of the distillation (labels, x_T, eta noise)"},
    {.path = "train.optimizer.lr_lora_divisor", .type = K_DOUBLE,
     .off = offsetof(RunConfig, train.optimizer.lr_lora_divisor), .lo = 0, .lo_open = 1, .hi = 1e30,
     .def = {2500, 2500}, .resume = 1,
     .doc =
     "LoRA A/B learning rate = mean(Δ_w of the layer) / divisor, > 0"},
    {.path = "train.optimizer.lr_w_delta", .type = K_DOUBLE, .off = offsetof(RunConfig, train.optimizer.lr_w_delta),
     .lo = 0, .hi = 1e3, .def = {1e-6, 1e-6}, .resume = 1,
     .doc =
     "learning rate of the weight quantizer steps Δ_w, >= 0"},
    {.path = "train.optimizer.lr_act", .type = K_DOUBLE, .off = offsetof(RunConfig, train.optimizer.lr_act),
     .lo = 0, .hi = 1e3, .def = {5e-4, 1e-4}, .resume = 1,
     .doc =
     "learning rate of the activation tables Δ_a, z_a, >= 0"},
    {.path = "train.optimizer.lr_exponent", .type = K_DOUBLE, .off = offsetof(RunConfig, train.optimizer.lr_exponent),
     .lo = 0, .hi = 1e3, .def = {1e-4, 1e-4}, .resume = 1,
     .doc =
     "learning rate of the quantizer kinds' own values (`nupes`: the exponent of each weight channel "
     "and activation table entry), >= 0 (0: kept at their fit); no effect with `uniform` / `easyquant`"},
    {.path = "train.optimizer.beta1", .type = K_DOUBLE, .off = offsetof(RunConfig, train.optimizer.beta1), .lo = 0,
     .hi = 1, .hi_open = 1, .def = {0.9, 0.9}, .resume = 1,
     .doc =
     "AdamW beta1, 0 <= b < 1"},
    {.path = "train.optimizer.beta2", .type = K_DOUBLE, .off = offsetof(RunConfig, train.optimizer.beta2), .lo = 0,
     .hi = 1, .hi_open = 1, .def = {0.999, 0.999}, .resume = 1,
     .doc =
     "AdamW beta2, 0 <= b < 1"},
    {.path = "train.optimizer.eps", .type = K_DOUBLE, .off = offsetof(RunConfig, train.optimizer.eps), .lo = 0,
     .lo_open = 1, .hi = 1, .def = {1e-8, 1e-8}, .resume = 1,
     .doc =
     "AdamW eps, > 0"},
    {.path = "train.optimizer.weight_decay", .type = K_DOUBLE,
     .off = offsetof(RunConfig, train.optimizer.weight_decay), .lo = 0, .hi = 1e3, .def = {0.01, 0.01},
     .resume = 1,
     .doc =
     "AdamW (decoupled) weight decay, >= 0"},
    {.path = "train.optimizer.schedule", .type = K_ENUM, .off = offsetof(RunConfig, train.optimizer.schedule),
     .names = SCHED_NAMES, .n_names = N_OF(SCHED_NAMES), .def = {RC_SCHED_LINEAR, RC_SCHED_LINEAR}, .resume = 1,
     .doc =
     "learning-rate schedule over epochs · steps: `linear` (to 0), `cosine` (to 0), `constant`"},
    {.path = "train.optimizer.warmup_steps", .type = K_INT,
     .off = offsetof(RunConfig, train.optimizer.warmup_steps), .lo = 0, .hi = RC_BIG, .def = {0, 0}, .resume = 1,
     .doc =
     "linear warm-up steps, <= epochs · steps"},
    {.path = "train.optimizer.delta_w_update", .type = K_ENUM,
     .off = offsetof(RunConfig, train.optimizer.delta_w_update), .names = DW_NAMES, .n_names = N_OF(DW_NAMES),
     .def = {RC_DW_REFERENCE, RC_DW_SINGLE}, .resume = 1,
     .doc =
     "`reference`: two AdamW updates per step for the shared Δ_w (base path, quantizer path); "
     "`single`: one update of the total gradient"},

    {.path = "sample.sampler", .type = K_ENUM, .off = offsetof(RunConfig, sample.sampler), .names = SAMPLER_NAMES,
     .n_names = SAMPLER_COUNT, .def = {SAMPLER_DDIM, SAMPLER_DDIM},
     .doc =
     "`ddim` or `plms`"},
    {.path = "sample.steps", .type = K_INT, .off = offsetof(RunConfig, sample.steps), .lo = 1, .hi = 100000,
     .def = {20, 20},
     .doc =
     "sampling steps (paper FID protocol: 20)"},
    {.path = "sample.eta", .type = K_DOUBLE, .off = offsetof(RunConfig, sample.eta), .lo = 0, .hi = 1,
     .def = {0.0, 0.0},
     .doc =
     "DDIM eta, 0..1"},
    {.path = "sample.scale", .type = K_DOUBLE, .off = offsetof(RunConfig, sample.scale), .lo = 0, .hi = 1000,
     .def = {3.0, 3.0},
     .doc =
     "guidance scale"},
    {.path = "sample.grid_rows", .type = K_INT, .off = offsetof(RunConfig, sample.grid_rows), .lo = 0,
     .hi = 10000, .def = {0, 0},
     .doc =
     "grid rows; 0: one per class (unconditional models: 8)"},
    {.path = "sample.grid_cols", .type = K_INT, .off = offsetof(RunConfig, sample.grid_cols), .lo = 1,
     .hi = 10000, .def = {8, 8},
     .doc =
     "grid columns (samples per row)"},
    {.path = "sample.seed", .type = K_INT, .off = offsetof(RunConfig, sample.seed), .lo = 0, .hi = 2147483647.0,
     .def = {1234, 1234},
     .doc =
     "sampling seed"},

    {.path = "run.out", .type = K_STR, .off = offsetof(RunConfig, run.out), .size = RC_PATH_MAX,
     .sdef = "runs/run", .is_path = 1, .ddoc = "`runs/<config file name without extension>`",
     .doc =
     "the run directory; relative: from the config file's folder (not given: from the working "
     "directory)"},
    {.path = "run.threads", .type = K_INT, .off = offsetof(RunConfig, run.threads), .lo = 0, .hi = 4096,
     .def = {0, 0},
     .doc =
     "threads; 0: `$EFFDM_THREADS`, else all cores (`--threads` wins)"},
    {.path = "run.arena_mb", .type = K_INT, .off = offsetof(RunConfig, run.arena_mb), .lo = 16, .hi = 1 << 24,
     .def = {1024, 1024},
     .doc =
     "per-step arena (MiB)"},
    {.path = "run.recompute_weights", .type = K_ENUM, .off = offsetof(RunConfig, run.recompute_weights),
     .names = EMA_NAMES, .n_names = N_OF(EMA_NAMES), .def = {RC_RECOMPUTE_AUTO, RC_RECOMPUTE_AUTO},
     .doc =
     "`auto`, `on` or `off`. `on`: each gradient slot computes each quantized layer's weight "
     "(W_base + B·A and its fake-quant) and rebuilds it in its backward instead of keeping two "
     "weight-sized values per layer from the forward to the backward (on the LDM-4 ImageNet UNet "
     "about 3 GB less per step). `off`: the weights are computed once per step for all slots and "
     "their backward runs once on the slots' summed gradient (faster; it holds the step's weights "
     "and one weight gradient per slot). The two add the slots' gradients in another order, so "
     "their results differ by float rounding; each is the same for any thread or rank count. "
     "`auto`: on when the UNet's FP32 weights reach 256 MiB (docs/PERFORMANCE.md)"},
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

