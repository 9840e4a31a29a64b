/* ldm.h: CompVis ldm/models/diffusion/ddpm.py LatentDiffusion (a506df5), for sampling:
   the UNet (model.diffusion_model.*), the first stage (first_stage_model.*), the class
   embedder (cond_stage_model.embedding.weight), the schedule buffers and scale_factor.

       Ldm *m;
       LdmLoadOpts o = {.ema = LDM_EMA_AUTO, .parts = LDM_PARTS_ALL};
       if (ldm_load(&m, "config.yaml", "model.ckpt", &o, &e)) return e.code;
       if (m->warning[0]) fprintf(stderr, "%s\n", m->warning);          // partial EMA, unknown tensors...
       Tensor *eps = ldm_apply_model(&ctx, m, x, t, y);                 // = model(x, t, c)
       Tensor *img = ldm_decode_first_stage(&ctx, m, z);                // decoder(post_quant_conv(z / scale_factor))
       ldm_free(m);

   Weights (docs/DESIGN.md "Formats"):
   - EMA: with use_ema true (the CompVis default when the key is absent) and a LitEma buffer
     for EVERY UNet parameter in the file, the UNet gets the EMA weights, as CompVis' scripts
     do inside ema_scope(). LitEma names a buffer by the parameter's DiffusionWrapper name
     without dots: "model.diffusion_model.input_blocks.0.0.weight" <- "model_ema.diffusion_modelinput_blocks00weight"
     (beside model_ema.decay and model_ema.num_updates). A partial set is reported in
     m->warning and the raw weights are used. LDM_EMA_OFF forces the raw weights;
     LDM_EMA_ON requires the full set (ERR_KEY naming the first missing buffer).
   - Schedule: the file's `betas` / `alphas_cumprod` buffers (shape (timesteps)) when present,
     else make_beta_schedule from the config (float64, rounded to float32 as register_buffer).
   - scale_factor: the file's 0-d `scale_factor` buffer when present, else the config's value
     (m->warning says so when both exist, differ beyond float32 rounding and the first stage
     is loaded). Note: CompVis itself registers the buffer only with scale_by_std: true and
     otherwise ignores it; the shipped teacher's buffer equals its config value.
   - A missing tensor is ERR_KEY naming it; a shape that differs from the config is ERR_SHAPE
     naming the tensor (expected from the YAML, found in the file); tensors nobody reads are
     counted in m->n_unknown (and named in m->warning), not an error.
   Conditioning: unconditional (conditioning_key None) and class-conditional cross-attention
   (ClassEmbedder: context = embedding(y)[:, None, :]). concat / hybrid / adm: ERR_UNSUPPORTED.
*/
#ifndef EFFDM_LDM_H
#define EFFDM_LDM_H

#include <stdint.h>

#include "autograd/ops.h"
#include "io/weights.h"
#include "models/autoencoder/autoencoder.h"
#include "models/ldm_config.h"
#include "models/unet/unet.h"

typedef enum { LDM_EMA_AUTO, LDM_EMA_ON, LDM_EMA_OFF } LdmEmaMode;

enum {
    LDM_PART_UNET = 1,         // model.diffusion_model.* (+ EMA)
    LDM_PART_FIRST_STAGE = 2,  // first_stage_model.*
    LDM_PART_COND_STAGE = 4,   // cond_stage_model.*
    LDM_PARTS_ALL = 7
};

typedef struct {
    LdmEmaMode ema;
    int parts;                 // LDM_PART_* mask; 0 means LDM_PARTS_ALL
    const char *const *other_known;  // more top-level tensors the caller reads itself (NULL-terminated list, or NULL)
} LdmLoadOpts;

typedef struct {
    LdmConfig cfg;
    UNet *unet;                // NULL when not loaded
    AeModel *ae;               // NULL when the config has no first stage or it was not loaded
    Tensor class_emb;          // (n_classes, embed_dim); data NULL for unconditional models
    float *class_emb_data;
    int T;                     // timesteps
    float *betas;              // (T) float32, as the registered buffers
    float *alphas_cumprod;     // (T)
    double scale_factor;       // config value (double) or the file's float32 buffer
    int scale_factor_from_file;
    int schedule_from_file;    // 1: betas and alphas_cumprod were read from the file
    int using_ema;             // 1: the UNet holds the EMA weights
    int n_unknown;             // tensors in the file nobody reads
    // Guided ε = ε_u + scale·gain·(ε_c - ε_u) (sampler_eps); 0 means 1. A quantized export
    // sets it per sampling step from its fitted table (qalora/guidance_gain.h).
    float guidance_gain;
    // The (guided) ε times this in sampler_eps; 0 means 1. A quantized export sets it per
    // sampling step from its fitted table (train.eps_gain fit, qalora/guidance_gain.h).
    float eps_gain;
    char warning[768];         // non-fatal notes for the caller to show ("" when none)
    // Batch split (models/ldm_split.c): 1 lets a forward or decode with grad mode off, no
    // profiler and no UNet hook run its batch as sub-batches on the threads at once, each
    // thread on a context of its own. The owner sets it only while every layer's forward just reads the model
    // (the FP model, an export; never a calibrating or trainable student). 0 by default.
    int split_batch;
    struct Ctx *split_ctx;     // the sub-batches' contexts (created on first use)
    int n_split_ctx;
    int borrowed;              // ldm_clone_unet: only unet is this model's own
} Ldm;

