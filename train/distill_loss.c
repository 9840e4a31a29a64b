/* distill_loss.c: the loss of one distillation step (see distill_loss.h). */
#include "train/distill_loss.h"

#include <math.h>

void distill_guided(float *out, const float *p, size_t n, float scale) {
    const float *eu = p, *ec = p + n;
    for (size_t i = 0; i < n; i++) out[i] = eu[i] + scale * (ec[i] - eu[i]);
}

// ε_u + s (ε_c - ε_u) of a [ε_u | ε_c] batch, on the tape (the reference's chunk(2) and CFG).
static Tensor *guided(Ctx *c, Tensor *x, float scale) {
    if (!x) return NULL;
    int B = x->shape[0] / 2;
    Tensor *u = t_slice(c, x, 0, 0, B), *cd = t_slice(c, x, 0, B, B);
    return t_add(c, u, t_scale(c, t_sub(c, cd, u), scale));
}

Tensor *distill_loss(Ctx *c, const DistillLoss *L, Tensor *q, Tensor *p) {
    if (!q || !p) return NULL;
    int mean = L->reduction == RC_REDUCE_MEAN;
    if (L->single) return t_mse_loss(c, q, p, mean);
    if (q->ndim < 1 || q->shape[0] % 2 || !tensor_same_shape(q, p)) {
        err_set(&c->err, ERR_SHAPE, "distill_loss: expected two equal halves [eps_u | eps_c] of one shape");
        return NULL;
    }
    int B = q->shape[0] / 2;
    Tensor *loss = NULL;
    if (L->branches != RC_BRANCHES_GUIDED) {
        Tensor *lc = t_mse_loss(c, t_slice(c, q, 0, B, B), t_slice(c, p, 0, B, B), mean);
        Tensor *lu = t_mse_loss(c, t_slice(c, q, 0, 0, B), t_slice(c, p, 0, 0, B), mean);
        loss = t_add(c, lc, lu);
        if (!loss) return NULL;
    }
    if (L->branches != RC_BRANCHES_BOTH) {
        int shape[TENSOR_MAX_DIMS];
        for (int i = 0; i < p->ndim; i++) shape[i] = p->shape[i];
        shape[0] = B;
        Tensor *pg = tensor_new(c, p->ndim, shape);
        if (!pg) return NULL;
        distill_guided(pg->data, p->data, pg->n, L->scale);
        Tensor *lg = t_mse_loss(c, guided(c, q, L->scale), pg, mean);
        loss = loss ? t_add(c, loss, lg) : lg;
    }
    return loss;
}

// c of one position (see distill_loss.h), in double
static double ddim_coef(const DdimSchedule *s, int i) {
    double a = s->alphas[i], ap = s->alphas_prev[i], sg = s->sigmas[i];
    double rest = 1.0 - ap - sg * sg;
    return sqrt(rest > 0 ? rest : 0) - sqrt(ap) * sqrt(1.0 - a) / sqrt(a);
}

double distill_ddim_weight(const DdimSchedule *s, int index) {
    double sum = 0;
    for (int i = 0; i < s->n; i++) sum += ddim_coef(s, i) * ddim_coef(s, i);
    if (!(sum > 0)) return 1.0;
    double c = ddim_coef(s, index);
    return c * c * s->n / sum;
}
