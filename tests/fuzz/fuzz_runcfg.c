/* fuzz_runcfg.c: the YAML tree and the run config from memory (cfg_load_mem, run_config_load_mem).
   Besides "no crash, no leak, no UB", three oracles abort on a bug:
   - a failed load fills Err with the returned code and a message;
   - a YAML tree with a map root, written back with CfgWriter, reads back as the same tree
     (kinds, keys, scalar texts): the writer's quoting is right for every string the reader makes;
   - a run config that loads is valid, and its resolved YAML loads back to identical bytes.
   Replay a crash without libFuzzer: build/fuzz_runcfg_replay CRASH_FILE. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/cfg.h"
#include "run/run_config.h"

static void check_failure(int rc, const Err *e) {
    if (rc <= 0 || rc >= ERR_COUNT || e->code != rc || !e->msg[0]) abort();
}

// Every getter on every node (exercises the scalar typing); map lookups find their own entries.
static void visit(const CfgNode *n) {
    Err e = {0};
    int i;
    double d;
    const char *s;
    if (cfg_kind(n) == CFG_SCALAR) {
        if (!cfg_scalar(n)) abort();
        if (cfg_as_int(n, &i, &e) < 0) check_failure(e.code, &e);
        memset(&e, 0, sizeof e);
        if (cfg_as_double(n, &d, &e) < 0) check_failure(e.code, &e);
        memset(&e, 0, sizeof e);
        if (cfg_as_bool(n, &i, &e) < 0) check_failure(e.code, &e);
        memset(&e, 0, sizeof e);
        if (cfg_as_str(n, &s, &e) < 0) check_failure(e.code, &e);
        return;
    }
    for (int k = 0; k < cfg_len(n); k++) {
        const CfgNode *c = cfg_at(n, k);
        if (!c) abort();
        if (cfg_kind(n) == CFG_MAP && cfg_child(n, cfg_key_at(n, k)) != c) abort();  // keys are unique
        visit(c);
    }
}

static void write_node(CfgWriter *w, const char *key, const CfgNode *n) {
    if (cfg_kind(n) == CFG_SCALAR) {
        cfg_writer_str(w, key, cfg_scalar(n));
        return;
    }
    int map = cfg_kind(n) == CFG_MAP;
    if (map) cfg_writer_map_begin(w, key);
    else cfg_writer_list_begin(w, key);
    for (int k = 0; k < cfg_len(n); k++) write_node(w, map ? cfg_key_at(n, k) : NULL, cfg_at(n, k));
    if (map) cfg_writer_map_end(w);
    else cfg_writer_list_end(w);
}

static void same_tree(const CfgNode *a, const CfgNode *b) {
    if (cfg_kind(a) != cfg_kind(b) || cfg_len(a) != cfg_len(b)) abort();
    if (cfg_kind(a) == CFG_SCALAR) {
        if (strcmp(cfg_scalar(a), cfg_scalar(b))) abort();
        return;
    }
    for (int k = 0; k < cfg_len(a); k++) {
        if (cfg_kind(a) == CFG_MAP && strcmp(cfg_key_at(a, k), cfg_key_at(b, k))) abort();
        same_tree(cfg_at(a, k), cfg_at(b, k));
    }
}

static void writer_round_trip(const CfgNode *root) {
    CfgWriter w;
    cfg_writer_init(&w);
    for (int k = 0; k < cfg_len(root); k++) write_node(&w, cfg_key_at(root, k), cfg_at(root, k));
    size_t len;
    const char *text = cfg_writer_text(&w, &len);
    if (!text) abort();
    CfgNode *back;
    Err e = {0};
    if (cfg_load_mem(text, len, "rewritten", &back, &e)) abort();
    if (cfg_len(root) == 0) {
        if (!cfg_is_null(back)) abort();  // an empty map writes nothing: an empty document
    } else {
        same_tree(root, back);
    }
    cfg_free(back);
    cfg_writer_free(&w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *text = (const char *)data;
    Err e = {0};
    CfgNode *root;
    int rc = cfg_load_mem(text, size, "fuzz.yaml", &root, &e);
    if (rc) {
        check_failure(rc, &e);
    } else {
        visit(root);
        if (cfg_kind(root) == CFG_MAP) writer_round_trip(root);
        cfg_free(root);
    }

    static RunConfig a, b;  // about 20 KiB each
    memset(&e, 0, sizeof e);
    rc = run_config_load_mem(text, size, "fuzz.yaml", &a, &e);
    if (rc) {
        check_failure(rc, &e);
        return 0;
    }
    if (run_config_validate(&a, &e)) abort();
    char *out;
    size_t len;
    if (run_config_to_yaml(&a, &out, &len, &e)) abort();
    if (run_config_load_mem(out, len, "fuzz.yaml", &b, &e)) abort();
    if (memcmp(&a, &b, sizeof a) || run_config_first_diff(&a, &b) || run_config_compare(&a, &b, NULL, &e)) abort();
    free(out);
    return 0;
}
