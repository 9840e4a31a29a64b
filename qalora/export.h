/* export.h: the deployed model (docs/METHOD.md "Output and sampling"): LoRA merged into
   integer weights, packed, with everything sampling needs in one .safetensors, and the
   loader that samples from it.

       ExportSummary s;
       ExportInfo info = {.source = ckpt, .source_config = yaml_path, .yaml = yaml_text};
       if (export_write(&q, ldm, teacher_file, &info, "x-w4a4.safetensors", &s, &e)) return e.code;
       // a run directory: run/run_export.h run_export("runs/x", ...) ("export this run")

       ExportModel *em;
       if (export_load(&em, "x-w4a4.safetensors", &e)) return e.code;
       SamplerOpts o = {..., .on_eval = export_on_eval, .user = em};   // TALSQ entry per step
       sampler_run(&ctx, em->ldm, &o, x, N, y, rng, &e);
       export_free(em);

   Format (effdm.format "2"; "1" is read too: it stored 3-bit levels in 4-bit containers; "3" is
   "2" with rotated layers, rotate.h, and is what an export with one is marked). Tensors (CompVis names, so the file reads like a checkpoint):
     model.diffusion_model.<param>          F32  every UNet parameter that is not the weight of a
                                                 quantized layer (biases, norms, embeddings, FP
                                                 layers); Conv1d weights (Cout, Cin, 1) as CompVis.
                                                 F16: the weights of the FP conv/linear layers (skip
                                                 connections, Downsample ops, layers kept FP) when the
                                                 run's quant.fp_layers is f16 - the student ran those
                                                 very values, so the export stays exact - or when
                                                 fp16_layers forces it on an f32 run (not exact)
     model.diffusion_model.<layer>.qweight  U8   (bytes) the layer's integer levels of the weight in C
                                                 order, in its weight kind's bytes (qkind.h pack);
                                                 uniform: q = clamp(round(W_in/Δ_w) + z_w, 0, 2^b - 1)
                                                 packed as pack.h defines (2 per byte at 4 bits, 8 in 3 bytes at 3 bits, 4 per
                                                 byte at 2 bits, 1 at 8 bits)
     model.diffusion_model.<layer>.w_delta  F32  (Cout) channel steps Δ_w
     model.diffusion_model.<layer>.w_zero   U8   (Cout) channel zero points z_w (integers; I16 or F32 when
                                                 a value does not fit 0..255 / a 16-bit integer)
     model.diffusion_model.<layer>.a_delta  F32  (S) activation steps, one per training timestep
                                                 (S = 1: one static range, special layers)
     model.diffusion_model.<layer>.a_zero   U8   (S) activation zero points, rounded to integers (I16 or
                                                 F32 as w_zero)
     model.diffusion_model.<layer>.w_param  F32  (Cout·P) only for a weight kind with values of its own
                                                 (qkind.h n_param = P; nupes: each channel's exponent)
     model.diffusion_model.<layer>.a_param  F32  (S·P) the same for the activation kind (nupes: each
                                                 table entry's exponent)
     model.diffusion_model.<layer>.w_side_idx  I16 (Cout, m) only for a weight kind with a side table
                                                 (easyquant's outliers): the positions in each channel's
                                                 C-order row, ascending (I32 when a row is longer than 32767)
     model.diffusion_model.<layer>.w_side_val  F16 (Cout, m) the weight's values there (W_eff exactly;
                                                 the level stored at those positions is not used)
     first_stage_model.*, cond_stage_model.embedding.weight   F32  the FP autoencoder / class embedder
     betas, alphas_cumprod                  F32  (T) the teacher's schedule buffers
     scale_factor                           F32  () the latent scale
     guidance_gain                          F32  (S) optional: the gain on the guidance term per TALSQ
                                                 entry (guidance_gain.h; train.guidance_gain fit)
     eps_gain                               F32  (S) optional: the gain on the whole (guided) ε per TALSQ
                                                 entry (guidance_gain.h; train.eps_gain fit)
   Metadata:
     effdm.format       "2"
     effdm.ldm_config   the CompVis model YAML, verbatim (the export is self-contained)
     effdm.quant        JSON: w_bits, a_bits, special_bits, rank, talsq, train_steps, timesteps
                        (ascending; entry i of every table belongs to timesteps[i]), and layers:
                        [{name, role ("trainable" | "special"), w_bits, a_bits, entries,
                        w_quantizer, a_quantizer, rotate}] in registration order; rotate (only on a
                        rotated layer, rotate.h): the Hadamard block of its input channels, its
                        levels those of W Hᵀ and its input rotated before quantization; w_quantizer / a_quantizer
                        name the quantizer kinds (qkind.h: "uniform"); absent (exports written
                        before kinds existed): uniform; a kind this build does not know: ERR_UNSUPPORTED
     effdm.source       the teacher checkpoint; effdm.source_config its YAML path
     effdm.run, effdm.epoch   the run directory and which state ("last" | "best")
     effdm.ema          "1" when the UNet weights are the teacher's EMA weights
     effdm.fp_layers    the FP layers' weights: "F32", "F16" (the student's own float16 values,
                        exact) or "F16-at-export" (an f32 student rounded by fp16_layers: not exact)
     effdm.unet_bytes, effdm.unet_fp32_bytes   size of the UNet part vs the FP32 UNet
   A weight is dequantized as (q - z_w)·Δ_w (its kind's decode; at side positions the side
   value), exactly W_eff of the student;
   activations are fake-quantized with the tables (rounded z_a); sampling timestep t uses the entry of the
   nearest training timestep (talsq.h), for any step count.

   In memory (export_load; details in export_int.h). The quantized layers keep their levels
   packed as in the file's containers (2 per byte at 4 bits, 8 in 3 bytes at 3 bits, 4 at 2 bits, 1 at 8 bits), one
   byte-aligned row per output channel, reordered tap-major (k' = (ki kw + kj) cp + ci, input
   channels padded to cp, a multiple of 4, with zero weights), plus per output channel Δ_w,
   z_w, z_w - c and Σ_k (q - z_w) (16 bytes). The float W_eff is never built: the UNet's
   weight tensors of these layers stay unwritten (their pages untouched), and
   export_layer_weight dequantizes one on request. On the shipped teacher the quantized
   layers hold 0.71 MB of levels + 0.15 MB per channel for 5.59 MB of FP32 weights (the
   4-bit layers' levels exactly 1/8). Each layer runs (ExportModel.use_float / kernel):
   - integer (default): activations -> u8 levels with the active table entry (the levels
     t_fake_quant uses), im2col of 4-channel words with z_a as padding, int_gemm (int8 x
     uint8, int32 sums: AVX-512 VNNI, AVX2 or portable C) against the unpacked s8 rows, then
     y = Δ_a Δ_w (D - (z_w - c) S - z_a R) + bias in float. Equal to the float path up to
     the rounding of that rescale (relative L2 <= 2.5e-7 per layer, test_int_kernels).
     Layers of a non-uniform kind (qkind.h lut: nupes) run it through 8-bit level tables
     (export_int.h), which rounds their levels: within a derived per-output bound of the
     float path (test_int_kernels); the loader keeps the float path where they are too coarse.
   - float (EFFDM_KERNEL=float): fake_quant(x), W_eff dequantized per call into the arena,
     the FP conv/linear: the student's computation bit for bit (test_export).

   Size. The UNet part is the packed levels plus, in F32, Δ_w, the tables and everything left
   FP. On the shipped teacher (1.45 M UNet parameters) the FP rest is large: the 1x1 skip
   connections and the Downsample convs alone are 164 kB in F32, the biases 41 kB, so with
   float32 FP layers a W4A4 export is 986,572 bytes, 1/5.89 of the FP32 UNet (5,806,352 bytes)
   - no exact encoding of that student reaches 1/6 (levels + FP rest + Δ_w already take 966
   kB of the 968 kB budget). So the student itself runs those layers' weights rounded to
   float16 (run config quant.fp_layers: f16, the effdm recipe's default; fplayer.h): the export
   stores them as F16 (82 kB) and computes exactly what the student computed, 904,652 bytes =
   1/6.42. Biases, norms, embeddings, Δ and the tables stay F32. The teacher is untouched
   (relative error of the rounded weights <= 2^-11). The reference recipe keeps f32 (parity
   with the reference code); fp16_layers forces F16 on such a student at export: the same size,
   but then the export is no longer bit-exact to the student. Quality of f16 vs f32 at W4A4
   PTQ (docs/RESULTS.md, 3 seeds): inside the seed spread, leaning slightly worse.
*/
#ifndef EFFDM_EXPORT_H
#define EFFDM_EXPORT_H

