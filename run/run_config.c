/* run_config.c: reading a run config (YAML tree -> RunConfig through the key table), its
   checks, and validating a filled RunConfig. Writing and comparing: run_config_write.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/cfg.h"
#include "qalora/qkind.h"
#include "run/run_config_keys.h"
#include "util/path.h"
#include "util/zoo.h"

#define N_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

// ---------------------------------------------------------------- reading

typedef struct {
    const char *file;
    Err *e;
} Reader;

static int node_error(const CfgNode *n, Err *e, const char *expected, const char *found) {
    return err_set(e, ERR_VALUE, "%s: %s: expected %s, found %s (line %d)", cfg_file(n), cfg_node_path(n), expected,
                   found, cfg_line(n));
}

static int read_enum(const CfgNode *n, const KeyDesc *k, int *out, Err *e) {
    const char *s;
    if (cfg_as_str(n, &s, e) < 0 || cfg_kind(n) != CFG_SCALAR) return ERR_VALUE;
    for (int i = 0; i < k->n_names; i++)
        if (!strcmp(s, k->names[i])) {
            *out = i;
            return 0;
        }
    char expected[160] = "one of ";
    for (int i = 0; i < k->n_names; i++) {
        strncat(expected, k->names[i], sizeof expected - strlen(expected) - 1);
        if (i + 1 < k->n_names) strncat(expected, ", ", sizeof expected - strlen(expected) - 1);
    }
    char found[96];
    snprintf(found, sizeof found, "'%.60s'", s);
    int sug = cfg_suggest(s, k->names, k->n_names);
    if (sug >= 0)
        return err_set(e, ERR_VALUE, "%s: %s: expected %s, found %s (line %d); did you mean '%s'?", cfg_file(n),
                       cfg_node_path(n), expected, found, cfg_line(n), k->names[sug]);
    return node_error(n, e, expected, found);
}

static int read_int_ranged(const CfgNode *n, const KeyDesc *k, int *out, Err *e) {
    int v;
    if (cfg_as_int(n, &v, e) < 0) return ERR_VALUE;
    if (!rc_in_range(k, v)) {
        char expected[96], found[32];
        rc_range_text(k, expected, sizeof expected);
        snprintf(found, sizeof found, "%d", v);
        return node_error(n, e, expected, found);
    }
    *out = v;
    return 0;
}

static int read_string(const CfgNode *n, const char *what, char *out, size_t size, Err *e) {
    const char *s;
    if (cfg_as_str(n, &s, e) < 0 || cfg_kind(n) != CFG_SCALAR) return ERR_VALUE;
    if (!s[0]) return node_error(n, e, what, "an empty string");
    if (strlen(s) >= size) {
        char expected[96];
        snprintf(expected, sizeof expected, "%s of at most %zu characters", what, size - 1);
        char found[48];
        snprintf(found, sizeof found, "%zu characters", strlen(s));
        return node_error(n, e, expected, found);
    }
    memset(out, 0, size);  // no bytes of an earlier value behind the NUL: equal configs are equal bytes
    memcpy(out, s, strlen(s) + 1);
    return 0;
}

static int read_names(const CfgNode *n, RunConfig *c, Err *e) {
    if (cfg_kind(n) != CFG_LIST) return node_error(n, e, "a list of name parts like [skip, op]", "a non-list");
    if (cfg_len(n) > RC_MAX_FP_NAMES) {
        char found[32];
        snprintf(found, sizeof found, "%d", cfg_len(n));
        char expected[64];
        snprintf(expected, sizeof expected, "at most %d entries", RC_MAX_FP_NAMES);
        return node_error(n, e, expected, found);
    }
    for (int i = 0; i < cfg_len(n); i++)
        if (read_string(cfg_at(n, i), "a name part", c->quant.fp_name_contains[i], RC_NAME_MAX, e)) return ERR_VALUE;
    for (int i = cfg_len(n); i < RC_MAX_FP_NAMES; i++) memset(c->quant.fp_name_contains[i], 0, RC_NAME_MAX);
    c->quant.n_fp_names = cfg_len(n);
    return 0;
}

static const char *const OVERRIDE_KEYS[] = {"pattern", "weight_bits", "act_bits", "weight_quantizer", "act_quantizer",
                                            "keep_fp"};

static int read_overrides(const CfgNode *n, RunConfig *c, Err *e) {
    if (cfg_kind(n) != CFG_LIST)
        return node_error(n, e, "a list of {pattern, weight_bits, act_bits, weight_quantizer, act_quantizer, keep_fp} "
                          "maps", "a non-list");
    if (cfg_len(n) > RC_MAX_OVERRIDES) {
        char found[32], expected[64];
        snprintf(found, sizeof found, "%d", cfg_len(n));
        snprintf(expected, sizeof expected, "at most %d overrides", RC_MAX_OVERRIDES);
        return node_error(n, e, expected, found);
    }
    static const KeyDesc bits = {.path = "bits", .type = K_INT, .lo = 2, .hi = 8};
    static const KeyDesc kinds = {.path = "quantizer", .type = K_ENUM, .names = QKIND_NAMES,
                                  .n_names = QUANT_KIND_COUNT};
    memset(c->quant.overrides, 0, sizeof c->quant.overrides);
    for (int i = 0; i < cfg_len(n); i++) {
        const CfgNode *m = cfg_at(n, i);
        RcOverride *o = &c->quant.overrides[i];
        if (cfg_kind(m) != CFG_MAP)
            return node_error(m, e, "a map {pattern, weight_bits, act_bits, weight_quantizer, act_quantizer, keep_fp}",
                              "a non-map");
        if (cfg_check_keys(m, OVERRIDE_KEYS, N_OF(OVERRIDE_KEYS), e)) return e->code;
        const CfgNode *p = cfg_child(m, "pattern");
        if (!p)
            return err_set(e, ERR_KEY, "%s: %s: missing key 'pattern' (a glob on layer names) (line %d)", cfg_file(m),
                           cfg_node_path(m), cfg_line(m));
        if (read_string(p, "a glob pattern", o->pattern, RC_PATTERN_MAX, e)) return ERR_VALUE;
        const CfgNode *wb = cfg_child(m, "weight_bits"), *ab = cfg_child(m, "act_bits");
        const CfgNode *wq = cfg_child(m, "weight_quantizer"), *aq = cfg_child(m, "act_quantizer");
        const CfgNode *kf = cfg_child(m, "keep_fp");
        if (wb && read_int_ranged(wb, &bits, &o->weight_bits, e)) return ERR_VALUE;
        if (ab && read_int_ranged(ab, &bits, &o->act_bits, e)) return ERR_VALUE;
        if (wq && read_enum(wq, &kinds, &o->weight_quantizer, e)) return ERR_VALUE;
        if (aq && read_enum(aq, &kinds, &o->act_quantizer, e)) return ERR_VALUE;
        if (aq && qkind_get((QuantKind)o->act_quantizer)->weight_only)
            return node_error(aq, e, "a quantizer kind for activations (easyquant quantizes weights only)",
                              quant_kind_name((QuantKind)o->act_quantizer));
        o->weight_quantizer += wq ? 1 : 0;  // 1 + the kind; 0: unchanged
        o->act_quantizer += aq ? 1 : 0;
        if (kf && cfg_as_bool(kf, &o->keep_fp, e) < 0) return ERR_VALUE;
        if (o->keep_fp && (wb || ab || wq || aq))
            return err_set(e, ERR_VALUE, "%s: %s: keep_fp: true leaves the layer FP; it cannot also set bits or "
                           "quantizers (line %d)", cfg_file(m), cfg_node_path(m), cfg_line(m));
        if (!wb && !ab && !wq && !aq && !kf)
            return err_set(e, ERR_VALUE, "%s: %s: an override needs weight_bits, act_bits, weight_quantizer, "
                           "act_quantizer or keep_fp (line %d)", cfg_file(m), cfg_node_path(m), cfg_line(m));
    }
    c->quant.n_overrides = cfg_len(n);
    return 0;
}

static int read_key(const CfgNode *n, const KeyDesc *k, RunConfig *c, Err *e) {
    switch (k->type) {
    case K_INT: return read_int_ranged(n, k, rc_int_at(c, k), e);
    case K_BOOL: return cfg_as_bool(n, rc_int_at(c, k), e) < 0 ? ERR_VALUE : 0;
    case K_ENUM: return read_enum(n, k, rc_int_at(c, k), e);
    case K_STR: return read_string(n, "a path", rc_str_at(c, k), k->size, e);
    case K_NAMES: return read_names(n, c, e);
    case K_OVERRIDES: return read_overrides(n, c, e);
    case K_LABEL:
        if (cfg_kind(n) == CFG_SCALAR && !cfg_is_quoted(n) && !strcmp(cfg_scalar(n), "auto")) {
            *rc_int_at(c, k) = -1;
            return 0;
        }
        if (cfg_kind(n) == CFG_SCALAR && cfg_is_quoted(n))
            return node_error(n, e, "auto or an integer >= 0", "a string");
        {
            int v;
            if (cfg_as_int(n, &v, NULL) < 0 || v < 0) {
                char found[96];
                const char *s = cfg_scalar(n);
                if (s) snprintf(found, sizeof found, "'%.60s'", s);
                else snprintf(found, sizeof found, "a %s", cfg_kind(n) == CFG_MAP ? "map" : "list");
                return node_error(n, e, "auto or an integer >= 0", found);
            }
            *rc_int_at(c, k) = v;
        }
        return 0;
    case K_DOUBLE: {
        double v;
        if (cfg_as_double(n, &v, e) < 0) return ERR_VALUE;
        if (!rc_in_range(k, v)) {
            char expected[96], found[40];
            rc_range_text(k, expected, sizeof expected);
            cfg_format_double(v, found, sizeof found);
            return node_error(n, e, expected, found);
        }
        *rc_dbl_at(c, k) = v;
        return 0;
    }
    }
    return err_set(e, ERR_INTERNAL, "run config: key type of %s", k->path);
}

// 1 when some key lives under prefix ("train" or "train.optimizer").
static int is_group(const char *prefix) {
    size_t n = strlen(prefix);
    for (int i = 0; i < RC_N_KEYS; i++)
        if (!strncmp(RC_KEYS[i].path, prefix, n) && RC_KEYS[i].path[n] == '.') return 1;
    return 0;
}

// The next path component of key path `full` below group `prefix` ("" for the top), into buf.
static void child_name(const char *full, const char *prefix, char *buf, size_t n) {
    const char *s = full + strlen(prefix) + (prefix[0] ? 1 : 0);
    size_t len = strcspn(s, ".");
    if (len >= n) len = n - 1;
    memcpy(buf, s, len);
    buf[len] = 0;
}

static int unknown_key(const CfgNode *map, const char *prefix, const char *key, int line, Err *e) {
    // Candidates: the valid names at this level.
    const char *cands[128];
    char names[128][48];
    int nc = 0;
    size_t pl = strlen(prefix);
    for (int i = 0; i < RC_N_KEYS && nc < 128; i++) {
        if (pl && (strncmp(RC_KEYS[i].path, prefix, pl) || RC_KEYS[i].path[pl] != '.')) continue;
        child_name(RC_KEYS[i].path, prefix, names[nc], sizeof names[nc]);
        int dup = 0;
        for (int j = 0; j < nc && !dup; j++) dup = !strcmp(names[j], names[nc]);
        if (!dup) {
            cands[nc] = names[nc];
            nc++;
        }
    }
    char full[320];
    snprintf(full, sizeof full, "%s%s%s", prefix, pl ? "." : "", key);
    int s = cfg_suggest(key, cands, nc);
    if (s >= 0)
        return err_set(e, ERR_KEY, "%s: %s: unknown key (line %d); did you mean '%s%s%s'?", cfg_file(map), full,
                       line, prefix, pl ? "." : "", cands[s]);
    // The same name in another group ("train.weight_bits" -> "quant.weight_bits").
    for (int i = 0; i < RC_N_KEYS; i++) {
        const char *leaf = strrchr(RC_KEYS[i].path, '.');
        if (leaf && !strcmp(leaf + 1, key))
            return err_set(e, ERR_KEY, "%s: %s: unknown key (line %d); did you mean '%s'?", cfg_file(map), full,
                           line, RC_KEYS[i].path);
    }
    char valid[400] = "";
    for (int i = 0; i < nc; i++) {
        strncat(valid, cands[i], sizeof valid - strlen(valid) - 1);
        if (i + 1 < nc) strncat(valid, ", ", sizeof valid - strlen(valid) - 1);
    }
    return err_set(e, ERR_KEY, "%s: %s: unknown key (line %d); valid here: %s", cfg_file(map), full, line, valid);
}

// Keys that were removed, with the one value they ever accepted: run directories written
// before hold them, and that value still reads (as nothing); any other is an error saying why.
static const struct { const char *path; const char *why; } RETIRED[] = {
    {"quant.quantize_attention_matmuls", "removed (session 7): the attention products QK^T and softmax·V stay FP, "
                                         "as in the reference; only false was ever accepted"},
};

// 1 when full is a retired key (its value checked: 0, or the error set in *e and -1).
static int read_retired(const char *full, const CfgNode *n, int *rc, Err *e) {
    for (size_t i = 0; i < sizeof RETIRED / sizeof RETIRED[0]; i++) {
        if (strcmp(full, RETIRED[i].path)) continue;
        int v = 1;
        *rc = 0;
        if (cfg_as_bool(n, &v, e) < 0 || v)
            *rc = err_set(e, ERR_VALUE, "%s: %s: %s (line %d)", cfg_file(n), cfg_node_path(n), RETIRED[i].why,
                          cfg_line(n));
        return 1;
    }
    return 0;
}

static int read_group(const CfgNode *map, const char *prefix, RunConfig *c, Err *e) {
    if (cfg_is_null(map)) return 0;  // "quant:" with every key commented out
    if (cfg_kind(map) != CFG_MAP) {
        char expected[128];
        snprintf(expected, sizeof expected, "a map of %s keys", prefix[0] ? prefix : "groups (model, quant, ...)");
        const char *s = cfg_scalar(map);
        char found[96];
        if (s) snprintf(found, sizeof found, "'%.60s'", s);
        else snprintf(found, sizeof found, "a list");
        if (!prefix[0])
            return err_set(e, ERR_VALUE, "%s: expected %s at the top level, found %s", cfg_file(map), expected, found);
        return node_error(map, e, expected, found);
    }
    for (int i = 0; i < cfg_len(map); i++) {
        const char *key = cfg_key_at(map, i);
        const CfgNode *child = cfg_at(map, i);
        char full[320];
        snprintf(full, sizeof full, "%s%s%s", prefix, prefix[0] ? "." : "", key);
        const KeyDesc *k = rc_key_find(full);
        int rc;
        if (k) {
            if (read_key(child, k, c, e)) return e->code ? e->code : ERR_VALUE;
        } else if (read_retired(full, child, &rc, e)) {
            if (rc) return rc;
        } else if (is_group(full)) {
            if (read_group(child, full, c, e)) return e->code;
        } else {
            return unknown_key(map, prefix, key, cfg_key_line(map, i), e);
        }
    }
    return 0;
}

// Checks that involve several keys. file: for messages ("run config" without one).
static int check_consistency(const RunConfig *c, const char *file, Err *e) {
    const RcTrain *t = &c->train;
    if (qkind_valid(c->quant.act_quantizer) && qkind_get((QuantKind)c->quant.act_quantizer)->weight_only)
        return err_set(e, ERR_VALUE, "%s: quant.act_quantizer: %s quantizes weights only; expected a kind for "
                       "activations", file, quant_kind_name((QuantKind)c->quant.act_quantizer));
    if (t->grad_slots > 0 && t->batch % t->grad_slots != 0)
        return err_set(e, ERR_VALUE, "%s: train.grad_slots: %d slots must divide train.batch %d", file, t->grad_slots,
                       t->batch);
    if (t->sample_selection == RC_SELECTION_ADAPTIVE && !(t->selection_band_hi > t->selection_band_lo))
        return err_set(e, ERR_VALUE, "%s: train.selection_band_hi (%g) must be above train.selection_band_lo (%g)", file,
                       t->selection_band_hi, t->selection_band_lo);
    if (t->sample_selection == RC_SELECTION_ADAPTIVE && t->selection_pool < t->batch)
        return err_set(e, ERR_VALUE, "%s: train.selection_pool (%d) must be at least train.batch (%d)", file,
                       t->selection_pool, t->batch);
    if (t->select_epoch == RC_SELECT_BEST_SAMPLED && t->val_samples < 8)
        return err_set(e, ERR_VALUE, "%s: train.select_epoch: best_sampled needs train.val_samples >= 8, found %d", file,
                       t->val_samples);
    if (t->select_epoch != RC_SELECT_LAST && t->val_every < 1)
        return err_set(e, ERR_VALUE, "%s: train.select_epoch: best_val needs train.val_every >= 1, found %d", file,
                       t->val_every);
    double span = (c->quant.mse_candidates - 1) * c->quant.mse_shrink;
    if (!(span < 1.0))
        return err_set(e, ERR_VALUE, "%s: quant.mse_shrink: (mse_candidates - 1) * mse_shrink must be < 1 (the "
                       "smallest range would be empty), found (%d - 1) * %g", file, c->quant.mse_candidates,
                       c->quant.mse_shrink);
    if (t->epochs > 0 && (double)t->optimizer.warmup_steps > (double)t->epochs * t->steps)
        return err_set(e, ERR_VALUE,
                       "%s: train.optimizer.warmup_steps: expected at most epochs * steps = %.0f, found %d", file,
                       (double)t->epochs * t->steps, t->optimizer.warmup_steps);
    return 0;
}

int run_config_validate(const RunConfig *c, Err *e) {
    for (int i = 0; i < RC_N_KEYS; i++) {
        const KeyDesc *k = &RC_KEYS[i];
        char expected[96], found[64];
        int bad = 0;
        switch (k->type) {
        case K_INT: bad = !rc_in_range(k, *rc_cint_at(c, k)); break;
        case K_DOUBLE: bad = !rc_in_range(k, *rc_cdbl_at(c, k)); break;
        case K_BOOL: bad = *rc_cint_at(c, k) != 0 && *rc_cint_at(c, k) != 1; break;
        case K_ENUM: bad = *rc_cint_at(c, k) < 0 || *rc_cint_at(c, k) >= k->n_names; break;
        case K_LABEL: bad = *rc_cint_at(c, k) < -1; break;
        case K_STR: {
            const char *s = rc_cstr_at(c, k);
            bad = !s[0] || !memchr(s, 0, k->size);
            break;
        }
        case K_NAMES: {
            bad = c->quant.n_fp_names < 0 || c->quant.n_fp_names > RC_MAX_FP_NAMES;
            for (int j = 0; !bad && j < c->quant.n_fp_names; j++)
                bad = !c->quant.fp_name_contains[j][0] || !memchr(c->quant.fp_name_contains[j], 0, RC_NAME_MAX);
            break;
        }
        case K_OVERRIDES: {
            bad = c->quant.n_overrides < 0 || c->quant.n_overrides > RC_MAX_OVERRIDES;
            for (int j = 0; !bad && j < c->quant.n_overrides; j++) {
                const RcOverride *o = &c->quant.overrides[j];
                int wb = o->weight_bits, ab = o->act_bits, wq = o->weight_quantizer, aq = o->act_quantizer;
                bad = !o->pattern[0] || !memchr(o->pattern, 0, RC_PATTERN_MAX) || (wb && (wb < 2 || wb > 8)) ||
                      (ab && (ab < 2 || ab > 8)) || (wq && !qkind_valid(wq - 1)) || (aq && !qkind_valid(aq - 1)) ||
                      (aq && qkind_get((QuantKind)(aq - 1))->weight_only) ||
                      (o->keep_fp != 0 && o->keep_fp != 1) || (o->keep_fp && (wb || ab || wq || aq)) ||
                      (!o->keep_fp && !wb && !ab && !wq && !aq);
            }
            break;
        }
        }
        if (!bad) continue;
        if (k->type == K_INT || k->type == K_DOUBLE) {
            rc_range_text(k, expected, sizeof expected);
            rc_value_text(c, k, found, sizeof found);
            return err_set(e, ERR_VALUE, "run config: %s: expected %s, found %s", k->path, expected, found);
        }
        return err_set(e, ERR_VALUE, "run config: %s: invalid value", k->path);
    }
    return check_consistency(c, "run config", e);
}

// "runs/<stem>" from a config file name.
static void default_out(const char *name, char *out, size_t n) {
    memset(out, 0, n);
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    size_t len = strcspn(base, ".");
    if (len == 0 || len > 200) {
        snprintf(out, n, "runs/run");
        return;
    }
    snprintf(out, n, "runs/%.*s", (int)len, base);
}

// Makes every path key absolute (see rc_load_tree): doc is the document that set the last value
// of each key (the file: base_dir, a --set: the working directory, none: the default).
static int resolve_paths(const CfgNode *root, const char *base_dir, CfgNode *const *sets, int n_sets, RunConfig *c,
                         Err *e) {
    for (int i = 0; i < RC_N_KEYS; i++) {
        const KeyDesc *k = &RC_KEYS[i];
        if (!k->is_path) continue;
        const char *base = NULL;  // the working directory
        int given = 0;
        for (int j = n_sets - 1; j >= 0 && !given; j--) given = cfg_path(sets[j], k->path) != NULL;
        if (!given && cfg_path(root, k->path)) {
            given = 1;
            base = base_dir;
        }
        char *v = rc_str_at(c, k);
        if (!given && k->zoo) {
            Err ze = {0};
            if (zoo_path(k->zoo, v, k->size, &ze))
                return err_set(e, ERR_IO, "run config: %s: not given, and the shipped teacher's is missing (%s)",
                               k->path, ze.msg);
        }
        char abs[RC_PATH_MAX];
        if (path_absolute(abs, sizeof abs, base, v, k->path, e)) return e->code;
        memset(v, 0, k->size);  // configs compare as bytes too (tests, the writer's round trip)
        snprintf(v, k->size, "%s", abs);
    }
    return 0;
}

int rc_load_tree(const CfgNode *root, const char *name, const char *base_dir, CfgNode *const *sets, int n_sets,
                 RunConfig *c, Err *e) {
    // The recipe first: it picks the defaults of the other keys (a --set of it wins as a later
    // line of the file would).
    RcRecipe recipe = RC_RECIPE_EFFDM;
    for (int i = -1; i < n_sets; i++) {
        const CfgNode *train = cfg_child(i < 0 ? root : sets[i], "train");
        const CfgNode *rn = cfg_child(train, "recipe");
        if (rn) {
            int r;
            if (read_enum(rn, rc_key_find("train.recipe"), &r, e)) return ERR_VALUE;
            recipe = (RcRecipe)r;
        }
    }
    run_config_defaults(c, recipe);
    default_out(name, c->run.out, sizeof c->run.out);
    if (read_group(root, "", c, e)) return e->code;
    for (int i = 0; i < n_sets; i++)
        if (read_group(sets[i], "", c, e)) return e->code;
    if (resolve_paths(root, base_dir, sets, n_sets, c, e)) return e->code;
    char what[1100];  // a check across keys names the file, and the assignments when they took part
    snprintf(what, sizeof what, "%.1000s with --set", name);
    return check_consistency(c, n_sets > 0 ? what : name, e);
}

int run_config_load_mem(const char *text, size_t len, const char *name, RunConfig *c, Err *e) {
    CfgNode *root;
    if (!name) name = "(memory)";
    int r = cfg_load_mem(text, len, name, &root, e);
    if (r) return r;
    r = rc_load_tree(root, name, NULL, NULL, 0, c, e);
    cfg_free(root);
    return r;
}

int run_config_load(const char *path, RunConfig *c, Err *e) {
    CfgNode *root;
    int r = cfg_load(path, &root, e);
    if (r) return r;
    char dir[RC_PATH_MAX];
    path_dir(dir, sizeof dir, path);
    r = rc_load_tree(root, path, dir, NULL, 0, c, e);
    cfg_free(root);
    return r;
}

