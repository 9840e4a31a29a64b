/* test_qselect.c: layer selection on a synthetic layer list in registration order:
   skip_connection / op / conv1d stay FP, the first three and the last quantized layers are
   special, glob overrides (keep FP, bits) and their errors. */
#include "testutil.h"

#include <string.h>

#include "qalora/select.h"

static ModelLayer L[11];
static ModelLayer *P[11];

// The layer list in P, and cfg at its defaults.
static void build(QSelConfig *cfg) {
    static const struct {
        const char *name;
        LayerKind kind;
    } spec[11] = {
        {"time_embed.0", LAYER_LINEAR},                      // 0 special
        {"time_embed.2", LAYER_LINEAR},                      // 1 special
        {"input_blocks.0.0", LAYER_CONV2D},                  // 2 special
        {"input_blocks.1.0.in_layers.2", LAYER_CONV2D},      // 3 trainable
        {"input_blocks.1.0.skip_connection", LAYER_CONV2D},  // 4 FP (skip)
        {"input_blocks.3.0.op", LAYER_CONV2D},               // 5 FP (op)
        {"input_blocks.4.1.qkv", LAYER_CONV1D},              // 6 FP (conv1d)
        {"middle_block.1.proj_in", LAYER_CONV2D},            // 7 trainable
        {"output_blocks.0.0.emb_layers.1", LAYER_LINEAR},    // 8 trainable
        {"output_blocks.0.0.out_layers.3", LAYER_CONV2D},    // 9 trainable
        {"out.2", LAYER_CONV2D},                             // 10 special (last)
    };
    for (int i = 0; i < 11; i++) {
        memset(&L[i], 0, sizeof L[i]);
        strcpy(L[i].name, spec[i].name);
        L[i].kind = spec[i].kind;
        L[i].index = i;
        P[i] = &L[i];
    }
    qsel_config_defaults(cfg);
}

static void test_rules(void **state) {
    QSelConfig cfg;
    build(&cfg);
    QSelChoice ch[11];
    Err e = {0};
    assert_int_equal(qsel_select(P, 11, &cfg, ch, &e), 0);
    const QSelRole want[11] = {QSEL_SPECIAL, QSEL_SPECIAL, QSEL_SPECIAL, QSEL_TRAINABLE, QSEL_FP, QSEL_FP,
                               QSEL_FP, QSEL_TRAINABLE, QSEL_TRAINABLE, QSEL_TRAINABLE, QSEL_SPECIAL};
    for (int i = 0; i < 11; i++) {
        assert_int_equal(ch[i].role, want[i]);
        int bits = want[i] == QSEL_SPECIAL ? 8 : (want[i] == QSEL_TRAINABLE ? 4 : 0);
        assert_int_equal(ch[i].w_bits, bits);
        assert_int_equal(ch[i].a_bits, bits);
    }
    assert_false(qsel_rule_quantizes(&L[6]));
}

static void test_overrides(void **state) {
    QSelConfig cfg;
    build(&cfg);
    const QSelOverride ov[] = {
        {"middle_block.*", 1, 0, 0},        // keep FP
        {"output_blocks.*", 0, 8, 6},       // bits
        {"output_blocks.0.0.out_*", 0, 3, 0},  // later match wins for w_bits only
        {"out.2", 0, 6, 0},                 // a special layer's bits
        {"middle_block.1.*", 0, 2, 2},      // does not bring an FP layer back
    };
    cfg.overrides = ov;
    cfg.n_overrides = 5;
    QSelChoice ch[11];
    Err e = {0};
    assert_int_equal(qsel_select(P, 11, &cfg, ch, &e), 0);
    assert_int_equal(ch[7].role, QSEL_FP);
    assert_int_equal(ch[7].w_bits, 0);
    assert_int_equal(ch[8].role, QSEL_TRAINABLE);
    assert_int_equal(ch[8].w_bits, 8);
    assert_int_equal(ch[8].a_bits, 6);
    assert_int_equal(ch[9].w_bits, 3);
    assert_int_equal(ch[9].a_bits, 6);
    assert_int_equal(ch[10].role, QSEL_SPECIAL);
    assert_int_equal(ch[10].w_bits, 6);
    assert_int_equal(ch[10].a_bits, 8);
    assert_int_equal(ch[2].role, QSEL_SPECIAL);  // specials are counted before overrides
    assert_int_equal(ch[3].role, QSEL_TRAINABLE);
}

static void test_override_errors(void **state) {
    QSelConfig cfg;
    build(&cfg);
    QSelChoice ch[11];
    Err e = {0};
    const QSelOverride typo[] = {{"midle_block.*", 1, 0, 0}};
    cfg.overrides = typo;
    cfg.n_overrides = 1;
    assert_int_equal(qsel_select(P, 11, &cfg, ch, &e), ERR_VALUE);
    assert_non_null(strstr(e.msg, "midle_block.*"));
    memset(&e, 0, sizeof e);
    const QSelOverride fp_only[] = {{"*.skip_connection", 0, 8, 8}};  // matches only FP layers
    cfg.overrides = fp_only;
    assert_int_equal(qsel_select(P, 11, &cfg, ch, &e), ERR_VALUE);
    memset(&e, 0, sizeof e);
    const QSelOverride bad_bits[] = {{"out.2", 0, 9, 0}};
    cfg.overrides = bad_bits;
    assert_int_equal(qsel_select(P, 11, &cfg, ch, &e), ERR_VALUE);
    assert_non_null(strstr(e.msg, "out.2"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rules),
        cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_override_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
