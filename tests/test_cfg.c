/* test_cfg.c: the YAML tree (io/cfg.h): the shipped CompVis configs read back with the values
   written in them, typed getters and their YAML number/bool forms, error codes and messages
   (file, key path, line), duplicate keys, syntax errors, anchors/aliases/merge keys, limits
   against alias bombs and deep nesting, and the writer's round trip. */
#include "testutil.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/cfg.h"

#define SRC_DIR TEST_DATA_DIR "/../.."

static CfgNode *load_text(const char *text) {
    CfgNode *r = NULL;
    Err e = {0};
    int rc = cfg_load_mem(text, strlen(text), "t.yaml", &r, &e);
    if (rc) print_error("unexpected load error: %s\n", e.msg);
    assert_int_equal(rc, 0);
    return r;
}

// Key `key` of map n holds exactly want; a failed get prints its message.
static void assert_double_key(const CfgNode *n, const char *key, double want) {
    Err e = {0};
    double d = 0;
    if (cfg_get_double(n, key, &d, &e)) fail_msg("%s: %s", key, e.msg);
    assert_true(d == want);
}

// The same for an int-valued getter (get: cfg_get_int or cfg_get_bool).
static void assert_int_key(int (*get)(const CfgNode *, const char *, int *, Err *), const CfgNode *n,
                           const char *key, int want) {
    Err e = {0};
    int v = 0;
    if (get(n, key, &v, &e)) fail_msg("%s: %s", key, e.msg);
    assert_int_equal(v, want);
}

// Key `key` of map m is the int list want[0 .. count) (at most 8 values).
static void assert_list_key(const CfgNode *m, const char *key, const int *want, int count) {
    Err e = {0};
    int list[8], n = 0;
    if (cfg_get_int_list(m, key, list, 8, &n, &e)) fail_msg("%s: %s", key, e.msg);
    assert_int_equal(n, count);
    for (int i = 0; i < count; i++) assert_int_equal(list[i], want[i]);
}

// Loads text that must fail with code; returns the message (static).
static const char *load_fail(const char *text, int code) {
    static Err e;
    memset(&e, 0, sizeof e);
    CfgNode *r = NULL;
    int rc = cfg_load_mem(text, strlen(text), "t.yaml", &r, &e);
    if (rc != code) print_error("expected %s, got %s: %s\n", err_name(code), err_name(rc), e.msg);
    assert_int_equal(rc, code);
    assert_null(r);
    assert_int_equal(e.code, code);
    return e.msg;
}

static void test_fmnist_teacher_config(void **state) {
    CfgNode *root;
    Err e = {0};
    const char *path = SRC_DIR "/models/zoo/fmnist-ldm/config.yaml";
    assert_int_equal(cfg_load(path, &root, &e), 0);
    assert_string_equal(cfg_file(root), path);
    assert_int_equal(cfg_kind(root), CFG_MAP);
    assert_string_equal(cfg_node_path(root), "");

    const CfgNode *m = cfg_child(root, "model");
    assert_double_key(m, "base_learning_rate", 0.0005);
    const char *s = NULL;
    assert_int_equal(cfg_get_str(m, "target", &s, &e), 0);
    assert_string_equal(s, "ldm.models.diffusion.ddpm.LatentDiffusion");

    const CfgNode *p = cfg_path(root, "model.params");
    assert_non_null(p);
    assert_string_equal(cfg_node_path(p), "model.params");
    assert_double_key(p, "linear_start", 0.0015);
    assert_double_key(p, "linear_end", 0.0195);
    assert_double_key(p, "scale_factor", 0.5935243180872978);
    int v = 0;
    assert_int_key(cfg_get_int, p, "timesteps", 1000);
    assert_int_key(cfg_get_int, p, "image_size", 8);
    assert_int_key(cfg_get_bool, p, "use_ema", 0);
    assert_int_key(cfg_get_bool, p, "cond_stage_trainable", 1);
    assert_int_equal(cfg_get_str(p, "conditioning_key", &s, &e), 0);
    assert_string_equal(s, "crossattn");
    assert_int_equal(cfg_get_str(p, "monitor", &s, &e), 0);
    assert_string_equal(s, "val/loss");

    const CfgNode *u = cfg_path(root, "model.params.unet_config.params");
    assert_non_null(u);
    assert_list_key(u, "attention_resolutions", (int[]){2}, 1);
    assert_list_key(u, "channel_mult", (int[]){1, 2}, 2);
    assert_int_key(cfg_get_int, u, "model_channels", 32);
    assert_int_key(cfg_get_int, u, "context_dim", 64);
    assert_int_key(cfg_get_bool, u, "use_spatial_transformer", 1);
    // absent: 1, value untouched
    v = -7;
    assert_int_equal(cfg_get_int(u, "num_head_channels", &v, &e), 1);
    assert_int_equal(v, -7);
    assert_int_equal(e.code, 0);

    // paths of list items and their lines (channel_mult's "- 2" is line 32 of the file)
    const CfgNode *cm1 = cfg_path(root, "model.params.unet_config.params.channel_mult[1]");
    assert_non_null(cm1);
    assert_string_equal(cfg_node_path(cm1), "model.params.unet_config.params.channel_mult[1]");
    assert_string_equal(cfg_scalar(cm1), "2");
    assert_int_equal(cfg_line(cm1), 32);
    assert_int_equal(cfg_column(cm1), 11);
    assert_int_equal(cfg_line(cfg_child(u, "num_heads")), 33);

    const CfgNode *dd = cfg_path(root, "model.params.first_stage_config.params.ddconfig");
    assert_list_key(dd, "ch_mult", (int[]){1, 2, 4}, 3);
    assert_list_key(dd, "attn_resolutions", NULL, 0);
    assert_int_equal(cfg_kind(cfg_child(dd, "attn_resolutions")), CFG_LIST);
    assert_double_key(dd, "dropout", 0.0);
    assert_int_key(cfg_get_bool, dd, "double_z", 1);
    assert_int_equal(cfg_get_str(cfg_path(root, "model.params.first_stage_config.params.lossconfig"), "target", &s, &e),
                     0);
    assert_string_equal(s, "torch.nn.Identity");
    const CfgNode *ce = cfg_path(root, "model.params.cond_stage_config.params");
    assert_int_key(cfg_get_int, ce, "n_classes", 11);
    assert_int_key(cfg_get_int, ce, "embed_dim", 64);

    // map order is file order
    const CfgNode *top = cfg_child(root, "model");
    assert_int_equal(cfg_len(top), 3);
    assert_string_equal(cfg_key_at(top, 0), "base_learning_rate");
    assert_string_equal(cfg_key_at(top, 2), "params");
    assert_ptr_equal(cfg_at(top, 2), p);
    assert_null(cfg_at(top, 3));
    assert_null(cfg_key_at(top, -1));
    assert_int_equal(e.code, 0);
    cfg_free(root);
}

