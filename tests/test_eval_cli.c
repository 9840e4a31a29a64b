/* test_eval_cli.c: effdm stats / effdm eval as a user runs them: exit statuses, the one-line
   error, nothing written on error, the JSON output. */
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_png_write.h"

#include "io/fileio.h"

#define JUDGE_PATH TEST_DATA_DIR "/../../models/zoo/fmnist-ldm/judge.ckpt"

static char tmp[256];

static int setup_tmp(void **state) { return test_tmpdir_make(tmp, sizeof tmp, "eval_cli"); }

static int teardown_tmp(void **state) { return test_tmpdir_remove(tmp); }

// Runs `effdm <args>` with stdout / stderr to tmp/stdout.txt, tmp/stderr.txt; the exit status.
static int run(const char *args) { return test_run_cli(tmp, args); }

static void test_stats_then_eval(void **state) {
    // 30 smooth 32x32 gray images in class folders 0..2
    char p[512];
    snprintf(p, sizeof p, "%s/s", tmp);
    assert_int_equal(mkdir(p, 0700), 0);
    unsigned char px[32 * 32];
    for (int n = 0; n < 30; n++) {
        if (n < 3) {
            snprintf(p, sizeof p, "%s/s/%d", tmp, n);
            assert_int_equal(mkdir(p, 0700), 0);
        }
        for (int i = 0; i < 32 * 32; i++) px[i] = (unsigned char)((i % 32) * (n + 1) * 7 + (i / 32) * 3 * n);
        snprintf(p, sizeof p, "%s/s/%d/%05d.png", tmp, n % 3, n);
        assert_true(stbi_write_png(p, 32, 32, 1, px, 32));
    }
    char args[2048];
    snprintf(args, sizeof args, "stats --images '%s/s' --weights '%s' --out '%s/ref.safetensors' --threads 1", tmp,
             JUDGE_PATH, tmp);
    assert_int_equal(run(args), 0);
    char *out = test_slurp_in(tmp, "stdout.txt");
    assert_non_null(strstr(out, "images      30"));
    free(out);
    snprintf(args, sizeof args, "eval --samples '%s/s' --ref '%s/ref.safetensors' --weights '%s' --json '%s/r.json'", tmp,
             tmp, JUDGE_PATH, tmp);
    assert_int_equal(run(args), 0);
    out = test_slurp_in(tmp, "stdout.txt");
    assert_non_null(strstr(out, "FID"));
    assert_non_null(strstr(out, "class accuracy"));
    free(out);
    char *js = test_slurp_in(tmp, "r.json");
    assert_non_null(js);
    cJSON *j = cJSON_Parse(js);
    assert_non_null(j);
    // the same images as the reference: FID 0 up to rounding, every point inside the other set's balls
    assert_true(fabs(cJSON_GetObjectItem(j, "fid")->valuedouble) < 1e-6);
    assert_true(cJSON_GetObjectItem(j, "precision")->valuedouble == 1.0);
    assert_true(cJSON_GetObjectItem(j, "recall")->valuedouble == 1.0);
    assert_int_equal((int)cJSON_GetObjectItem(j, "n_samples")->valuedouble, 30);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "sfid")));
    assert_true(cJSON_IsNumber(cJSON_GetObjectItem(j, "class_accuracy")));
    cJSON_Delete(j);
    free(js);
}

static void test_errors(void **state) {
    struct {
        const char *args;
        const char *msg;
    } cases[] = {
        {"eval --samples x", "--ref is required"},
        {"stats --images /nonexistent/dir --weights '" JUDGE_PATH "' --out OUT", "/nonexistent/dir"},
        {"stats --images /tmp --weights /nonexistent/judge.ckpt --out OUT", "/nonexistent/judge.ckpt"},
        {"stats --images /tmp --features vgg --out OUT", "'vgg'"},
        {"stats --images /tmp --rows 2 --out OUT", "--rows"},
        {"stats --images /tmp --features inception --out OUT", "--weights"},
        {"eval --samples /tmp --ref /nonexistent.safetensors", "/nonexistent.safetensors"},
        {"eval --samples /tmp --ref x --bogus 1", "--bogus"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[1024], out[512];
        snprintf(out, sizeof out, "'%s/never.safetensors'", tmp);
        // OUT -> a path that must not exist afterwards
        const char *at = strstr(cases[i].args, "OUT");
        if (at) snprintf(args, sizeof args, "%.*s%s%s", (int)(at - cases[i].args), cases[i].args, out, at + 3);
        else snprintf(args, sizeof args, "%s", cases[i].args);
        int rc = run(args);
        char *err = test_slurp_in(tmp, "stderr.txt");
        if (rc != 2 || !strstr(err, cases[i].msg)) print_error("effdm %s -> %d: %s\n", args, rc, err);
        assert_int_equal(rc, 2);
        assert_non_null(strstr(err, cases[i].msg));
        assert_non_null(strncmp(err, "effdm ", 6) == 0 ? err : NULL);
        assert_int_equal(strchr(err, '\n') - err + 1, (long)strlen(err));  // exactly one line
        free(err);
        assert_false(test_exists_in(tmp, "never.safetensors"));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stats_then_eval),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests_name("eval_cli", tests, setup_tmp, teardown_tmp);
}
