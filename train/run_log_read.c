/* run_log_read.c: a run directory's log.csv read back into rows (format in run_log.h). */
#include "train/run_log.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/fileio.h"
#include "util/grow.h"

#define LINE_MAX_BYTES 512  // a row of the writer is under 200 bytes
#define MAX_FIELDS 9

static const char *const FIELD_NAMES[MAX_FIELDS] = {"epoch",      "step",           "loss",
                                                    "lr",         "seconds",        "val_error",
                                                    "val_sample_mse", "val_sample_fd", "val_sample_real"};

typedef struct {
    const char *path;
    int line;
    char *f[MAX_FIELDS + 1];
    int n;
    Err *e;
} Row;

static int row_err(const Row *r, int code, const char *what, const char *found) {
    return err_set(r->e, code, "%s:%d: %s%s%s%s", r->path, r->line, what, found ? ", found '" : "", found ? found : "",
                   found ? "'" : "");
}

static int get_int(const Row *r, int i, int lo, int *out) {
    char *end;
    errno = 0;
    long v = strtol(r->f[i], &end, 10);
    if (!*r->f[i] || *end || errno || v < lo || v > 1000000000L) {
        char what[96];
        snprintf(what, sizeof what, "field '%s': expected an integer >= %d", FIELD_NAMES[i], lo);
        return row_err(r, ERR_FORMAT, what, r->f[i]);
    }
    *out = (int)v;
    return 0;
}

// A required finite number; optional (sampled measures): also "" and "nan" (-> NaN).
static int get_num(const Row *r, int i, int optional, double *out) {
    const char *s = i < r->n ? r->f[i] : "";
    if (optional && (!*s || !strcmp(s, "nan") || !strcmp(s, "-nan"))) {
        *out = NAN;
        return 0;
    }
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    char what[96];
    snprintf(what, sizeof what, "field '%s': expected a%s number", FIELD_NAMES[i], optional ? "" : " finite");
    if (!*s || *end || errno == ERANGE) return row_err(r, ERR_FORMAT, what, s);
    if (!isfinite(v)) return row_err(r, ERR_VALUE, what, s);
    *out = v;
    return 0;
}

static int is_empty(const Row *r, int i) { return i >= r->n || !*r->f[i]; }

// One row (fields split) into d. 0 or an ERR_ code naming the line.
static int parse_row(Row *r, int n_cols, RunLogData *d, int *cap_s, int *cap_v) {
    int rc;
    if (r->n != 6 && r->n != n_cols) {
        char what[96];
        snprintf(what, sizeof what, "expected 6 or %d comma-separated fields, found %d", n_cols, r->n);
        return row_err(r, ERR_FORMAT, what, NULL);
    }
    int epoch = 0, step = 0;
    if ((rc = get_int(r, 0, -1, &epoch)) || (rc = get_int(r, 1, 0, &step))) return rc;
    if (!is_empty(r, 2)) {  // a step row: loss, lr, seconds, nothing after
        RunLogStep s = {epoch, step, 0, 0, 0};
        if (epoch < 0)
            return row_err(r, ERR_FORMAT, "a step row of epoch -1 (only validations come before epoch 0)", NULL);
        if ((rc = get_num(r, 2, 0, &s.loss)) || (rc = get_num(r, 3, 0, &s.lr)) || (rc = get_num(r, 4, 0, &s.seconds)))
            return rc;
        for (int i = 5; i < r->n; i++)
            if (!is_empty(r, i))
                return row_err(r, ERR_FORMAT, "a step row (it has a loss) with validation fields", NULL);
        if (d->n_steps) {
            const RunLogStep *p = &d->steps[d->n_steps - 1];
            if (epoch < p->epoch || (epoch == p->epoch && step <= p->step)) {
                char what[128];
                snprintf(what, sizeof what, "step row (epoch %d, step %d) does not follow (epoch %d, step %d)", epoch,
                         step, p->epoch, p->step);
                return row_err(r, ERR_VALUE, what, NULL);
            }
        }
        if (grow_array((void **)&d->steps, cap_s, d->n_steps + 1, 1024, sizeof *d->steps))
            return err_set(r->e, ERR_NOMEM, "out of memory reading %s", r->path);
        d->steps[d->n_steps++] = s;
        return 0;
    }
    // a validation row: no lr, seconds and val_error, the sampled measures optional
    RunLogVal v = {epoch, step, 0, 0, NAN, NAN, NAN};
    if (!is_empty(r, 3))
        return row_err(r, ERR_FORMAT, "field 'lr' of a validation row (no loss) must be empty", r->f[3]);
    if ((rc = get_num(r, 4, 0, &v.seconds)) || (rc = get_num(r, 5, 0, &v.val_error))) return rc;
    if (r->n == 9 && ((rc = get_num(r, 6, 1, &v.sample_mse)) || (rc = get_num(r, 7, 1, &v.sample_fd)) ||
                      (rc = get_num(r, 8, 1, &v.sample_real))))
        return rc;
    if (d->n_vals && epoch <= d->vals[d->n_vals - 1].epoch) {
        char what[96];
        snprintf(what, sizeof what, "validation of epoch %d after one of epoch %d", epoch,
                 d->vals[d->n_vals - 1].epoch);
        return row_err(r, ERR_VALUE, what, NULL);
    }
    if (d->n_vals && step != d->vals[0].step) {
        char what[96];
        snprintf(what, sizeof what, "validation row with step %d (the first had %d: the steps per epoch)", step,
                 d->vals[0].step);
        return row_err(r, ERR_VALUE, what, NULL);
    }
    if (grow_array((void **)&d->vals, cap_v, d->n_vals + 1, 64, sizeof *d->vals))
        return err_set(r->e, ERR_NOMEM, "out of memory reading %s", r->path);
    d->vals[d->n_vals++] = v;
    return 0;
}