static void test_parity_configs(void **state) {
    CfgNode *root;
    Err e = {0};
    int v = 0;
    const char *s;

    assert_int_equal(cfg_load(TEST_DATA_DIR "/parity/ae_kl/config.yaml", &root, &e), 0);
    assert_int_equal(cfg_get_str(cfg_path(root, "model.params"), "cond_stage_config", &s, &e), 0);
    assert_string_equal(s, "__is_unconditional__");
    assert_list_key(cfg_path(root, "model.params.first_stage_config.params.ddconfig"), "attn_resolutions",
                    (int[]){8}, 1);
    assert_int_equal(cfg_get_int(cfg_path(root, "model.params.unet_config.params"), "num_heads", &v, &e), 0);
    assert_int_equal(v, 2);
    cfg_free(root);

    assert_int_equal(cfg_load(TEST_DATA_DIR "/parity/unet_cin/config.yaml", &root, &e), 0);
    const CfgNode *u = cfg_path(root, "model.params.unet_config.params");
    assert_list_key(u, "attention_resolutions", (int[]){1, 2}, 2);
    assert_int_key(cfg_get_int, u, "context_dim", 32);
    assert_int_equal(cfg_get_str(cfg_path(root, "model.params"), "cond_stage_key", &s, &e), 0);
    assert_string_equal(s, "class_label");
    cfg_free(root);

    assert_int_equal(cfg_load(TEST_DATA_DIR "/parity/unet_cin_head_channels/config.yaml", &root, &e), 0);
    u = cfg_path(root, "model.params.unet_config.params");
    assert_int_key(cfg_get_int, u, "num_heads", -1);
    assert_int_key(cfg_get_int, u, "num_head_channels", 16);
    cfg_free(root);

    assert_int_equal(cfg_load(TEST_DATA_DIR "/parity/unet_uncond/config.yaml", &root, &e), 0);
    u = cfg_path(root, "model.params.unet_config.params");
    assert_int_key(cfg_get_bool, u, "use_scale_shift_norm", 1);
    assert_int_key(cfg_get_bool, u, "resblock_updown", 1);
    assert_list_key(u, "channel_mult", (int[]){1, 2, 2}, 3);
    assert_list_key(u, "attention_resolutions", (int[]){2, 4}, 2);
    cfg_free(root);
    assert_int_equal(e.code, 0);
}