// Loads a model from a CompVis YAML and a .ckpt / .safetensors file (opts may be NULL:
// LDM_EMA_AUTO, every part). 0 or an ERR_ code (message names file and tensor/key).
int ldm_load(Ldm **m, const char *config_path, const char *weights_path, const LdmLoadOpts *opts, Err *e);
// Same from a parsed config and an open file (not closed).
int ldm_load_from(Ldm **m, const LdmConfig *cfg, WeightFile *f, const LdmLoadOpts *opts, Err *e);
// A model of the config's architecture with random weights (no file: benchmarks of models
// whose checkpoint is absent): the UNet (conv/linear U(+-1/sqrt(fan_in)), norms 1, biases 0)
// and the class embedder (N(0, 1)), the config's schedule; no first stage. 0 or an ERR_ code.
int ldm_new_random(Ldm **m, const LdmConfig *cfg, uint64_t seed, Err *e);
// Accepts NULL.
void ldm_free(Ldm *m);
// A second model over src's weights with a UNet of its own layer array (unet_clone_layers):
// the class embedding and schedule are src's, no first stage. src must outlive it. NULL
// when out of memory.
Ldm *ldm_clone_unet(const Ldm *src);

// 1 for class-conditional models (ClassEmbedder + cross-attention).
int ldm_is_class_conditional(const Ldm *m);
// Number of label rows (incl. the unconditional one), 0 for unconditional models.
int ldm_n_classes(const Ldm *m);
// The label used for the unconditional branch of classifier-free guidance: n_classes - 1
// (1000 for cin256 with its 1001 rows).
int ldm_uncond_label(const Ldm *m);
// The LitEma buffer name of the UNet parameter `param` (its name inside the UNet, e.g.
// "input_blocks.0.0.weight"): "model_ema." + ("diffusion_model." + param) without dots
// (ldm/modules/ema.py LitEma), "model_ema.diffusion_modelinput_blocks00weight", into dst.
void ldm_ema_name(char *dst, size_t cap, const char *param);
// Latent shape sampled by the model: (channels, image_size, image_size).
void ldm_latent_shape(const Ldm *m, int *C, int *H, int *W);

// ClassEmbedder: y[0..n) -> context (n, 1, embed_dim). Labels outside [0, n_classes): NULL, ERR_VALUE.
Tensor *ldm_context(Ctx *c, Ldm *m, const int *y, int n);
// The UNet's output (eps, x0 or v per cfg.parameterization) for x (N, C, H, W) at timesteps t[0..N),
// class labels y[0..N) (class-conditional models; NULL otherwise), as LatentDiffusion.apply_model
// with c = get_learned_conditioning(y). NULL on failure (c->err says why).
Tensor *ldm_apply_model(Ctx *c, Ldm *m, Tensor *x, const float *t, const int *y);
// LatentDiffusion.decode_first_stage: first-stage decode of (1 / scale_factor) * z.
Tensor *ldm_decode_first_stage(Ctx *c, Ldm *m, Tensor *z);

// models/ldm_split.c. A small UNet's ops are too short for their OpenMP regions to keep two
// cores busy (the shipped teacher at batch 16: 1.20 ms/image on 2 threads, 1.14 on one),
// while images are independent: the batch is cut into parts of about 8 images (at least 2
// parts), and each thread runs whole forwards over its parts, its own ops single-threaded.
// Latents up to 16 x 16 only. The parts depend on the batch alone, so results still do not
// depend on the thread count (tests/test_ldm.c).
// 1 when a call of ldm_apply_model / ldm_decode_first_stage on c with this batch would split.
int ldm_split_applies(const Ctx *c, const Ldm *m, int batch);
// The sub-batch forward / decode (called by the two above when ldm_split_applies).
Tensor *ldm_split_apply(Ctx *c, Ldm *m, Tensor *x, const float *t, const int *y);
Tensor *ldm_split_decode(Ctx *c, Ldm *m, Tensor *z);
// Frees the sub-batch contexts (ldm_free calls it).
void ldm_split_free(Ldm *m);
// Sum of the sub-batch contexts' arena high-water marks (bytes; memory reports).
size_t ldm_split_peak(const Ldm *m);

#endif
