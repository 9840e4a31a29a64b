#include "util/threads.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "util/dist.h"

static int g_threads = 1;  // mirrors what was last passed to the libraries

void threads_set(int n) {
    if (n <= 0) n = threads_default();
    g_threads = n;
    omp_set_num_threads(n);
    // one active level: a parallel region inside another (a sub-batch's ops, ldm_split.c) runs
    // on its own thread
    omp_set_max_active_levels(1);
    // OpenBLAS runs single-threaded: gemm_rm (autograd/ops/gemm_util.h) spreads its fixed
    // tiles over the OpenMP threads, so results do not depend on the thread count
    openblas_set_num_threads(1);
}

int threads_get(void) { return g_threads; }

int threads_default(void) {
    const char *s = getenv("EFFDM_THREADS");
    if (s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end != s && *end == '\0' && v > 0 && v < 4096) return (int)v;
    }
    // MPI ranks on this machine share its cores
    long n = sysconf(_SC_NPROCESSORS_ONLN) / dist_local_size();
    return n > 0 ? (int)n : 1;
}

const char *threads_blas_name(void) {
    switch (openblas_get_parallel()) {
    case 0: return "openblas-serial";
    case 1: return "openblas-pthread";
    case 2: return "openblas-openmp";
    default: return "openblas";
    }
}

void threads_reexec_spinning(char **argv) {
    // a process re-executed through /proc/self/exe is named "exe" in ps and /proc: keep ours
    const char *base = argv[0] ? strrchr(argv[0], '/') : NULL;
    prctl(PR_SET_NAME, base ? base + 1 : argv[0] ? argv[0] : "effdm", 0, 0, 0);
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    if (setenv("GOMP_SPINCOUNT", "30000000", 1) != 0) return;
    execv("/proc/self/exe", argv);
    unsetenv("GOMP_SPINCOUNT");
}