static void test_number_forms(void **state) {
    CfgNode *r = load_text("a: 1e-4\nb: 0.0015\nc: -1\nd: .5\ne: +2\nf: 1.\ng: 1E3\nh: -.inf\ni: .nan\n"
                           "j: 2.0\nk: 1e3\nl: 1.5\nm: 1e-3\nn: '32'\no: abc\np: 0x10\nq: 010\nr: 1e400\n"
                           "s: 2147483647\nt: 2147483648\nu: -2147483648\nv: 1_000\nw: -0\nx: 1e\ny: ~\nz:\n");
    Err e = {0};
    double d = 0;
    int v = 0;
    assert_double_key(r, "a", 1e-4);
    assert_double_key(r, "b", 0.0015);
    assert_double_key(r, "c", -1.0);
    assert_double_key(r, "d", 0.5);
    assert_double_key(r, "e", 2.0);
    assert_double_key(r, "f", 1.0);
    assert_double_key(r, "g", 1000.0);
    assert_int_equal(cfg_get_double(r, "h", &d, &e), 0);
    assert_true(isinf(d) && d < 0);
    assert_int_equal(cfg_get_double(r, "i", &d, &e), 0);
    assert_true(isnan(d));
    assert_int_equal(e.code, 0);

    // integers: exact values in any number form; fractions are errors
    assert_int_key(cfg_get_int, r, "c", -1);
    assert_int_key(cfg_get_int, r, "j", 2);
    assert_int_key(cfg_get_int, r, "k", 1000);
    assert_int_key(cfg_get_int, r, "s", INT_MAX);
    assert_int_key(cfg_get_int, r, "u", INT_MIN);
    assert_int_key(cfg_get_int, r, "w", 0);
    assert_int_equal(e.code, 0);

    static const struct { const char *key; int is_int; const char *found; } bad[] = {
        {"l", 1, "found '1.5'"}, {"m", 1, "found '1e-3'"}, {"n", 1, "found string '32'"}, {"o", 1, "found 'abc'"},
        {"p", 1, "found '0x10'"}, {"q", 1, "found '010'"}, {"t", 1, "int range"}, {"v", 1, "found '1_000'"},
        {"x", 1, "found '1e'"}, {"y", 1, "found null"}, {"z", 1, "found null"}, {"d", 1, "found '.5'"},
        {"h", 1, "found '-.inf'"}, {"i", 1, "found '.nan'"},
        {"n", 0, "found string '32'"}, {"o", 0, "found 'abc'"}, {"p", 0, "found '0x10'"}, {"q", 0, "found '010'"},
        {"r", 0, "double range"}, {"x", 0, "found '1e'"}, {"y", 0, "found null"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        Err e2 = {0};
        v = 12345;
        d = 12345;
        int rc = bad[i].is_int ? cfg_get_int(r, bad[i].key, &v, &e2) : cfg_get_double(r, bad[i].key, &d, &e2);
        if (rc != -ERR_VALUE) print_error("key %s: rc %d (%s)\n", bad[i].key, rc, e2.msg);
        assert_int_equal(rc, -ERR_VALUE);
        assert_int_equal(e2.code, ERR_VALUE);
        assert_int_equal(v, 12345);  // untouched on error
        assert_true(d == 12345);
        char want[64];
        snprintf(want, sizeof want, "t.yaml: %s: expected %s", bad[i].key, bad[i].is_int ? "an integer" : "a number");
        assert_has(e2.msg, want);
        assert_has(e2.msg, bad[i].found);
    }
    // the message names the line of the value
    Err e3 = {0};
    assert_int_equal(cfg_get_int(r, "o", &v, &e3), -ERR_VALUE);
    assert_has(e3.msg, "(line 15)");
    cfg_free(r);
}

static void test_bools_strings_nulls(void **state) {
    CfgNode *r = load_text("t1: true\nt2: True\nt3: yes\nt4: on\nt5: TRUE\nf1: false\nf2: False\nf3: no\nf4: off\n"
                           "bad: 1\nq: 'true'\nn: null\nm: {a: 1}\nl: [1, 2]\nstr: hello world\ne: ''\n");
    Err e = {0};
    int v = -1;
    const char *yes[] = {"t1", "t2", "t3", "t4", "t5"}, *no[] = {"f1", "f2", "f3", "f4"};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(cfg_get_bool(r, yes[i], &v, &e), 0);
        assert_int_equal(v, 1);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(cfg_get_bool(r, no[i], &v, &e), 0);
        assert_int_equal(v, 0);
    }
    const char *bad[] = {"bad", "q", "n", "m", "l"};
    for (int i = 0; i < 5; i++) {
        Err e2 = {0};
        assert_int_equal(cfg_get_bool(r, bad[i], &v, &e2), -ERR_VALUE);
        assert_has(e2.msg, "expected a boolean");
        assert_has(e2.msg, bad[i]);
    }
    const char *s = NULL;
    assert_int_equal(cfg_get_str(r, "str", &s, &e), 0);
    assert_string_equal(s, "hello world");
    assert_int_equal(cfg_get_str(r, "q", &s, &e), 0);
    assert_string_equal(s, "true");
    assert_true(cfg_is_quoted(cfg_child(r, "q")));
    assert_int_equal(cfg_get_str(r, "e", &s, &e), 0);  // quoted empty string is a string, not null
    assert_string_equal(s, "");
    assert_int_equal(cfg_get_str(r, "bad", &s, &e), 0);  // any non-null scalar has text
    assert_string_equal(s, "1");
    assert_true(cfg_is_null(cfg_child(r, "n")));
    assert_false(cfg_is_null(cfg_child(r, "e")));
    Err e2 = {0};
    assert_int_equal(cfg_get_str(r, "n", &s, &e2), -ERR_VALUE);
    assert_has(e2.msg, "t.yaml: n: expected a string, found null");
    memset(&e2, 0, sizeof e2);
    assert_int_equal(cfg_get_str(r, "m", &s, &e2), -ERR_VALUE);
    assert_has(e2.msg, "t.yaml: m: expected a string, found a map");
    memset(&e2, 0, sizeof e2);
    assert_int_equal(cfg_get_int(r, "l", &v, &e2), -ERR_VALUE);
    assert_has(e2.msg, "found a list");
    // getters on a scalar instead of a map
    memset(&e2, 0, sizeof e2);
    assert_int_equal(cfg_get_int(cfg_child(r, "str"), "x", &v, &e2), -ERR_VALUE);
    assert_has(e2.msg, "str: expected a map");
    // a NULL map is empty
    assert_int_equal(cfg_get_int(NULL, "x", &v, &e), 1);
    assert_int_equal(e.code, 0);
    cfg_free(r);
}

