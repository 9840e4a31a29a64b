/* export_compvis.h: the student dequantized into a plain CompVis state dict, for PyTorch
   pipelines (effdm export --format compvis-fp32 | compvis-fp16; the packed integer format is
   export.h's).

       CompvisSummary s;
       CompvisInfo info = {.yaml = yaml_text, .f16 = 0};
       if (export_compvis_write(&q, ldm, teacher_file, &info, "x.safetensors", &s, &e)) return e.code;

   In PyTorch the file loads into the teacher's own model:
       sd = safetensors.torch.load_file("x.safetensors")        # or any safetensors reader
       LatentDiffusion(**config.model.params).load_state_dict(sd, strict=True)

   Tensors: the teacher checkpoint's state_dict - its names, with its shapes (conv weights 4-D,
   Conv1d weights 3-D, ...) - except for the two sets the YAML decides, so that the key set is
   the one LatentDiffusion(**config.model.params) has and strict loading works:
   - scale_factor only with scale_by_std: true (CompVis registers the buffer only then; a
     teacher that carries it anyway, as the shipped one does, fails strict loading itself);
     added with the model's scale_factor when the YAML asks for it and the teacher lacks it;
   - model_ema.* only with use_ema: true (the default when absent), since only then does
     LatentDiffusion build its LitEma; when the teacher lacks some of LitEma's buffers they are
     added (the student's weights, decay 0.9999 and num_updates 0 as LitEma starts).
   CompvisSummary counts and keys_note names every such difference. The values:
     model.diffusion_model.<param>   the student's UNet: the weight of each quantized layer is
                                     W_eff, the weight the fake-quantized student computes with
                                     (qlayer_effective_weight: q_w(decode(W_int) + B·A), or a
                                     special layer's fake-quantized weight); the weight of a layer
                                     left FP is the one the student ran (the teacher's, rounded to
                                     float16 when the run has quant.fp_layers f16); every other
                                     UNet tensor (biases, norms, embeddings) is the UNet the
                                     student was built on: the teacher's raw weights, or its EMA
                                     weights when the run used them (effdm.ema "1")
     model_ema.<LitEma name>         the same student values, so that CompVis runs the student
                                     inside ema_scope() and outside it alike (the teacher's EMA
                                     weights would otherwise be sampled whenever use_ema is true);
                                     model_ema.decay / num_updates as the teacher's
     everything else                 the teacher's tensors unchanged (first_stage_model.*,
                                     cond_stage_model.*, betas, alphas_cumprod, the other schedule
                                     buffers, ...)
   dtypes: f16 = 0: every floating tensor F32. f16 = 1: the floating tensors of the networks
   (model.diffusion_model.*, their model_ema.* copies, first_stage_model.*, cond_stage_model.*)
   F16, rounded to nearest even; the LatentDiffusion's own buffers (betas, alphas_cumprod and
   the other schedule buffers, scale_factor, model_ema.decay) stay F32: they are not
   weights, CompVis creates them as float32, and alphas_cumprod near 1 in float16 (steps of
   2^-11) would move DDIM's last noise level sqrt(1 - ᾱ_1) by 1.3% (the shipped teacher's
   schedule: 0.05482 -> 0.05413). Integer and bool
   tensors (model_ema.num_updates) keep their dtype. A teacher tensor is copied as stored, with
   no check of its values (bit for bit when it is F32 and stays F32).
   Metadata: effdm.kind "compvis-fp32" | "compvis-fp16" (what `effdm info` shows), effdm.ldm_config
   (the teacher's YAML, verbatim), effdm.quant (export.h's JSON: which layers were dequantized,
   at which bits), effdm.source / source_config / run / epoch / ema as export.h, and
   effdm.not_in_file: what a plain state dict cannot hold (CompvisSummary.note), and
   effdm.keys_vs_teacher when the key set differs from the teacher's (CompvisSummary.keys_note).

   What is lost: the activation fake-quantization (every quantized layer's A-bit input
   quantizer with its TALSQ table) and effdm's sampling gains (guidance and eps gain, fitted
   at an effdm-format export): PyTorch runs the dequantized weights with FP activations and
   plain classifier-free guidance. Not written: torch .ckpt files (effdm has no torch zip /
   pickle writer; CompVis code reads safetensors through safetensors.torch.load_file).
*/
#ifndef EFFDM_EXPORT_COMPVIS_H
#define EFFDM_EXPORT_COMPVIS_H

#include <stddef.h>

#include "io/weights.h"
#include "models/ldm.h"
#include "qalora/qmodel.h"

typedef struct {
    const char *source;          // teacher checkpoint path (metadata; may be NULL)
    const char *source_config;   // its YAML path (may be NULL)
    const char *yaml;            // the YAML text (required)
    const char *run_dir;         // may be NULL
    const char *epoch;           // "last" / "best" (may be NULL)
    int f16;                     // 0: compvis-fp32, 1: compvis-fp16 (see top)
    int guidance_gain;           // 1: the run fits a guidance gain at effdm-format export (for the note)
    int eps_gain;                // 1: the same for the eps gain
} CompvisInfo;

typedef struct {
    int n_tensors;               // tensors written
    int n_quantized;             // quantized layers written as W_eff
    int n_fp_rounded;            // FP layers written with the float16-rounded weight the student ran
    int n_ema;                   // model_ema.* buffers given the student's values
    int n_ema_dropped;           // the teacher's model_ema.* tensors left out (use_ema false)
    int n_ema_added;             // LitEma tensors added (use_ema true, the teacher lacks them)
    int sf_dropped, sf_added;    // the teacher's scale_factor left out (scale_by_std false) / one added
    int a_bits_min, a_bits_max;  // the activation quantization the file cannot hold
    int entries;                 // TALSQ table entries per trainable layer
    size_t total_bytes;          // bytes of all tensors
    char note[1024];             // what the file cannot hold, one line (also effdm.not_in_file)
    char keys_note[512];         // where the key set differs from the teacher's, one line ("" when it does not)
} CompvisSummary;

// Writes student q (over teacher m, whose UNet q wraps; loaded from `teacher`) as the state
// dict above to path, a .safetensors file, atomically. 0, or ERR_SHAPE naming a teacher tensor
// whose size differs from the loaded UNet's, ERR_INTERNAL (the student does not wrap m's UNet),
// ERR_IO / ERR_NOMEM.
int export_compvis_write(const QModel *q, Ldm *m, WeightFile *teacher, const CompvisInfo *info, const char *path,
                         CompvisSummary *s, Err *e);

#endif
