#include "train/adamw.h"
#include "autograd/ops/fastmath.h"
#include "util/grow.h"
#include "util/par.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int adamw_init(AdamW *o, size_t capacity, int n_groups, Err *e) {
    memset(o, 0, sizeof *o);
    size_t n = capacity ? capacity : 1;
    o->grad = calloc(n, sizeof(float));
    o->m = calloc(n, sizeof(float));
    o->v = calloc(n, sizeof(float));
    o->groups = calloc((size_t)(n_groups > 0 ? n_groups : 1), sizeof(AdamWGroup));
    if (!o->grad || !o->m || !o->v || !o->groups) {
        adamw_free(o);
        return err_set(e, ERR_NOMEM, "adamw: cannot allocate state for %zu parameters", capacity);
    }
    o->capacity = capacity;
    o->n_groups = n_groups;
    return 0;
}

void adamw_free(AdamW *o) {
    free(o->grad);
    free(o->m);
    free(o->v);
    free(o->groups);
    free(o->slots);
    memset(o, 0, sizeof *o);
}

void adamw_group(AdamW *o, int g, double lr, double beta1, double beta2, double eps, double weight_decay) {
    o->groups[g] = (AdamWGroup){lr, beta1, beta2, eps, weight_decay};
}

int adamw_add_slot(AdamW *o, int g, float *data, size_t n, size_t *off, Err *e) {
    if (n > o->capacity - o->used)
        return err_set(e, ERR_NOMEM, "adamw: %zu more parameters exceed the capacity %zu", n, o->capacity);
    if (grow_array((void **)&o->slots, &o->cap_slots, o->n_slots + 1, 64, sizeof *o->slots))
        return err_set(e, ERR_NOMEM, "adamw: cannot grow the slot table");
    o->slots[o->n_slots++] = (AdamWSlot){data, o->used, n, g};
    *off = o->used;
    o->used += n;
    return 0;
}

double adamw_lr_factor(const AdamW *o) {
    if (o->total_steps <= 0) return 1.0;
    double f = (double)(o->total_steps - o->step) / (double)o->total_steps;
    return f > 0 ? f : 0;
}

// One span of a slot's update (elementwise: the same bits however it is cut or vectorized).
typedef struct {
    float decay, b1, b2, one_b1, one_b2, bc2_sqrt, eps, step_size;
} AdamWScalars;

FASTMATH_CLONES static void adamw_span(float *p, const float *gr, float *m, float *v, size_t n, const AdamWScalars *k) {
    const AdamWScalars s = *k;
    for (size_t i = 0; i < n; i++) {
        p[i] *= s.decay;
        m[i] = s.b1 * m[i] + s.one_b1 * gr[i];
        v[i] = s.b2 * v[i] + s.one_b2 * (gr[i] * gr[i]);
        float denom = sqrtf(v[i]) / s.bc2_sqrt + s.eps;
        p[i] -= s.step_size * (m[i] / denom);
    }
}

#define ADAMW_CHUNK 16384

void adamw_step(AdamW *o) {
    double factor = adamw_lr_factor(o);
    int64_t t = o->step + 1;
    for (int s = 0; s < o->n_slots; s++) {
        const AdamWSlot *sl = &o->slots[s];
        const AdamWGroup *g = &o->groups[sl->group];
        // torch forms the scalars as Python floats (double) and applies them to float32 tensors
        double lr = g->lr * (double)factor;
        float step_size = (float)(lr / (1.0 - pow(g->beta1, (double)t)));
        float bc2_sqrt = (float)sqrt(1.0 - pow(g->beta2, (double)t));
        float decay = (float)(1.0 - lr * g->weight_decay);
        float b1 = (float)g->beta1, b2 = (float)g->beta2, eps = (float)g->eps;
        float one_b1 = (float)(1.0 - g->beta1), one_b2 = (float)(1.0 - g->beta2);
        float *p = sl->data, *gr = o->grad + sl->off, *m = o->m + sl->off, *v = o->v + sl->off;
        const AdamWScalars k = {decay, b1, b2, one_b1, one_b2, bc2_sqrt, eps, step_size};
        size_t nc = (sl->n + ADAMW_CHUNK - 1) / ADAMW_CHUNK;
        PAR_FOR(schedule(static), sl->n > 65536,
        for (size_t c = 0; c < nc; c++) {
            size_t lo = c * ADAMW_CHUNK, len = sl->n - lo < ADAMW_CHUNK ? sl->n - lo : ADAMW_CHUNK;
            adamw_span(p + lo, gr + lo, m + lo, v + lo, len, &k);
        });
    }
    o->step = t;
}

void adamw_zero_grad(AdamW *o) { memset(o->grad, 0, o->used * sizeof(float)); }