#include <stddef.h>

#include "io/weights.h"
#include "models/ldm.h"
#include "qalora/int_gemm.h"
#include "qalora/qmodel.h"
#include "qalora/talsq.h"

#define EXPORT_FORMAT "2"
// The older format this build still reads: "1" differs only in 3-bit levels (4-bit containers).
#define EXPORT_FORMAT_V1 "1"
// "2" with rotated layers ("rotate" entries in effdm.quant): written only when a layer is rotated,
// so that a build that does not know rotation refuses the file instead of running it unrotated.
#define EXPORT_FORMAT_ROT "3"
// "3" with per-token activation layers ("a_granularity": "token" entries, token_quant.h): written
// only when such a layer exists; its layers may be rotated too.
#define EXPORT_FORMAT_TOKEN "4"

typedef struct {
    size_t unet_bytes;        // bytes of the model.diffusion_model.* tensors
    size_t unet_fp32_bytes;   // the FP32 UNet: 4 x its parameters
    size_t total_bytes;       // bytes of all tensors
    int trainable, special, fp;
    int w_bits, a_bits, special_bits;
    int entries;
    int token;                // 1: the trainable layers' activation ranges are per token (token_quant.h)
    int fp16_layers;          // the FP conv/linear weights were written as F16
    int exact;                // 0: F16 forced on a float32 student (fp16_layers): not bit-exact
    int n_gain;               // guidance gains written (0: none)
    float gain_min, gain_max;
    float gain_err1, gain_err; // the fit's latent MSE to the teacher at gain 1 and at the gain
    int gain_samples;
    float eps_gain, eps_err1, eps_err;  // train.eps_gain fit: the gain, latent MSE at 1 and at the gain (0: none)
    int gain_points, eps_points;        // gains measured by each fit, and their range
    float gain_lo, gain_hi, eps_lo, eps_hi;
} ExportSummary;

