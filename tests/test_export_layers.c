/* test_export_layers.c: effdm info EXPORT --layers (qalora/export.h export_layer_rows) on a
   small W4A4 export of a calibrated, perturbed student of the shipped teacher: the relative
   error of every layer's deployed weight against the teacher's equals one computed here from
   the file alone - levels unpacked by pack.h's documented nibble order, (q - z_w) Δ_w in
   double, the teacher's weight read from model.ckpt - as do the bits, shapes and activation
   step ranges; the CLI prints the same numbers, draws the bar chart, and refuses bad options. */
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io/image_read.h"
#include "models/ldm.h"
#include "plot/plot.h"
#include "plot/plot_layers.h"
#include "qalora/export.h"
#include "test_export_fixture.h"

// float32 dequantization (the library) against double (here): relative, on errors of ~0.1
static const double TOL_REL_ERR = 1e-5;
// the CLI prints rel.err with 6 significant digits
static const double TOL_PRINTED = 1e-5;

// ||W_q - W_fp|| / ||W_fp|| of layer `name` from the files alone (uniform weights, 4 or 8 bits).
static double reference_rel_err(WeightFile *ex, WeightFile *teacher, const char *name, int bits, double *amin,
                                double *amax, int entries) {
    Err e = {0};
    char key[400];
    snprintf(key, sizeof key, "model.diffusion_model.%s.weight", name);
    const WeightInfo *tw = weights_find(teacher, key);
    assert_non_null(tw);
    int shape[4], nd = tw->ndim;
    size_t n = tw->numel;
    for (int d = 0; d < nd; d++) shape[d] = (int)tw->shape[d];
    float *wfp = malloc(n * sizeof(float));
    assert_int_equal(weights_read_f32(teacher, key, wfp, nd, shape, &e), 0);
    int cout = shape[0];
    size_t K = n / (size_t)cout;
    float *delta = malloc((size_t)cout * sizeof(float)), *zero = malloc((size_t)cout * sizeof(float));
    snprintf(key, sizeof key, "model.diffusion_model.%s.w_delta", name);
    assert_int_equal(weights_read_f32(ex, key, delta, 1, &cout, &e), 0);
    snprintf(key, sizeof key, "model.diffusion_model.%s.w_zero", name);
    assert_int_equal(weights_read_f32(ex, key, zero, 1, &cout, &e), 0);
    snprintf(key, sizeof key, "model.diffusion_model.%s.qweight", name);
    const WeightInfo *qi = weights_find(ex, key);
    assert_non_null(qi);
    uint8_t *packed = malloc(qi->numel);
    assert_int_equal(weights_read_raw(ex, key, packed, qi->numel, &e), 0);
    // pack.h: 4 bits: byte k = element 2k (low nibble) | element 2k+1 << 4; 8 bits: one per byte
    assert_true(bits == 4 || bits == 8);
    assert_int_equal(qi->numel, bits == 4 ? (n + 1) / 2 : n);
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        int q = bits == 8 ? packed[i] : (packed[i / 2] >> (4 * (i % 2))) & 15;
        size_t o = i / K;
        double wq = ((double)q - (double)zero[o]) * (double)delta[o];
        num += (wq - wfp[i]) * (wq - wfp[i]);
        den += (double)wfp[i] * wfp[i];
    }
    float a[64];
    assert_true(entries <= 64);
    snprintf(key, sizeof key, "model.diffusion_model.%s.a_delta", name);
    assert_int_equal(weights_read_f32(ex, key, a, 1, &entries, &e), 0);
    *amin = INFINITY;
    *amax = -INFINITY;
    for (int i = 0; i < entries; i++) *amin = fmin(*amin, a[i]), *amax = fmax(*amax, a[i]);
    free(wfp);
    free(delta);
    free(zero);
    free(packed);
    return sqrt(num / den);
}

static int run(const char *args, const char *out) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' %s >'%s' 2>'%s.err'", EFFDM_BIN, args, out, out);
    return test_shell_status(cmd);
}

