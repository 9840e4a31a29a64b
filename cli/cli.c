#include "cli/cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/ops/gemm_util.h"
#include "autograd/profile.h"
#include "io/fileio.h"
#include "qalora/calibrate.h"
#include "util/dist.h"
#include "util/threads.h"
#include "util/clock.h"

static int parse_value(CliOpt *o, const char *v, Err *e) {
    char *end;
    switch (o->type) {
    case OPT_STR:
        *(const char **)o->dst = v;
        return 0;
    case OPT_INT: {
        errno = 0;
        long x = strtol(v, &end, 10);
        if (errno || end == v || *end || x < -2147483647L || x > 2147483647L)
            return err_set(e, ERR_ARG, "%s: expected an integer, found '%s'", o->name, v);
        *(int *)o->dst = (int)x;
        return 0;
    }
    case OPT_FLOAT: {
        errno = 0;
        float x = strtof(v, &end);
        if (errno || end == v || *end || !isfinite(x))
            return err_set(e, ERR_ARG, "%s: expected a number, found '%s'", o->name, v);
        *(float *)o->dst = x;
        return 0;
    }
    case OPT_STRS: {
        CliStrs *l = o->dst;
        if (l->n >= CLI_MAX_REPEAT)
            return err_set(e, ERR_ARG, "%s: given more than %d times", o->name, CLI_MAX_REPEAT);
        l->v[l->n++] = v;
        return 0;
    }
    case OPT_FLAG:
        break;
    }
    return err_set(e, ERR_ARG, "%s takes no value", o->name);
}

int cli_parse(int argc, char **argv, CliOpt *opts, int n_opts, const char **positional, int *n_positional,
              int max_positional, int *help, Err *e) {
    if (n_positional) *n_positional = 0;
    *help = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { *help = 1; continue; }
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            if (!positional || !n_positional || *n_positional >= max_positional)
                return err_set(e, ERR_ARG, "unexpected argument '%s' (see --help)", a);
            positional[(*n_positional)++] = a;
            continue;
        }
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        CliOpt *o = NULL;
        for (int k = 0; k < n_opts; k++)
            if (strlen(opts[k].name) == len && !strncmp(opts[k].name, a, len)) o = &opts[k];
        if (!o) return err_set(e, ERR_ARG, "unknown option '%.*s' (see --help)", (int)len, a);
        if (o->seen && o->type != OPT_STRS) return err_set(e, ERR_ARG, "%s given twice", o->name);
        o->seen = 1;
        if (o->type == OPT_FLAG) {
            if (eq) return err_set(e, ERR_ARG, "%s takes no value", o->name);
            *(int *)o->dst = 1;
            continue;
        }
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) return err_set(e, ERR_ARG, "%s needs a value", o->name);
        if (parse_value(o, v, e)) return e->code;
    }
    return 0;
}

int cli_help(const char *const *usage) {
    for (int i = 0; usage[i]; i++) puts(usage[i]);
    return 0;
}

int cli_fail(const char *cmd, const Err *e) {
    fprintf(stderr, "effdm %s: %s\n", cmd, e->msg[0] ? e->msg : err_name(e->code));
    return err_exit_status(e->code);
}

int cli_threads(int threads, Err *e) {
    if (threads == 0 || threads < -1 || threads > 4096)
        return err_set(e, ERR_ARG, "--threads: expected a positive integer up to 4096, found %d", threads);
    const char *s = getenv("EFFDM_THREADS");
    if (threads < 0 && s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || *end || v <= 0 || v > 4096)
            return err_set(e, ERR_ARG, "EFFDM_THREADS: expected a positive integer up to 4096, found '%s'", s);
    }
    char msg[160];
    if (gemm_kernel_init(msg, sizeof msg)) return err_set(e, ERR_ARG, "%s", msg);
    threads_set(threads < 0 ? 0 : threads);
    // more threads than cores: each waits for the others at every parallel loop
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int per_node = threads_get() * dist_local_size();
    if (cores > 0 && per_node > cores && dist_rank() == 0)
        fprintf(stderr, "effdm: note: %d thread%s%s on %ld cores: oversubscribed threads run much slower than one per "
                "core (--threads %ld, or leave it out)\n", threads_get(), threads_get() == 1 ? "" : "s",
                dist_local_size() > 1 ? " per MPI rank" : "", cores,
                cores / dist_local_size() > 0 ? cores / dist_local_size() : 1);
    return 0;
}

