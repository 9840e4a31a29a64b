/* select.h: which layers of a model are quantized, and how (docs/METHOD.md "Which layers
   are quantized", the reference's QuantModel_intnlora.quant_module_refactor).

   Over a model's layer list in registration order (unet_layers):
   1. conv2d and linear layers are quantized, except those whose leaf name (the last
      component of the module name) contains "skip" or "op" (ResBlock skip_connection,
      Downsample op): they stay FP, as does every LAYER_CONV1D (AttentionBlock qkv/proj_out);
   2. of the quantized layers, the first n_first_special (3: the two time_embed linears and
      the first input conv) and the last n_last_special (1: out.2) are special: special_bits
      weights fake-quantized from the FP weights, special_bits activations with one static
      (Δ, z), no LoRA, not trained; the others are trainable (QALoRA + TALSQ);
   3. overrides, in array order, on layers that step 1 quantizes: a glob (fnmatch, no flags:
      '*' also matches dots) on the full layer name; keep_fp makes a layer FP (for good: a
      later override does not bring it back); w_bits / a_bits > 0 set its bit widths and
      w_kind / a_kind > 0 its quantizer kinds (the last matching override wins, field by
      field), special layers included. Special positions are counted before overrides, so
      keeping a layer FP never promotes another one to special.
   Quantizer kinds (qkind.h): w_kind / a_kind of the config for every quantized layer
   (trainable and special), then the overrides'.
   An override that matches no layer quantized by step 1 is an error (a typo would
   otherwise silently change nothing).

       QSelConfig cfg; qsel_config_defaults(&cfg);
       QSelOverride ov[] = {{"out.*", 1, 0, 0}, {"input_blocks.1.*", 0, 8, 8, 1 + QUANT_UNIFORM, 0}};
       cfg.overrides = ov; cfg.n_overrides = 2;
       QSelChoice *ch = calloc(n, sizeof *ch);
       if (qsel_select(layers, n, &cfg, ch, &e)) ...   // ch[i].role, .w_bits, .a_bits
*/
#ifndef EFFDM_SELECT_H
#define EFFDM_SELECT_H

#include "models/layer.h"
#include "qalora/quantizer.h"

typedef enum { QSEL_FP, QSEL_TRAINABLE, QSEL_SPECIAL } QSelRole;

typedef struct {
    const char *pattern;  // fnmatch glob on ModelLayer.name
    int keep_fp;          // 1: the matched layers stay FP
    int w_bits, a_bits;   // > 0: bit widths of the matched layers; 0: unchanged
    int w_kind, a_kind;   // > 0: 1 + the QuantKind of the matched layers' weights / activations; 0: unchanged
} QSelOverride;

typedef struct {
    int w_bits, a_bits;        // trainable layers (4, 4)
    int special_bits;          // weights and activations of special layers (8)
    int n_first_special;       // 3
    int n_last_special;        // 1
    QuantKind w_kind, a_kind;  // quantizer kinds of every quantized layer (uniform)
    const QSelOverride *overrides;
    int n_overrides;
} QSelConfig;

typedef struct {
    QSelRole role;
    int w_bits, a_bits;        // 0 for FP layers
    QuantKind w_kind, a_kind;  // QUANT_UNIFORM for FP layers
} QSelChoice;

// The reference defaults above, no overrides.
void qsel_config_defaults(QSelConfig *cfg);
// 1 if rule 1 quantizes the layer (conv2d/linear without "skip"/"op" in its leaf name).
int qsel_rule_quantizes(const ModelLayer *l);
// Fills out[0..n) for layers[0..n). 0, or ERR_VALUE naming the override (bits outside
// 2..8, a kind outside the table, or a pattern matching no quantized layer).
int qsel_select(ModelLayer *const *layers, int n, const QSelConfig *cfg, QSelChoice *out, Err *e);
// "fp", "trainable", "special".
const char *qsel_role_name(QSelRole r);

#endif
