/* test_run_config_set.c: --set KEY=VALUE over a run config (run/run_config_set.c): an
   assignment gives exactly the config of a file with that key written in it (values, lists,
   train.recipe's defaults, a later assignment winning), its errors name it (unknown key with
   "did you mean", type and range, malformed assignments, values that are no YAML), and end
   to end through effdm calibrate / finetune: exit status 2 and the message for bad ones, the
   result recorded in the run's config.yaml, and --resume refusing a key resuming needs. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "run/run_config.h"

#define TEACHER_DIR TEST_DATA_DIR "/../../models/zoo/fmnist-ldm"

static int load(const char *text, const char *const *sets, int n, RunConfig *c, Err *e) {
    *e = (Err){0};
    return run_config_load_mem_set(text, strlen(text), "base.yaml", sets, n, c, e);
}

// The config of `with_keys` (a file with the keys written in it) equals `base` + sets.
static void assert_same_as_file(const char *base, const char *const *sets, int n, const char *with_keys) {
    RunConfig a, b;
    Err e = {0};
    if (load(base, sets, n, &a, &e)) fail_msg("%s", e.msg);
    e = (Err){0};
    if (run_config_load_mem(with_keys, strlen(with_keys), "base.yaml", &b, &e)) fail_msg("%s", e.msg);
    const char *diff = run_config_first_diff(&a, &b);
    if (diff) print_error("first difference: %s\n", diff);
    assert_null(diff);
}

static void test_set_applies(void **state) {
    const char *base = "train:\n  epochs: 2\n";
    const char *sets[] = {
        "train.epochs=4",
        "run.out=/tmp/somewhere",
        "train.optimizer.lr_act=2e-4",
        "quant.fp_name_contains=[skip, op, emb]",
        "quant.overrides=[{pattern: \"out.*\", keep_fp: true}, {pattern: input_blocks.1.*, weight_bits: 8}]",
        "model.uncond_label=3",
        "train.select_epoch=last",
        "quant.talsq=off",
        "train.epochs=5",  // a later assignment wins
    };
    RunConfig c;
    Err e = {0};
    if (load(base, sets, 9, &c, &e)) fail_msg("%s", e.msg);
    assert_int_equal(c.train.epochs, 5);
    assert_string_equal(c.run.out, "/tmp/somewhere");
    assert_true(c.train.optimizer.lr_act == 2e-4);
    assert_int_equal(c.quant.n_fp_names, 3);
    assert_string_equal(c.quant.fp_name_contains[2], "emb");
    assert_int_equal(c.quant.n_overrides, 2);
    assert_string_equal(c.quant.overrides[0].pattern, "out.*");
    assert_int_equal(c.quant.overrides[0].keep_fp, 1);
    assert_int_equal(c.quant.overrides[1].weight_bits, 8);
    assert_int_equal(c.model.uncond_label, 3);
    assert_int_equal(c.train.select_epoch, RC_SELECT_LAST);
    assert_int_equal(c.quant.talsq, 0);
    assert_int_equal(run_config_validate(&c, &e), 0);

    // no assignment: the file alone (run.out from the file name, as run_config_load_mem)
    RunConfig plain, file;
    assert_int_equal(load(base, NULL, 0, &plain, &e), 0);
    assert_int_equal(run_config_load_mem(base, strlen(base), "base.yaml", &file, &e), 0);
    assert_null(run_config_first_diff(&plain, &file));
    assert_string_equal(plain.run.out, test_cwd_path("runs/base"));
}

static void test_set_is_a_line_of_the_file(void **state) {
    // each assignment reads as the same key written in the file
    const char *s1[] = {"train.epochs=4", "calib.eta=.5", "sample.sampler=plms"};
    assert_same_as_file("train:\n  batch: 3\n", s1, 3,
                        "train:\n  batch: 3\n  epochs: 4\ncalib:\n  eta: .5\nsample:\n  sampler: plms\n");
    // over a key the file sets
    const char *s2[] = {"quant.weight_bits=8"};
    assert_same_as_file("quant:\n  weight_bits: 2\n  act_bits: 8\n", s2, 1, "quant:\n  weight_bits: 8\n  act_bits: 8\n");
    // train.recipe picks the defaults of the R keys, as the file's key does; explicit keys stay
    const char *s3[] = {"train.recipe=reference"};
    assert_same_as_file("train:\n  steps: 30\n", s3, 1, "train:\n  recipe: reference\n  steps: 30\n");
    RunConfig c;
    Err e = {0};
    assert_int_equal(load("train:\n  steps: 30\n", s3, 1, &c, &e), 0);
    assert_int_equal(c.train.recipe, RC_RECIPE_REFERENCE);
    assert_int_equal(c.quant.fp_layers, RC_FP_F32);  // the reference recipe's default (effdm: f16)
    assert_int_equal(c.train.steps, 30);
    const char *s4[] = {"train.recipe=effdm"};
    assert_same_as_file("train:\n  recipe: reference\n", s4, 1, "train:\n  recipe: effdm\n");
    // a quoted value is a string, as in the file: run.out '4', but train.epochs "4" is refused
    const char *s5[] = {"run.out='4'"};
    assert_int_equal(load("", s5, 1, &c, &e), 0);
    assert_string_equal(c.run.out, test_cwd_path("4"));
    const char *s6[] = {"train.epochs=\"4\""};
    assert_int_equal(load("", s6, 1, &c, &e), ERR_VALUE);
}

// A --set assignment that must fail: the error code and a part of its message.
typedef struct {
    const char *set;
    int code;
    const char *part;
} SetError;

static const SetError SET_ERRORS[] = {
    {"train.epoch=4", ERR_KEY, "--set train.epoch=4: train.epoch: unknown key"},
    {"train.epoch=4", ERR_KEY, "did you mean 'train.epochs'?"},
    {"epochs=4", ERR_KEY, "did you mean 'train.epochs'?"},  // the file's suggestion across groups
    {"train.optimiser.lr_act=1", ERR_KEY, "did you mean 'train.optimizer'?"},
    {"train.epochs=x", ERR_VALUE, "--set train.epochs=x: train.epochs: expected an integer, found 'x'"},
    {"quant.weight_bits=9", ERR_VALUE, "quant.weight_bits: expected an integer in 2..8, found 9"},
    {"train.select_epoch=best-val", ERR_VALUE, "did you mean 'best_val'?"},
    {"train.epochs=", ERR_VALUE, "found null"},
    {"train=4", ERR_VALUE, "expected a map of train keys"},
    {"quant.overrides=[{pattern: x, keep_fp: true, weight_bits: 4}]", ERR_VALUE,
     "quant.overrides[0]: keep_fp: true leaves the layer FP"},
    {"train.epochs=[1", ERR_FORMAT, "--set train.epochs=[1: the value is not valid YAML"},
};

static void test_set_errors(void **state) {
    RunConfig c;
    Err e = {0};
    for (size_t i = 0; i < sizeof SET_ERRORS / sizeof SET_ERRORS[0]; i++) {
        const SetError *x = &SET_ERRORS[i];
        assert_int_equal(load("", &x->set, 1, &c, &e), x->code);
        assert_has(e.msg, x->part);
        assert_null(strstr(e.msg, "(line"));  // the assignment's YAML is not a file the user wrote
    }
    const char *malformed[] = {"train.epochs", "=4", "train..epochs=4", ".train=4", "train.epochs =4", "a b=1",
                               "train.epochs=4\nrun.out: x"};
    for (int i = 0; i < 7; i++) {
        assert_int_equal(load("", &malformed[i], 1, &c, &e), ERR_ARG);
        assert_has(e.msg, "--set ");
    }
    assert_has(e.msg, "one line");

    // a check across keys names the file and the assignments
    const char *cross[] = {"train.val_every=0", "train.select_epoch=best_val"};
    assert_int_equal(load("", cross, 2, &c, &e), ERR_VALUE);
    assert_has(e.msg, "base.yaml with --set: train.select_epoch: best_val needs train.val_every >= 1");
    // an error of the file itself is the file's, with its line, even when a --set sets that key
    const char *over[] = {"train.epochs=3"};
    assert_int_equal(load("train:\n  epochs: abc\n", over, 1, &c, &e), ERR_VALUE);
    assert_has(e.msg, "base.yaml: train.epochs: expected an integer, found 'abc' (line 2)");
    // the first bad assignment is the one named
    const char *two[] = {"train.epochs=4", "train.batch=0", "train.steps=0"};
    assert_int_equal(load("", two, 3, &c, &e), ERR_VALUE);
    assert_has(e.msg, "--set train.batch=0: train.batch");
}

/* ---- effdm calibrate / finetune --------------------------------------------------- */

