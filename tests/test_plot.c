/* test_plot.c: log.csv read back (train/run_log.h run_log_read) against a hand-written log,
   the curves PNG (plot/plot_curves.h, effdm plot) read back and looked at, the per-layer bar
   chart's PNG, and effdm plot's errors: exit 2, one line naming the file (and line), no file. */
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io/fileio.h"
#include "io/image_read.h"
#include "io/safetensors.h"
#include "plot/plot.h"
#include "plot/plot_curves.h"
#include "plot/plot_layers.h"
#include "train/run_log.h"

#define LOG_PATH TEST_DATA_DIR "/plot/log.csv"
// a drawn colour counts when every channel is within this of it (anti-aliased edges are not)
static const int COLOR_TOL = 12;
// pixels of a panel's colour that show its curve was drawn (a 2-pixel line over 1000 pixels
// has thousands; a legend sample alone has under 100 and lies outside the area)
static const int MIN_CURVE_PIXELS = 150;

static char tmp[256];

static int setup_tmp(void **state) { return test_tmpdir_make(tmp, sizeof tmp, "plot"); }
static int teardown_tmp(void **state) {
    plot_release();
    return test_tmpdir_remove(tmp);
}

static void write_file(const char *path, const char *text) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(text, 1, strlen(text), fp), strlen(text));
    assert_int_equal(fclose(fp), 0);
}

// Runs `effdm <args>` with stdout / stderr to tmp/stdout.txt, tmp/stderr.txt; the exit status.
static int run(const char *args) { return test_run_cli(tmp, args); }

// stderr of the last run: exactly one line, containing every one of the given strings.
static void assert_one_line_naming(const char *a, const char *b) {
    char p[512];
    snprintf(p, sizeof p, "%s/stderr.txt", tmp);
    char *s = test_slurp(p);
    assert_non_null(s);
    size_t n = strlen(s);
    int lines = 0;
    for (size_t i = 0; i < n; i++) lines += s[i] == '\n';
    if (lines != 1 || !strstr(s, a) || (b && !strstr(s, b)))
        fail_msg("expected one line naming '%s'%s%s, got: %s", a, b ? " and " : "", b ? b : "", s);
    free(s);
}

/* ---- reading -------------------------------------------------------------------------- */

static void test_read_by_hand(void **state) {
    RunLogData d;
    Err e = {0};
    int rc = run_log_read(LOG_PATH, &d, &e);
    if (rc) fail_msg("%s", e.msg);
    assert_int_equal(d.n_steps, 8);
    assert_int_equal(d.n_vals, 3);
    assert_int_equal(d.steps_per_epoch, 3);
    assert_int_equal(d.torn_last, 0);
    // tests/data/plot/README.md: the means by hand
    assert_int_equal(d.n_epochs, 3);
    const int ep[3] = {0, 1, 2}, cnt[3] = {3, 3, 2};
    const double mean[3] = {2.0, 3.0, 15.0};
    for (int k = 0; k < 3; k++) {
        assert_int_equal(d.epochs[k].epoch, ep[k]);
        assert_int_equal(d.epochs[k].n, cnt[k]);
        assert_true(fabs(d.epochs[k].mean - mean[k]) < 1e-12);
    }
    // rows as written
    assert_int_equal(d.steps[4].epoch, 1);
    assert_int_equal(d.steps[4].step, 1);
    assert_true(d.steps[4].loss == 1.5 && d.steps[4].lr == 0.0006 && d.steps[4].seconds == 0.1);
    assert_int_equal(d.vals[0].epoch, -1);
    assert_int_equal(d.vals[0].step, 3);
    assert_true(d.vals[0].val_error == 0.004 && d.vals[0].sample_mse == 0.2 && d.vals[0].sample_fd == 50 &&
                d.vals[0].sample_real == 0.9);
    assert_true(d.vals[1].epoch == 0 && d.vals[1].val_error == 0.003 && d.vals[1].sample_real == 1.1);
    assert_true(d.vals[2].epoch == 1 && d.vals[2].val_error == 0.002);
    assert_true(isnan(d.vals[2].sample_mse) && isnan(d.vals[2].sample_fd) && isnan(d.vals[2].sample_real));
    run_log_data_free(&d);
}

// A log of the given text in tmp: run_log_read's code, the message checked to name path:line.
static int read_text(const char *text, RunLogData *d, Err *e) {
    char p[512];
    snprintf(p, sizeof p, "%s/t.csv", tmp);
    write_file(p, text);
    memset(e, 0, sizeof *e);
    return run_log_read(p, d, e);
}

