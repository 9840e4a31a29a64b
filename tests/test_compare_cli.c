/* test_compare_cli.c: effdm compare as a user runs it, against tests/data/compare/expected.json
   (computed in numpy from the PNG files by tests/data/compare/make_fixture.py, independently of
   effdm: see that folder's README), and its refusals: folders whose files differ, a missing
   folder, nothing written on error.

   Tolerances: RMSE 1e-9 relative (both sides take the same bytes in double); agreement,
   accuracies and precision/recall exactly (the fixture checks that no judge argmax is within
   1e-3 of a tie and no squared distance within 2e-3 (relative) of a squared radius, so
   float32 rounding cannot flip them); FID 1e-5 relative, measured 4e-7 (float32 judge
   features against numpy's float32 judge, then float64 statistics on both sides). */
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

#define ZOO TEST_DATA_DIR "/../../models/zoo/fmnist-ldm"
#define N_IMAGES 20
#define FID_TOL 1e-5

static char tmp[256];

static int setup_tmp(void **state) { return test_tmpdir_make(tmp, sizeof tmp, "compare_cli"); }

static int teardown_tmp(void **state) { return test_tmpdir_remove(tmp); }

// Runs `effdm <args>` (stdout, stderr to tmp/stdout.txt, tmp/stderr.txt); the exit status.
static int run(const char *args) { return test_run_cli(tmp, args); }

// Runs `effdm <args>`, which must succeed (its stderr is printed when not); its stdout (malloc'ed).
static char *run_ok(const char *args) {
    int rc = run(args);
    if (rc) print_error("%s\n", test_slurp_in(tmp, "stderr.txt"));
    assert_int_equal(rc, 0);
    return test_slurp_in(tmp, "stdout.txt");
}

static cJSON *load_json(const char *path) {
    char *s = test_slurp(path);
    assert_non_null(s);
    cJSON *j = cJSON_Parse(s);
    free(s);
    assert_non_null(j);
    return j;
}