static char tmp[256];

static int setup(void **state) { return test_tmpdir_make(tmp, sizeof tmp, "runset"); }
static int teardown(void **state) { return test_tmpdir_remove(tmp); }

// Runs effdm with args; stderr into tmp/stderr.txt (read into err). Returns the exit status.
static int effdm(const char *args, char *err, size_t cap) {
    int st = test_run_cli(tmp, args);
    char path[4096];
    snprintf(path, sizeof path, "%s/stderr.txt", tmp);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(err, 1, cap - 1, f) : 0;
    err[n] = 0;
    if (f) fclose(f);
    return st;
}

// The stdout of the last effdm() call.
static void last_stdout(char *out, size_t cap) {
    char path[400];
    snprintf(path, sizeof path, "%s/stdout.txt", tmp);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    out[fread(out, 1, cap - 1, f)] = 0;
    fclose(f);
}

static void load_run_config(const char *dir, RunConfig *c) {
    char path[512];
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    Err e = {0};
    if (run_config_load(path, c, &e)) fail_msg("%s", e.msg);
}

static void test_cli(void **state) {
    char cfg[300], run[300], other[300], args[3000], err[4096];
    snprintf(cfg, sizeof cfg, "%s/tiny.yaml", tmp);
    snprintf(run, sizeof run, "%s/run", tmp);
    snprintf(other, sizeof other, "%s/other", tmp);
    // a run of one epoch of 2 steps on 2 short teacher trajectories; run.out comes from --set
    test_write_file(cfg,
                    "model: {ldm_config: %s/config.yaml, ckpt: %s/model.ckpt}\n"
                    "calib: {steps: 4, n_samples: 2, batch: 2, n_inputs: 4}\n"
                    "train: {epochs: 1, steps: 2, batch: 1, val_every: 0, select_epoch: last, sample_every: 0}\n"
                    "run: {arena_mb: 256}\n",
                    TEACHER_DIR, TEACHER_DIR);

    // bad assignments: exit 2, the message names them, nothing is written
    snprintf(args, sizeof args, "calibrate --config '%s' --set run.out='%s' --set calib.sed=3", cfg, other);
    assert_int_equal(effdm(args, err, sizeof err), 2);
    assert_has(err, "effdm calibrate: --set calib.sed=3: calib.sed: unknown key");
    assert_has(err, "did you mean 'calib.seed'?");
    snprintf(args, sizeof args, "calibrate --config '%s' --set run.out='%s' --set calib.n_samples=-1", cfg, other);
    assert_int_equal(effdm(args, err, sizeof err), 2);
    assert_has(err, "--set calib.n_samples=-1: calib.n_samples: expected an integer >= 1, found -1");
    snprintf(args, sizeof args, "calibrate --config '%s' --set train.epochs", cfg);
    assert_int_equal(effdm(args, err, sizeof err), 2);
    assert_has(err, "expected KEY=VALUE");
    assert_int_equal(access(other, F_OK), -1);
    snprintf(args, sizeof args, "finetune --set train.epochs=1");
    assert_int_equal(effdm(args, err, sizeof err), 2);
    assert_has(err, "expected --config RUN.yaml or --resume RUN_DIR");

    // --dry-run: what the run would be and cost, and nothing in run.out
    snprintf(args, sizeof args, "finetune --config '%s' --set run.out='%s' --set train.epochs=5 --dry-run --threads 2",
             cfg, other);
    if (effdm(args, err, sizeof err) != 0) fail_msg("%s", err);
    char dry[4096];
    last_stdout(dry, sizeof dry);
    assert_has(dry, "nothing written: --dry-run");
    assert_has(dry, "5 epochs x 2 steps, batch 1 in 1 gradient slot, 2 threads");
    assert_has(dry, "step time    ");
    assert_has(dry, "10 optimizer steps");
    assert_has(dry, "peak RSS");
    assert_int_equal(access(other, F_OK), -1);

    // calibrate: the assignments are applied and recorded in config.yaml
    snprintf(args, sizeof args, "calibrate --config '%s' --set run.out='%s' --set calib.seed=12 --set=train.seed=5 "
             "--threads 2", cfg, run);
    if (effdm(args, err, sizeof err) != 0) fail_msg("%s", err);
    RunConfig c;
    load_run_config(run, &c);
    assert_string_equal(c.run.out, run);
    assert_int_equal(c.calib.seed, 12);
    assert_int_equal(c.train.seed, 5);
    assert_int_equal(c.train.checkpoint_every, 1);

    // finetune --resume: a key resuming needs cannot change (the compare message), nothing is written
    snprintf(args, sizeof args, "finetune --resume '%s' --set quant.weight_bits=8 --threads 2", run);
    assert_int_equal(effdm(args, err, sizeof err), 2);
    assert_has(err, "cannot resume: quant.weight_bits is 4 in the run and 8 now; resuming needs the same value");
    snprintf(args, sizeof args, "finetune --resume '%s' --config '%s' --set calib.seed=13 --threads 2", run, cfg);
    assert_int_equal(effdm(args, err, sizeof err), 2);
    assert_has(err, "cannot resume: calib.seed is 12 in the run and 13 now");
    load_run_config(run, &c);
    assert_int_equal(c.calib.seed, 12);
    // ... one it does not need may, and is recorded
    snprintf(args, sizeof args, "finetune --resume '%s' --set train.checkpoint_every=3 --set sample.seed=99 "
             "--threads 2", run);
    if (effdm(args, err, sizeof err) != 0) fail_msg("%s", err);
    // the summary says what its times count: the optimizer steps, and the command's wall time
    // (it once printed only the first, as "whole run")
    char sum[4096];
    last_stdout(sum, sizeof sum);
    double steps_s = -1, wall_s = -1;
    const char *a = strstr(sum, "of optimizer steps ("), *b = strstr(sum, "\nwall ");
    if (!a || !b) fail_msg("summary without step and wall times:\n%s", sum);
    a -= 4;  // "<seconds> s of optimizer steps": back over " s " to the number
    while (a > sum && a[-1] != ' ') a--;
    assert_int_equal(sscanf(a, "%lf", &steps_s), 1);
    assert_int_equal(sscanf(b, "\nwall %lf", &wall_s), 1);
    assert_true(wall_s >= steps_s && steps_s > 0);
    load_run_config(run, &c);
    assert_int_equal(c.train.checkpoint_every, 3);
    assert_int_equal(c.sample.seed, 99);
    assert_int_equal(c.calib.seed, 12);
    assert_string_equal(c.run.out, run);
    snprintf(args, sizeof args, "finetune --resume '%s' --set train.chekpoint_every=3", run);
    assert_int_equal(effdm(args, err, sizeof err), 2);
    assert_has(err, "did you mean 'train.checkpoint_every'?");

    // --help documents it
    assert_int_equal(effdm("finetune --help", err, sizeof err), 0);
    char out[8192];
    snprintf(args, sizeof args, "%s/stdout.txt", tmp);
    FILE *f = fopen(args, "r");
    assert_non_null(f);
    out[fread(out, 1, sizeof out - 1, f)] = 0;
    fclose(f);
    assert_has(out, "--set KEY=VALUE");
}

