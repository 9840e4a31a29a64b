/* cfg_write.c: CfgWriter, block-style YAML text built in memory, committed atomically.
   Layout (2 spaces per level, lists indented under their key):
       quant:
         weight_bits: 4
         overrides:
           - pattern: "output_blocks.*"
             keep_fp: true
         empty: []
*/
#include "io/cfg.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "io/fileio.h"
#include "util/grow.h"

static void put(CfgWriter *w, const char *s, size_t n) {
    if (!w->failed && grow_text_append(&w->buf, &w->len, &w->cap, s, n)) w->failed = 2;
}

static void puts_(CfgWriter *w, const char *s) { put(w, s, strlen(s)); }

static void spaces(CfgWriter *w, int n) {
    for (int i = 0; i < n; i++) put(w, " ", 1);
}

void cfg_writer_init(CfgWriter *w) {
    memset(w, 0, sizeof *w);
    w->depth = 1;  // the root map
}

void cfg_writer_free(CfgWriter *w) {
    free(w->buf);
    memset(w, 0, sizeof *w);
}

// 1 when s can be written without quotes and reads back as the same string.
static int plain_ok(const char *s) {
    if (!s[0]) return 0;
    static const char *const words[] = {"null", "~", "true", "false", "yes", "no", "on", "off", "y", "n"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (!strcasecmp(s, words[i])) return 0;
    char c0 = s[0];
    if (!((c0 >= 'a' && c0 <= 'z') || (c0 >= 'A' && c0 <= 'Z') || c0 == '_' || c0 == '/')) return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
              c == '/' || c == '-'))
            return 0;
    }
    return 1;
}

// Length and code point of the UTF-8 sequence at p; 0 when it is not valid UTF-8.
static int utf8_decode(const unsigned char *p, unsigned *cp) {
    int n = p[0] >= 0xF0 ? 4 : p[0] >= 0xE0 ? 3 : p[0] >= 0xC0 ? 2 : 0;
    if (!n || p[0] > 0xF4) return 0;
    unsigned v = p[0] & (0x3F >> (n - 1));
    for (int i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (p[i] & 0x3F);
    }
    *cp = v;
    return n;
}