static void test_int_list(void **state) {
    CfgNode *r = load_text("one: 5\nthree: [1, 2, 3]\nbad: [1, x, 3]\nmap: {a: 1}\n");
    Err e = {0};
    int out[2] = {-1, -1}, n = -1;
    assert_int_equal(cfg_get_int_list(r, "one", out, 2, &n, &e), 0);
    assert_int_equal(n, 1);
    assert_int_equal(out[0], 5);
    n = -1;
    assert_int_equal(cfg_get_int_list(r, "three", out, 2, &n, &e), -ERR_VALUE);
    assert_int_equal(n, -1);
    assert_has(e.msg, "three: expected at most 2 entries, found 3");
    int big[4];
    Err e2 = {0};
    assert_int_equal(cfg_get_int_list(r, "bad", big, 4, &n, &e2), -ERR_VALUE);
    assert_has(e2.msg, "t.yaml: bad[1]: expected an integer, found 'x'");
    Err e3 = {0};
    assert_int_equal(cfg_get_int_list(r, "map", big, 4, &n, &e3), -ERR_VALUE);
    assert_has(e3.msg, "map: expected a list of integers");
    assert_int_equal(cfg_get_int_list(r, "absent", big, 4, &n, &e3), 1);
    cfg_free(r);
}

static void test_paths_and_navigation(void **state) {
    CfgNode *r = load_text("a:\n  b:\n    - x: 1\n    - x: 2\n      y: [7, 8]\n  'dotted.key': 3\n");
    const CfgNode *n = cfg_path(r, "a.b[1].y[0]");
    assert_non_null(n);
    assert_string_equal(cfg_scalar(n), "7");
    assert_string_equal(cfg_node_path(n), "a.b[1].y[0]");
    assert_string_equal(cfg_node_path(cfg_path(r, "a.b[0].x")), "a.b[0].x");
    assert_ptr_equal(cfg_path(r, ""), r);
    assert_null(cfg_path(r, "a.b[2]"));
    assert_null(cfg_path(r, "a.b[-1]"));
    assert_null(cfg_path(r, "a.b."));
    assert_null(cfg_path(r, "a.c"));
    assert_null(cfg_path(r, "a.b.x"));
    assert_null(cfg_child(cfg_path(r, "a.b"), "x"));  // not a map
    assert_int_equal(cfg_len(cfg_path(r, "a.b")), 2);
    assert_int_equal(cfg_len(n), 0);
    assert_null(cfg_scalar(cfg_path(r, "a.b")));
    assert_non_null(cfg_child(cfg_child(r, "a"), "dotted.key"));
    cfg_free(r);
    // empty documents: a null root
    r = load_text("# nothing\n");
    assert_int_equal(cfg_kind(r), CFG_SCALAR);
    assert_true(cfg_is_null(r));
    cfg_free(r);
}

static void test_duplicate_keys(void **state) {
    // the message names the key's path and the line of its second copy
    const struct {
        const char *text, *key, *line;
    } dup[] = {
        {"a: 1\nb:\n  c: 1\n  c: 2\n", "t.yaml: b.c: duplicate key 'c'", "line 4"},
        {"model: 1\nmodel: 2\n", "t.yaml: model: duplicate key 'model'", "line 2"},
        {"x: {p: 1, q: 2, p: 3}\n", "x.p: duplicate key", "line 1"},
    };
    for (int i = 0; i < 3; i++) {
        const char *msg = load_fail(dup[i].text, ERR_FORMAT);
        assert_has(msg, dup[i].key);
        assert_has(msg, dup[i].line);
    }
    // the same key in different maps is fine
    cfg_free(load_text("a: {k: 1}\nb: {k: 2}\n"));
}

