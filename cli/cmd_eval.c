/* cmd_eval.c: effdm eval: FID, sFID, IS, precision/recall and class accuracy of samples. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/commands.h"
#include "eval/eval.h"
#include "io/fileio.h"

static const char *const usage[] = {
    "usage: effdm eval --samples DIR --ref ref.safetensors [options]",
    "",
    "Measures the images under DIR (as 'effdm sample' writes them: DIR/<class>/<NNNNN>.png",
    "or DIR/<NNNNN>.png; grid.png is skipped) against reference statistics from",
    "'effdm stats': FID, sFID (Inception only), Inception Score (10 splits), precision and",
    "recall (k = 3), class accuracy (judge, when the samples sit in class folders).",
    "Definitions: docs/EVALUATION.md.",
    "",
    "  --samples DIR     the sample folder (or an idx image file)",
    "  --ref FILE        statistics written by effdm stats",
    "  --features NAME   judge or inception; default: the network the statistics were made with",
    "  --weights FILE    network weights; judge default: " FEATNET_DEFAULT_JUDGE,
    "  --json FILE       also write the results as JSON",
    "  --max N           use the first N samples only (default: all)",
    "  --batch N         images per forward pass (default 256 judge, 8 inception)",
    "  --threads N       threads (default: $EFFDM_THREADS, else all cores)",
    "",
    "Example (the shipped teacher's samples against the Fashion-MNIST test set):",
    "  effdm eval --samples samples/ --ref models/zoo/fmnist-ldm/fmnist_test_judge.safetensors",
    "",
    "Exit status: 0, 2 for bad input (arguments, files), 1 for other failures.",
    NULL,
};

static void on_progress(void *user, size_t done, size_t total) {
    Progress *p = user;
    p->total = total > 0 ? (long)total : 1;
    progress_update(p, (long)done, NULL);
}

static int write_json(const char *path, const EvalResult *r, Err *e) {
    char *s = eval_result_json(r);
    if (!s) return err_set(e, ERR_NOMEM, "%s: out of memory formatting the results", path);
    AtomicFile f;
    int rc = atomic_open(&f, path, e);
    if (!rc) {
        atomic_write(&f, s, strlen(s));
        atomic_write(&f, "\n", 1);
        rc = atomic_commit(&f, e);
    }
    free(s);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    const char *samples = NULL, *ref = NULL, *features = NULL, *weights = NULL, *json = NULL;
    int max = 0, batch = 0, threads = 0, help = 0;
    CliOpt opts[] = {
        {"--samples", OPT_STR, &samples}, {"--ref", OPT_STR, &ref},   {"--features", OPT_STR, &features},
        {"--weights", OPT_STR, &weights}, {"--json", OPT_STR, &json}, {"--max", OPT_INT, &max},
        {"--batch", OPT_INT, &batch},     {"--threads", OPT_INT, &threads},
    };
    Err e = {0};
    if (cli_parse(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0, &help, &e))
        return cli_fail("eval", &e);
    if (help) {
        for (int i = 0; usage[i]; i++) puts(usage[i]);
        return 0;
    }
    EvalOpts o = eval_default_opts();
    if (!samples) err_set(&e, ERR_ARG, "--samples is required (see effdm eval --help)");
    else if (!ref) err_set(&e, ERR_ARG, "--ref is required (see effdm eval --help)");
    else if (max < 0) err_set(&e, ERR_ARG, "--max: expected >= 0, found %d", max);
    else if (batch < 0) err_set(&e, ERR_ARG, "--batch: expected >= 1, found %d", batch);
    if (!e.code && features) {
        FeatKind k;
        if (!featnet_kind_parse(features, &k, &e)) o.features = (int)k;
    }
    if (e.code || cli_threads(threads, &e)) return cli_fail("eval", &e);
    o.weights = weights;
    o.batch = batch;
    o.max_images = (size_t)max;
    Progress p;
    progress_start(&p, "eval", 1);
    o.progress = on_progress;
    o.progress_user = &p;
    EvalResult r;
    if (eval_run(samples, ref, &o, &r, &e)) return cli_fail("eval", &e);
    progress_finish(&p, NULL);
    printf("samples %s (%zu images) vs %s (%zu images), features: %s\n", samples, r.n_samples, ref, r.n_ref,
           featnet_kind_name(r.kind));
    printf("  %-16s %s\n", "metric", "value");
    printf("  %-16s %.4f%s\n", "FID", r.fid, r.fid_offset > 0 ? "  (1e-6 added to the covariance diagonals)" : "");
    if (r.has_sfid) printf("  %-16s %.4f\n", "sFID", r.sfid);
    else printf("  %-16s %s\n", "sFID", "n/a (Inception only)");
    printf("  %-16s %.4f +- %.4f\n", "IS", r.is_mean, r.is_std);
    printf("  %-16s %.4f\n", "precision", r.precision);
    printf("  %-16s %.4f\n", "recall", r.recall);
    if (r.has_accuracy) printf("  %-16s %.4f\n", "class accuracy", r.accuracy);
    else printf("  %-16s %s\n", "class accuracy", "n/a (judge + class folders only)");
    printf("  %-16s %zu\n", "samples", r.n_samples);
    if (json && write_json(json, &r, &e)) return cli_fail("eval", &e);
    return 0;
}
