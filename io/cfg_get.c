/* cfg_get.c: navigating a CfgNode tree, scalar typing (YAML number/bool/null forms) and the
   typed getters, key checks with "did you mean" suggestions. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/cfg_node.h"

// ---------------------------------------------------------------- navigation

CfgKind cfg_kind(const CfgNode *n) { return n->kind; }
const char *cfg_node_path(const CfgNode *n) { return n->path; }
const char *cfg_file(const CfgNode *n) { return n->doc->file; }
int cfg_line(const CfgNode *n) { return n->line; }
int cfg_column(const CfgNode *n) { return n->col; }
int cfg_len(const CfgNode *n) { return n && n->kind != CFG_SCALAR ? n->n : 0; }
const char *cfg_scalar(const CfgNode *n) { return n && n->kind == CFG_SCALAR ? n->text : NULL; }
int cfg_is_null(const CfgNode *n) { return n && n->kind == CFG_SCALAR && n->null_; }
int cfg_is_quoted(const CfgNode *n) { return n && n->kind == CFG_SCALAR && n->quoted; }

const CfgNode *cfg_at(const CfgNode *n, int i) {
    if (!n || n->kind == CFG_SCALAR || i < 0 || i >= n->n) return NULL;
    return n->items[i];
}

const char *cfg_key_at(const CfgNode *map, int i) {
    if (!map || map->kind != CFG_MAP || i < 0 || i >= map->n) return NULL;
    return map->keys[i];
}

int cfg_key_line(const CfgNode *map, int i) {
    if (!map || map->kind != CFG_MAP || i < 0 || i >= map->n) return 0;
    return map->key_lines[i];
}

const CfgNode *cfg_child(const CfgNode *map, const char *key) {
    if (!map || map->kind != CFG_MAP || !key) return NULL;
    for (int i = 0; i < map->n; i++)
        if (!strcmp(map->keys[i], key)) return map->items[i];
    return NULL;
}

const CfgNode *cfg_path(const CfgNode *root, const char *dotted) {
    const CfgNode *n = root;
    const char *s = dotted;
    if (!n || !s) return NULL;
    while (*s) {
        const char *end = s + strcspn(s, ".[");
        if (end > s) {
            char key[512];
            size_t len = (size_t)(end - s);
            if (len >= sizeof key) return NULL;
            memcpy(key, s, len);
            key[len] = 0;
            if (!(n = cfg_child(n, key))) return NULL;
        }
        s = end;
        while (*s == '[') {  // list indices
            char *close;
            errno = 0;
            long i = strtol(s + 1, &close, 10);
            if (close == s + 1 || *close != ']' || errno || i < 0 || i > INT_MAX) return NULL;
            if (!n || n->kind != CFG_LIST || !(n = cfg_at(n, (int)i))) return NULL;
            s = close + 1;
        }
        if (*s == '.') {
            s++;
            if (!*s) return NULL;
        } else if (*s) {
            return NULL;
        }
    }
    return n;
}

// ---------------------------------------------------------------- scalar typing

// Text of a scalar for messages, shortened.
static void shown_value(const CfgNode *n, char *buf, size_t size) {
    if (n->kind == CFG_MAP) { snprintf(buf, size, "a map"); return; }
    if (n->kind == CFG_LIST) { snprintf(buf, size, "a list"); return; }
    if (n->null_) { snprintf(buf, size, "null"); return; }
    size_t len = strlen(n->text);
    if (len > 60)
        snprintf(buf, size, "%s'%.60s...'", n->quoted ? "string " : "", n->text);
    else
        snprintf(buf, size, "%s'%s'", n->quoted ? "string " : "", n->text);
}

static int type_error(const CfgNode *n, const char *expected, Err *e) {
    char found[96];
    shown_value(n, found, sizeof found);
    return -err_set(e, ERR_VALUE, "%s: %s: expected %s, found %s (line %d)", n->doc->file, cfg_shown_path(n->path),
                    expected, found, n->line);
}

// 1 when s is [-+]?digits without a superfluous leading zero.
static int int_form(const char *s) {
    const char *p = s + (*s == '-' || *s == '+');
    if (!isdigit((unsigned char)*p)) return 0;
    if (p[0] == '0' && p[1]) return 0;  // 010 is octal to YAML 1.1: refuse rather than guess
    for (; *p; p++)
        if (!isdigit((unsigned char)*p)) return 0;
    return 1;
}

// YAML real forms; 0 ok, -1 not a number, -2 out of range.
static int parse_real(const char *s, double *out) {
    const char *p = s;
    int neg = 0;
    if (*p == '-' || *p == '+') neg = *p++ == '-';
    if (!strcmp(p, ".inf") || !strcmp(p, ".Inf") || !strcmp(p, ".INF")) {
        *out = neg ? -INFINITY : INFINITY;
        return 0;
    }
    if (p == s && (!strcmp(p, ".nan") || !strcmp(p, ".NaN") || !strcmp(p, ".NAN"))) {
        *out = NAN;
        return 0;
    }
    const char *q = p;
    int digits = 0;
    while (isdigit((unsigned char)*q)) { q++; digits++; }
    int int_digits = digits;
    int dot = *q == '.';
    if (dot) {
        q++;
        while (isdigit((unsigned char)*q)) { q++; digits++; }
    }
    if (!digits) return -1;
    int exp = *q == 'e' || *q == 'E';
    if (exp) {
        q++;
        if (*q == '-' || *q == '+') q++;
        if (!isdigit((unsigned char)*q)) return -1;
        while (isdigit((unsigned char)*q)) q++;
    }
    if (*q) return -1;
    if (!dot && !exp && int_digits > 1 && p[0] == '0') return -1;  // octal-looking integer
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (*end) return -1;
    if (isinf(v)) return -2;
    *out = v;
    return 0;
}

int cfg_as_double(const CfgNode *n, double *out, Err *e) {
    if (!n) return -err_set(e, ERR_INTERNAL, "cfg_as_double: no node");
    if (n->kind != CFG_SCALAR || n->quoted || n->null_) return type_error(n, "a number", e);
    double v;
    int r = parse_real(n->text, &v);
    if (r == -2) return type_error(n, "a number within double range", e);
    if (r) return type_error(n, "a number", e);
    *out = v;
    return 0;
}

int cfg_as_int(const CfgNode *n, int *out, Err *e) {
    if (!n) return -err_set(e, ERR_INTERNAL, "cfg_as_int: no node");
    if (n->kind != CFG_SCALAR || n->quoted || n->null_) return type_error(n, "an integer", e);
    if (int_form(n->text)) {
        errno = 0;
        long long v = strtoll(n->text, NULL, 10);
        if (errno || v < INT_MIN || v > INT_MAX) return type_error(n, "an integer in int range", e);
        *out = (int)v;
        return 0;
    }
    double v;
    if (parse_real(n->text, &v) || !isfinite(v) || v != floor(v)) return type_error(n, "an integer", e);
    if (v < INT_MIN || v > INT_MAX) return type_error(n, "an integer in int range", e);
    *out = (int)v;
    return 0;
}

int cfg_as_bool(const CfgNode *n, int *out, Err *e) {
    if (!n) return -err_set(e, ERR_INTERNAL, "cfg_as_bool: no node");
    if (n->kind != CFG_SCALAR || n->quoted || n->null_) return type_error(n, "a boolean (true/false)", e);
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (!strcmp(n->text, yes[i])) { *out = 1; return 0; }
        if (!strcmp(n->text, no[i])) { *out = 0; return 0; }
    }
    return type_error(n, "a boolean (true/false)", e);
}

int cfg_as_str(const CfgNode *n, const char **out, Err *e) {
    if (!n) return -err_set(e, ERR_INTERNAL, "cfg_as_str: no node");
    if (n->kind != CFG_SCALAR || n->null_) return type_error(n, "a string", e);
    *out = n->text;
    return 0;
}

// The child for a getter: 0 and *c found; 1 absent; negative error.
static int getter_child(const CfgNode *map, const char *key, const CfgNode **c, Err *e) {
    if (!map) return 1;
    if (map->kind != CFG_MAP) return type_error(map, "a map", e);
    *c = cfg_child(map, key);
    return *c ? 0 : 1;
}

int cfg_get_int(const CfgNode *map, const char *key, int *out, Err *e) {
    const CfgNode *c = NULL;
    int r = getter_child(map, key, &c, e);
    return r ? r : cfg_as_int(c, out, e);
}

int cfg_get_double(const CfgNode *map, const char *key, double *out, Err *e) {
    const CfgNode *c = NULL;
    int r = getter_child(map, key, &c, e);
    return r ? r : cfg_as_double(c, out, e);
}

int cfg_get_bool(const CfgNode *map, const char *key, int *out, Err *e) {
    const CfgNode *c = NULL;
    int r = getter_child(map, key, &c, e);
    return r ? r : cfg_as_bool(c, out, e);
}

int cfg_get_str(const CfgNode *map, const char *key, const char **out, Err *e) {
    const CfgNode *c = NULL;
    int r = getter_child(map, key, &c, e);
    return r ? r : cfg_as_str(c, out, e);
}

int cfg_get_int_list(const CfgNode *map, const char *key, int *out, int max, int *count, Err *e) {
    const CfgNode *c = NULL;
    int r = getter_child(map, key, &c, e);
    if (r) return r;
    if (c->kind == CFG_SCALAR) {
        int v;
        if ((r = cfg_as_int(c, &v, e))) return r;
        if (max < 1)
            return -err_set(e, ERR_VALUE, "%s: %s: expected at most %d entries, found 1 (line %d)", c->doc->file,
                            cfg_shown_path(c->path), max, c->line);
        out[0] = v;
        *count = 1;
        return 0;
    }
    if (c->kind != CFG_LIST) return type_error(c, "a list of integers", e);
    if (c->n > max)
        return -err_set(e, ERR_VALUE, "%s: %s: expected at most %d entries, found %d (line %d)", c->doc->file,
                        cfg_shown_path(c->path), max, c->n, c->line);
    for (int i = 0; i < c->n; i++) {  // check all before writing any
        int v;
        if ((r = cfg_as_int(c->items[i], &v, e))) return r;
    }
    for (int i = 0; i < c->n; i++) cfg_as_int(c->items[i], &out[i], e);
    *count = c->n;
    return 0;
}

// ---------------------------------------------------------------- key checks

// Case-insensitive edit distance counting a swap of two neighbours as one edit ("qaunt" -> "quant"),
// the optimal-string-alignment variant of Damerau-Levenshtein; long strings are never a typo.
static int edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64) return 1000;
    int d[65][65];
    for (size_t i = 0; i <= la; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int ca = tolower((unsigned char)a[i - 1]);
        for (size_t j = 1; j <= lb; j++) {
            int cb = tolower((unsigned char)b[j - 1]);
            int best = d[i - 1][j - 1] + (ca != cb);
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && ca == tolower((unsigned char)b[j - 2]) && tolower((unsigned char)a[i - 2]) == cb &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[la][lb];
}

int cfg_suggest(const char *word, const char *const *cands, int n) {
    int best = -1, bd = 0;
    for (int i = 0; i < n; i++) {
        int d = edit_distance(word, cands[i]);
        if (best < 0 || d < bd) { best = i; bd = d; }
    }
    int limit = (int)strlen(word) / 3;
    if (limit < 1) limit = 1;
    return best >= 0 && bd <= limit ? best : -1;
}

int cfg_check_keys(const CfgNode *map, const char *const *allowed, int n, Err *e) {
    if (!map) return 0;
    if (map->kind != CFG_MAP) return -type_error(map, "a map", e);
    for (int i = 0; i < map->n; i++) {
        int ok = 0;
        for (int j = 0; j < n && !ok; j++) ok = !strcmp(map->keys[i], allowed[j]);
        if (ok) continue;
        const CfgNode *c = map->items[i];
        int s = cfg_suggest(map->keys[i], allowed, n);
        if (s >= 0)
            return err_set(e, ERR_KEY, "%s: %s: unknown key (line %d); did you mean '%s'?", map->doc->file, c->path,
                           map->key_lines[i], allowed[s]);
        return err_set(e, ERR_KEY, "%s: %s: unknown key (line %d)", map->doc->file, c->path, map->key_lines[i]);
    }
    return 0;
}
