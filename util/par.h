/* par.h: OpenMP loops that enter the runtime only when they will run on several threads.

       PAR_FOR(schedule(static), n >= MIN_WORK, for (size_t i = 0; i < n; i++) y[i] = f(x[i]););

   is `#pragma omp parallel for schedule(static) if (n >= MIN_WORK)` over the loop, except that
   the loop runs as plain code when the condition is false or a region would get one thread
   (one thread set, or inside another region: a batch-split part, models/ldm_split.c).
   libgomp makes a system call (a futex wake at the region's closing barrier) on every
   region it enters, even under if(0) or nested in another with one thread: 1.2 us per region
   at one thread and 2.8 us per region inside a split part on the 2-core VMs here, where a
   forward of the shipped teacher enters ~900 regions. Results are the same either way (every
   loop here is written so that its result does not depend on the thread count). */
#ifndef EFFDM_PAR_H
#define EFFDM_PAR_H

#include <omp.h>

// 1 when a parallel region entered here would run on more than one thread.
static inline int par_wanted(void) { return omp_get_max_threads() > 1 && !omp_in_parallel(); }

#define PAR_PRAGMA_(x) _Pragma(#x)
#define PAR_FOR(clauses, cond, ...)                          \
    do {                                                     \
        if ((cond) && par_wanted()) {                        \
            PAR_PRAGMA_(omp parallel for clauses)            \
            __VA_ARGS__                                      \
        } else {                                             \
            __VA_ARGS__                                      \
        }                                                    \
    } while (0)

#endif
