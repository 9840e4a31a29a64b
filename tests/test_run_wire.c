/* test_run_wire.c: a RunConfig as the plain structs of the layers below the run layer
   (run/run_wire.h): the student's QModelConfig from quant.* and train.steps, and the options
   this build refuses; the trainer's TrainConfig. */
#include "testutil.h"

#include <stdio.h>
#include <string.h>

#include "qalora/qkind.h"
#include "qalora/qmodel.h"
#include "run/run_config.h"
#include "run/run_wire.h"
#include "train/train_config.h"

static void test_qmodel_config(void **state) {
    RunConfig rc;
    run_config_defaults(&rc, RC_RECIPE_REFERENCE);
    QModelConfig qc, def;
    qmodel_config_defaults(&def);
    Err e = {0};
    assert_int_equal(run_qmodel_config(&qc, &rc, &e), 0);
    assert_int_equal(qc.sel.w_bits, def.sel.w_bits);
    assert_int_equal(qc.sel.a_bits, def.sel.a_bits);
    assert_int_equal(qc.sel.special_bits, 8);
    assert_int_equal(qc.sel.n_first_special, 3);
    assert_int_equal(qc.sel.n_last_special, 1);
    assert_int_equal(qc.rank, 32);
    assert_int_equal(qc.train_steps, 100);
    assert_int_equal(qc.talsq, 1);
    assert_int_equal(qc.w_init, QUANT_INIT_MAX);
    assert_int_equal(qc.a_init, QUANT_INIT_MSE);
    assert_int_equal(qc.n_fp_names, 2);
    assert_int_equal(qc.fp_f16, def.fp_f16);
    assert_int_equal(qc.fp_f16, 0);
    rc.quant.fp_layers = RC_FP_F16;
    assert_int_equal(run_qmodel_config(&qc, &rc, &e), 0);
    assert_int_equal(qc.fp_f16, 1);

    rc.quant.weight_bits = 2;
    rc.quant.act_bits = 8;
    rc.quant.lora_rank = 4;
    rc.train.steps = 20;
    rc.quant.n_overrides = 1;
    snprintf(rc.quant.overrides[0].pattern, RC_PATTERN_MAX, "out.*");
    rc.quant.overrides[0].keep_fp = 1;
    assert_int_equal(run_qmodel_config(&qc, &rc, &e), 0);
    assert_int_equal(qc.sel.w_bits, 2);
    assert_int_equal(qc.sel.a_bits, 8);
    assert_int_equal(qc.rank, 4);
    assert_int_equal(qc.train_steps, 20);
    assert_int_equal(qc.sel.n_overrides, 1);
    assert_string_equal(qc.sel.overrides[0].pattern, "out.*");
    assert_int_equal(qc.sel.overrides[0].keep_fp, 1);

    // the mse search's settings reach the quantizers (they were refused before session 7)
    rc.quant.mse_candidates = 40;
    rc.quant.mse_shrink = 0.02;
    rc.quant.mse_norm = 2.0;
    e = (Err){0};
    assert_int_equal(run_qmodel_config(&qc, &rc, &e), 0);
    assert_int_equal(qc.kp.mse_steps, 40);
    assert_true(qc.kp.mse_shrink == 0.02 && qc.kp.mse_p == 2.0);

    // quant.rotate reaches the model (off by default)
    assert_int_equal(qc.rotate_block, 0);
    rc.quant.rotate = 32;
    assert_int_equal(run_qmodel_config(&qc, &rc, &e), 0);
    assert_int_equal(qc.rotate_block, 32);
    // quant.act_granularity reaches the model (per tensor by default)
    assert_int_equal(qc.a_token, 0);
    rc.quant.act_granularity = RC_GRAN_TOKEN;
    assert_int_equal(run_qmodel_config(&qc, &rc, &e), 0);
    assert_int_equal(qc.a_token, 1);
}

static void test_train_config(void **state) {
    RunConfig rc;
    run_config_defaults(&rc, RC_RECIPE_EFFDM);
    rc.train.epochs = 7;
    rc.train.optimizer.lr_act = 3e-4;
    rc.sample.grid_cols = 5;
    rc.model.uncond_label = 9;
    rc.run.arena_mb = 64;
    rc.calib.seed = 11;
    snprintf(rc.model.ldm_config, sizeof rc.model.ldm_config, "teacher.yaml");
    TrainConfig tc;
    run_train_config(&tc, &rc);
    assert_memory_equal(&tc.train, &rc.train, sizeof tc.train);  // the group itself, not a copy of some fields
    assert_memory_equal(&tc.sample, &rc.sample, sizeof tc.sample);
    assert_int_equal(tc.train.epochs, 7);
    assert_int_equal(tc.sample.grid_cols, 5);
    assert_int_equal(tc.uncond_label, 9);
    assert_int_equal(tc.arena_mb, 64);
    assert_int_equal(tc.init_seed, 11);
    assert_string_equal(tc.model_name, "teacher.yaml");
}

// The run config's quantizer kinds reach the selection, per-layer overrides included; a kind
// outside the table is refused naming the key.
static void test_quantizer_kinds(void **state) {
    (void)state;
    Err e = {0};
    // the run config's kinds reach the selection, per-layer overrides included
    RunConfig rc;
    run_config_defaults(&rc, RC_RECIPE_EFFDM);
    rc.quant.n_overrides = 1;
    snprintf(rc.quant.overrides[0].pattern, RC_PATTERN_MAX, "out.*");
    rc.quant.overrides[0].act_quantizer = 1 + QUANT_UNIFORM;
    QModelConfig qr;
    assert_int_equal(run_qmodel_config(&qr, &rc, &e), 0);
    assert_int_equal(qr.sel.w_kind, QUANT_UNIFORM);
    assert_int_equal(qr.sel.a_kind, QUANT_UNIFORM);
    assert_int_equal(qr.sel.overrides[0].w_kind, 0);
    assert_int_equal(qr.sel.overrides[0].a_kind, 1 + QUANT_UNIFORM);
    // easyquant's settings reach the layers' kinds
    rc.quant.weight_quantizer = QUANT_EASYQUANT;
    rc.quant.easyquant_outlier_fraction = 0.02;
    rc.quant.easyquant_steps = 7;
    rc.quant.easyquant_lr = 0.5;
    assert_int_equal(run_qmodel_config(&qr, &rc, &e), 0);
    assert_int_equal(qr.sel.w_kind, QUANT_EASYQUANT);
    assert_true(qr.kp.outlier_fraction == 0.02);
    assert_int_equal(qr.kp.fit_steps, 7);
    assert_true(qr.kp.fit_lr == 0.5);
    rc.quant.weight_quantizer = QUANT_KIND_COUNT;
    e = (Err){0};
    assert_int_equal(run_qmodel_config(&qr, &rc, &e), ERR_VALUE);
    assert_non_null(strstr(e.msg, "quant.weight_quantizer"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qmodel_config),
        cmocka_unit_test(test_quantizer_kinds),
        cmocka_unit_test(test_train_config),
    };
    return cmocka_run_group_tests_name("run_wire", tests, NULL, NULL);
}
