/* ae_quantize.c: the forward value of taming-transformers taming/modules/vqvae/quantize.py
   VectorQuantizer2 (used by CompVis VQModel): nearest codebook entry per latent vector. */
#include <float.h>

#include "models/autoencoder/ae_impl.h"
#include "util/par.h"

// z (N, C, h, w), codebook e (n_embed, C). For every position p: d_j = |z_p|^2 + |e_j|^2 - 2 z_p.e_j
// in float32 in that order (upstream: torch.sum(z**2) + torch.sum(e**2) - 2 * einsum), j* = first
// argmin (torch.argmin), z_q = z + (e_j* - z) (the value of `z + (z_q - z).detach()`).
Tensor *ae_quantize(Ctx *c, AeModel *m, Tensor *z) {
    if (!z) return NULL;
    if (m->cfg.kind == AE_KL) {
        err_set(&c->err, ERR_INTERNAL, "ae_quantize: AutoencoderKL has no codebook");
        return NULL;
    }
    int C = m->cfg.embed_dim, K = m->cfg.n_embed;
    if (z->ndim != 4 || z->shape[1] != C) {
        char buf[64];
        err_set(&c->err, ERR_SHAPE, "ae_quantize: expected (N, %d, h, w), found %s", C,
                tensor_shape_str(z, buf, sizeof buf));
        return NULL;
    }
    Tensor *out = tensor_new(c, 4, z->shape);
    float *ee = ctx_alloc(c, (size_t)K * sizeof(float));
    if (!out || !ee) return NULL;
    const float *E = m->codebook.data;
    for (int j = 0; j < K; j++) {
        float s = 0;
        for (int k = 0; k < C; k++) s += E[(size_t)j * C + k] * E[(size_t)j * C + k];
        ee[j] = s;
    }
    int N = z->shape[0];
    size_t HW = (size_t)z->shape[2] * z->shape[3];
    long P = (long)N * (long)HW;
    // tiny lookups stay on one thread
    PAR_FOR(schedule(static), P * (long)K >= 32768,
    for (long p = 0; p < P; p++) {
        size_t n = (size_t)p / HW, q = (size_t)p % HW;
        const float *zp = z->data + n * C * HW + q;  // channel k of this position at zp[k * HW]
        float zz = 0;
        for (int k = 0; k < C; k++) zz += zp[k * HW] * zp[k * HW];
        int best = 0;
        float bestd = FLT_MAX;
        for (int j = 0; j < K; j++) {
            float dot = 0;
            for (int k = 0; k < C; k++) dot += zp[k * HW] * E[(size_t)j * C + k];
            float d = (zz + ee[j]) - 2.0f * dot;
            if (d < bestd) {  // strict: the first minimum wins, as torch.argmin
                bestd = d;
                best = j;
            }
        }
        float *op = out->data + n * C * HW + q;
        for (int k = 0; k < C; k++) op[k * HW] = zp[k * HW] + (E[(size_t)best * C + k] - zp[k * HW]);
    });
    return out;
}
