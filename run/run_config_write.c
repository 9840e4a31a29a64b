/* run_config_write.c: the resolved YAML of a RunConfig, comparisons for resuming, and the
   per-layer quantization a config asks for. */
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/cfg.h"
#include "qalora/qkind.h"
#include "run/run_config_keys.h"

// ---------------------------------------------------------------- writing

static void write_key(CfgWriter *w, const RunConfig *c, const KeyDesc *k, const char *leaf) {
    switch (k->type) {
    case K_INT: cfg_writer_int(w, leaf, *rc_cint_at(c, k)); break;
    case K_BOOL: cfg_writer_bool(w, leaf, *rc_cint_at(c, k)); break;
    case K_ENUM: cfg_writer_str(w, leaf, run_config_enum_name(k->path, *rc_cint_at(c, k))); break;
    case K_LABEL:
        if (*rc_cint_at(c, k) < 0) cfg_writer_str(w, leaf, "auto");
        else cfg_writer_int(w, leaf, *rc_cint_at(c, k));
        break;
    case K_DOUBLE: cfg_writer_double(w, leaf, *rc_cdbl_at(c, k)); break;
    case K_STR: cfg_writer_str(w, leaf, rc_cstr_at(c, k)); break;
    case K_NAMES:
        cfg_writer_list_begin(w, leaf);
        for (int i = 0; i < c->quant.n_fp_names; i++) cfg_writer_str(w, NULL, c->quant.fp_name_contains[i]);
        cfg_writer_list_end(w);
        break;
    case K_OVERRIDES:
        cfg_writer_list_begin(w, leaf);
        for (int i = 0; i < c->quant.n_overrides; i++) {
            const RcOverride *o = &c->quant.overrides[i];
            cfg_writer_map_begin(w, NULL);
            cfg_writer_str(w, "pattern", o->pattern);
            if (o->weight_bits) cfg_writer_int(w, "weight_bits", o->weight_bits);
            if (o->act_bits) cfg_writer_int(w, "act_bits", o->act_bits);
            if (o->weight_quantizer) cfg_writer_str(w, "weight_quantizer", quant_kind_name(o->weight_quantizer - 1));
            if (o->act_quantizer) cfg_writer_str(w, "act_quantizer", quant_kind_name(o->act_quantizer - 1));
            if (o->keep_fp) cfg_writer_bool(w, "keep_fp", 1);
            cfg_writer_map_end(w);
        }
        cfg_writer_list_end(w);
        break;
    }
}

static int build_yaml(const RunConfig *c, CfgWriter *w) {
    cfg_writer_init(w);
    cfg_writer_comment(w, "effdm run config, fully resolved: every key with its value (defaults filled in).\n"
                          "Keys and defaults: run/run_config.h. Written by effdm " EFFDM_VERSION ".");
    char open[4][48];  // the groups open now, outermost first
    int n_open = 0;
    for (int i = 0; i < RC_N_KEYS; i++) {
        const KeyDesc *k = &RC_KEYS[i];
        char segs[4][48];
        int ns = 0;
        const char *s = k->path;
        while (ns < 4) {
            size_t len = strcspn(s, ".");
            if (len >= sizeof segs[0]) return ERR_INTERNAL;
            memcpy(segs[ns], s, len);
            segs[ns][len] = 0;
            ns++;
            if (!s[len]) break;
            s += len + 1;
        }
        int groups = ns - 1, same = 0;
        while (same < n_open && same < groups && !strcmp(open[same], segs[same])) same++;
        while (n_open > same) {
            cfg_writer_map_end(w);
            n_open--;
        }
        for (int g = same; g < groups; g++) {
            cfg_writer_map_begin(w, segs[g]);
            snprintf(open[n_open++], sizeof open[0], "%s", segs[g]);
        }
        write_key(w, c, k, segs[ns - 1]);
    }
    while (n_open-- > 0) cfg_writer_map_end(w);
    return 0;
}

int run_config_to_yaml(const RunConfig *c, char **text, size_t *len, Err *e) {
    CfgWriter w;
    *text = NULL;
    if (build_yaml(c, &w)) {
        cfg_writer_free(&w);
        return err_set(e, ERR_INTERNAL, "run config: key table nested too deeply");
    }
    size_t n;
    const char *t = cfg_writer_text(&w, &n);
    if (!t) {
        cfg_writer_free(&w);
        return err_set(e, ERR_NOMEM, "run config: out of memory while writing YAML");
    }
    *text = malloc(n + 1);
    if (!*text) {
        cfg_writer_free(&w);
        return err_set(e, ERR_NOMEM, "run config: out of memory while writing YAML");
    }
    memcpy(*text, t, n + 1);
    if (len) *len = n;
    cfg_writer_free(&w);
    return 0;
}

