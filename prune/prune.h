/* prune.h: structured pruning of the UNet's FeedForward units, data-free, with UDFC's
   reconstruction of what the removed units carried (effdm compress; docs/PRUNING.md).

       PruneOpts o = {.ff_ratio = 0.3, .norm = PRUNE_L2, .udfc = 1};
       FfMoments mom;
       if (prune_ff_moments(teacher, &sampling, &mom, &e)) ...   // the teacher's own trajectories
       UNet *small;
       if (prune_unet(teacher->unet, &o, &mom, &small, &summary, &e)) ...
       // prune_write.c: the pruned model as a checkpoint every effdm command loads

   What is pruned: in every BasicTransformerBlock, FeedForward = GEGLU (ff.net.0.proj: value
   rows 0..m-1, gate rows m..2m-1; h_k = value_k * gelu(gate_k)) then ff.net.2 (m -> dim).
   A unit k is one value row, one gate row and one column of ff.net.2; removing it removes all
   three, so the tensors really shrink (unet_config_read_ff_widths reads the widths back).
   Each block keeps round((1 - ff_ratio) * m) units (at least 1): those of largest score
   ||[value_k; gate_k]||_p * ||ff.net.2[:, k]||_p (p = 1 or 2), the unit's weight in and out.

   UDFC (Bai et al., ICCV 2023): a damaged channel's information is partly a linear combination
   of the other channels of its layer, and the next layer can absorb that combination. For
   removed units P and kept units S, with u = [h_S; 1]:
       h_P ~ C u,   C = E[h_P u^T] (E[u u^T] + λ I)^-1      (least squares, closed form)
       ff.net.2' = W2[:, S] + W2[:, P] C[:, :|S|],   bias' = b2 + W2[:, P] C[:, |S|]
   C minimises E||h_P - C u||^2, and so also E||W2[:, P] (h_P - C u)||^2, the error of the
   block's output, for any W2. The paper reads the statistics off BatchNorm; the CompVis UNet
   has none (its LayerNorms keep no running statistics), so E[u u^T] is measured on the
   teacher's own sampled trajectories - EfficientDM's data-free calibration source: no
   training data, no fine-tuning. The constant 1 in u (an intercept: the units' means) is an
   effdm addition. λ = ridge x the mean of E[u u^T]'s diagonal keeps the solve stable.
   prune_quant.c applies the same solve to weight-quantization error (effdm compress
   --quant-udfc). Not done: the attention heads, ResBlock channels.
*/
#ifndef EFFDM_PRUNE_H
#define EFFDM_PRUNE_H

#include "models/ldm.h"
#include "models/unet/unet.h"

typedef enum { PRUNE_L1, PRUNE_L2 } PruneNorm;

typedef struct {
    double ff_ratio;  // fraction of each FeedForward's units removed, in [0, 1)
    PruneNorm norm;
    int udfc;         // 1: fold the removed units into the kept ones (needs moments)
    double ridge;     // λ relative to the mean diagonal of E[u u^T]; <= 0: 1e-6
} PruneOpts;

// Second moments of each FeedForward's hidden units (the input of ff.net.2) with a constant 1
// appended: sums of [h; 1][h; 1]^T over every token the teacher's UNet saw, per block.
typedef struct {
    int n_blocks;
    int *m;         // units of block k
    double **sum;   // (m + 1)^2, row-major, both triangles
    double *count;  // tokens seen by block k
} FfMoments;

typedef struct {
    int steps;          // DDIM steps, eta 0
    double scale;       // classifier-free guidance scale (both passes are seen)
    int n_samples;      // class-balanced trajectories
    int batch;
    uint64_t seed;      // x_T streams (seed, i)
    void (*on_progress)(long done, long total, void *user);  // sampler batches; may be NULL
    void *user;
} PruneSampling;

// The moments of teacher m's FeedForwards over s's trajectories (its UNet is left unhooked).
int prune_ff_moments(Ldm *m, const PruneSampling *s, FfMoments *mom, Err *e);
// Runs s's class-balanced DDIM trajectories through m (whatever hooks its layers carry record
// what they see): the one data source of every moment here.
int prune_sample_teacher(Ldm *m, const PruneSampling *s, Err *e);

// UDFC for weight-quantization error (prune_quant.c): mom over v = [h; h_q; 1] per block
// (mom->m[k] = 2 x units), h_q the hidden units with ff.net.0.proj's weights quantized to
// `bits` (uniform, per row, min/max range including 0: quant.weight_init max).
int prune_ff_quant_moments(Ldm *m, const PruneSampling *s, int bits, FfMoments *mom, Err *e);

typedef struct {
    int n_blocks;
    double err_before, err_after;  // E||W2 (h - h_q)||^2 and E||W2 h - (W2' h_q + b2' - b2)||^2 per token, summed over blocks
} PruneQuantSummary;

// Folds h ~ C [h_q; 1] into every ff.net.2 of u, in place (ff.net.0.proj is left FP).
int prune_ff_quant_fold(UNet *u, const FfMoments *mom, double ridge, PruneQuantSummary *qs, Err *e);
void ff_moments_free(FfMoments *mom);
// n_blocks empty blocks (mom->m[k] to be set by the caller); -1 when out of memory (free it).
int ff_moments_alloc(FfMoments *mom, int n_blocks);
// Hands block k's sums (upper triangle of (m[k] + 1)^2) to mom, filling the lower triangle;
// *sum becomes NULL.
void ff_moments_set(FfMoments *mom, int k, double **sum, double count);

// The units of the FeedForward (proj, out) to keep: keep[0..n_keep) ascending, the n_keep of
// largest score (ties: the lower index).
int prune_ff_select(const ModelLayer *proj, const ModelLayer *out, int n_keep, PruneNorm norm, int *keep, Err *e);

// UDFC's closed form on one block: mom_sum ((m+1)^2, the sums of [h;1][h;1]^T; any positive
// scale), keep[0..n_keep) ascending; C ((m - n_keep) x (n_keep + 1), row-major, the removed
// units in ascending order) = E[h_P u^T] (E[u u^T] + λ I)^-1, u = [h_keep; 1], λ = ridge x the
// mean diagonal of E[u u^T]. ERR_VALUE when E[u u^T] + λ I is not positive definite.
int prune_udfc_solve(const double *mom_sum, int m, const int *keep, int n_keep, double ridge, double *C, Err *e);

typedef struct {
    int n_blocks;
    int units_before, units_after;  // summed over blocks
    size_t params_before, params_after;  // UNet parameters
} PruneSummary;

// A new UNet: src's config with each FeedForward's width reduced, every other parameter
// copied, the kept units' rows and columns gathered and, with o->udfc, ff.net.2 reconstructed
// from mom. ff_ratio 0 copies src bit for bit.
int prune_unet(UNet *src, const PruneOpts *o, const FfMoments *mom, UNet **dst, PruneSummary *s, Err *e);

// The pruned model as a checkpoint: every tensor of src (the checkpoint the teacher came from)
// as stored, floats as F32, but model.diffusion_model.* from m's (pruned) UNet and no
// model_ema.* (the UNet written is the one pruned: raw or EMA weights, as loaded). meta_json:
// effdm.pruned (what was done). Written to path.tmp, renamed when complete.
int prune_write(Ldm *m, WeightFile *src, const char *yaml, const char *meta_json, const char *path, Err *e);

#endif
