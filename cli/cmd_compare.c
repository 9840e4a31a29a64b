/* cmd_compare.c: effdm compare: two sample folders made from the same seeds, image by image. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/commands.h"
#include "eval/compare.h"
#include "util/clock.h"
#include "util/zoo.h"

#define COMPARE_QUIET_S 2.0  // a comparison done sooner shows no progress bar

static const char *const usage[] = {
    "usage: effdm compare A_DIR B_DIR [options]",
    "",
    "Compares two sample folders made from the same seeds (the same noise for image i), e.g. a",
    "4-bit model's samples (A) with the FP teacher's (B), as 'effdm sample' writes them",
    "(DIR/<class>/<NNNNN>.png or DIR/<NNNNN>.png; grid.png is skipped). Both folders must hold",
    "the same file names with the same image sizes (exit 2 naming the first difference).",
    "Measures, with the Fashion-MNIST judge (definitions: docs/EVALUATION.md):",
    "  pixel RMSE A vs B        over every pixel of every image, gray pixels in [0, 1]",
    "  judge agreement          fraction of images whose judge class is the same in A and B",
    "  class accuracy of A, B   overall and per class, against the class folders",
    "                           (n/a for unconditional samples: no class folders)",
    "  FID of A, B vs --ref     the reference statistics",
    "  FID of A vs B            B's features as the reference",
    "  precision / recall       A against B (B the real set, k = 3)",
    "",
    "  --ref FILE        judge statistics written by effdm stats; fmnist (default) = the shipped",
    "                    Fashion-MNIST test-set statistics; none = no FID against a reference",
    "  --weights FILE    judge weights (default: the shipped models/zoo/fmnist-ldm/judge.ckpt)",
    "  --json FILE       also write the results as JSON (written whole or not at all)",
    "  --batch N         images per forward pass (default 256)",
    "  --threads N       threads (default: $EFFDM_THREADS, else all cores)",
    "",
    "Example (a quantized model's samples against the FP teacher's, same seed):",
    "  effdm compare samples/w4a4/s0 samples/fp/s0 --json cmp.json",
    "",
    "Exit status: 0, 2 for bad input (arguments, files, folders that differ), 1 for other failures.",
    NULL,
};

static void on_progress(void *user, size_t done, size_t total) {
    Progress *p = user;
    if (clock_seconds() - p->start < COMPARE_QUIET_S) return;
    progress_items(p, done, total);
}

static void print_num(const char *name, int has, double v, const char *na) {
    if (has && isfinite(v)) printf("  %-24s %.4f\n", name, v);
    else printf("  %-24s %s\n", name, na);
}

static void print_result(const CompareResult *r) {
    printf("A %s vs B %s: %zu image pairs, features: judge\n", r->a, r->b, r->n);
    printf("  %-24s %s\n", "measure", "value");
    printf("  %-24s %.6f\n", "pixel RMSE A vs B", r->rmse);
    printf("  %-24s %.6f\n", "  mean per-image RMSE", r->rmse_img_mean);
    printf("  %-24s %.4f\n", "judge agreement", r->agreement);
    print_num("class accuracy A", r->has_accuracy, r->accuracy_a, "n/a (no class folders)");
    print_num("class accuracy B", r->has_accuracy, r->accuracy_b, "n/a (no class folders)");
    print_num("FID A vs ref", r->has_ref, r->fid_a_ref, "n/a (--ref none)");
    print_num("FID B vs ref", r->has_ref, r->fid_b_ref, "n/a (--ref none)");
    printf("  %-24s %.4f%s\n", "FID A vs B", r->fid_a_b,
           r->fid_offset > 0 ? "  (1e-6 added to the covariance diagonals)" : "");
    printf("  %-24s %.4f\n", "precision A vs B", r->precision);
    printf("  %-24s %.4f\n", "recall A vs B", r->recall);
    if (r->has_accuracy) {
        printf("  per class: %-5s %8s %8s %6s\n", "class", "acc A", "acc B", "images");
        for (int c = 0; c < JUDGE_CLASSES; c++)
            if (r->class_count[c])
                printf("             %-5d %8.4f %8.4f %6zu\n", c, r->class_accuracy_a[c], r->class_accuracy_b[c],
                       r->class_count[c]);
    }
    if (r->has_ref) printf("reference: %s\n", r->ref);
}

int cmd_compare(int argc, char **argv) {
    const char *ref = "fmnist", *weights = NULL, *json = NULL, *dirs[2];
    int n_dirs = 0, batch = 0, threads = -1, help = 0;
    CliOpt opts[] = {
        {"--ref", OPT_STR, &ref},     {"--weights", OPT_STR, &weights}, {"--json", OPT_STR, &json},
        {"--batch", OPT_INT, &batch}, {"--threads", OPT_INT, &threads},
    };
    Err e = {0};
    if (cli_parse(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), dirs, &n_dirs, 2, &help, &e))
        return cli_fail("compare", &e);
    if (help) return cli_help(usage);
    if (n_dirs != 2)
        err_set(&e, ERR_ARG, "expected two sample folders A_DIR B_DIR, found %d (see effdm compare --help)", n_dirs);
    else if (batch < 0) err_set(&e, ERR_ARG, "--batch: expected >= 1, found %d", batch);
    if (e.code || cli_threads(threads, &e)) return cli_fail("compare", &e);
    char ref_buf[4096], judge[4096];
    if (!strcmp(ref, "none")) {
        ref = NULL;
    } else if (!strcmp(ref, "fmnist")) {
        if (zoo_path("fmnist_test_judge.safetensors", ref_buf, sizeof ref_buf, &e)) return cli_fail("compare", &e);
        ref = ref_buf;
    }
    if (!weights) {
        if (zoo_path("judge.ckpt", judge, sizeof judge, &e)) return cli_fail("compare", &e);
        weights = judge;
    }
    CompareOpts o = compare_default_opts();
    o.judge_weights = weights;
    o.batch = batch;
    Progress p;
    progress_start(&p, "compare", 1);
    o.progress = on_progress;
    o.progress_user = &p;
    CompareResult r;
    int rc = compare_run(dirs[0], dirs[1], ref, &o, &r, &e);
    if (p.last_print > 0) {  // the bar was shown
        if (!rc) progress_finish(&p, NULL);
        else if (p.is_tty) fputc('\n', stderr);  // the error on a line of its own
    }
    if (rc) return cli_fail("compare", &e);
    print_result(&r);
    if (json) {
        char *s = compare_result_json(&r);
        if (!s) err_set(&e, ERR_NOMEM, "%s: out of memory formatting the results", json);
        else cli_write_text(json, s, &e);
        free(s);
        if (e.code) return cli_fail("compare", &e);
    }
    return 0;
}