void progress_start(Progress *p, const char *label, long total) {
    p->label = label;
    p->total = total > 0 ? total : 1;
    p->start = clock_seconds();
    p->last_print = 0;
    p->is_tty = isatty(2);
}

static void fmt_seconds(char *buf, size_t n, double s) {
    if (s < 120) snprintf(buf, n, "%.1f s", s);
    else if (s < 7200) snprintf(buf, n, "%d min %02d s", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(buf, n, "%d h %02d min", (int)(s / 3600), (int)fmod(s / 60, 60));
}

static void progress_print(Progress *p, long done, const char *extra, int final) {
    double el = clock_seconds() - p->start;
    char bar[31], els[32], eta[32];
    int fill = (int)(30.0 * (double)done / (double)p->total);
    if (fill > 30) fill = 30;
    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
    bar[30] = '\0';
    fmt_seconds(els, sizeof els, el);
    if (done > 0 && !final) fmt_seconds(eta, sizeof eta, el * (double)(p->total - done) / (double)done);
    else strcpy(eta, final ? "done" : "?");
    fprintf(stderr, "%s%s [%s] %ld/%ld  %s elapsed, ETA %s%s%s%s", p->is_tty ? "\r" : "", p->label, bar, done,
            p->total, els, eta, extra ? "  " : "", extra ? extra : "", (p->is_tty && !final) ? "\033[K" : "\n");
    fflush(stderr);
}

void progress_update(Progress *p, long done, const char *extra) {
    double t = clock_seconds();
    // a terminal redraws 5 times a second; a log file gets a line every 10 seconds
    double every = p->is_tty ? 0.2 : 10.0;
    if (t - p->last_print < every) return;
    p->last_print = t;
    progress_print(p, done, extra, 0);
}

void progress_finish(Progress *p, const char *extra) {
    progress_print(p, p->total, extra, 1);
}

void progress_items(void *user, size_t done, size_t total) {
    Progress *p = user;
    p->total = total > 0 ? (long)total : 1;
    progress_update(p, (long)done, NULL);
}

void progress_calib(int phase, long done, long total, void *user) {
    CliCalibBar *p = user;
    if (done == 0) {
        progress_start(&p->bar, phase == CALIB_PHASE_RECORD ? "teacher trajectories" : "activation ranges", total);
        return;
    }
    const char *unit = !p->units ? NULL : phase == CALIB_PHASE_RECORD ? "steps" : "layers";
    if (done >= total) progress_finish(&p->bar, unit);
    else progress_update(&p->bar, done, unit);
}

int cli_print_profile(const Profile *p, double wall, Err *e) {
    int len = prof_format(p, wall, NULL, 0);
    char *buf = malloc((size_t)len + 1);
    if (!buf) return err_set(e, ERR_NOMEM, "out of memory for the profile report");
    prof_format(p, wall, buf, (size_t)len + 1);
    fputs(buf, stdout);
    free(buf);
    return 0;
}

int cli_write_text(const char *path, const char *text, Err *e) {
    AtomicFile f;
    if (atomic_open(&f, path, e)) return e->code;
    atomic_write(&f, text, strlen(text));
    atomic_write(&f, "\n", 1);
    return atomic_commit(&f, e);
}

int cli_close_stdout(void) {
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "effdm: error writing to stdout: %s\n", strerror(errno));
        return 1;
    }
    return 0;
}