static void test_read_errors(void **state) {
    RunLogData d;
    Err e;
    const char *H = RUN_LOG_HEADER "\n";
    char text[1024];
    struct {
        const char *rows;
        int code;
        const char *where;  // in the message
    } bad[] = {
        {"0,0,1,0.1,0.1,\n0,1,abc,0.1,0.1,\n", ERR_FORMAT, ":3: field 'loss'"},
        {"0,0,1,0.1,0.1\n", ERR_FORMAT, ":2: expected 6 or 9"},
        {"0,0,1,0.1,0.1,\n0,0,2,0.1,0.1,\n", ERR_VALUE, ":3: step row (epoch 0, step 0) does not follow"},
        {"0,0,inf,0.1,0.1,\n", ERR_VALUE, ":2: field 'loss'"},
        {"0,0,1,0.1,0.1,0.5\n", ERR_FORMAT, ":2: a step row"},
        {"x,0,1,0.1,0.1,\n", ERR_FORMAT, ":2: field 'epoch'"},
        {"0,0,1,0.1,0.1,\n\n", ERR_FORMAT, ":3: expected 6 or 9"},
        {"0,3,,,1.0,nan,,,\n", ERR_VALUE, ":2: field 'val_error'"},
        {"-1,3,,,1.0,0.1,,,\n0,2,,,1.0,0.1,,,\n", ERR_VALUE, ":3: validation row with step 2"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text, "%s%s", H, bad[i].rows);
        int rc = read_text(text, &d, &e);
        if (rc != bad[i].code || !strstr(e.msg, bad[i].where) || !strstr(e.msg, "t.csv"))
            fail_msg("case %zu: code %d (expected %d), message '%s' (expected '%s')", i, rc, bad[i].code, e.msg,
                     bad[i].where);
        assert_null(d.steps);
    }
    assert_int_equal(read_text("epoch,step,loss\n0,0,1\n", &d, &e), ERR_FORMAT);
    assert_non_null(strstr(e.msg, ":1: not a run log"));
    snprintf(text, sizeof text, "%s/missing.csv", tmp);
    e = (Err){0};
    assert_int_equal(run_log_read(text, &d, &e), ERR_IO);
    assert_non_null(strstr(e.msg, "missing.csv"));

    // a last line without its newline: left out when it does not parse, kept when it does
    snprintf(text, sizeof text, "%s0,0,1,0.1,0.1,\n0,1,2.5", H);
    assert_int_equal(read_text(text, &d, &e), 0);
    assert_int_equal(d.n_steps, 1);
    assert_int_equal(d.torn_last, 1);
    run_log_data_free(&d);
    snprintf(text, sizeof text, "%s0,0,1,0.1,0.1,\n0,1,2.5,0.1,0.1,", H);
    assert_int_equal(read_text(text, &d, &e), 0);
    assert_int_equal(d.n_steps, 2);
    assert_int_equal(d.torn_last, 0);
    assert_true(d.epochs[0].mean == 1.75);
    run_log_data_free(&d);
    // the older six-column log; "nan" in a sampled measure is "not measured"
    assert_int_equal(read_text(RUN_LOG_HEADER_V1 "\n0,0,1,0.1,0.1,\n0,1,,,1.0,0.5\n", &d, &e), 0);
    assert_true(d.n_steps == 1 && d.n_vals == 1 && d.vals[0].val_error == 0.5 && d.steps_per_epoch == 1);
    run_log_data_free(&d);
    snprintf(text, sizeof text, "%s0,0,1,0.1,0.1,\n0,1,,,1.0,0.5,0.1,2,nan\n", H);
    assert_int_equal(read_text(text, &d, &e), 0);
    assert_true(d.vals[0].sample_mse == 0.1 && isnan(d.vals[0].sample_real));
    run_log_data_free(&d);
}

/* ---- the pictures --------------------------------------------------------------------- */

typedef struct {
    int W, H;
    uint8_t *rgb;  // (H, W, 3)
} Picture;

// The PNG at path read back with the repository's reader (stb_image): fails the test unless
// it decodes.
static Picture picture_read(const char *path) {
    LoadedImage im;
    Err e = {0};
    if (image_read(path, 3, &im, &e)) fail_msg("%s", e.msg);
    Picture p = {im.W, im.H, malloc((size_t)im.W * im.H * 3)};
    size_t plane = (size_t)im.W * im.H;
    for (size_t i = 0; i < plane; i++)
        for (int c = 0; c < 3; c++) p.rgb[3 * i + c] = (uint8_t)lrintf(im.data[c * plane + i] * 255.0f);
    image_free(&im);
    return p;
}