// Paths written in a config file are taken from the file's folder, those of --set from the
// working directory; both come out absolute, with "." and ".." resolved.
static void test_paths_relative_to_the_file(void **state) {
    char sub[300], path[400], want[700];
    snprintf(sub, sizeof sub, "%s/sub", tmp);
    assert_int_equal(mkdir(sub, 0777), 0);
    snprintf(path, sizeof path, "%s/c.yaml", sub);
    test_write_file(path, "model:\n  ldm_config: /abs/./y/../y.yaml\n  ckpt: ../m/x.ckpt\nrun:\n  out: ./out//r\n");
    RunConfig c;
    Err e = {0};
    assert_int_equal(run_config_load_set(path, NULL, 0, &c, &e), 0);
    assert_string_equal(c.model.ldm_config, "/abs/y.yaml");
    snprintf(want, sizeof want, "%s/m/x.ckpt", tmp);
    assert_string_equal(c.model.ckpt, want);
    snprintf(want, sizeof want, "%s/out/r", sub);
    assert_string_equal(c.run.out, want);
    // a --set of the same key: the working directory's
    const char *sets[] = {"model.ckpt=k.ckpt", "run.out=../up"};
    assert_int_equal(run_config_load_set(path, sets, 2, &c, &e), 0);
    assert_string_equal(c.model.ckpt, test_cwd_path("k.ckpt"));
    char cwd[4096];
    assert_non_null(getcwd(cwd, sizeof cwd));
    *strrchr(cwd, '/') = '\0';
    snprintf(want, sizeof want, "%s/up", cwd);
    assert_string_equal(c.run.out, want);
    assert_string_equal(c.model.ldm_config, "/abs/y.yaml");  // the file's, untouched by --set
    // ".." above the root stays at the root
    const char *root[] = {"model.ckpt=/../../a.ckpt"};
    assert_int_equal(run_config_load_set(path, root, 1, &c, &e), 0);
    assert_string_equal(c.model.ckpt, "/a.ckpt");
    remove(path);
    rmdir(sub);
}

