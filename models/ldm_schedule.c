/* ldm_schedule.c: CompVis make_beta_schedule and the cumulative product of register_schedule. */
#include "models/ldm_schedule.h"

#include <math.h>

double ldm_linspace_at(double start, double end, int n, int i) {
    if (n == 1) return start;
    // aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp LinspaceKernel: step = (end - start) / (steps - 1);
    // idx < steps / 2 ? start + step * idx : end - step * (steps - idx - 1)
    double step = (end - start) / (double)(n - 1);
    int half = n / 2;
    return i < half ? start + step * (double)i : end - step * (double)(n - i - 1);
}

int ldm_make_beta_schedule(LdmBetaSchedule s, int T, double ls, double le, double cosine_s, double *betas, Err *e) {
    if (T < 1) return err_set(e, ERR_VALUE, "beta schedule: timesteps must be >= 1, found %d", T);
    switch (s) {
    case LDM_BETA_LINEAR: {
        double a = sqrt(ls), b = sqrt(le);  // Python's ** 0.5 on floats is pow(x, 0.5) == sqrt(x)
        for (int i = 0; i < T; i++) {
            double v = ldm_linspace_at(a, b, T, i);
            betas[i] = v * v;
        }
        break;
    }
    case LDM_BETA_COSINE: {
        const double pi = 3.141592653589793;  // np.pi
        double a0 = 0, prev = 0;
        for (int i = 0; i <= T; i++) {
            double ts = (double)i / (double)T + cosine_s;
            double c = cos(ts / (1.0 + cosine_s) * pi / 2.0);
            double a = c * c;
            if (i == 0) {
                a0 = a;
                prev = 1.0;  // a / a[0] at i = 0
                continue;
            }
            double an = a / a0;
            double beta = 1.0 - an / prev;
            betas[i - 1] = beta < 0 ? 0 : (beta > 0.999 ? 0.999 : beta);
            prev = an;
        }
        break;
    }
    case LDM_BETA_SQRT_LINEAR:
        for (int i = 0; i < T; i++) betas[i] = ldm_linspace_at(ls, le, T, i);
        break;
    case LDM_BETA_SQRT:
        for (int i = 0; i < T; i++) betas[i] = sqrt(ldm_linspace_at(ls, le, T, i));
        break;
    default:
        return err_set(e, ERR_VALUE, "beta schedule: unknown kind %d", (int)s);
    }
    for (int i = 0; i < T; i++)
        if (!isfinite(betas[i]) || betas[i] < 0 || betas[i] >= 1)
            return err_set(e, ERR_VALUE, "beta schedule %s: beta[%d] = %g is outside [0, 1)",
                           ldm_beta_schedule_name(s), i, betas[i]);
    return 0;
}

void ldm_alphas_cumprod(const double *betas, int T, double *acp) {
    double p = 1.0;
    for (int i = 0; i < T; i++) {
        p *= 1.0 - betas[i];
        acp[i] = p;
    }
}
