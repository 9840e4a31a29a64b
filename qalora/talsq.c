#include "qalora/talsq.h"

#include <string.h>

int talsq_ddim_uniform(TalsqSchedule *s, int T, int steps, Err *e) {
    memset(s, 0, sizeof *s);
    if (T < 1 || steps < 1 || steps > T)
        return err_set(e, ERR_VALUE, "DDIM steps: %d steps of %d training timesteps (expected 1..%d)", steps, T, T);
    int c = T / steps;
    int n = (T + c - 1) / c;  // len(range(0, T, c))
    if (n > TALSQ_MAX_ENTRIES)
        return err_set(e, ERR_VALUE, "DDIM steps: %d timesteps (at most %d)", n, TALSQ_MAX_ENTRIES);
    for (int i = 0; i < n; i++) s->timesteps[i] = i * c + 1;
    s->n = n;
    return 0;
}

int talsq_from_timesteps(TalsqSchedule *s, const int *t, int n, Err *e) {
    memset(s, 0, sizeof *s);
    if (n < 1 || n > TALSQ_MAX_ENTRIES)
        return err_set(e, ERR_VALUE, "TALSQ timesteps: %d entries (expected 1..%d)", n, TALSQ_MAX_ENTRIES);
    for (int i = 0; i < n; i++) {
        if (i > 0 && t[i] <= t[i - 1])
            return err_set(e, ERR_VALUE, "TALSQ timesteps: not ascending at entry %d (%d after %d)", i, t[i],
                           t[i - 1]);
        s->timesteps[i] = t[i];
    }
    s->n = n;
    return 0;
}

int talsq_entry(const TalsqSchedule *train, int t) {
    // first entry with timestep >= t, by bisection; then the nearer of it and its left neighbour
    int lo = 0, hi = train->n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (train->timesteps[mid] < t) lo = mid + 1;
        else hi = mid;
    }
    if (lo == train->n) return train->n - 1;
    if (lo == 0) return 0;
    long above = (long)train->timesteps[lo] - t, below = (long)t - train->timesteps[lo - 1];
    return below <= above ? lo - 1 : lo;  // tie: the smaller timestep
}

void talsq_map(const TalsqSchedule *train, const TalsqSchedule *sample, int *entries) {
    for (int i = 0; i < sample->n; i++) entries[i] = talsq_entry(train, sample->timesteps[i]);
}