static void test_syntax_errors(void **state) {
    // "  b: 2" under a scalar: the ':' at line 2, column 4 cannot start a mapping value
    const char *msg = load_fail("a: 1\n  b: 2\n", ERR_FORMAT);
    assert_has(msg, "t.yaml: YAML syntax error at line 2, column 4");
    // a tab as indentation, line 3 column 1
    msg = load_fail("a:\n  b: 1\n\tc: 2\n", ERR_FORMAT);
    assert_has(msg, "line 3, column 1");
    // an unclosed flow list: the error is found at the next line
    msg = load_fail("a: [1, 2\nb: 3\n", ERR_FORMAT);
    assert_has(msg, "line 2");
    assert_has(msg, "flow sequence that starts at line 1");
    // an unterminated quote
    msg = load_fail("x: 1\nkey: 'open\n", ERR_FORMAT);
    assert_has(msg, "quoted scalar that starts at line 2");
    // invalid UTF-8
    msg = load_fail("a: \xff\xfe\n", ERR_FORMAT);
    assert_has(msg, "t.yaml:");
    // two documents, unsupported tags, NUL in a scalar, empty keys
    assert_has(load_fail("a: 1\n---\nb: 2\n", ERR_FORMAT), "second YAML document");
    assert_has(load_fail("a: !!python/object x\n", ERR_FORMAT), "a: unsupported tag");
    assert_has(load_fail("a: \"x\\0y\"\n", ERR_FORMAT), "a: NUL character");
    assert_has(load_fail("'': 1\n", ERR_FORMAT), "empty key");
    assert_has(load_fail("? [1, 2]\n: x\n", ERR_FORMAT), "map keys must be scalars");
    // a missing file
    CfgNode *r;
    Err e = {0};
    assert_int_equal(cfg_load("/nonexistent/dir/x.yaml", &r, &e), ERR_IO);
    assert_has(e.msg, "/nonexistent/dir/x.yaml");
}

static void test_anchors_aliases_merge(void **state) {
    assert_has(load_fail("base: &b {x: 1}\nm:\n  <<: [{a: 1}, *b]\n", ERR_FORMAT), "m.<<: the merge key takes aliases");

    CfgNode *r = load_text("base: &b\n  lr: 0.001\n  steps: [1, 2]\n"
                  "other: &o {lr: 9, extra: x}\n"
                  "copy: *b\n"
                  "derived:\n  <<: *b\n  lr: 0.5\n"
                  "multi:\n  <<: [*o, *b]\n"
                  "val: &v 42\nuse: *v\n");
    Err e = {0};
    double d = 0;
    int v = 0;
    assert_int_equal(cfg_get_double(cfg_child(r, "copy"), "lr", &d, &e), 0);
    assert_true(d == 0.001);
    const CfgNode *s1 = cfg_path(r, "copy.steps[1]");
    assert_non_null(s1);
    assert_string_equal(cfg_node_path(s1), "copy.steps[1]");  // the copy has its own path
    assert_int_equal(cfg_line(s1), 5);                         // where the alias is
    assert_int_equal(cfg_get_double(cfg_child(r, "derived"), "lr", &d, &e), 0);
    assert_true(d == 0.5);  // explicit keys win over merged ones
    assert_non_null(cfg_path(r, "derived.steps"));
    assert_string_equal(cfg_node_path(cfg_path(r, "derived.steps")), "derived.steps");
    assert_int_equal(cfg_get_int(cfg_child(r, "multi"), "lr", &v, &e), 0);
    assert_int_equal(v, 9);  // earlier merged maps win
    assert_non_null(cfg_path(r, "multi.extra"));
    assert_non_null(cfg_path(r, "multi.steps"));
    assert_null(cfg_child(cfg_child(r, "multi"), "<<"));
    assert_int_key(cfg_get_int, r, "use", 42);
    assert_int_equal(e.code, 0);
    cfg_free(r);

    assert_has(load_fail("a: *nope\n", ERR_FORMAT), "a: alias *nope");
    assert_has(load_fail("a: &x [1, *x]\n", ERR_FORMAT), "alias *x");  // recursive
    assert_has(load_fail("v: &v 1\nm:\n  <<: *v\n", ERR_FORMAT), "merge key needs maps");
}