static void copy_file(const char *from, const char *to) {
    unsigned char *buf;
    size_t n;
    Err e = {0};
    assert_int_equal(file_read_all(from, &buf, &n, &e), 0);
    FILE *f = fopen(to, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
    free(buf);
}

// tmp/<dst> gets the fixture folder src (a or b), in class folders or flat (unconditional).
static void copy_fixture(const char *src, const char *dst, int flat) {
    char p[512], q[512];
    snprintf(p, sizeof p, "%s/%s", tmp, dst);
    assert_int_equal(mkdir(p, 0700), 0);
    for (int i = 0; i < N_IMAGES; i++) {
        snprintf(p, sizeof p, "%s/compare/%s/%d/%05d.png", TEST_DATA_DIR, src, i % 10, i);
        if (flat) {
            snprintf(q, sizeof q, "%s/%s/%05d.png", tmp, dst, i);
        } else {
            snprintf(q, sizeof q, "%s/%s/%d", tmp, dst, i % 10);
            mkdir(q, 0700);
            snprintf(q, sizeof q, "%s/%s/%d/%05d.png", tmp, dst, i % 10, i);
        }
        copy_file(p, q);
    }
}

static double num(const cJSON *j, const char *key) {
    const cJSON *v = cJSON_GetObjectItem(j, key);
    if (!cJSON_IsNumber(v)) print_error("'%s' is not a number\n", key);
    assert_true(cJSON_IsNumber(v));
    return v->valuedouble;
}

static void assert_close(const cJSON *ours, const cJSON *want, const char *key, double rel) {
    double a = num(ours, key), b = num(want, key);
    if (fabs(a - b) > rel * fabs(b)) print_error("%s: effdm %.10g, numpy %.10g\n", key, a, b);
    assert_true(fabs(a - b) <= rel * fabs(b));
}

static void assert_same_array(const cJSON *ours, const cJSON *want, const char *key) {
    const cJSON *a = cJSON_GetObjectItem(ours, key), *b = cJSON_GetObjectItem(want, key);
    assert_true(cJSON_IsArray(a) && cJSON_IsArray(b));
    assert_int_equal(cJSON_GetArraySize(a), cJSON_GetArraySize(b));
    for (int i = 0; i < cJSON_GetArraySize(b); i++)
        assert_true(cJSON_GetArrayItem(a, i)->valuedouble == cJSON_GetArrayItem(b, i)->valuedouble);
}

// The measures that do not need class folders or a reference.
static void assert_paired_measures(const cJSON *j, const cJSON *want) {
    assert_int_equal((int)num(j, "n"), N_IMAGES);
    assert_close(j, want, "rmse", 1e-9);
    assert_close(j, want, "rmse_img_mean", 1e-9);
    assert_close(j, want, "agreement", 0);
    assert_close(j, want, "fid_a_b", FID_TOL);
    assert_close(j, want, "precision_a_b", 0);
    assert_close(j, want, "recall_a_b", 0);
}

static void test_fixture_values(void **state) {
    // the defaults: the shipped judge and the shipped Fashion-MNIST statistics as --ref
    char args[2048], json[512];
    snprintf(json, sizeof json, "%s/cmp.json", tmp);
    snprintf(args, sizeof args, "compare '%s/compare/a' '%s/compare/b' --json '%s' --threads 1", TEST_DATA_DIR,
             TEST_DATA_DIR, json);
    char *out = run_ok(args);
    assert_non_null(strstr(out, "judge agreement"));
    assert_non_null(strstr(out, "FID A vs B"));
    free(out);
    assert_false(test_exists_in(tmp, "cmp.json.tmp"));
    cJSON *j = load_json(json), *want = load_json(TEST_DATA_DIR "/compare/expected.json");
    assert_paired_measures(j, want);
    assert_close(j, want, "class_accuracy_a", 0);
    assert_close(j, want, "class_accuracy_b", 0);
    assert_same_array(j, want, "class_accuracy_per_class_a");
    assert_same_array(j, want, "class_accuracy_per_class_b");
    assert_same_array(j, want, "class_counts");
    assert_close(j, want, "fid_a_ref", FID_TOL);
    assert_close(j, want, "fid_b_ref", FID_TOL);
    // compare.py's names, read by scripts/quality/report.py: A plays the model, B the FP samples
    assert_true(num(j, "judge_acc_model") == num(want, "class_accuracy_a"));
    assert_true(num(j, "judge_acc_fp") == num(want, "class_accuracy_b"));
    assert_true(cJSON_IsString(cJSON_GetObjectItem(j, "ref")));
    cJSON_Delete(j);
    cJSON_Delete(want);
}

static void test_unconditional_folders(void **state) {
    // the same images without class folders (an unconditional model's layout), --ref none:
    // the paired measures do not change; accuracies and reference FIDs are null
    copy_fixture("a", "ua", 1);
    copy_fixture("b", "ub", 1);
    char args[2048], json[512];
    snprintf(json, sizeof json, "%s/u.json", tmp);
    snprintf(args, sizeof args, "compare '%s/ua' '%s/ub/' --ref none --weights '%s/judge.ckpt' --json '%s'", tmp, tmp,
             ZOO, json);
    char *out = run_ok(args);
    assert_non_null(strstr(out, "n/a (no class folders)"));
    free(out);
    cJSON *j = load_json(json), *want = load_json(TEST_DATA_DIR "/compare/expected.json");
    assert_paired_measures(j, want);
    const char *nulls[] = {"class_accuracy_a", "class_accuracy_b", "judge_acc_model", "judge_acc_fp",
                           "class_accuracy_per_class_a", "class_accuracy_per_class_b", "class_counts",
                           "fid_a_ref", "fid_b_ref", "ref"};
    for (size_t i = 0; i < sizeof nulls / sizeof nulls[0]; i++)
        assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, nulls[i])));
    cJSON_Delete(j);
    cJSON_Delete(want);
}

static void write_png(const char *name, int W, int H) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", tmp, name);
    unsigned char px[32 * 32];
    for (int i = 0; i < W * H; i++) px[i] = (unsigned char)(i * 7);
    assert_true(stbi_write_png(p, W, H, 1, px, W));
}

