/* prune_quant.c: UDFC's reconstruction of weight-quantization error in the FeedForwards
   (effdm compress --quant-udfc BITS; prune.h, docs/PRUNING.md).

   Quantizing ff.net.0.proj's weights damages every hidden unit a little instead of removing a
   few: h_q = GEGLU(Q(W1) x + b1) instead of h = GEGLU(W1 x + b1). UDFC's assumption is the same
   as for pruning - what a damaged channel lost is partly a linear combination of the damaged
   channels - and so is its closed form, with u = [h_q; 1] and the target h:
       h ~ C u,   C = E[h u^T] (E[u u^T] + λ I)^-1,   ff.net.2' = W2 C[:, :m],  b2' = b2 + W2 C[:, m]
   which is prune_udfc_solve on the moments of v = [h; h_q; 1] with "kept" = the h_q part and
   "removed" = the h part (ff.net.2 has no columns for h_q: W2[:, S] = 0 in the pruning fold).
   Q is uniform with per-row min/max ranges including 0 (quant.weight_init max, the default of
   every run): the run that later quantizes this checkpoint's ff.net.0.proj the same way at the
   same bits sees exactly the h_q the correction was solved for. ff.net.0.proj itself stays FP
   in the checkpoint. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "prune/prune.h"
#include "qalora/quantizer.h"

// One block's accumulator, hung on its ff.net.0.proj while the teacher samples.
typedef struct {
    int m, dim;
    float *wq;        // Q(W1), (2m, dim)
    float *yq;        // the quantized projection of one call, grown as needed
    size_t cap_yq;
    double *sum;      // (2m + 1)^2 sums of [h; h_q; 1][h; h_q; 1]^T, upper triangle until the end
    double *rows;     // a chunk of rows in double
    double count;
    int failed;       // out of memory inside a forward: reported after sampling
} QAcc;

#define QACC_CHUNK 128  // rows per dsyrk

static double gelu(double g) { return 0.5 * g * (1.0 + erf(g * M_SQRT1_2)); }

static Tensor *quant_record_forward(Ctx *c, ModelLayer *l, Tensor *x) {
    QAcc *a = l->quant;
    l->quant_forward = NULL;  // the layer itself, unhooked: the model runs in FP
    Tensor *y = layer_forward(c, l, x);
    l->quant_forward = quant_record_forward;
    if (!y || a->failed) return y;
    const int m = a->m, dim = a->dim, ld = 2 * m + 1;
    const size_t n_rows = x->n / (size_t)dim;
    if (n_rows * 2 * m > a->cap_yq) {
        free(a->yq);
        a->cap_yq = n_rows * 2 * m;
        if (!(a->yq = malloc(a->cap_yq * sizeof(float)))) {
            a->failed = 1, a->cap_yq = 0;
            return y;
        }
    }
    // x Q(W1)^T + b1: the projection the quantized model will compute
    for (size_t r = 0; r < n_rows; r++) memcpy(a->yq + r * 2 * m, l->bias.data, 2 * m * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n_rows, 2 * m, dim, 1.0f, x->data, dim, a->wq, dim,
                1.0f, a->yq, 2 * m);
    for (size_t r0 = 0; r0 < n_rows; r0 += QACC_CHUNK) {
        int nr = n_rows - r0 < QACC_CHUNK ? (int)(n_rows - r0) : QACC_CHUNK;
        for (int r = 0; r < nr; r++) {
            const float *p = y->data + (r0 + (size_t)r) * 2 * m, *pq = a->yq + (r0 + (size_t)r) * 2 * m;
            double *row = a->rows + (size_t)r * ld;
            for (int k = 0; k < m; k++) {  // GEGLU: value k times gelu(gate k), the gates are rows m..2m-1
                row[k] = p[k] * gelu(p[m + k]);
                row[m + k] = pq[k] * gelu(pq[m + k]);
            }
            row[2 * m] = 1.0;
        }
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, ld, nr, 1.0, a->rows, ld, 1.0, a->sum, ld);
        a->count += nr;
    }
    return y;
}

// Q(W1) per output row: (Δ, z) from the row's min/max including 0, as quant.weight_init max.
static void quantize_rows(const Tensor *w, int bits, float *wq) {
    const int rows = w->shape[0];
    const size_t len = w->n / (size_t)rows;
    for (int r = 0; r < rows; r++) {
        float d, z;
        quant_uniform_fit_max(w->data + (size_t)r * len, len, bits, &d, &z);
        quant_uniform_fake(wq + (size_t)r * len, w->data + (size_t)r * len, len, d, z, (1 << bits) - 1);
    }
}

int prune_ff_quant_moments(Ldm *m, const PruneSampling *s, int bits, PruneMoments *mom, Err *e) {
    if (bits < QUANT_MIN_BITS || bits > QUANT_MAX_BITS)
        return err_set(e, ERR_ARG, "quantization UDFC: bits %d outside %d..%d", bits, QUANT_MIN_BITS, QUANT_MAX_BITS);
    UNet *u = m->unet;
    const int nb = unet_ff_blocks(u);
    QAcc *acc = calloc((size_t)(nb ? nb : 1), sizeof *acc);
    int rc = 0;
    if (prune_moments_alloc(mom, nb) || !acc) {
        rc = err_set(e, ERR_NOMEM, "quantization UDFC: out of memory");
        goto done;
    }
    for (int k = 0; k < nb && !rc; k++) {
        ModelLayer *proj, *out;
        unet_ff_layers(u, k, &proj, &out);
        QAcc *a = &acc[k];
        a->m = out->weight.shape[1], a->dim = proj->weight.shape[1];
        mom->m[k] = 2 * a->m;
        size_t ld = 2 * (size_t)a->m + 1;
        a->wq = malloc(proj->weight.n * sizeof(float));
        a->sum = calloc(ld * ld, sizeof(double));
        a->rows = malloc((size_t)QACC_CHUNK * ld * sizeof(double));
        if (!a->wq || !a->sum || !a->rows || !proj->bias.data) {
            rc = proj->bias.data ? err_set(e, ERR_NOMEM, "quantization UDFC: out of memory for %s", proj->name)
                                 : err_set(e, ERR_SHAPE, "%s: expected a bias (CompVis GEGLU's Linear has one)", proj->name);
            break;
        }
        quantize_rows(&proj->weight, bits, a->wq);
        proj->quant = a;
        proj->quant_forward = quant_record_forward;
    }
    if (!rc) rc = prune_sample_teacher(m, s, e);
    for (int k = 0; k < nb && !rc; k++)
        if (acc[k].failed) rc = err_set(e, ERR_NOMEM, "quantization UDFC: out of memory while sampling");
    for (int k = 0; k < nb && !rc; k++) prune_moments_set(mom, k, &acc[k].sum, acc[k].count);
done:
    for (int k = 0; acc && k < nb; k++) {
        ModelLayer *proj, *out;
        unet_ff_layers(u, k, &proj, &out);
        if (proj->quant == &acc[k]) proj->quant = NULL, proj->quant_forward = NULL;
        free(acc[k].wq);
        free(acc[k].yq);
        free(acc[k].sum);
        free(acc[k].rows);
    }
    free(acc);
    if (rc) prune_moments_free(mom);
    return rc;
}

// E||W2 r||^2 for the residual r = h - C u (C NULL: r = h - h_q), from the sums S of
// [h; h_q; 1] (ld = 2m + 1), per token.
static double out_error(const double *S, int m, const double *W2, int dim, const double *C, double count) {
    const int ld = 2 * m + 1;
    // residual covariance R (m x m) = E[(h - C u)(h - C u)^T], u = [h_q; 1]; T = the moments of r
    double *R = malloc((size_t)m * m * sizeof(double)), *CS = malloc((size_t)m * (m + 1) * sizeof(double));
    if (!R || !CS) {
        free(R), free(CS);
        return NAN;
    }
    for (int i = 0; i < m; i++)
        for (int j = 0; j < m; j++) R[(size_t)i * m + j] = S[(size_t)i * ld + j];  // S_hh
    if (C) {
        // CS = C S_uh (m x m), then R = S_hh - CS - CS^T + C S_uu C^T
        for (int i = 0; i < m; i++)
            for (int j = 0; j < m; j++) {
                double a = 0;
                for (int k = 0; k <= m; k++) a += C[(size_t)i * (m + 1) + k] * S[(size_t)(m + k) * ld + j];
                CS[(size_t)i * m + j] = a;
            }
        double *CU = malloc((size_t)m * (m + 1) * sizeof(double));  // C S_uu
        if (!CU) {
            free(R), free(CS);
            return NAN;
        }
        for (int i = 0; i < m; i++)
            for (int j = 0; j <= m; j++) {
                double a = 0;
                for (int k = 0; k <= m; k++) a += C[(size_t)i * (m + 1) + k] * S[(size_t)(m + k) * ld + m + j];
                CU[(size_t)i * (m + 1) + j] = a;
            }
        for (int i = 0; i < m; i++)
            for (int j = 0; j < m; j++) {
                double a = 0;
                for (int k = 0; k <= m; k++) a += CU[(size_t)i * (m + 1) + k] * C[(size_t)j * (m + 1) + k];
                R[(size_t)i * m + j] += a - CS[(size_t)i * m + j] - CS[(size_t)j * m + i];
            }
        free(CU);
    } else {
        for (int i = 0; i < m; i++)
            for (int j = 0; j < m; j++)
                R[(size_t)i * m + j] += S[(size_t)(m + i) * ld + m + j] - S[(size_t)i * ld + m + j] - S[(size_t)(m + i) * ld + j];
    }
    double err = 0;  // sum over output rows o of W2[o] R W2[o]^T
    for (int o = 0; o < dim; o++) {
        const double *w = W2 + (size_t)o * m;
        for (int i = 0; i < m; i++) {
            double a = 0;
            for (int j = 0; j < m; j++) a += R[(size_t)i * m + j] * w[j];
            err += w[i] * a;
        }
    }
    free(R), free(CS);
    return err / count;
}

int prune_ff_quant_fold(UNet *u, const PruneMoments *mom, double ridge, PruneQuantSummary *qs, Err *e) {
    const int nb = unet_ff_blocks(u);
    if (mom->n_sites != nb)
        return err_set(e, ERR_SHAPE, "quantization UDFC: moments of %d blocks for a UNet with %d", mom->n_sites, nb);
    memset(qs, 0, sizeof *qs);
    for (int k = 0; k < nb; k++) {
        ModelLayer *proj, *out;
        unet_ff_layers(u, k, &proj, &out);
        const int m = out->weight.shape[1], dim = out->weight.shape[0];
        if (!out->bias.data) return err_set(e, ERR_SHAPE, "%s: expected a bias (CompVis FeedForward's Linear has one)", out->name);
        if (mom->m[k] != 2 * m)
            return err_set(e, ERR_SHAPE, "quantization UDFC: moments of %d values for %s with %d units (expected 2 x %d)",
                           mom->m[k], out->name, m, m);
        int *keep = malloc((size_t)m * sizeof *keep);
        double *C = malloc((size_t)m * (m + 1) * sizeof *C), *W2 = malloc((size_t)dim * m * sizeof *W2);
        if (!keep || !C || !W2) {
            free(keep), free(C), free(W2);
            return err_set(e, ERR_NOMEM, "quantization UDFC: out of memory for %s", out->name);
        }
        for (int j = 0; j < m; j++) keep[j] = m + j;  // u = [h_q; 1]; the "removed" units are h
        int rc = prune_udfc_solve(mom->sum[k], 2 * m, 1, keep, m, ridge, C, e);
        if (rc) {
            free(keep), free(C), free(W2);
            return rc;
        }
        for (size_t i = 0; i < (size_t)dim * m; i++) W2[i] = out->weight.data[i];
        double before = out_error(mom->sum[k], m, W2, dim, NULL, mom->count[k]);
        double after = out_error(mom->sum[k], m, W2, dim, C, mom->count[k]);
        for (int o = 0; o < dim; o++) {  // W2' = W2 C[:, :m], b2' = b2 + W2 C[:, m]
            const double *w = W2 + (size_t)o * m;
            for (int j = 0; j <= m; j++) {
                double a = 0;
                for (int i = 0; i < m; i++) a += w[i] * C[(size_t)i * (m + 1) + j];
                if (j < m) out->weight.data[(size_t)o * m + j] = (float)a;
                else out->bias.data[o] = (float)(out->bias.data[o] + a);
            }
        }
        qs->err_before += before, qs->err_after += after;
        qs->n_blocks++;
        free(keep), free(C), free(W2);
    }
    return 0;
}
