/* plms.c: the linear-multistep eps combinations of CompVis plms.py p_sample_plms (a506df5). */
#include "sample/plms.h"

#include "util/par.h"

// Element loops shorter than this run on one thread: waking OpenMP costs more than they take.
#define SAMPLE_OMP_MIN_WORK 32768

void plms_first(float *ep, const float *e_t, const float *e_next, size_t n) {
    PAR_FOR(schedule(static), n >= SAMPLE_OMP_MIN_WORK,
    for (size_t i = 0; i < n; i++) ep[i] = (e_t[i] + e_next[i]) / 2.0f;);
}

void plms_combine(float *ep, const float *e_t, const float *const *old, int n_old, size_t n) {
    const float *o1 = old[n_old - 1];                      // old_eps[-1]
    const float *o2 = n_old >= 2 ? old[n_old - 2] : NULL;  // old_eps[-2]
    const float *o3 = n_old >= 3 ? old[n_old - 3] : NULL;  // old_eps[-3]
    PAR_FOR(schedule(static), n >= SAMPLE_OMP_MIN_WORK,
    for (size_t i = 0; i < n; i++) {
        float v;
        if (n_old == 1) v = (3.0f * e_t[i] - o1[i]) / 2.0f;  // 2nd order Adams-Bashforth
        else if (n_old == 2) v = ((23.0f * e_t[i] - 16.0f * o1[i]) + 5.0f * o2[i]) / 12.0f;
        else v = (((55.0f * e_t[i] - 59.0f * o1[i]) + 37.0f * o2[i]) - 9.0f * o3[i]) / 24.0f;
        ep[i] = v;
    });
}
