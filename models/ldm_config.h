/* ldm_config.h: a CompVis latent-diffusion YAML (the files under configs/latent-diffusion/ and
   models/ldm/ of CompVis/latent-diffusion) as one struct.

       LdmConfig cfg;
       if (ldm_config_load(&cfg, "config.yaml", &e)) return e.code;   // e.msg names file and key path
       ... cfg.unet (UNetConfig), cfg.first_stage (AeConfig), cfg.cond_stage, cfg.timesteps ...

   Read (defaults are CompVis' keyword defaults of DDPM / LatentDiffusion.__init__):
   - model.target: ldm.models.diffusion.ddpm.LatentDiffusion (anything else: ERR_VALUE).
   - model.params: timesteps (1000), beta_schedule (linear | cosine | sqrt_linear | sqrt),
     linear_start (1e-4), linear_end (2e-2), cosine_s (8e-3), parameterization (eps | x0 | v),
     scale_factor (1.0), scale_by_std (false), conditioning_key (crossattn | concat | hybrid |
     adm | None; absent: concat_mode (true) ? concat : crossattn; always None for an
     unconditional model, as LatentDiffusion.__init__), channels (3), image_size (256),
     use_ema (true), first_stage_key ("image"), cond_stage_key ("image").
   - unet_config: target ldm.modules.diffusionmodules.openaimodel.UNetModel, params -> UNetConfig
     (unet_config_defaults, then every key given; dims must be 2; n_embed unsupported).
   - first_stage_config: ldm.models.autoencoder.AutoencoderKL | VQModel | VQModelInterface with
     embed_dim, n_embed (VQ), ddconfig. Absent: has_first_stage = 0 (UNet-only configs).
   - cond_stage_config: "__is_unconditional__" or ldm.modules.encoders.modules.ClassEmbedder
     (n_classes 1000, embed_dim, key "class"); any other target (a text encoder...) is
     ERR_UNSUPPORTED naming it.
   Keys CompVis configs carry for training (monitor, lossconfig, scheduler_config, data,
   lightning, ...) are ignored, as are unknown keys. A key that is read but holds a bad
   value is an error naming its full path ("config.yaml: model.params.timesteps: ...").
*/
#ifndef EFFDM_LDM_CONFIG_H
#define EFFDM_LDM_CONFIG_H

#include "models/autoencoder/autoencoder.h"
#include "models/unet/unet.h"
#include "util/err.h"

#define LDM_TARGET "ldm.models.diffusion.ddpm.LatentDiffusion"
#define LDM_UNET_TARGET "ldm.modules.diffusionmodules.openaimodel.UNetModel"
#define LDM_CLASS_EMBEDDER_TARGET "ldm.modules.encoders.modules.ClassEmbedder"

typedef enum { LDM_BETA_LINEAR, LDM_BETA_COSINE, LDM_BETA_SQRT_LINEAR, LDM_BETA_SQRT } LdmBetaSchedule;
typedef enum { LDM_PARAM_EPS, LDM_PARAM_X0, LDM_PARAM_V } LdmParameterization;
typedef enum { LDM_COND_NONE, LDM_COND_CROSSATTN, LDM_COND_CONCAT, LDM_COND_HYBRID, LDM_COND_ADM } LdmCondKey;
typedef enum { LDM_CS_UNCONDITIONAL, LDM_CS_CLASS_EMBEDDER } LdmCondStageKind;

typedef struct {
    LdmCondStageKind kind;
    int n_classes;      // ClassEmbedder: rows of the embedding (incl. the unconditional label)
    int embed_dim;
    char key[64];       // batch key of the labels ("class_label")
} LdmCondStageConfig;

typedef struct {
    char path[1024];                 // the YAML file (for messages)
    int timesteps;
    LdmBetaSchedule beta_schedule;
    double linear_start, linear_end, cosine_s;
    LdmParameterization parameterization;
    double scale_factor;
    int scale_by_std;
    LdmCondKey conditioning_key;
    int channels;                    // latent channels
    int image_size;                  // latent size
    int use_ema;
    char first_stage_key[64];
    char cond_stage_key[64];
    UNetConfig unet;
    int has_first_stage;
    AeConfig first_stage;
    LdmCondStageConfig cond_stage;
} LdmConfig;

// Parses a CompVis YAML file. 0 or an ERR_ code (message: file, key path, expected, found).
int ldm_config_load(LdmConfig *cfg, const char *path, Err *e);
// Same from YAML text (name is used in messages), for tests and embedded configs.
int ldm_config_load_mem(LdmConfig *cfg, const char *text, size_t len, const char *name, Err *e);

// Names for messages and `effdm info`: "linear", "eps", "crossattn" / "None", "AutoencoderKL".
const char *ldm_beta_schedule_name(LdmBetaSchedule s);
const char *ldm_parameterization_name(LdmParameterization p);
const char *ldm_cond_key_name(LdmCondKey k);
const char *ldm_first_stage_name(AeKind k);

#endif
