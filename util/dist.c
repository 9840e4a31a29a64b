/* dist.c: see dist.h. The MPI implementation under EFFDM_MPI, else one process. */
#include "util/dist.h"

#include <stdlib.h>
#include <string.h>

static int launched_by_mpirun(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_SIZE");
}

static int env_int(const char *name, int def) {
    const char *s = getenv(name);
    return s && atoi(s) > 0 ? atoi(s) : def;
}

int dist_local_size(void) { return env_int("OMPI_COMM_WORLD_LOCAL_SIZE", env_int("MPI_LOCALNRANKS", 1)); }

void dist_range(int n, int r, int size, int *lo, int *hi) {
    int q = n / size, extra = n % size;
    *lo = r * q + (r < extra ? r : extra);
    *hi = *lo + q + (r < extra ? 1 : 0);
}

#ifdef EFFDM_MPI
#include <mpi.h>

static int g_on, g_rank, g_size = 1;

int dist_init(int *argc, char ***argv, Err *e) {
    if (!launched_by_mpirun()) return 0;
    if (MPI_Init(argc, argv) != MPI_SUCCESS) return err_set(e, ERR_INTERNAL, "MPI_Init failed");
    g_on = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    // errors come back as codes, so a rank can name what failed before the job ends
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    return 0;
}

void dist_finalize(void) {
    if (g_on) MPI_Finalize();
    g_on = 0;
}

void dist_abort(int code) {
    if (g_on && g_size > 1) MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

int dist_rank(void) { return g_rank; }
int dist_size(void) { return g_size; }

static int mpi_failed(int rc, const char *what, Err *e) {
    char s[MPI_MAX_ERROR_STRING];
    int n = 0;
    MPI_Error_string(rc, s, &n);
    return err_set(e, ERR_IO, "%s: %s", what, s);
}

int dist_gather_records(float *buf, size_t rec, int n, Err *e) {
    if (g_size == 1) return 0;
    if (rec > (size_t)INT32_MAX) return err_set(e, ERR_UNSUPPORTED, "MPI exchange: records of %zu floats", rec);
    MPI_Datatype t;
    MPI_Type_contiguous((int)rec, MPI_FLOAT, &t);
    MPI_Type_commit(&t);
    int *counts = malloc(sizeof(int) * (size_t)g_size), *displs = malloc(sizeof(int) * (size_t)g_size);
    int rc = MPI_SUCCESS;
    if (!counts || !displs) {
        rc = -1;
    } else {
        for (int r = 0; r < g_size; r++) {
            int lo, hi;
            dist_range(n, r, g_size, &lo, &hi);
            counts[r] = hi - lo;
            displs[r] = lo;
        }
        rc = MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts, displs, t, MPI_COMM_WORLD);
    }
    MPI_Type_free(&t);
    free(counts);
    free(displs);
    if (rc == -1) return err_set(e, ERR_NOMEM, "out of memory");
    return rc == MPI_SUCCESS ? 0 : mpi_failed(rc, "MPI_Allgatherv", e);
}

// MPI counts are int: long arrays go in pieces
static int merge(void *buf, size_t n, size_t size, MPI_Datatype t, Err *e) {
    if (g_size == 1) return 0;
    const size_t piece = (size_t)1 << 28;
    for (size_t i = 0; i < n; i += piece) {
        int k = (int)(n - i < piece ? n - i : piece);
        int rc = MPI_Allreduce(MPI_IN_PLACE, (char *)buf + i * size, k, t, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_failed(rc, "MPI_Allreduce", e);
    }
    return 0;
}

int dist_merge_f32(float *buf, size_t n, Err *e) { return merge(buf, n, sizeof *buf, MPI_FLOAT, e); }
int dist_merge_f64(double *buf, size_t n, Err *e) { return merge(buf, n, sizeof *buf, MPI_DOUBLE, e); }
int dist_merge_i64(int64_t *buf, size_t n, Err *e) { return merge(buf, n, sizeof *buf, MPI_INT64_T, e); }

int dist_any(int flag) {
    if (g_size == 1) return flag != 0;
    int in = flag != 0, out = in;
    if (MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_LOR, MPI_COMM_WORLD) != MPI_SUCCESS) dist_abort(1);
    return out;
}

int dist_first_failure(int code, int *who) {
    *who = g_rank;
    if (g_size == 1) return code;
    // (rank if failed else size) minimised: the lowest failing rank, then its code
    int mine = code ? g_rank : g_size, low = mine;
    if (MPI_Allreduce(&mine, &low, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD) != MPI_SUCCESS) dist_abort(1);
    if (low == g_size) return 0;
    int c = code;
    if (MPI_Bcast(&c, 1, MPI_INT, low, MPI_COMM_WORLD) != MPI_SUCCESS) dist_abort(1);
    *who = low;
    return c;
}

void dist_barrier(void) {
    if (g_size > 1 && MPI_Barrier(MPI_COMM_WORLD) != MPI_SUCCESS) dist_abort(1);
}

#else  // one process

int dist_init(int *argc, char ***argv, Err *e) {
    (void)argc;
    (void)argv;
    if (launched_by_mpirun() && env_int("OMPI_COMM_WORLD_SIZE", env_int("PMI_SIZE", 1)) > 1)
        return err_set(e, ERR_UNSUPPORTED, "started by mpirun with %d ranks, but this effdm was built without MPI "
                       "(cmake -DEFFDM_MPI=ON)", env_int("OMPI_COMM_WORLD_SIZE", env_int("PMI_SIZE", 1)));
    return 0;
}
void dist_finalize(void) {}
void dist_abort(int code) { exit(code); }
int dist_rank(void) { return 0; }
int dist_size(void) { return 1; }
int dist_gather_records(float *buf, size_t rec, int n, Err *e) { return 0; }
int dist_merge_f32(float *buf, size_t n, Err *e) { return 0; }
int dist_merge_f64(double *buf, size_t n, Err *e) { return 0; }
int dist_merge_i64(int64_t *buf, size_t n, Err *e) { return 0; }
int dist_any(int flag) { return flag != 0; }
int dist_first_failure(int code, int *who) {
    *who = 0;
    return code;
}
void dist_barrier(void) {}

#endif
