/* dist.h: the ranks of an MPI job, or one process (docs/USER_GUIDE.md "Several machines").

       dist_init(&argc, &argv, &e);         // MPI_Init only when started by mpirun
       dist_range(B, dist_rank(), dist_size(), &lo, &hi);   // my share of B items
       ... fill records lo..hi-1 ...
       dist_gather_records(buf, rec, B, &e);   // every rank now holds all B records

   Built with -DEFFDM_MPI=ON (Open MPI) this wraps MPI_COMM_WORLD; a process that mpirun did
   not start never initialises MPI and is rank 0 of 1, as in a build without MPI. Every
   function here is collective (all ranks call it, in the same order) except dist_rank,
   dist_size, dist_range, dist_local_size and dist_abort. Exchanges never reorder
   arithmetic: records are copied, and "merge" sums arrays where each element is non-zero
   on at most one rank (adding zeros is exact), so results do not depend on the rank count. */
#ifndef EFFDM_DIST_H
#define EFFDM_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

// Starts MPI when mpirun (or another PMI launcher) started this process. An mpirun job of
// more than one rank and a build without MPI: ERR_UNSUPPORTED.
int dist_init(int *argc, char ***argv, Err *e);
// Ends MPI cleanly (every rank, once, at exit). No-op for one process.
void dist_finalize(void);
// Ends the whole job now with exit status `code` (a failure only this rank saw).
void dist_abort(int code);
int dist_rank(void);
int dist_size(void);
// Ranks of the job on this machine (mpirun's local size), for the default thread count.
int dist_local_size(void);
// The contiguous share [lo, hi) of n items that rank r of `size` holds (the first n % size
// ranks hold one more).
void dist_range(int n, int r, int size, int *lo, int *hi);

// n records of rec floats each, record i filled by the rank whose dist_range holds i:
// afterwards every rank holds all n. In place.
int dist_gather_records(float *buf, size_t rec, int n, Err *e);
// In-place sums over ranks for arrays where each element is set by at most one rank and
// zero on the others (exact in any order).
int dist_merge_f32(float *buf, size_t n, Err *e);
int dist_merge_f64(double *buf, size_t n, Err *e);
int dist_merge_i64(int64_t *buf, size_t n, Err *e);
// 1 on every rank when flag is non-zero on any.
int dist_any(int flag);
// Every rank passes its status (0 or an ERR_ code); returns the code of the lowest-numbered
// failing rank (0: none failed) and that rank in *who. The point where ranks agree to stop
// together, so only one message is printed.
int dist_first_failure(int code, int *who);
void dist_barrier(void);

#endif