// Pixels inside area (left, top, width, height) within COLOR_TOL of c; *other: those not white.
static int count_color(const Picture *p, const double *area, PlotColor c, int *other) {
    int n = 0, x0 = (int)area[0] + 2, y0 = (int)area[1] + 2, x1 = (int)(area[0] + area[2]) - 2,
        y1 = (int)(area[1] + area[3]) - 2;
    int want[3] = {(int)lrint(c.r * 255), (int)lrint(c.g * 255), (int)lrint(c.b * 255)};
    *other = 0;
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
            const uint8_t *px = p->rgb + 3 * ((size_t)y * p->W + x);
            int close = 1, white = 1;
            for (int k = 0; k < 3; k++) {
                close &= abs(px[k] - want[k]) <= COLOR_TOL;
                white &= px[k] == 255;
            }
            n += close;
            *other += !white;
        }
    return n;
}

static void test_curves_png(void **state) {
    RunLogData d;
    Err e = {0};
    assert_int_equal(run_log_read(LOG_PATH, &d, &e), 0);
    char path[512];
    snprintf(path, sizeof path, "%s/c.png", tmp);
    PlotCurvesOpts o = {.title = "test", .subtitle = "by hand", .best_epoch = 0, .best_note = "best_val"};
    PlotCurvesInfo info;
    int rc = plot_curves_png(&d, &o, path, &info, &e);
    if (rc) fail_msg("%s", e.msg);
    Picture p = picture_read(path);
    assert_int_equal(p.W, PLOT_CURVES_W);
    assert_int_equal(p.H, PLOT_CURVES_H);
    // three panels (the log has sampled measures), inside the picture, one under the other
    assert_int_equal(info.n_panels, 3);
    for (int k = 0; k < 3; k++) {
        assert_true(info.area[k][0] > 0 && info.area[k][0] + info.area[k][2] < p.W);
        assert_true(info.area[k][1] > 0 && info.area[k][1] + info.area[k][3] < p.H);
        if (k) assert_true(info.area[k][1] > info.area[k - 1][1] + info.area[k - 1][3]);
    }
    // the step losses run from 0.5 to 20: 1.6 decades, over PLOT_CURVES_LOG_DECADES
    assert_true(log10(20.0 / 0.5) > PLOT_CURVES_LOG_DECADES);
    assert_int_equal(info.ylog[0], 1);
    // each panel drew its curve in its colour (epoch means; val_error; val_sample_real)
    const PlotColor colors[3] = {PLOT_BLUE, PLOT_VERMILLION, PLOT_ORANGE};
    for (int k = 0; k < 3; k++) {
        int other, n = count_color(&p, info.area[k], colors[k], &other);
        print_message("  panel %d: %d pixels of its curve's colour, %d not white\n", k + 1, n, other);
        assert_true(n >= MIN_CURVE_PIXELS);
        assert_true(other > n);  // grid, reference lines, other series
    }
    // and the background outside the panels is white: pixel (5, H - 5)
    const uint8_t *corner = p.rgb + 3 * ((size_t)(p.H - 5) * p.W + 5);
    assert_true(corner[0] == 255 && corner[1] == 255 && corner[2] == 255);
    free(p.rgb);

    // without sampled measures: two panels; without validations: one
    for (int i = 0; i < d.n_vals; i++) d.vals[i].sample_mse = d.vals[i].sample_fd = d.vals[i].sample_real = NAN;
    assert_int_equal(plot_curves_png(&d, &o, path, &info, &e), 0);
    assert_int_equal(info.n_panels, 2);
    d.n_vals = 0;
    o.best_epoch = PLOT_CURVES_NO_BEST;
    assert_int_equal(plot_curves_png(&d, &o, path, &info, &e), 0);
    assert_int_equal(info.n_panels, 1);
    p = picture_read(path);
    int other, n = count_color(&p, info.area[0], PLOT_BLUE, &other);
    assert_true(n >= MIN_CURVE_PIXELS);
    free(p.rgb);
    // no step rows: nothing to plot
    d.n_steps = 0;
    assert_int_equal(plot_curves_png(&d, &o, path, &info, &e), ERR_VALUE);
    d.n_steps = 8;
    run_log_data_free(&d);
}

static void test_layers_png(void **state) {
    const char *names[] = {"time_embed.0", "input_blocks.1.0.in_layers.2", "input_blocks.1.0.emb_layers.1",
                           "input_blocks.4.1.transformer_blocks.0.attn1.to_q", "middle_block.0.out_layers.3",
                           "output_blocks.2.1.conv", "out.2"};
    const double v[] = {0.004, 0.12, 0.06, 0.08, 0.11, 0.1, 0.009};
    char path[512];
    snprintf(path, sizeof path, "%s/l.png", tmp);
    Err e = {0};
    int rc = plot_layers_png(names, v, 7, "layers", "relative error", path, &e);
    if (rc) fail_msg("%s", e.msg);
    Picture p = picture_read(path);
    assert_int_equal(p.W, PLOT_LAYERS_W);
    assert_int_equal(p.H, PLOT_LAYERS_H);
    // the attention bar (vermillion) and the ResBlock conv bars (blue) are drawn
    double all[4] = {0, 0, p.W, p.H};
    int other;
    assert_true(count_color(&p, all, PLOT_VERMILLION, &other) > 500);
    assert_true(count_color(&p, all, PLOT_BLUE, &other) > 1000);
    free(p.rgb);
    const double nan_only[1] = {NAN};
    assert_int_equal(plot_layers_png(names, nan_only, 1, NULL, NULL, path, &e), ERR_VALUE);
}