// Double-quoted YAML of s. Escaped: quotes, backslash, and every character YAML does not allow
// raw or would fold as a line break (C0/C1 controls, DEL, U+2028/2029, U+FEFF, U+FFFE/FFFF).
// s must be UTF-8 (any string cfg_load produced is); other bytes are copied as they are.
static void put_quoted(CfgWriter *w, const char *s) {
    put(w, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        char esc[16];
        unsigned cp;
        int n;
        if (*p == '"') {
            puts_(w, "\\\"");
            p++;
        } else if (*p == '\\') {
            puts_(w, "\\\\");
            p++;
        } else if (*p == '\n') {
            puts_(w, "\\n");
            p++;
        } else if (*p == '\t') {
            puts_(w, "\\t");
            p++;
        } else if (*p < 0x20 || *p == 0x7f) {
            snprintf(esc, sizeof esc, "\\x%02x", *p);
            puts_(w, esc);
            p++;
        } else if (*p < 0x80) {
            put(w, (const char *)p, 1);
            p++;
        } else if ((n = utf8_decode(p, &cp)) > 0) {
            if ((cp >= 0x80 && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029 || cp == 0xfeff || cp == 0xfffe ||
                cp == 0xffff) {
                snprintf(esc, sizeof esc, "\\u%04x", cp);
                puts_(w, esc);
            } else {
                put(w, (const char *)p, (size_t)n);
            }
            p += n;
        } else {
            put(w, (const char *)p, 1);
            p++;
        }
    }
    put(w, "\"", 1);
}

static void put_string(CfgWriter *w, const char *s) {
    if (plain_ok(s))
        puts_(w, s);
    else
        put_quoted(w, s);
}

// Starts an entry of the innermost open map (key) or list (key NULL): indentation, "- " or "key:".
static void entry(CfgWriter *w, const char *key) {
    if (w->failed) return;
    if (w->open_key) {
        put(w, "\n", 1);
        w->open_key = 0;
    }
    int d = w->depth - 1;
    int is_list = w->stack[d].list;
    if (is_list != (key == NULL)) {  // a key inside a list or a keyless entry in a map
        w->failed = 1;
        return;
    }
    if (w->stack[d].dash) {  // first key of a map that is a list item: "- key:"
        spaces(w, w->stack[d].indent - 2);
        puts_(w, "- ");
        w->stack[d].dash = 0;
    } else {
        spaces(w, w->stack[d].indent);
    }
    if (is_list) {
        puts_(w, "-");
    } else if (strlen(key) > 160) {
        // YAML limits implicit keys to 1024 characters (escapes can make one 6 times longer):
        // an explicit key, "? key" then ":" on the next line.
        puts_(w, "? ");
        put_string(w, key);
        put(w, "\n", 1);
        spaces(w, w->stack[d].indent);
        puts_(w, ":");
    } else {
        put_string(w, key);
        puts_(w, ":");
    }
    w->stack[d].items++;
}

static void push(CfgWriter *w, int list, int indent, int dash) {
    if (w->depth >= CFG_MAX_DEPTH) {
        w->failed = 1;
        return;
    }
    w->stack[w->depth].list = list;
    w->stack[w->depth].indent = indent;
    w->stack[w->depth].items = 0;
    w->stack[w->depth].dash = dash;
    w->depth++;
}

void cfg_writer_map_begin(CfgWriter *w, const char *key) {
    if (w->failed) return;
    int d = w->depth - 1;
    if (w->stack[d].list && key == NULL) {
        // A map as a list item: its first key goes on the "- " line.
        if (w->open_key) {
            put(w, "\n", 1);
            w->open_key = 0;
        }
        w->stack[d].items++;
        push(w, 0, w->stack[d].indent + 2, 1);
        return;
    }
    entry(w, key);
    push(w, 0, w->stack[d].indent + 2, 0);
    w->open_key = 1;
}

void cfg_writer_list_begin(CfgWriter *w, const char *key) {
    if (w->failed) return;
    int d = w->depth - 1;
    entry(w, key);
    push(w, 1, w->stack[d].indent + 2, 0);
    w->open_key = 1;
}

static void end(CfgWriter *w, int list) {
    if (w->failed) return;
    int d = w->depth - 1;
    if (d < 1 || w->stack[d].list != list) {
        w->failed = 1;
        return;
    }
    if (w->stack[d].items == 0) {
        if (w->stack[d].dash) {
            spaces(w, w->stack[d].indent - 2);
            puts_(w, "- {}\n");
        } else if (w->open_key) {
            puts_(w, list ? " []\n" : " {}\n");
            w->open_key = 0;
        } else {  // a comment closed the key line: the value goes on a line of its own
            spaces(w, w->stack[d].indent);
            puts_(w, list ? "[]\n" : "{}\n");
        }
    }
    w->depth--;
}

void cfg_writer_map_end(CfgWriter *w) { end(w, 0); }
void cfg_writer_list_end(CfgWriter *w) { end(w, 1); }

static void scalar(CfgWriter *w, const char *key, const char *text, int as_string) {
    entry(w, key);
    put(w, " ", 1);
    if (as_string)
        put_string(w, text);
    else
        puts_(w, text);
    put(w, "\n", 1);
}

void cfg_writer_int(CfgWriter *w, const char *key, long long v) {
    char b[32];
    snprintf(b, sizeof b, "%lld", v);
    scalar(w, key, b, 0);
}

void cfg_format_double(double v, char *buf, size_t n) {
    if (isnan(v)) {
        snprintf(buf, n, ".nan");
        return;
    }
    if (isinf(v)) {
        snprintf(buf, n, v < 0 ? "-.inf" : ".inf");
        return;
    }
    if (v == floor(v) && fabs(v) < 1e15) {  // whole numbers as "2500.0", not "2.5e+03": still visibly real
        snprintf(buf, n, "%.1f", v);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}

void cfg_writer_double(CfgWriter *w, const char *key, double v) {
    char b[40];
    cfg_format_double(v, b, sizeof b);
    scalar(w, key, b, 0);
}

void cfg_writer_bool(CfgWriter *w, const char *key, int v) { scalar(w, key, v ? "true" : "false", 0); }
void cfg_writer_str(CfgWriter *w, const char *key, const char *s) { scalar(w, key, s ? s : "", 1); }
void cfg_writer_null(CfgWriter *w, const char *key) { scalar(w, key, "null", 0); }

void cfg_writer_comment(CfgWriter *w, const char *text) {
    if (w->failed) return;
    if (w->open_key) {
        put(w, "\n", 1);
        w->open_key = 0;
    }
    int indent = w->stack[w->depth - 1].indent;
    const char *s = text;
    do {
        const char *nl = strchr(s, '\n');
        size_t len = nl ? (size_t)(nl - s) : strlen(s);
        spaces(w, indent);
        puts_(w, len ? "# " : "#");
        put(w, s, len);
        put(w, "\n", 1);
        s = nl ? nl + 1 : NULL;
    } while (s && *s);
}

const char *cfg_writer_text(const CfgWriter *w, size_t *len) {
    if (w->failed) return NULL;
    if (len) *len = w->len;
    return w->buf ? w->buf : "";
}

int cfg_writer_commit(CfgWriter *w, const char *path, Err *e) {
    int r = 0;
    if (w->failed == 2)
        r = err_set(e, ERR_NOMEM, "%s: out of memory while writing YAML", path);
    else if (w->failed || w->depth != 1)
        r = err_set(e, ERR_INTERNAL, "%s: YAML writer misused (unbalanced begin/end, or a key inside a list)", path);
    if (!r) {
        AtomicFile f;
        r = atomic_open(&f, path, e);
        if (!r) {
            atomic_write(&f, w->buf, w->len);
            r = atomic_commit(&f, e);
        }
    }
    cfg_writer_free(w);
    return r;
}
