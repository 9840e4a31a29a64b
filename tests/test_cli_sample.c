/* test_cli_sample.c: the effdm binary (EFFDM_BIN) end to end: `forward` reproduces the unet_cin
   and unet_uncond fixtures' eps, `decode` the ae_kl decoder output and posterior, `sample`
   writes class-balanced PNGs and a grid from the shipped teacher and prints the real DDIM step
   count; bad input (missing file, a checkpoint copy missing a tensor, an unknown target, bad
   options) exits 2 with one stderr line naming the file / key and leaves no output behind. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#include <stb_image.h>

#include "ckpt_edit.h"
#include "io/npy.h"

static const double TOL_FORWARD = 1e-4;
static char g_dir[64];
static char g_out[8192], g_err[8192];

static int setup(void **state) { return test_tmpdir_make(g_dir, sizeof g_dir, "cli"); }

static int teardown(void **state) { return test_tmpdir_remove(g_dir); }

static const char *tmp(const char *name) { return test_path_in(g_dir, name); }

static const char *data(const char *name) { return test_path_in(TEST_DATA_DIR, name); }

static void slurp(const char *path, char *dst, size_t cap) {
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(dst, 1, cap - 1, f) : 0;
    dst[n] = '\0';
    if (f) fclose(f);
}

// Runs `effdm <args>` (env: optional "VAR=value " prefix); stdout / stderr into g_out / g_err.
static int run(const char *env, const char *args) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s '%s' %s > '%s' 2> '%s'", env ? env : "", EFFDM_BIN, args, tmp("stdout.txt"),
             tmp("stderr.txt"));
    int st = test_shell_status(cmd);
    slurp(tmp("stdout.txt"), g_out, sizeof g_out);
    slurp(tmp("stderr.txt"), g_err, sizeof g_err);
    return st;
}

static int exists(const char *path) { return access(path, F_OK) == 0; }

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

// Exit 2, exactly one stderr line "effdm <cmd>: ..." containing every needle.
static void expect_bad_input(int status, const char *cmd, const char *n1, const char *n2) {
    char prefix[64];
    snprintf(prefix, sizeof prefix, "effdm %s: ", cmd);
    if (status != 2 || count_lines(g_err) != 1 || strncmp(g_err, prefix, strlen(prefix)) != 0 || !strstr(g_err, n1) ||
        (n2 && !strstr(g_err, n2))) {
        print_error("status %d, stderr: %s(wanted '%s'%s%s)\n", status, g_err, n1, n2 ? " and " : "", n2 ? n2 : "");
        fail();
    }
}

static void assert_npy_close(const char *ours, const char *ref, double tol) {
    NpyArray a, b;
    Err e = {0};
    assert_int_equal(npy_read(ours, &a, &e), 0);
    assert_int_equal(npy_read(ref, &b, &e), 0);
    assert_int_equal(a.ndim, b.ndim);
    for (int i = 0; i < a.ndim; i++) assert_int_equal(a.shape[i], b.shape[i]);
    assert_rel_l2(a.data, b.data, b.n, tol);
    npy_free(&a);
    npy_free(&b);
}

static void test_forward(void **state) {
    (void)state;
    char args[4096];
    const char *p = "parity/unet_cin/";
    snprintf(args, sizeof args, "forward --ldm-config '%s/%sconfig.yaml' --ckpt '%s/%smodel.ckpt' --x '%s/%sx.npy' "
             "--t '%s/%st.npy' --y '%s/%sy.npy' --out '%s'", TEST_DATA_DIR, p, TEST_DATA_DIR, p, TEST_DATA_DIR, p,
             TEST_DATA_DIR, p, TEST_DATA_DIR, p, tmp("eps_y.npy"));
    assert_int_equal(run(NULL, args), 0);
    assert_string_equal(g_err, "");
    assert_npy_close(tmp("eps_y.npy"), data("parity/unet_cin/eps.npy"), TOL_FORWARD);

    snprintf(args, sizeof args, "forward --ldm-config '%s/%sconfig.yaml' --ckpt '%s/%smodel.ckpt' --x '%s/%sx.npy' "
             "--t '%s/%st.npy' --context '%s/%scontext.npy' --out '%s'", TEST_DATA_DIR, p, TEST_DATA_DIR, p,
             TEST_DATA_DIR, p, TEST_DATA_DIR, p, TEST_DATA_DIR, p, tmp("eps_c.npy"));
    assert_int_equal(run(NULL, args), 0);
    assert_npy_close(tmp("eps_c.npy"), data("parity/unet_cin/eps.npy"), TOL_FORWARD);

    p = "parity/unet_uncond/";
    snprintf(args, sizeof args, "forward --ldm-config '%s/%sconfig.yaml' --ckpt '%s/%smodel.ckpt' --x '%s/%sx.npy' "
             "--t '%s/%st.npy' --out '%s'", TEST_DATA_DIR, p, TEST_DATA_DIR, p, TEST_DATA_DIR, p, TEST_DATA_DIR, p,
             tmp("eps_u.npy"));
    assert_int_equal(run(NULL, args), 0);
    assert_npy_close(tmp("eps_u.npy"), data("parity/unet_uncond/eps.npy"), TOL_FORWARD);
}

static void test_decode(void **state) {
    (void)state;
    char args[4096];
    const char *p = "parity/ae_kl/";
    snprintf(args, sizeof args, "decode --ldm-config '%s/%sconfig.yaml' --ckpt '%s/%smodel.ckpt' --z '%s/%sz.npy' "
             "--out '%s'", TEST_DATA_DIR, p, TEST_DATA_DIR, p, TEST_DATA_DIR, p, tmp("dec.npy"));
    assert_int_equal(run(NULL, args), 0);
    assert_npy_close(tmp("dec.npy"), data("parity/ae_kl/dec.npy"), TOL_FORWARD);
    snprintf(args, sizeof args, "decode --ldm-config '%s/%sconfig.yaml' --ckpt '%s/%smodel.ckpt' --encode "
             "--x '%s/%sx.npy' --out '%s' --logvar '%s'", TEST_DATA_DIR, p, TEST_DATA_DIR, p, TEST_DATA_DIR, p,
             tmp("mean.npy"), tmp("logvar.npy"));
    assert_int_equal(run(NULL, args), 0);
    assert_npy_close(tmp("mean.npy"), data("parity/ae_kl/mean.npy"), TOL_FORWARD);
    assert_npy_close(tmp("logvar.npy"), data("parity/ae_kl/logvar.npy"), TOL_FORWARD);
}

static void check_png(const char *path, int w, int h) {
    int x, y, c;
    unsigned char *px = stbi_load(path, &x, &y, &c, 0);
    if (!px) print_error("%s: %s\n", path, stbi_failure_reason());
    assert_non_null(px);
    assert_int_equal(x, w);
    assert_int_equal(y, h);
    assert_int_equal(c, 1);
    stbi_image_free(px);
}

static void test_sample(void **state) {
    (void)state;
    char env[1024], args[1024];
    snprintf(env, sizeof env, "EFFDM_ZOO='%s/../../models/zoo'", TEST_DATA_DIR);
    snprintf(args, sizeof args, "sample --n 4 --steps 5 --scale 3 --batch 3 --seed 7 --out '%s'", tmp("s4"));
    assert_int_equal(run(env, args), 0);
    assert_non_null(strstr(g_out, "ddim, 5 steps"));
    for (int i = 0; i < 4; i++) {  // class-balanced: image i has class i
        char p[600];
        snprintf(p, sizeof p, "%s/%d/%05d.png", tmp("s4"), i, i);
        check_png(p, 32, 32);
    }
    // grid: 4 rows (classes) x 1 column of 32 x 32 with make_grid's 2-pixel padding
    check_png(tmp("s4/grid.png"), 1 * 34 + 2, 4 * 34 + 2);

    // --steps 30 runs 31 steps (CompVis uniform timesteps); one class; PLMS
    snprintf(args, sizeof args, "sample --n 1 --steps 30 --class 8 --sampler plms --out '%s'", tmp("s1"));
    assert_int_equal(run(env, args), 0);
    assert_non_null(strstr(g_out, "plms, 31 steps (requested 30)"));
    check_png(tmp("s1/8/00000.png"), 32, 32);

    // an unconditional LDM (ae_kl: KL first stage + small UNet): DIR/<index>.png, grid 2 x 3
    snprintf(args, sizeof args, "sample --ldm-config '%s/parity/ae_kl/config.yaml' --ckpt "
             "'%s/parity/ae_kl/model.ckpt' --n 5 --steps 4 --eta 0.5 --out '%s'", TEST_DATA_DIR, TEST_DATA_DIR,
             tmp("su"));
    assert_int_equal(run(NULL, args), 0);
    assert_non_null(strstr(g_out, "unconditional"));
    assert_non_null(strstr(g_err, "no model_ema"));  // use_ema absent (true), no EMA in the file: noted
    for (int i = 0; i < 5; i++) {
        char p[600];
        snprintf(p, sizeof p, "%s/%05d.png", tmp("su"), i);
        check_png(p, 32, 32);
    }
    check_png(tmp("su/grid.png"), 3 * 34 + 2, 2 * 34 + 2);

    // the default model, found relative to the executable when EFFDM_ZOO is unset
    char rel[1200];
    snprintf(rel, sizeof rel, "%s", EFFDM_BIN);
    *strrchr(rel, '/') = '\0';
    strcat(rel, "/../models/zoo/fmnist-ldm/config.yaml");
    if (exists(rel)) {
        snprintf(args, sizeof args, "sample --n 1 --steps 2 --out '%s'", tmp("s0"));
        assert_int_equal(run("env -u EFFDM_ZOO", args), 0);
        check_png(tmp("s0/0/00000.png"), 32, 32);
    }
    // a failure after images were written (grid.png cannot be replaced: it is a directory)
    // leaves no partial output: the class directories it made and their images are removed,
    // the existing output directory and what was in it stay
    char keep[600];
    assert_int_equal(mkdir(tmp("fail"), 0777), 0);
    assert_int_equal(mkdir(tmp("fail/grid.png"), 0777), 0);
    snprintf(keep, sizeof keep, "%s/mine.txt", tmp("fail"));
    FILE *kf = fopen(keep, "w");
    assert_non_null(kf);
    fclose(kf);
    snprintf(args, sizeof args, "sample --n 3 --steps 2 --batch 2 --out '%s'", tmp("fail"));
    assert_int_not_equal(run(env, args), 0);
    assert_non_null(strstr(g_err, "grid.png"));
    assert_false(exists(tmp("fail/0/00000.png")));
    assert_false(exists(tmp("fail/0")));
    assert_false(exists(tmp("fail/2")));
    assert_true(exists(keep));
    assert_true(exists(tmp("fail/grid.png")));

    snprintf(args, sizeof args, "sample --n 1 --steps 2 --out '%s'", tmp("nozoo"));
    expect_bad_input(run("EFFDM_ZOO=/nonexistent", args), "sample", "/nonexistent/fmnist-ldm", "EFFDM_ZOO");
    assert_false(exists(tmp("nozoo")));
}

static int drop_embedding(char *name, int *ndim, int64_t *shape, void *user) {
    (void)ndim, (void)shape, (void)user;
    return strcmp(name, "cond_stage_model.embedding.weight") != 0;
}

static int drop_decoder_out(char *name, int *ndim, int64_t *shape, void *user) {
    (void)ndim, (void)shape, (void)user;
    return strcmp(name, "first_stage_model.decoder.conv_out.weight") != 0;
}

static void test_bad_input(void **state) {
    (void)state;
    char args[4096], env[1024];
    const char *p = "parity/unet_cin/";
    Err e = {0};
    // missing file
    snprintf(args, sizeof args, "forward --ldm-config '%s/%sconfig.yaml' --ckpt '%s/nope.ckpt' --x '%s/%sx.npy' "
             "--t '%s/%st.npy' --y '%s/%sy.npy' --out '%s'", TEST_DATA_DIR, p, g_dir, TEST_DATA_DIR, p, TEST_DATA_DIR,
             p, TEST_DATA_DIR, p, tmp("bad1.npy"));
    expect_bad_input(run(NULL, args), "forward", "nope.ckpt", NULL);
    assert_false(exists(tmp("bad1.npy")));

    // a checkpoint copy without the class embedding
    assert_int_equal(ckpt_edit_copy(data("parity/unet_cin/model.ckpt"), tmp("noemb.safetensors"), drop_embedding, NULL,
                                    &e), 0);
    snprintf(args, sizeof args, "forward --ldm-config '%s/%sconfig.yaml' --ckpt '%s' --x '%s/%sx.npy' "
             "--t '%s/%st.npy' --y '%s/%sy.npy' --out '%s'", TEST_DATA_DIR, p, tmp("noemb.safetensors"), TEST_DATA_DIR,
             p, TEST_DATA_DIR, p, TEST_DATA_DIR, p, tmp("bad2.npy"));
    expect_bad_input(run(NULL, args), "forward", "cond_stage_model.embedding.weight", "noemb.safetensors");
    assert_false(exists(tmp("bad2.npy")));

    // sampling from a teacher copy missing a tensor: no output directory
    char teacher[600];
    snprintf(teacher, sizeof teacher, "%s/../../models/zoo/fmnist-ldm/model.ckpt", TEST_DATA_DIR);
    assert_int_equal(ckpt_edit_copy(teacher, tmp("teacher_cut.safetensors"), drop_decoder_out, NULL, &e), 0);
    snprintf(args, sizeof args, "sample --ldm-config '%s/../../models/zoo/fmnist-ldm/config.yaml' --ckpt '%s' --n 2 "
             "--out '%s'", TEST_DATA_DIR, tmp("teacher_cut.safetensors"), tmp("bad_out"));
    expect_bad_input(run(NULL, args), "sample", "first_stage_model.decoder.conv_out.weight", "teacher_cut");
    assert_false(exists(tmp("bad_out")));

    // an unknown model.target
    test_write_file(tmp("bad.yaml"), "model:\n  target: ldm.models.diffusion.ddpm.DDPM\n  params: {}\n");
    snprintf(args, sizeof args, "decode --ldm-config '%s' --ckpt '%s/parity/ae_kl/model.ckpt' --z "
             "'%s/parity/ae_kl/z.npy' --out '%s'", tmp("bad.yaml"), TEST_DATA_DIR, TEST_DATA_DIR, tmp("bad3.npy"));
    expect_bad_input(run(NULL, args), "decode", "model.target", "ldm.models.diffusion.ddpm.DDPM");
    assert_false(exists(tmp("bad3.npy")));

    // options
    snprintf(env, sizeof env, "EFFDM_ZOO='%s/../../models/zoo'", TEST_DATA_DIR);
    snprintf(args, sizeof args, "sample --n 2 --steps 1000 --out '%s'", tmp("bad_s"));
    expect_bad_input(run(env, args), "sample", "steps 1000", "500");
    snprintf(args, sizeof args, "sample --n 2 --class 11 --out '%s'", tmp("bad_s"));
    expect_bad_input(run(env, args), "sample", "--class 11", NULL);
    snprintf(args, sizeof args, "sample --n 2 --sampler plms --eta 1 --out '%s'", tmp("bad_s"));
    expect_bad_input(run(env, args), "sample", "eta", NULL);
    // eta > 1 gave NaN latents written as black images (exit 0); a NaN scale likewise
    snprintf(args, sizeof args, "sample --n 2 --steps 4 --eta 1.2 --out '%s'", tmp("bad_s"));
    expect_bad_input(run(env, args), "sample", "--eta", "1.2");
    snprintf(args, sizeof args, "sample --n 2 --steps 4 --scale nan --out '%s'", tmp("bad_s"));
    expect_bad_input(run(env, args), "sample", "--scale", "nan");
    snprintf(args, sizeof args, "sample --n 2 --steps 4 --scale -1 --out '%s'", tmp("bad_s"));
    expect_bad_input(run(env, args), "sample", "--scale", "-1");
    // --eval that needs 10 samples is refused before any sampling
    snprintf(args, sizeof args, "sample --n 9 --steps 4 --eval fmnist --out '%s'", tmp("bad_s"));
    expect_bad_input(run(env, args), "sample", "--n >= 10", "9");
    // one thread rule: --threads and EFFDM_THREADS take a positive integer (0 was "all cores"
    // for the option and an error for the variable); above the cores a note, not silence
    snprintf(args, sizeof args, "sample --n 2 --steps 4 --threads 0 --out '%s'", tmp("bad_s"));
    expect_bad_input(run(env, args), "sample", "--threads", "found 0");
    char env0[1100];
    snprintf(env0, sizeof env0, "%s EFFDM_THREADS=0", env);
    snprintf(args, sizeof args, "sample --n 2 --steps 4 --out '%s'", tmp("bad_s"));
    expect_bad_input(run(env0, args), "sample", "EFFDM_THREADS", "'0'");
    snprintf(args, sizeof args, "sample --n 2 --steps 4 --threads 5000 --out '%s'", tmp("bad_s"));
    expect_bad_input(run(env, args), "sample", "--threads", "5000");
    snprintf(args, sizeof args, "sample --n 1 --steps 1 --threads %ld --out '%s'", sysconf(_SC_NPROCESSORS_ONLN) + 1,
             tmp("many_threads"));
    assert_int_equal(run(env, args), 0);
    if (!strstr(g_err, "effdm: note:") || !strstr(g_err, "oversubscribed")) fail_msg("no note: %s", g_err);
    snprintf(args, sizeof args, "sample --n 2 --ema maybe --out '%s'", tmp("bad_s"));
    expect_bad_input(run(env, args), "sample", "--ema", "maybe");
    snprintf(args, sizeof args, "sample --n 2 --ema on --out '%s'", tmp("bad_s"));
    expect_bad_input(run(env, args), "sample", "model_ema.", NULL);
    expect_bad_input(run(env, "sample --n 2"), "sample", "--out", NULL);
    assert_false(exists(tmp("bad_s")));
    snprintf(args, sizeof args, "decode --ldm-config '%s/parity/unet_cin/config.yaml' --ckpt "
             "'%s/parity/unet_cin/model.ckpt' --z '%s/parity/ae_kl/z.npy' --out '%s'", TEST_DATA_DIR, TEST_DATA_DIR,
             TEST_DATA_DIR, tmp("bad4.npy"));
    expect_bad_input(run(NULL, args), "decode", "first_stage_config", NULL);
    assert_false(exists(tmp("bad4.npy")));
}

// A binary outside the build tree (cmake -B /elsewhere, or copied) still finds the shipped
// teacher without EFFDM_ZOO: it looked only at <exe>/../models/zoo.
static void test_binary_elsewhere(void **state) {
    (void)state;
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s' '%s/effdm'", tmp("bin"), EFFDM_BIN, tmp("bin"));
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "env -u EFFDM_ZOO '%s/effdm' sample --n 1 --steps 1 --out '%s' > '%s' 2>&1", tmp("bin"),
             tmp("elsewhere_s"), tmp("elsewhere.txt"));
    int st = system(cmd);
    slurp(tmp("elsewhere.txt"), g_err, sizeof g_err);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("%s", g_err);
    assert_true(exists(tmp("elsewhere_s/grid.png")));
}

static void test_help(void **state) {
    (void)state;
    const char *cmds[] = {"sample --help", "forward --help", "decode --help"};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(run(NULL, cmds[i]), 0);
        assert_non_null(strstr(g_out, "usage: effdm"));
        assert_string_equal(g_err, "");
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_sample),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_binary_elsewhere),
        cmocka_unit_test(test_help),
    };
    return cmocka_run_group_tests_name("cli_sample", tests, setup, teardown);
}