/* ---- effdm plot ----------------------------------------------------------------------- */

// A run directory: the hand-written log, a config naming the selection, a best.safetensors of
// epoch `best`.
static void make_run(const char *dir, int best) {
    assert_int_equal(mkdir(dir, 0755), 0);
    char p[512];
    char *log = test_slurp(LOG_PATH);
    assert_non_null(log);
    snprintf(p, sizeof p, "%s/log.csv", dir);
    write_file(p, log);
    free(log);
    snprintf(p, sizeof p, "%s/config.yaml", dir);
    write_file(p, "quant: {weight_bits: 4, act_bits: 4}\ntrain: {select_epoch: best_val}\n");
    StWriter w = {0};
    Err e = {0};
    int64_t epoch = best, one = 1;
    snprintf(p, sizeof p, "%s/best.safetensors", dir);
    assert_int_equal(st_writer_add(&w, "best.epoch", DT_I64, 1, &one, &epoch, &e), 0);
    assert_int_equal(st_writer_meta(&w, "effdm.kind", "best-state", &e), 0);
    assert_int_equal(st_write(&w, p, &e), 0);
    st_writer_free(&w);
}

static void test_cli(void **state) {
    char dir[512], args[2048], p[600];
    snprintf(dir, sizeof dir, "%s/run", tmp);
    make_run(dir, 1);
    snprintf(args, sizeof args, "plot '%s'", dir);
    assert_int_equal(run(args), 0);
    snprintf(p, sizeof p, "%s/stdout.txt", tmp);
    char *out = test_slurp(p);
    assert_non_null(out);
    // best.epoch 1 is the second epoch: the validation after it
    if (!strstr(out, "8 steps, 3 epochs, 3 validations, selected epoch 2 marked")) fail_msg("stdout: %s", out);
    free(out);
    snprintf(p, sizeof p, "%s/curves.png", dir);
    Picture pic = picture_read(p);
    assert_true(pic.W == PLOT_CURVES_W && pic.H == PLOT_CURVES_H);
    free(pic.rgb);
    // --out elsewhere
    snprintf(args, sizeof args, "plot '%s' --out '%s/other.png'", dir, tmp);
    assert_int_equal(run(args), 0);
    snprintf(p, sizeof p, "%s/other.png", tmp);
    assert_int_equal(access(p, F_OK), 0);

    // a missing log.csv
    snprintf(args, sizeof args, "plot '%s/nowhere'", tmp);
    assert_int_equal(run(args), 2);
    assert_one_line_naming("nowhere/log.csv", NULL);
    // a malformed row (line 5: a loss that is not a number): nothing written
    char bad[512];
    snprintf(bad, sizeof bad, "%s/badrun", tmp);
    make_run(bad, 0);
    snprintf(p, sizeof p, "%s/log.csv", bad);
    char *log = test_slurp(p);
    char *row = strstr(log, "0,2,3,");
    assert_non_null(row);
    row[4] = 'x';  // "0,2,x,0.0008,..."
    write_file(p, log);
    free(log);
    snprintf(args, sizeof args, "plot '%s'", bad);
    assert_int_equal(run(args), 2);
    assert_one_line_naming("badrun/log.csv:5:", "loss");
    snprintf(p, sizeof p, "%s/curves.png", bad);
    assert_int_equal(access(p, F_OK), -1);
    // an --out that cannot be written: the message names it, no temporary file is left
    snprintf(args, sizeof args, "plot '%s' --out '%s/no/such/dir/x.png'", dir, tmp);
    assert_int_equal(run(args), 2);
    assert_one_line_naming("no/such/dir/x.png", NULL);
    // a broken best.safetensors is named too
    snprintf(p, sizeof p, "%s/best.safetensors", dir);
    write_file(p, "not a safetensors file");
    snprintf(args, sizeof args, "plot '%s' --out '%s/x.png'", dir, tmp);
    assert_int_equal(run(args), 2);
    assert_one_line_naming("best.safetensors", NULL);
    // usage
    assert_int_equal(run("plot"), 2);
    assert_int_equal(run("plot --help"), 0);
    assert_int_equal(run("--help"), 0);
    snprintf(p, sizeof p, "%s/stdout.txt", tmp);
    out = test_slurp(p);
    assert_non_null(strstr(out, "  plot "));
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_by_hand), cmocka_unit_test(test_read_errors), cmocka_unit_test(test_curves_png),
        cmocka_unit_test(test_layers_png),   cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