// What export_write records about where the model came from (all may be NULL).
typedef struct {
    const char *source;       // teacher checkpoint path
    const char *source_config;
    const char *yaml;         // CompVis YAML text (required)
    const char *run_dir;
    const char *epoch;        // "last" / "best"
    int ema;                  // the UNet holds EMA weights
    int fp16_layers;          // FP conv/linear weights as F16 even for a float32 student (see "Size")
    const float *guidance_gain;  // (n_gain) per TALSQ entry, or NULL
    int n_gain;
    const float *eps_gain;       // (n_gain) per TALSQ entry, or NULL
} ExportInfo;

// Writes the export of student q over teacher m (the UNet q wraps; first stage and class
// embedder loaded) to path atomically. teacher: the checkpoint m was loaded from (lists the
// first-stage tensors). 0 or an ERR_ code.
int export_write(const QModel *q, Ldm *m, WeightFile *teacher, const ExportInfo *info, const char *path,
                 ExportSummary *s, Err *e);

// The effdm.quant metadata of student q (JSON, see top); free with cJSON_free. NULL when out of memory.
char *export_quant_json(const QModel *q);

/* ---- loading ---------------------------------------------------------------------------- */
typedef struct ExportLayer ExportLayer;

typedef struct {
    Ldm *ldm;                 // first stage, class embedder, schedule; ldm->unet runs the quantized model
    int n_layers;
    ExportLayer *layers;      // the quantized layers (attached to the UNet's layers)
    TalsqSchedule train_sched;
    int entry;                // current TALSQ entry of every layer
    float *guidance_gain;     // (train_sched.n) or NULL: export_set_timestep sets ldm->guidance_gain
    float *eps_gain;          // (train_sched.n) or NULL: export_set_timestep sets ldm->eps_gain
    int w_bits, a_bits, special_bits, rank;
    size_t unet_bytes, unet_fp32_bytes;
    int use_float;            // 1: every layer runs the float reference path (EFFDM_KERNEL=float)
    IntGemmKind kernel;       // the integer kernel variant (export_set_kernel)
    int n_int_layers;         // layers the integer path computes; the others always run the float path
    int n_lut_layers;         // of those, layers it runs through 8-bit level tables (export_int.h; approximate)
    int n_token_layers;       // layers with per-token activation ranges (token_quant.h)
    size_t qlevel_bytes;      // the quantized layers in memory: packed levels,
    size_t qscale_bytes;      //   per-channel Δ_w, z_w and kernel integers,
    size_t qfp32_bytes;       //   and the FP32 weights they stand for;
    size_t qoperand_bytes;    //   the integer path's unpacked weight operands (1 byte per weight)
    char source[1024];
    int ema;                  // effdm.ema "1": the UNet's weights were the teacher's EMA weights
} ExportModel;