// The classic "billion laughs": 9 levels of 9 aliases of the level below expand to 9^9 nodes.
static void test_alias_bomb(void **state) {
    const char *bomb = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
                       "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                       "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
                       "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                       "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
                       "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
                       "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n"
                       "h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n"
                       "i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n";
    const char *msg = load_fail(bomb, ERR_FORMAT);
    assert_has(msg, "nodes after alias expansion");
    // big scalars aliased many times hit the byte budget before the node budget
    size_t big = 1 << 20;
    char *text = malloc(big + 4096);
    strcpy(text, "s: &s ");
    size_t len = strlen(text);
    memset(text + len, 'x', big);
    len += big;
    len += (size_t)sprintf(text + len, "\nl: [");
    for (int i = 0; i < 100; i++) len += (size_t)sprintf(text + len, "*s, ");
    len += (size_t)sprintf(text + len, "*s]\n");
    CfgNode *r;
    Err e = {0};
    assert_int_equal(cfg_load_mem(text, len, "big.yaml", &r, &e), ERR_FORMAT);
    assert_has(e.msg, "bytes of keys, values and paths after alias expansion");
    free(text);
}

// Duplicate detection is not a linear search per key: a 150000-key map loads at once, and a
// duplicate of its first key at the end is found (with a quadratic check this takes minutes).
static void test_big_map(void **state) {
    enum { N = 150000 };
    char *text = malloc((size_t)N * 24 + 64);
    size_t len = 0;
    for (int i = 0; i < N; i++) len += (size_t)sprintf(text + len, "k%d: %d\n", i, i);
    CfgNode *r;
    Err e = {0};
    assert_int_equal(cfg_load_mem(text, len, "big.yaml", &r, &e), 0);
    assert_int_equal(cfg_len(r), N);
    assert_int_key(cfg_get_int, r, "k149999", 149999);
    cfg_free(r);
    len += (size_t)sprintf(text + len, "k0: again\n");
    assert_int_equal(cfg_load_mem(text, len, "big.yaml", &r, &e), ERR_FORMAT);
    assert_has(e.msg, "big.yaml: k0: duplicate key 'k0' in one map (line 150001");
    free(text);
}

static void test_deep_nesting(void **state) {
    char text[1024];
    int depth = CFG_MAX_DEPTH + 10;
    for (int i = 0; i < depth; i++) text[i] = '[';
    for (int i = 0; i < depth; i++) text[depth + i] = ']';
    text[2 * depth] = 0;
    assert_has(load_fail(text, ERR_FORMAT), "nesting deeper than");
    // exactly the limit is fine
    depth = CFG_MAX_DEPTH;
    for (int i = 0; i < depth; i++) text[i] = '[';
    for (int i = 0; i < depth; i++) text[depth + i] = ']';
    text[2 * depth] = 0;
    cfg_free(load_text(text));
    // and the limit also holds through aliases
    char t2[2048];
    int half = CFG_MAX_DEPTH / 2 + 5, k = 0;
    k += sprintf(t2 + k, "a: &a ");
    for (int i = 0; i < half; i++) t2[k++] = '[';
    for (int i = 0; i < half; i++) t2[k++] = ']';
    k += sprintf(t2 + k, "\nb: ");
    for (int i = 0; i < half; i++) t2[k++] = '[';
    t2[k++] = '*';
    t2[k++] = 'a';
    for (int i = 0; i < half; i++) t2[k++] = ']';
    t2[k++] = '\n';
    t2[k] = 0;
    assert_has(load_fail(t2, ERR_FORMAT), "nesting deeper than");
}

static void test_check_keys(void **state) {
    CfgNode *r = load_text("num_heads: 1\nmodel_chanels: 32\n");
    const char *allowed[] = {"num_heads", "model_channels", "context_dim"};
    Err e = {0};
    assert_int_equal(cfg_check_keys(r, allowed, 3, &e), ERR_KEY);
    assert_has(e.msg, "t.yaml: model_chanels: unknown key (line 2); did you mean 'model_channels'?");
    cfg_free(r);
    r = load_text("zzzzzz: 1\n");
    Err e2 = {0};
    assert_int_equal(cfg_check_keys(r, allowed, 3, &e2), ERR_KEY);
    assert_has(e2.msg, "zzzzzz: unknown key");
    assert_null(strstr(e2.msg, "did you mean"));
    cfg_free(r);
    r = load_text("num_heads: 1\n");
    assert_int_equal(cfg_check_keys(r, allowed, 3, &e2), 0);
    assert_int_equal(cfg_check_keys(NULL, allowed, 3, &e2), 0);
    cfg_free(r);
    const char *c[] = {"weight_bits", "act_bits", "lora_rank"};
    assert_int_equal(cfg_suggest("weigth_bits", c, 3), 0);
    assert_int_equal(cfg_suggest("ACT_BITS", c, 3), 1);
    assert_int_equal(cfg_suggest("rank", c, 3), -1);
}

