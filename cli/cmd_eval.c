/* cmd_eval.c: effdm eval: FID, sFID, IS, precision/recall and class accuracy of samples. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "util/zoo.h"
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
    "  --ref FILE        statistics written by effdm stats; fmnist = the shipped Fashion-MNIST\n                    test-set judge statistics",
    "  --features NAME   judge or inception; default: the network the statistics were made with",
    "  --weights FILE    network weights; judge default: the shipped models/zoo/fmnist-ldm/judge.ckpt",
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

int cmd_eval(int argc, char **argv) {
    const char *samples = NULL, *ref = NULL, *features = NULL, *weights = NULL, *json = NULL;
    int max = 0, batch = 0, threads = -1, help = 0;
    CliOpt opts[] = {
        {"--samples", OPT_STR, &samples}, {"--ref", OPT_STR, &ref},   {"--features", OPT_STR, &features},
        {"--weights", OPT_STR, &weights}, {"--json", OPT_STR, &json}, {"--max", OPT_INT, &max},
        {"--batch", OPT_INT, &batch},     {"--threads", OPT_INT, &threads},
    };
    Err e = {0};
    if (cli_parse(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0, &help, &e))
        return cli_fail("eval", &e);
    if (help) return cli_help(usage);
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
    char ref_buf[4096];
    if (!strcmp(ref, "fmnist")) {  // the shipped Fashion-MNIST test-set statistics
        if (zoo_path("fmnist_test_judge.safetensors", ref_buf, sizeof ref_buf, &e)) return cli_fail("eval", &e);
        ref = ref_buf;
    }
    if (cli_eval_report(samples, ref, &o, json, &e)) return cli_fail("eval", &e);
    return 0;
}
