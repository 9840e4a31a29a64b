/* cli_eval.c: the evaluation report shared by `effdm eval` and `effdm sample --eval`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "util/zoo.h"
#include "eval/eval.h"

static int write_json(const char *path, const EvalResult *r, Err *e) {
    char *s = eval_result_json(r);
    if (!s) return err_set(e, ERR_NOMEM, "%s: out of memory formatting the results", path);
    int rc = cli_write_text(path, s, e);
    free(s);
    return rc;
}

int cli_eval_report(const char *samples, const char *ref, EvalOpts *o, const char *json, Err *e) {
    char judge[4096];
    if (!o->weights && !o->judge_weights) {
        // the shipped judge, wherever effdm runs from; a missing one is reported only if needed
        Err ignore = {0};
        if (zoo_path("judge.ckpt", judge, sizeof judge, &ignore) == 0) o->judge_weights = judge;
    }
    Progress p;
    progress_start(&p, "eval", 1);
    o->progress = progress_items;
    o->progress_user = &p;
    EvalResult r;
    if (eval_run(samples, ref, o, &r, e)) return e->code;
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
    if (json && write_json(json, &r, e)) return e->code;
    return 0;
}