// Writes every kind of value, reads the text back and compares with the values written.
static void test_writer_round_trip(void **state) {
    static const char *strings[] = {"plain", "yes", "No", "null", "~", "", "1.5", "-3", ".inf", "a: b", "*star",
                                    "&amp", "#hash", "say \"hi\"\n\tnext", "  lead", "trail ", "models/zoo/x.yaml",
                                    "input_blocks.*.0", "ünïcode", "back\\slash", "[x]", "{y}", "- dash", "%pct",
                                    "@at", "`tick", "0x10", "010", "y", "n", "on",
                                    "nel\xc2\x85", "ls\xe2\x80\xa8", "bom\xef\xbb\xbf", "c1\xc2\x90", "del\x7f"};
    static const double doubles[] = {0.1, 1e-6, 5e-4, 1.0 / 3.0, -0.0, 1e300, 5e-324, 2500, 0.999, -1.5e-8,
                                     0.5935243180872978, INFINITY, -INFINITY};
    static const long long ints[] = {0, -1, 42, INT_MAX, INT_MIN};
    size_t ns = sizeof strings / sizeof strings[0], nd = sizeof doubles / sizeof doubles[0];
    size_t ni = sizeof ints / sizeof ints[0];
    CfgWriter w;
    cfg_writer_init(&w);
    cfg_writer_comment(&w, "a header\nof two lines");
    cfg_writer_map_begin(&w, "s");
    for (size_t i = 0; i < ns; i++) {
        char k[16];
        snprintf(k, sizeof k, "k%zu", i);
        cfg_writer_str(&w, k, strings[i]);
    }
    cfg_writer_map_end(&w);
    cfg_writer_list_begin(&w, "d");
    for (size_t i = 0; i < nd; i++) cfg_writer_double(&w, NULL, doubles[i]);
    cfg_writer_list_end(&w);
    cfg_writer_list_begin(&w, "i");
    for (size_t i = 0; i < ni; i++) cfg_writer_int(&w, NULL, ints[i]);
    cfg_writer_list_end(&w);
    cfg_writer_map_begin(&w, "nested");
    cfg_writer_bool(&w, "t", 1);
    cfg_writer_bool(&w, "f", 0);
    cfg_writer_null(&w, "nothing");
    cfg_writer_list_begin(&w, "items");
    cfg_writer_map_begin(&w, NULL);
    cfg_writer_str(&w, "pattern", "*.attn1.*");
    cfg_writer_map_begin(&w, "sub");
    cfg_writer_int(&w, "x", 1);
    cfg_writer_map_end(&w);
    cfg_writer_bool(&w, "keep_fp", 1);
    cfg_writer_map_end(&w);
    cfg_writer_map_begin(&w, NULL);
    cfg_writer_map_end(&w);  // an empty map as a list item
    cfg_writer_list_begin(&w, NULL);
    cfg_writer_int(&w, NULL, 5);
    cfg_writer_list_end(&w);
    cfg_writer_list_end(&w);
    cfg_writer_list_begin(&w, "empty_list");
    cfg_writer_list_end(&w);
    cfg_writer_map_begin(&w, "empty_map");
    cfg_writer_map_end(&w);
    cfg_writer_str(&w, "weird key: x", "v");
    cfg_writer_map_end(&w);
    // keys longer than YAML's 1024-character limit of implicit keys
    char long_key[2001];
    memset(long_key, 'k', 2000);
    long_key[2000] = 0;
    cfg_writer_int(&w, long_key, 1);
    cfg_writer_list_begin(&w, "long_in_list");
    cfg_writer_map_begin(&w, NULL);
    cfg_writer_map_begin(&w, long_key);
    cfg_writer_int(&w, "z", 2);
    cfg_writer_map_end(&w);
    cfg_writer_map_end(&w);
    cfg_writer_list_end(&w);

    const char *path = "test_cfg_writer.yaml";
    Err e = {0};
    assert_int_equal(cfg_writer_commit(&w, path, &e), 0);
    assert_int_equal(access("test_cfg_writer.yaml.tmp", F_OK), -1);  // no temp file left
    CfgNode *r;
    if (cfg_load(path, &r, &e)) print_error("%s\n", e.msg);
    assert_int_equal(e.code, 0);
    const CfgNode *s = cfg_child(r, "s");
    assert_int_equal(cfg_len(s), (int)ns);
    for (size_t i = 0; i < ns; i++) {
        const char *got = NULL;
        assert_int_equal(cfg_as_str(cfg_at(s, (int)i), &got, &e), 0);
        assert_string_equal(got, strings[i]);
    }
    const CfgNode *d = cfg_child(r, "d");
    assert_int_equal(cfg_len(d), (int)nd);
    for (size_t i = 0; i < nd; i++) {
        double got = 0;
        assert_int_equal(cfg_as_double(cfg_at(d, (int)i), &got, &e), 0);
        assert_memory_equal(&got, &doubles[i], sizeof got);  // bit-exact, sign of zero included
    }
    const CfgNode *il = cfg_child(r, "i");
    for (size_t i = 0; i < ni; i++) {
        int got = 0;
        assert_int_equal(cfg_as_int(cfg_at(il, (int)i), &got, &e), 0);
        assert_int_equal(got, ints[i]);
    }
    int b = -1;
    assert_int_equal(cfg_get_bool(cfg_child(r, "nested"), "t", &b, &e), 0);
    assert_int_equal(b, 1);
    assert_int_equal(cfg_get_bool(cfg_child(r, "nested"), "f", &b, &e), 0);
    assert_int_equal(b, 0);
    assert_true(cfg_is_null(cfg_path(r, "nested.nothing")));
    const char *str = NULL;
    assert_int_equal(cfg_get_str(cfg_path(r, "nested.items[0]"), "pattern", &str, &e), 0);
    assert_string_equal(str, "*.attn1.*");
    assert_int_equal(cfg_get_int(cfg_path(r, "nested.items[0].sub"), "x", &b, &e), 0);
    assert_int_equal(b, 1);
    assert_int_equal(cfg_get_bool(cfg_path(r, "nested.items[0]"), "keep_fp", &b, &e), 0);
    assert_int_equal(b, 1);
    assert_int_equal(cfg_kind(cfg_path(r, "nested.items[1]")), CFG_MAP);
    assert_int_equal(cfg_len(cfg_path(r, "nested.items[1]")), 0);
    assert_int_equal(cfg_kind(cfg_path(r, "nested.items[2]")), CFG_LIST);
    assert_string_equal(cfg_scalar(cfg_path(r, "nested.items[2][0]")), "5");
    assert_int_equal(cfg_kind(cfg_path(r, "nested.empty_list")), CFG_LIST);
    assert_int_equal(cfg_len(cfg_path(r, "nested.empty_list")), 0);
    assert_int_equal(cfg_kind(cfg_path(r, "nested.empty_map")), CFG_MAP);
    assert_int_equal(cfg_get_str(cfg_child(r, "nested"), "weird key: x", &str, &e), 0);
    assert_string_equal(str, "v");
    assert_int_equal(cfg_get_int(r, long_key, &b, &e), 0);
    assert_int_equal(b, 1);
    const CfgNode *li = cfg_path(r, "long_in_list[0]");
    assert_string_equal(cfg_key_at(li, 0), long_key);
    assert_int_equal(cfg_get_int(cfg_at(li, 0), "z", &b, &e), 0);
    assert_int_equal(b, 2);
    assert_int_equal(e.code, 0);
    cfg_free(r);
    remove(path);

    // misuse is reported, and nothing is written
    cfg_writer_init(&w);
    cfg_writer_map_begin(&w, "open");
    Err e2 = {0};
    assert_int_equal(cfg_writer_commit(&w, "test_cfg_never.yaml", &e2), ERR_INTERNAL);
    assert_int_equal(access("test_cfg_never.yaml", F_OK), -1);
    cfg_writer_init(&w);
    cfg_writer_int(&w, NULL, 1);  // a list item in a map
    assert_null(cfg_writer_text(&w, NULL));
    cfg_writer_free(&w);
    // an unwritable place: ERR_IO naming the file
    cfg_writer_init(&w);
    cfg_writer_int(&w, "a", 1);
    Err e3 = {0};
    assert_int_equal(cfg_writer_commit(&w, "/nonexistent/dir/out.yaml", &e3), ERR_IO);
    assert_has(e3.msg, "/nonexistent/dir/out.yaml");
}

