/* cmd_stats.c: effdm stats: reference feature statistics of an image set (for FID). */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "util/zoo.h"
#include "cli/commands.h"
#include "eval/eval.h"
#include "eval/featnet.h"
#include "eval/stats_file.h"
#include "util/clock.h"

static const char *const usage[] = {
    "usage: effdm stats --images DIR|IDX_FILE --out ref.safetensors [options]",
    "",
    "Runs every image through a feature network and writes the reference statistics that",
    "'effdm eval --ref' compares samples with: mean and covariance of the features (float64),",
    "feature rows for precision/recall, and for Inception the sFID statistics.",
    "",
    "  --images PATH     a folder of .png/.jpg images (searched recursively, grid.png skipped)",
    "                    or an idx image file such as t10k-images-idx3-ubyte[.gz]",
    "  --features NAME   judge (default: the Fashion-MNIST judge shipped with the teacher)",
    "                    or inception (pytorch-fid's FID Inception; needs --weights)",
    "  --weights FILE    network weights (.ckpt/.pth/.safetensors); judge default:",
    "                    the shipped models/zoo/fmnist-ldm/judge.ckpt",
    "  --max N           use the first N images only (default: all)",
    "  --rows N          feature rows kept for precision/recall (default 10000; evenly",
    "                    strided when there are more images)",
    "  --batch N         images per forward pass (default 256 judge, 8 inception)",
    "  --out FILE        the statistics file to write (.safetensors)",
    "  --threads N       threads (default: $EFFDM_THREADS, else all cores)",
    "",
    "Example (the statistics shipped in models/zoo/fmnist-ldm/):",
    "  effdm stats --images /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz \\",
    "              --features judge --out models/zoo/fmnist-ldm/fmnist_test_judge.safetensors",
    "",
    "Exit status: 0, 2 for bad input (arguments, files), 1 for other failures.",
    NULL,
};

int cmd_stats(int argc, char **argv) {
    const char *images = NULL, *features = "judge", *weights = NULL, *out = NULL;
    int max = 0, rows = 10000, batch = 0, threads = -1, help = 0;
    CliOpt opts[] = {
        {"--images", OPT_STR, &images},   {"--features", OPT_STR, &features}, {"--weights", OPT_STR, &weights},
        {"--max", OPT_INT, &max},         {"--rows", OPT_INT, &rows},         {"--batch", OPT_INT, &batch},
        {"--out", OPT_STR, &out},         {"--threads", OPT_INT, &threads},
    };
    Err e = {0};
    if (cli_parse(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0, &help, &e))
        return cli_fail("stats", &e);
    if (help) return cli_help(usage);
    FeatKind kind;
    if (!images) err_set(&e, ERR_ARG, "--images is required (see effdm stats --help)");
    else if (!out) err_set(&e, ERR_ARG, "--out is required (see effdm stats --help)");
    else if (max < 0 || max == 1) err_set(&e, ERR_ARG, "--max: expected 0 (all) or at least 2, found %d", max);
    else if (rows < EVAL_PR_K + 1)
        err_set(&e, ERR_ARG, "--rows: expected at least %d (precision/recall with k = %d), found %d", EVAL_PR_K + 1,
                EVAL_PR_K, rows);
    else if (batch < 0) err_set(&e, ERR_ARG, "--batch: expected >= 1, found %d", batch);
    if (e.code || featnet_kind_parse(features, &kind, &e) || cli_threads(threads, &e)) return cli_fail("stats", &e);

    char judge[4096];
    if (!weights && kind == FEAT_JUDGE) {
        if (zoo_path("judge.ckpt", judge, sizeof judge, &e)) return cli_fail("stats", &e);
        weights = judge;
    }
    FeatNet net;
    if (featnet_open(&net, kind, weights, &e)) return cli_fail("stats", &e);
    FeatOpts o = featnet_default_opts(&net);
    if (batch) o.batch = batch;
    o.max_images = (size_t)max;
    o.max_rows = (size_t)rows;
    Progress p;
    progress_start(&p, "stats", 1);
    o.progress = progress_items;
    o.progress_user = &p;
    FeatSet s;
    double t0 = clock_seconds();
    int rc = featnet_extract(&net, images, &o, &s, &e);
    if (!rc) {
        p.total = (long)s.n;
        progress_finish(&p, NULL);
        rc = stats_write(out, &s, images, weights, &e);
    }
    double sec = clock_seconds() - t0;
    if (!rc) {
        printf("images      %zu  (%s)\n", s.n, images);
        printf("features    %s, %d-d%s\n", featnet_kind_name(kind), s.dim, s.spatial_dim ? " + sFID 7x17x17" : "");
        printf("rows kept   %zu (precision/recall)\n", s.n_rows);
        printf("labels      %s\n", s.labels ? "yes" : "no");
        printf("wrote       %s  (%.1f s)\n", out, sec);
        featset_free(&s);
    }
    featnet_close(&net);
    return rc ? cli_fail("stats", &e) : 0;
}