// Loads an export (format above). Every tensor is checked: missing is ERR_KEY, wrong shape or
// packed size ERR_SHAPE, bad dtype ERR_DTYPE, out-of-range levels or tables ERR_VALUE - each
// naming the tensor; missing or bad metadata ERR_FORMAT naming the key. 0 or an ERR_ code.
int export_load(ExportModel **m, const char *path, Err *e);
// Accepts NULL.
void export_free(ExportModel *m);
// How the quantized layers run: "auto" or NULL (the fastest integer kernel this CPU has),
// "ref" | "avx2" | "vnni" (that integer kernel), "float" (the reference path). export_load
// applies $EFFDM_KERNEL. 0, ERR_ARG for another name, ERR_UNSUPPORTED for a kernel this CPU lacks.
int export_set_kernel(ExportModel *m, const char *name, Err *e);
// "float", "ref", "avx2" or "vnni": what the quantized layers run.
const char *export_kernel_name(const ExportModel *m);
// The deployed weight W_eff = (q - z_w) Δ_w of the quantized layer `name` into w (its
// weight's element count). 0, ERR_KEY when no quantized layer has that name, or ERR_NOMEM.
int export_layer_weight(const ExportModel *m, const char *name, float *w);
// One quantized layer of a loaded export, as effdm info --layers lists it.
typedef struct {
    const char *name;         // module name ("input_blocks.1.0.in_layers.2"), borrowed from m
    int special;              // role: 1 special (8-bit first/last layers), 0 trainable
    const char *w_kind, *a_kind;  // quantizer kinds (qkind.h names)
    int w_bits, a_bits, entries;
    int ndim, shape[4];       // the weight: conv (Cout, Cin, kh, kw), linear (out, in)
    double a_delta_min, a_delta_max;  // the activation step size Δ_a over the TALSQ entries
    double rel_err;           // ||W_eff - W_fp|| / ||W_fp|| against the teacher's weight, in double (NaN: no teacher)
    const char *path;         // how it runs: "int" (exact), "int-lut" (level tables), "float"
    double w_lut_err, a_lut_err;  // the level tables' worst relative level error (0: no table; export_int.h)
    int rot;                  // Hadamard block of the input channels (rotate.h; 0: not rotated)
    int a_token;              // 1: per-token activation ranges (a_delta_*: the ratio α's range)
} ExportLayerRow;
// The rows of m's quantized layers in registration order (rows: m->n_layers). teacher: the
// FP UNet the export came from (NULL: rel_err NaN); W_eff is export_layer_weight's, so
// rel_err mixes the LoRA update merged into the weight and the rounding to levels. 0, or
// ERR_KEY (a layer the teacher does not have), ERR_SHAPE (another weight shape), ERR_NOMEM.
int export_layer_rows(const ExportModel *m, UNet *teacher, ExportLayerRow *rows, Err *e);
// Selects the TALSQ entry of the training timestep nearest to DDPM timestep t (and its
// guidance gain, when the export has them).
void export_set_timestep(ExportModel *m, int t);
// SamplerOpts.on_eval for an ExportModel (user): export_set_timestep(user, timestep).
void export_on_eval(int step, int total, int timestep, void *user);

#endif