int run_config_write(const RunConfig *c, const char *path, Err *e) {
    CfgWriter w;
    if (build_yaml(c, &w)) {
        cfg_writer_free(&w);
        return err_set(e, ERR_INTERNAL, "%s: run config key table nested too deeply", path);
    }
    return cfg_writer_commit(&w, path, e);
}

// ---------------------------------------------------------------- comparing

static int key_equal(const RunConfig *a, const RunConfig *b, const KeyDesc *k) {
    switch (k->type) {
    case K_INT: case K_BOOL: case K_ENUM: case K_LABEL: return *rc_cint_at(a, k) == *rc_cint_at(b, k);
    case K_DOUBLE: return !memcmp(rc_cdbl_at(a, k), rc_cdbl_at(b, k), sizeof(double));
    case K_STR: return !strcmp(rc_cstr_at(a, k), rc_cstr_at(b, k));
    case K_NAMES:
        if (a->quant.n_fp_names != b->quant.n_fp_names) return 0;
        for (int i = 0; i < a->quant.n_fp_names; i++)
            if (strcmp(a->quant.fp_name_contains[i], b->quant.fp_name_contains[i])) return 0;
        return 1;
    case K_OVERRIDES:
        if (a->quant.n_overrides != b->quant.n_overrides) return 0;
        for (int i = 0; i < a->quant.n_overrides; i++) {
            const RcOverride *x = &a->quant.overrides[i], *y = &b->quant.overrides[i];
            if (strcmp(x->pattern, y->pattern) || x->weight_bits != y->weight_bits || x->act_bits != y->act_bits ||
                x->weight_quantizer != y->weight_quantizer || x->act_quantizer != y->act_quantizer ||
                x->keep_fp != y->keep_fp)
                return 0;
        }
        return 1;
    }
    return 0;
}

// The i-th key in comparison order: train.recipe first, then the table's order. The recipe
// picks the defaults of other keys (quant.fp_layers comes before it in the table), so when it
// differs it is the difference to report, not one of its consequences.
static const KeyDesc *compare_key(int i) {
    const KeyDesc *recipe = rc_key_find("train.recipe");
    if (i == 0) return recipe;
    const KeyDesc *k = &RC_KEYS[i - 1];
    return k < recipe ? k : &RC_KEYS[i];
}

const char *run_config_first_diff(const RunConfig *a, const RunConfig *b) {
    for (int i = 0; i < RC_N_KEYS; i++)
        if (!key_equal(a, b, compare_key(i))) return compare_key(i)->path;
    return NULL;
}

int run_config_compare(const RunConfig *run, const RunConfig *now, const char **key, Err *e) {
    if (key) *key = NULL;
    for (int i = 0; i < RC_N_KEYS; i++) {
        const KeyDesc *k = compare_key(i);
        if (!k->resume || key_equal(run, now, k)) continue;
        if (key) *key = k->path;
        char va[RC_PATH_MAX + 8], vb[RC_PATH_MAX + 8];
        rc_value_text(run, k, va, sizeof va);
        rc_value_text(now, k, vb, sizeof vb);
        if (k->type == K_NAMES || k->type == K_OVERRIDES)
            return err_set(e, ERR_VALUE, "cannot resume: %s differ between the run's config and the new one "
                           "(%s in the run, %s now)", k->path, va, vb);
        return err_set(e, ERR_VALUE, "cannot resume: %s is %.200s in the run and %.200s now; resuming needs the "
                       "same value", k->path, va, vb);
    }
    return 0;
}

// ---------------------------------------------------------------- layers

void run_config_layer_quant(const RunConfig *c, const char *name, int special, RcLayerQuant *out) {
    memset(out, 0, sizeof *out);
    const char *leaf = strrchr(name, '.');
    leaf = leaf ? leaf + 1 : name;
    out->quantized = 1;
    for (int i = 0; i < c->quant.n_fp_names; i++)
        if (strstr(leaf, c->quant.fp_name_contains[i])) out->quantized = 0;
    out->weight_bits = special ? c->quant.special_bits : c->quant.weight_bits;
    out->act_bits = special ? c->quant.special_bits : c->quant.act_bits;
    out->weight_quantizer = c->quant.weight_quantizer;
    out->act_quantizer = c->quant.act_quantizer;
    for (int i = 0; i < c->quant.n_overrides; i++) {
        const RcOverride *o = &c->quant.overrides[i];
        if (fnmatch(o->pattern, name, 0) != 0) continue;
        out->matched |= (uint64_t)1 << i;
        if (o->keep_fp) out->quantized = 0;
        if (o->weight_bits) out->weight_bits = o->weight_bits;
        if (o->act_bits) out->act_bits = o->act_bits;
        if (o->weight_quantizer) out->weight_quantizer = o->weight_quantizer - 1;
        if (o->act_quantizer) out->act_quantizer = o->act_quantizer - 1;
    }
    if (!out->quantized) out->weight_bits = out->act_bits = out->weight_quantizer = out->act_quantizer = 0;
}