static void test_layers(void **state) {
    (void)forward;  // test_export_fixture.h's, not needed here
    Teacher T = teacher_open();
    Ctx *c = test_ctx_new((size_t)1 << 30);
    RunConfig rc = student_config(4, 4, 10);
    QModel q;
    student_make(&q, c, &T, &rc, 1);  // LoRA B != 0: the export's weights moved off the rounding grid
    ExportSummary s;
    char *path = student_export(&q, &T, &s);
    qmodel_free(&q);
    test_ctx_delete(c);
    teacher_close(&T);

    Err e = {0};
    ExportModel *em = NULL;
    Ldm *t = NULL;
    assert_int_equal(export_load(&em, path, &e), 0);
    assert_int_equal(em->ema, 0);  // the shipped teacher has no EMA weights
    LdmLoadOpts lo = {LDM_EMA_OFF, LDM_PART_UNET, NULL};
    if (ldm_load(&t, TEACHER_DIR "/config.yaml", TEACHER_DIR "/model.ckpt", &lo, &e)) fail_msg("%s", e.msg);
    ExportLayerRow *rows = malloc((size_t)em->n_layers * sizeof *rows);
    assert_int_equal(export_layer_rows(em, t->unet, rows, &e), 0);
    // without the teacher: no errors, the rest the same
    ExportLayerRow *bare = malloc((size_t)em->n_layers * sizeof *bare);
    assert_int_equal(export_layer_rows(em, NULL, bare, &e), 0);

    WeightFile *ex, *tf;
    assert_int_equal(weights_open(&ex, path, &e), 0);
    assert_int_equal(weights_open(&tf, TEACHER_DIR "/model.ckpt", &e), 0);
    double *ref = malloc((size_t)em->n_layers * sizeof *ref);
    int n_special = 0;
    for (int k = 0; k < em->n_layers; k++) {
        const ExportLayerRow *r = &rows[k];
        assert_int_equal(r->w_bits, r->special ? 8 : 4);
        assert_int_equal(r->a_bits, r->special ? 8 : 4);
        assert_string_equal(r->w_kind, "uniform");
        assert_int_equal(r->entries, r->special ? 1 : 10);
        n_special += r->special;
        double amin, amax;
        ref[k] = reference_rel_err(ex, tf, r->name, r->w_bits, &amin, &amax, r->entries);
        char key[400];
        snprintf(key, sizeof key, "model.diffusion_model.%s.weight", r->name);
        const WeightInfo *tw = weights_find(tf, key);
        assert_int_equal(r->ndim, tw->ndim);
        for (int d = 0; d < r->ndim; d++) assert_int_equal(r->shape[d], (int)tw->shape[d]);
        assert_true(r->a_delta_min == amin && r->a_delta_max == amax);
        if (fabs(r->rel_err - ref[k]) > TOL_REL_ERR * ref[k])
            fail_msg("%s: rel.err %.9g, from the file %.9g", r->name, r->rel_err, ref[k]);
        // 4-bit rounding alone moves a weight by a few percent; 8-bit far less
        assert_true(ref[k] > (r->special ? 1e-4 : 1e-2) && ref[k] < 0.5);
        assert_true(isnan(bare[k].rel_err));
        assert_string_equal(bare[k].name, r->name);
    }
    assert_true(n_special >= 2);
    print_message("  %d layers; %s rel.err %.6g (from the file %.6g), %s %.6g\n", em->n_layers, rows[0].name,
                  rows[0].rel_err, ref[0], rows[3].name, rows[3].rel_err);
    weights_close(ex);
    weights_close(tf);

    // the CLI prints the same table
    char out[300], args[2000], png[300];
    snprintf(out, sizeof out, "%s.txt", path);
    snprintf(png, sizeof png, "%s.png", path);
    snprintf(args, sizeof args, "info '%s' --layers --ckpt '%s/model.ckpt' --ldm-config '%s/config.yaml' --plot '%s'",
             path, TEACHER_DIR, TEACHER_DIR, png);
    assert_int_equal(run(args, out), 0);
    FILE *fp = fopen(out, "r");
    assert_non_null(fp);
    char line[1024];
    int seen = 0;
    while (fgets(line, sizeof line, fp)) {
        char name[200], role[32], kind[32], shape[64];
        int wb, ab;
        double err;
        if (sscanf(line, "%199s %31s %31s %d %d %63s %lf", name, role, kind, &wb, &ab, shape, &err) != 7) continue;
        for (int k = 0; k < em->n_layers; k++) {
            if (strcmp(rows[k].name, name) != 0) continue;
            assert_int_equal(wb, rows[k].w_bits);
            assert_string_equal(role, rows[k].special ? "special" : "trainable");
            if (fabs(err - ref[k]) > TOL_PRINTED * ref[k])
                fail_msg("%s: printed %.9g, from the file %.9g", name, err, ref[k]);
            seen++;
        }
    }
    fclose(fp);
    assert_int_equal(seen, em->n_layers);
    LoadedImage im;
    assert_int_equal(image_read(png, 3, &im, &e), 0);
    assert_true(im.W == PLOT_LAYERS_W && im.H == PLOT_LAYERS_H);
    image_free(&im);

    // bad options: exit 2, nothing drawn
    unlink(png);
    snprintf(args, sizeof args, "info '%s' --layers --plot '%s'", path, png);
    assert_int_equal(run(args, out), 2);
    snprintf(args, sizeof args, "info '%s' --layers --ckpt '%s/model.ckpt'", path, TEACHER_DIR);
    assert_int_equal(run(args, out), 2);
    snprintf(args, sizeof args, "info '%s' --plot '%s'", path, png);
    assert_int_equal(run(args, out), 2);
    snprintf(args, sizeof args, "info '%s/model.ckpt' --layers", TEACHER_DIR);  // not an export
    assert_int_equal(run(args, out), 2);
    assert_int_equal(access(png, F_OK), -1);
    // without the teacher: the table, rel.err "-"
    snprintf(args, sizeof args, "info '%s' --layers | grep -Eq '^out\\.2 +special +uniform +8 +8 +4x32x3x3 +- '", path);
    assert_int_equal(run(args, out), 0);

    unlink(out);
    snprintf(line, sizeof line, "%s.err", out);
    unlink(line);
    unlink(path);
    free(path);
    free(ref);
    free(rows);
    free(bare);
    ldm_free(t);
    export_free(em);
    plot_release();
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_layers)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
