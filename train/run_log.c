/* run_log.c: log.csv of a run directory (format in run_log.h). */
#include "train/run_log.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/fileio.h"

// Parses the leading "epoch,step," of a row; 0 when the line does not start that way.
static int row_position(const char *line, size_t len, long *epoch, long *step) {
    char buf[64];
    size_t n = len < sizeof buf - 1 ? len : sizeof buf - 1;
    memcpy(buf, line, n);
    buf[n] = 0;
    char *end;
    errno = 0;
    *epoch = strtol(buf, &end, 10);
    if (end == buf || *end != ',' || errno) return 0;
    char *s = end + 1;
    *step = strtol(s, &end, 10);
    if (end == s || *end != ',' || errno) return 0;
    return 1;
}

// Keeps the header and the rows before (epoch, step); rewrites path atomically when that
// drops anything.
static int truncate_log(const char *path, int epoch, int step, Err *e) {
    unsigned char *buf;
    size_t size;
    if (file_read_all(path, &buf, &size, e)) return e->code;
    const char *s = (const char *)buf;
    size_t hl = strlen(RUN_LOG_HEADER), hl1 = strlen(RUN_LOG_HEADER_V1);
    int v1 = 0;  // a log written before the sampled validation's columns: its header is renewed
    if (size >= hl1 + 1 && !memcmp(s, RUN_LOG_HEADER_V1, hl1) && s[hl1] == '\n') {
        v1 = 1;
        hl = hl1;
    } else if (size < hl + 1 || memcmp(s, RUN_LOG_HEADER, hl) != 0 || s[hl] != '\n') {
        free(buf);
        return err_set(e, ERR_FORMAT, "%s: not a run log (expected the header line '%s')", path, RUN_LOG_HEADER);
    }
    size_t keep = hl + 1;
    while (keep < size) {
        const char *line = s + keep;
        const char *nl = memchr(line, '\n', size - keep);
        if (!nl) break;  // a torn last line
        long le, ls;
        if (!row_position(line, (size_t)(nl - line), &le, &ls)) break;
        if (le > epoch || (le == epoch && ls >= step)) break;
        keep = (size_t)(nl - s) + 1;
    }
    int rc = 0;
    if (keep < size || v1) {
        AtomicFile f;
        if (!(rc = atomic_open(&f, path, e))) {
            if (v1) {
                atomic_write(&f, RUN_LOG_HEADER "\n", strlen(RUN_LOG_HEADER) + 1);
                atomic_write(&f, buf + hl + 1, keep - hl - 1);
            } else {
                atomic_write(&f, buf, keep);
            }
            rc = atomic_commit(&f, e);
        }
    }
    free(buf);
    return rc;
}

int run_log_open(RunLog *l, const char *path, int epoch, int step, Err *e) {
    memset(l, 0, sizeof *l);
    snprintf(l->path, sizeof l->path, "%s", path);
    FILE *probe = fopen(path, "rb");
    int exists = probe != NULL;
    if (probe) fclose(probe);
    if (exists && truncate_log(path, epoch, step, e)) return e->code;
    l->fp = fopen(path, "ab");
    if (!l->fp) return err_set(e, ERR_IO, "%s: cannot open for appending: %s", path, strerror(errno));
    if (!exists && (fprintf(l->fp, "%s\n", RUN_LOG_HEADER) < 0 || fflush(l->fp) != 0)) {
        run_log_close(l, NULL);
        return err_set(e, ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    }
    return 0;
}

static int finish_line(RunLog *l, int n, Err *e) {
    if (n < 0 || fflush(l->fp) != 0) return err_set(e, ERR_IO, "%s: cannot write: %s", l->path, strerror(errno));
    return 0;
}

int run_log_step(RunLog *l, int epoch, int step, float loss, double lr, double seconds, Err *e) {
    return finish_line(l, fprintf(l->fp, "%d,%d,%.9g,%.9g,%.3f,\n", epoch, step, (double)loss, lr, seconds), e);
}

int run_log_val(RunLog *l, int epoch, int steps_per_epoch, double val_error, double sample_mse, double sample_fd,
                double sample_real, double seconds, Err *e) {
    char extra[96] = ",,,";
    if (isfinite(sample_mse) && isfinite(sample_fd))
        snprintf(extra, sizeof extra, ",%.9g,%.9g,%.9g", sample_mse, sample_fd, sample_real);
    return finish_line(l, fprintf(l->fp, "%d,%d,,,%.3f,%.9g%s\n", epoch, steps_per_epoch, seconds, val_error, extra),
                       e);
}

int run_log_close(RunLog *l, Err *e) {
    int rc = 0;
    if (l->fp && fclose(l->fp) != 0) rc = err_set(e, ERR_IO, "%s: cannot close: %s", l->path, strerror(errno));
    l->fp = NULL;
    return rc;
}