static void test_format_double(void **state) {
    // the shortest text that reads back exactly (an independent check: the decimal literals)
    char b[40];
    cfg_format_double(0.0015, b, sizeof b);
    assert_string_equal(b, "0.0015");
    cfg_format_double(1e-6, b, sizeof b);
    assert_string_equal(b, "1e-06");
    cfg_format_double(2500, b, sizeof b);
    assert_string_equal(b, "2500.0");
    cfg_format_double(-0.0, b, sizeof b);
    assert_string_equal(b, "-0.0");
    cfg_format_double(1e300, b, sizeof b);
    assert_string_equal(b, "1e+300");
    cfg_format_double(0.1, b, sizeof b);
    assert_string_equal(b, "0.1");
    cfg_format_double(INFINITY, b, sizeof b);
    assert_string_equal(b, ".inf");
    cfg_format_double(NAN, b, sizeof b);
    assert_string_equal(b, ".nan");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fmnist_teacher_config),
        cmocka_unit_test(test_parity_configs),
        cmocka_unit_test(test_number_forms),
        cmocka_unit_test(test_bools_strings_nulls),
        cmocka_unit_test(test_int_list),
        cmocka_unit_test(test_paths_and_navigation),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_anchors_aliases_merge),
        cmocka_unit_test(test_alias_bomb),
        cmocka_unit_test(test_big_map),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_check_keys),
        cmocka_unit_test(test_writer_round_trip),
        cmocka_unit_test(test_format_double),
    };
    return cmocka_run_group_tests_name("cfg", tests, NULL, NULL);
}