// The effdm recipe on an unconditional LDM (tests/data/parity/ae_kl: KL first stage, no class
// labels), end to end through the CLI: calibrate, one epoch with its sampled validation (it
// divided by the number of real classes, 0 here: SIGFPE before session 7), export with both
// gain fits, and sample the export.
static void test_unconditional_run(void **state) {
    char cfg[400], err[4096], args[2048];
    snprintf(cfg, sizeof cfg, "%s/uncond.yaml", tmp);
    test_write_file(cfg, "model:\n  ldm_config: %s/parity/ae_kl/config.yaml\n  ckpt: %s/parity/ae_kl/model.ckpt\n"
                    "calib:\n  n_samples: 2\n  batch: 2\n  steps: 10\n  n_inputs: 4\n"
                    "train:\n  recipe: effdm\n  epochs: 1\n  steps: 4\n  val_every: 1\n  val_inputs: 4\n"
                    "  val_samples: 2\n  sample_every: 0\n  guidance_fit_samples: 2\n"
                    "run:\n  out: %s/uncond_run\n", TEST_DATA_DIR, TEST_DATA_DIR, tmp);
    snprintf(args, sizeof args, "finetune --config '%s' --threads 1", cfg);
    int rc = effdm(args, err, sizeof err);
    if (rc) print_error("%s\n", err);
    assert_int_equal(rc, 0);
    snprintf(args, sizeof args, "export --run '%s/uncond_run' --out '%s/uncond.safetensors' --threads 1", tmp, tmp);
    rc = effdm(args, err, sizeof err);
    if (rc) print_error("%s\n", err);
    assert_int_equal(rc, 0);
    snprintf(args, sizeof args, "sample --model '%s/uncond.safetensors' --n 2 --steps 4 --out '%s/uncond_s' --threads 1",
             tmp, tmp);
    rc = effdm(args, err, sizeof err);
    if (rc) print_error("%s\n", err);
    assert_int_equal(rc, 0);
}

// effdm finetune --keys prints the key tables run_config_keys_markdown makes (the guide's).
static void test_cli_keys(void **state) {
    char err[1024];
    assert_int_equal(effdm("finetune --keys", err, sizeof err), 0);
    char path[400];
    snprintf(path, sizeof path, "%s/stdout.txt", tmp);
    char *got = test_slurp(path), *want = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&want, &n);
    assert_non_null(got);
    assert_non_null(f);
    run_config_keys_markdown(f);
    fclose(f);
    assert_string_equal(got, want);
    free(got);
    free(want);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_applies),
        cmocka_unit_test(test_set_is_a_line_of_the_file),
        cmocka_unit_test(test_set_errors),
        cmocka_unit_test(test_cli),
        cmocka_unit_test(test_paths_relative_to_the_file),
        cmocka_unit_test(test_unconditional_run),
        cmocka_unit_test(test_cli_keys),
    };
    return cmocka_run_group_tests_name("run_config_set", tests, setup, teardown);
}
