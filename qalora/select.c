#include "qalora/select.h"

#include <fnmatch.h>
#include <string.h>

#include "qalora/qkind.h"

void qsel_config_defaults(QSelConfig *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->w_bits = 4;
    cfg->a_bits = 4;
    cfg->special_bits = 8;
    cfg->n_first_special = 3;
    cfg->n_last_special = 1;
    cfg->w_kind = QUANT_UNIFORM;
    cfg->a_kind = QUANT_UNIFORM;
}

int qsel_rule_quantizes(const ModelLayer *l) {
    if (l->kind != LAYER_CONV2D && l->kind != LAYER_LINEAR) return 0;
    const char *leaf = layer_leaf_name(l);
    return !strstr(leaf, "skip") && !strstr(leaf, "op");  // substrings, as the reference tests them
}

const char *qsel_role_name(QSelRole r) {
    switch (r) {
    case QSEL_FP: return "fp";
    case QSEL_TRAINABLE: return "trainable";
    case QSEL_SPECIAL: return "special";
    }
    return "?";
}

static int bits_ok(int b) { return b == 0 || (b >= QUANT_MIN_BITS && b <= QUANT_MAX_BITS); }

// An override's kind field: 0 (unchanged) or 1 + a kind of the table.
static int kind_ok(int k) { return k == 0 || qkind_valid(k - 1); }

int qsel_select(ModelLayer *const *layers, int n, const QSelConfig *cfg, QSelChoice *out, Err *e) {
    if (!bits_ok(cfg->w_bits) || !bits_ok(cfg->a_bits) || !bits_ok(cfg->special_bits) || !cfg->w_bits ||
        !cfg->a_bits || !cfg->special_bits)
        return err_set(e, ERR_VALUE, "quantization bits: w %d, a %d, special %d (expected %d..%d)", cfg->w_bits,
                       cfg->a_bits, cfg->special_bits, QUANT_MIN_BITS, QUANT_MAX_BITS);
    for (int k = 0; k < cfg->n_overrides; k++) {
        const QSelOverride *o = &cfg->overrides[k];
        if (!o->pattern || !bits_ok(o->w_bits) || !bits_ok(o->a_bits))
            return err_set(e, ERR_VALUE, "layer override %d ('%s'): bits w %d, a %d (expected 0 or %d..%d)", k,
                           o->pattern ? o->pattern : "(null)", o->w_bits, o->a_bits, QUANT_MIN_BITS, QUANT_MAX_BITS);
        if (!kind_ok(o->w_kind) || !kind_ok(o->a_kind))
            return err_set(e, ERR_VALUE, "layer override %d ('%s'): quantizer kinds w %d, a %d (expected 0 or 1..%d)",
                           k, o->pattern, o->w_kind, o->a_kind, QUANT_KIND_COUNT);
    }
    if (!qkind_valid((int)cfg->w_kind) || !qkind_valid((int)cfg->a_kind))
        return err_set(e, ERR_VALUE, "quantizer kinds: w %d, a %d (expected 0..%d)", (int)cfg->w_kind,
                       (int)cfg->a_kind, QUANT_KIND_COUNT - 1);
    // rules 1 and 2
    int n_quant = 0;
    for (int i = 0; i < n; i++) n_quant += qsel_rule_quantizes(layers[i]);
    int rank = 0;
    for (int i = 0; i < n; i++) {
        QSelChoice *c = &out[i];
        memset(c, 0, sizeof *c);
        if (!qsel_rule_quantizes(layers[i])) continue;
        int special = rank < cfg->n_first_special || rank >= n_quant - cfg->n_last_special;
        c->role = special ? QSEL_SPECIAL : QSEL_TRAINABLE;
        c->w_bits = special ? cfg->special_bits : cfg->w_bits;
        c->a_bits = special ? cfg->special_bits : cfg->a_bits;
        c->w_kind = cfg->w_kind;
        c->a_kind = cfg->a_kind;
        rank++;
    }
    // rule 3
    for (int k = 0; k < cfg->n_overrides; k++) {
        const QSelOverride *o = &cfg->overrides[k];
        int matched = 0;
        for (int i = 0; i < n; i++) {
            if (!qsel_rule_quantizes(layers[i]) || fnmatch(o->pattern, layers[i]->name, 0) != 0) continue;
            matched++;
            QSelChoice *c = &out[i];
            if (o->keep_fp) c->role = QSEL_FP;
            if (c->role == QSEL_FP) {
                c->w_bits = c->a_bits = 0;
                c->w_kind = c->a_kind = QUANT_UNIFORM;
                continue;
            }
            if (o->w_bits) c->w_bits = o->w_bits;
            if (o->a_bits) c->a_bits = o->a_bits;
            if (o->w_kind) c->w_kind = (QuantKind)(o->w_kind - 1);
            if (o->a_kind) c->a_kind = (QuantKind)(o->a_kind - 1);
        }
        if (!matched)
            return err_set(e, ERR_VALUE, "layer override '%s': matches no quantized layer", o->pattern);
    }
    return 0;
}