// The mean loss of each epoch's step rows (rows are in epoch order).
static int epoch_means(RunLogData *d, Err *e) {
    if (!d->n_steps) return 0;
    int n = 1;
    for (int i = 1; i < d->n_steps; i++) n += d->steps[i].epoch != d->steps[i - 1].epoch;
    d->epochs = calloc((size_t)n, sizeof *d->epochs);
    if (!d->epochs) return err_set(e, ERR_NOMEM, "out of memory");
    int k = -1;
    double sum = 0;
    for (int i = 0; i < d->n_steps; i++) {
        if (i == 0 || d->steps[i].epoch != d->steps[i - 1].epoch) {
            if (k >= 0) d->epochs[k].mean = sum / d->epochs[k].n;
            d->epochs[++k].epoch = d->steps[i].epoch;
            sum = 0;
        }
        sum += d->steps[i].loss;
        d->epochs[k].n++;
    }
    d->epochs[k].mean = sum / d->epochs[k].n;
    d->n_epochs = n;
    return 0;
}

int run_log_read(const char *path, RunLogData *d, Err *e) {
    memset(d, 0, sizeof *d);
    unsigned char *buf;
    size_t size;
    if (file_read_all(path, &buf, &size, e)) return e->code;
    int rc = run_log_read_mem(buf, size, path, d, e);
    free(buf);
    return rc;
}

int run_log_read_mem(const unsigned char *buf, size_t size, const char *path, RunLogData *d, Err *e) {
    memset(d, 0, sizeof *d);
    const char *s = (const char *)buf;
    size_t hl = strlen(RUN_LOG_HEADER), hl1 = strlen(RUN_LOG_HEADER_V1);
    int n_cols = 9;
    size_t pos;
    if (size >= hl + 1 && !memcmp(s, RUN_LOG_HEADER, hl) && s[hl] == '\n') {
        pos = hl + 1;
    } else if (size >= hl1 + 1 && !memcmp(s, RUN_LOG_HEADER_V1, hl1) && s[hl1] == '\n') {
        pos = hl1 + 1;
        n_cols = 6;
    } else {
        return err_set(e, ERR_FORMAT, "%s:1: not a run log (expected the header line '%s')", path, RUN_LOG_HEADER);
    }
    int rc = 0, cap_s = 0, cap_v = 0;
    char line[LINE_MAX_BYTES + 1];
    Row r = {path, 1, {0}, 0, e};
    while (!rc && pos < size) {
        r.line++;
        const char *nl = memchr(s + pos, '\n', size - pos);
        size_t len = nl ? (size_t)(nl - (s + pos)) : size - pos, next = nl ? (size_t)(nl - s) + 1 : size;
        int torn = !nl;
        if (len > LINE_MAX_BYTES || memchr(s + pos, '\0', len)) {
            if (torn) {  // not a row the writer could have finished
                d->torn_last = 1;
                break;
            }
            rc = err_set(e, ERR_FORMAT, "%s:%d: not a row of the run log (%s)", path, r.line,
                         len > LINE_MAX_BYTES ? "longer than any row" : "a NUL byte");
            break;
        }
        memcpy(line, s + pos, len);
        line[len] = '\0';
        pos = next;
        r.n = 0;
        for (char *p = line;; p++) {  // split at commas; at most MAX_FIELDS + 1 counted
            if (r.n <= MAX_FIELDS) r.f[r.n] = p;
            r.n++;
            char *c = strchr(p, ',');
            if (!c) break;
            *c = '\0';
            p = c;
        }
        Err row_e = {0};
        r.e = torn ? &row_e : e;  // a torn last line that does not parse is left out
        rc = parse_row(&r, n_cols, d, &cap_s, &cap_v);
        if (rc && torn) {
            d->torn_last = 1;
            rc = 0;
        }
        r.e = e;
    }
    if (!rc) {
        int smax = -1;
        for (int i = 0; i < d->n_steps; i++)
            if (d->steps[i].step > smax) smax = d->steps[i].step;
        d->steps_per_epoch = d->n_vals ? d->vals[0].step : smax + 1;
        if (d->n_vals && smax >= d->steps_per_epoch)
            rc = err_set(e, ERR_VALUE, "%s: a step row has step %d, but the validation rows say %d steps per epoch",
                         path, smax, d->steps_per_epoch);
    }
    if (!rc) rc = epoch_means(d, e);
    if (rc) run_log_data_free(d);
    return rc;
}

void run_log_data_free(RunLogData *d) {
    free(d->steps);
    free(d->vals);
    free(d->epochs);
    memset(d, 0, sizeof *d);
}