static void test_refusals(void **state) {
    // ma, mb: the fixture with one file removed from mb, one file added to it, or a file of
    // another size; and folders that are not there
    copy_fixture("a", "ma", 0);
    copy_fixture("b", "mb", 0);
    copy_fixture("a", "ma2", 0);
    copy_fixture("b", "mb2", 0);
    copy_fixture("a", "ma3", 0);
    copy_fixture("b", "mb3", 0);
    copy_fixture("b", "flat", 1);
    char p[512];
    snprintf(p, sizeof p, "%s/mb/3/00013.png", tmp);
    assert_int_equal(unlink(p), 0);  // in A only
    write_png("mb2/9/00099.png", 32, 32);  // in B only
    write_png("mb3/4/00004.png", 28, 28);  // another size
    // an earlier result at the --json path must survive a refused run untouched
    snprintf(p, sizeof p, "%s/out.json", tmp);
    test_write_file(p, "{\"old\": 1}\n");
    struct {
        const char *args;  // TMP -> the temporary folder
        const char *msg[2];
    } cases[] = {
        {"compare TMP/ma TMP/mb", {"ma/3/00013.png is missing in B", "19 in B"}},
        {"compare TMP/mb TMP/ma", {"ma/3/00013.png is missing in A", "19 in A"}},
        {"compare TMP/ma2 TMP/mb2", {"mb2/9/00099.png is missing in A", "21 in B"}},
        {"compare TMP/ma3 TMP/mb3", {"ma3/4/00004.png is 32x32", "mb3/4/00004.png is 28x28"}},
        {"compare TMP/ma TMP/flat", {"is missing in", ""}},
        {"compare TMP/ma TMP/nonexistent", {"TMP/nonexistent", ""}},
        {"compare TMP/nonexistent TMP/ma", {"TMP/nonexistent", ""}},
        {"compare TMP/ma", {"expected two sample folders", ""}},
        {"compare TMP/ma TMP/ma --ref TMP/nonexistent.safetensors", {"nonexistent.safetensors", ""}},
        {"compare TMP/ma TMP/ma --weights TMP/nonexistent.ckpt", {"nonexistent.ckpt", ""}},
        {"compare TMP/ma TMP/ma --batch -1", {"--batch", ""}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[2048] = "", msg[2][512];
        // replace every TMP by tmp, in the arguments and in the expected messages
        const char *srcs[3] = {cases[i].args, cases[i].msg[0], cases[i].msg[1]};
        char *dsts[3] = {args, msg[0], msg[1]};
        for (int k = 0; k < 3; k++) {
            dsts[k][0] = '\0';
            for (const char *s = srcs[k]; *s;) {
                if (!strncmp(s, "TMP", 3)) {
                    strcat(dsts[k], tmp);
                    s += 3;
                } else {
                    strncat(dsts[k], s++, 1);
                }
            }
        }
        strcat(args, " --json '");
        strcat(args, tmp);
        strcat(args, "/out.json'");
        int rc = run(args);
        char *err = test_slurp_in(tmp, "stderr.txt");
        if (rc != 2 || !strstr(err, msg[0]) || !strstr(err, msg[1]))
            print_error("effdm %s -> %d: %s\n", args, rc, err);
        assert_int_equal(rc, 2);
        assert_non_null(strstr(err, msg[0]));
        assert_non_null(strstr(err, msg[1]));
        assert_true(strncmp(err, "effdm compare: ", 15) == 0);
        assert_int_equal(strchr(err, '\n') - err + 1, (long)strlen(err));  // exactly one line
        free(err);
        char *old = test_slurp_in(tmp, "out.json");
        assert_string_equal(old, "{\"old\": 1}\n");
        free(old);
        assert_false(test_exists_in(tmp, "out.json.tmp"));
    }
    // measured, but the JSON cannot be written: exit 2 naming it, nothing left behind
    char args[2048];
    snprintf(args, sizeof args, "compare '%s/ma' '%s/ma' --json '%s/nodir/out.json'", tmp, tmp, tmp);
    assert_int_equal(run(args), 2);
    char *err = test_slurp_in(tmp, "stderr.txt");
    assert_non_null(strstr(err, "nodir/out.json"));
    free(err);
    assert_false(test_exists_in(tmp, "nodir"));
}

static void test_help(void **state) {
    assert_int_equal(run("--help"), 0);
    char *out = test_slurp_in(tmp, "stdout.txt");
    assert_non_null(strstr(out, "  compare "));
    free(out);
    assert_int_equal(run("compare --help"), 0);
    out = test_slurp_in(tmp, "stdout.txt");
    assert_non_null(strstr(out, "usage: effdm compare A_DIR B_DIR"));
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_values),
        cmocka_unit_test(test_unconditional_folders),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_help),
    };
    return cmocka_run_group_tests_name("compare_cli", tests, setup_tmp, teardown_tmp);
}
