#include "benchutil.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/clock.h"
#include "util/threads.h"

double bench_now(void) { return clock_seconds(); }

double bench_cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// A "Key:   N kB" line of /proc/self/status, in MiB (-1 when absent).
static double status_mib(const char *key) {
    FILE *fp = fopen("/proc/self/status", "r");
    if (!fp) return -1;
    char line[256];
    double kib = -1;
    size_t n = strlen(key);
    while (fgets(line, sizeof line, fp))
        if (strncmp(line, key, n) == 0) kib = atof(line + n);
    fclose(fp);
    return kib / 1024.0;
}

double bench_peak_rss_mib(void) { return status_mib("VmHWM:"); }

double bench_rss_mib(void) { return status_mib("VmRSS:"); }

int bench_reset_peak_rss(void) {
    FILE *fp = fopen("/proc/self/clear_refs", "w");
    if (!fp) return -1;
    int ok = fputs("5", fp) >= 0;
    return fclose(fp) == 0 && ok ? 0 : -1;
}

const char *bench_cpu_flags(void) {
    static char buf[256];
    buf[0] = '\0';
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) strcat(buf, "avx2 ");
    if (__builtin_cpu_supports("fma")) strcat(buf, "fma ");
    if (__builtin_cpu_supports("avx512f")) strcat(buf, "avx512f ");
    if (__builtin_cpu_supports("avx512vnni")) strcat(buf, "avx512_vnni ");
    size_t n = strlen(buf);
    if (n) buf[n - 1] = '\0';
    else strcpy(buf, "none");
    return buf;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(const double *v, int n) {
    double *t = malloc((size_t)n * sizeof *t);
    if (!t) {
        fprintf(stderr, "bench: out of memory\n");
        exit(1);
    }
    memcpy(t, v, (size_t)n * sizeof *t);
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    double m = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    free(t);
    return m;
}

double bench_time(void (*fn)(void *), void *arg, double min_seconds) {
    fn(arg);  // warm-up: page faults, BLAS thread start-up
    double times[1000];
    int n = 0;
    double start = bench_now();
    while (n < 1000 && (n < 3 || bench_now() - start < min_seconds)) {
        double t0 = bench_now();
        fn(arg);
        times[n++] = bench_now() - t0;
    }
    qsort(times, (size_t)n, sizeof times[0], cmp_double);
    return times[n / 2];
}

typedef struct {
    int M, N, K;
    float *a, *b, *c;
} SgemmCase;

static void sgemm_run(void *p) {
    SgemmCase *s = p;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->M, s->N, s->K, 1.0f, s->a, s->K, s->b, s->N,
                0.0f, s->c, s->N);
}

double bench_sgemm_seconds(int M, int N, int K, double min_seconds) {
    SgemmCase s = {M, N, K, malloc(sizeof(float) * (size_t)M * K), malloc(sizeof(float) * (size_t)K * N),
                   malloc(sizeof(float) * (size_t)M * N)};
    for (size_t i = 0; i < (size_t)M * K; i++) s.a[i] = (float)(i % 17) * 0.01f;
    for (size_t i = 0; i < (size_t)K * N; i++) s.b[i] = (float)(i % 13) * 0.01f;
    // the reference is OpenBLAS threading one call on every thread (effdm runs it on one
    // thread per tile: util/threads.h)
    openblas_set_num_threads(threads_get());
    double t = bench_time(sgemm_run, &s, min_seconds);
    openblas_set_num_threads(1);
    free(s.a);
    free(s.b);
    free(s.c);
    return t;
}

void bench_fwd_run(void *p) {
    BenchFwd *f = p;
    size_t mark = arena_mark(&f->c->arena);
    if (!ldm_apply_model(f->c, f->m, f->x, f->t, f->y)) {
        fprintf(stderr, "forward failed: %s\n", f->c->err.msg);
        exit(1);
    }
    arena_release(&f->c->arena, mark);
}

double bench_rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

int bench_parse_list(const char *s, int *v, int max) {
    int n = 0;
    while (*s && n < max) {
        char *end;
        long x = strtol(s, &end, 10);
        if (end == s || x < 1 || x > 4096) return 0;
        v[n++] = (int)x;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return 0;
    }
    return n;
}
