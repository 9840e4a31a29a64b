/* guidance_gain.h: a gain on the guidance term of a quantized student, fitted to its teacher
   at export (train.guidance_gain fit; an effdm addition to EfficientDM).

   Why: on the shipped teacher the distilled W4A4 student's ε_c - ε_u is weaker than the
   teacher's (its samples have lower precision and class accuracy, higher recall than the
   teacher's), and sampling it at guidance 3.6 lands closer to the teacher's guidance-3
   samples than sampling it at 3 (same-noise pixel RMSE 0.0749 vs 0.0791, seed 0). A per-step
   least-squares fit of the gain on the teacher's trajectory does not find this (it trades the
   guidance signal against the student's noise in ε_c - ε_u and gives gains < 1), so the gain
   is fitted where it matters: on the sampled latents.

   Fit: n = train.guidance_fit_samples class-balanced trajectories (their own x_T and noise
   streams, seeded from train.seed + 1: not the streams `effdm sample --seed` uses) are
   sampled with the run's training sampler (DDIM train.steps, train.eta, guidance s =
   train.scale) by the teacher, and by the student with the guidance term times g for each g
   of a grid (0.9 to 1.6 by 0.1, walked on by 0.1 down to 0.5 or up to 2.5 while the best
   point is at an end); err(g) = mean squared difference of the final latents. The gain is
   the minimum of the parabola through the best grid point and its neighbours (the point itself
   at a limit of the walk; gain_search). The export stores it per TALSQ entry
   (tensor guidance_gain, all equal); sampling multiplies the guidance term by it
   (Ldm.guidance_gain) for any scale != 1.
*/
#ifndef EFFDM_GUIDANCE_GAIN_H
#define EFFDM_GUIDANCE_GAIN_H

#include <stdint.h>

#include "models/ldm.h"
#include "qalora/qmodel.h"

typedef struct {
    int steps;          // DDIM steps (train.steps)
    double eta, scale;  // train.eta, train.scale
    int n_samples;      // trajectories (class-balanced labels)
    int batch;          // trajectories per sampler batch
    uint64_t seed;      // x_T and eta noise streams (seed, i)
    // may be NULL: sampler batches done of total (the teacher's pass, the grid points, the
    // vertices); total grows when a walk goes past its start grid, done == total only once, at the end
    void (*on_progress)(long done, long total, void *user);
    void *user;
} GuidanceFitOpts;

#define GAIN_FIT_MAX 16

typedef struct {
    float gain;  // the fitted gain
    int n_grid;
    // err(g) at each gain measured, ascending: mean squared latent difference to the teacher
    float grid[GAIN_FIT_MAX], err[GAIN_FIT_MAX];
} GuidanceFit;

// A gain grid: n points first, first + step, ...; the walk past an end stays in [min, max].
typedef struct {
    float first, step;
    int n;
    float min, max;
} GainGrid;

extern const GainGrid GUIDANCE_GRID;  // 0.9 to 1.6 by 0.1, walked within [0.5, 2.5]
extern const GainGrid EPS_GRID;       // 0.985 to 1.015 by 0.005, walked within [0.95, 1.05]

/* The gain minimising err_at (a measured error, a few sampling passes each) on grid g: the start
   grid; while its minimum is at an end, one more point past that end (within [min, max], at most
   GAIN_FIT_MAX points); then the vertex of the parabola through the best point and its
   neighbours (guidance_parabola_min; not measured). The fit holds every point measured.
   err_at returns 0 or an error code, which gain_search returns. */
int gain_search(const GainGrid *g, int (*err_at)(float gain, double *err, void *user), void *user, GuidanceFit *fit);

// The vertex of the parabola through (x[i], y[i]), i = 0, 1, 2 (x ascending, equally spaced),
// clamped to [x0, x2]; the middle point when they are (nearly) collinear or concave.
float guidance_parabola_min(const float x[3], const float y[3]);
// Fits the gain of student q over teacher m (a class-conditional model): gain_fit with the
// guidance gain only. The student is left disabled, m->guidance_gain unset. 0 or an ERR_ code.
int guidance_gain_fit(QModel *q, Ldm *m, const GuidanceFitOpts *o, GuidanceFit *fit, Err *e);

/* The ε gain (train.eps_gain fit; an effdm addition). Why: sample statistics are very
   sensitive to the scale of every step's ε - on the test teachers one global 1% changes a
   1000-sample test FID by 2 to 27 points (docs/RESULTS_TEACHERS.md) - and a quantized
   student's ε is a little too small or too large, differently per model. The same fit as the
   guidance gain's, on the whole guided ε (times g), with the guidance gain already fitted
   and the grid 0.985 to 1.015 by 0.005; m may be unconditional. The export stores it per
   TALSQ entry (tensor eps_gain, all equal); sampling multiplies every step's ε by it
   (Ldm.eps_gain). */

// Both fits on one teacher pass: the guidance gain into *guidance (NULL: none; needs a
// class-conditional model), then the ε gain into *eps (NULL: none) on top of it. on_progress
// counts every sampler batch of both. The student is left disabled, m's gains unset. 0 or an
// ERR_ code.
int gain_fit(QModel *q, Ldm *m, const GuidanceFitOpts *o, GuidanceFit *guidance, GuidanceFit *eps, Err *e);

#endif
