/* prune.h: structured pruning of the UNet's FeedForward units and SpatialTransformer attention
   heads, data-free, with UDFC's reconstruction of what the removed groups carried (effdm
   compress; docs/PRUNING.md).

       PruneOpts o = {.ff_ratio = 0.3, .head_ratio = 0.5, .norm = PRUNE_L2, .udfc = 1};
       PruneMoments mom;
       if (prune_moments(teacher, &sampling, &o, &mom, &e)) ...   // the teacher's own trajectories
       UNet *small;
       if (prune_unet(teacher->unet, &o, &mom, &small, &summary, &e)) ...
       // prune_write.c: the pruned model as a checkpoint every effdm command loads

   What is pruned: groups of the input features of one layer, with what produces them. Each
   BasicTransformerBlock has three such sites (PRUNE_FF, PRUNE_ATTN1, PRUNE_ATTN2):
   - FeedForward = GEGLU (ff.net.0.proj: value rows 0..m-1, gate rows m..2m-1; h_k = value_k *
     gelu(gate_k)) then ff.net.2 (m -> dim). A group is one unit k (size 1): one value row, one
     gate row, one column of ff.net.2. Score ||[value_k; gate_k]||_p * ||ff.net.2[:, k]||_p.
   - attn1 (self-attention) and attn2 (cross-attention): to_q, to_k, to_v (H d rows) then
     to_out.0 (H d -> dim). A group is one head h (size d = dim_head): rows h d..(h+1) d - 1 of
     to_q, to_k, to_v and the same columns of to_out.0; its features are softmax(q_h k_h^T) v_h.
     Score ||[q; k; v rows of h]||_p * ||to_out.0[:, h d..(h+1) d - 1]||_p.
   Removing a group removes all of that, so the tensors really shrink (unet_config_read_widths
   reads the widths and head counts back). Each site keeps round((1 - ratio) * groups) groups (at
   least 1): those of largest score (p = 1 or 2: the group's weight in times its weight out;
   ties to the lower index). The legacy AttentionBlock (one qkv conv) is not pruned.

   UDFC (Bai et al., ICCV 2023): a damaged channel's information is partly a linear combination
   of the other channels of its layer, and the next layer can absorb that combination. For the
   removed features P and kept features S of a site (whole groups), with u = [h_S; 1]:
       h_P ~ C u,   C = E[h_P u^T] (E[u u^T] + λ I)^-1      (least squares, closed form)
       W' = W[:, S] + W[:, P] C[:, :|S|],   bias' = b + W[:, P] C[:, |S|]
   (W, b: ff.net.2 or to_out.0). C minimises E||h_P - C u||^2, and so also E||W[:, P] (h_P -
   C u)||^2, the error of the site's output, for any W. The paper reads the statistics off
   BatchNorm; the CompVis UNet has none (its LayerNorms keep no running statistics), so E[u u^T]
   is measured on the teacher's own sampled trajectories (a hook on the input of ff.net.2 /
   to_out.0) - EfficientDM's data-free calibration source: no training data, no fine-tuning.
   The constant 1 in u (an intercept: the features' means) is an effdm addition. λ = ridge x
   the mean of E[u u^T]'s diagonal keeps the solve stable. prune_quant.c applies the same
   solve to weight-quantization error (effdm compress --quant-udfc). Not done: ResBlock
   channels, the heads of the legacy AttentionBlock.
*/
#ifndef EFFDM_PRUNE_H
#define EFFDM_PRUNE_H

#include "models/ldm.h"
#include "models/unet/unet.h"

typedef enum { PRUNE_L1, PRUNE_L2 } PruneNorm;

typedef struct {
    double ff_ratio;    // fraction of each FeedForward's units removed, in [0, 1)
    double head_ratio;  // fraction of each SpatialTransformer attention's heads removed, in [0, 1)
    PruneNorm norm;
    int udfc;           // 1: fold the removed groups into the kept ones (needs moments)
    double ridge;       // λ relative to the mean diagonal of E[u u^T]; <= 0: 1e-6
} PruneOpts;

// The sites of transformer block k are k * PRUNE_SITES + PRUNE_FF / PRUNE_ATTN1 / PRUNE_ATTN2.
enum { PRUNE_FF, PRUNE_ATTN1, PRUNE_ATTN2, PRUNE_SITES };

// Site s of u (0 <= s < PRUNE_SITES x unet_ff_blocks): the layer whose input features are pruned
// (ff.net.2 or to_out.0), its groups and the features a group (1, or dim_head).
void prune_site(UNet *u, int s, ModelLayer **out, int *groups, int *group_size);

// Second moments of each site's input features with a constant 1 appended: sums of [h; 1][h;
// 1]^T over every token the teacher's UNet saw.
typedef struct {
    int n_sites;    // PRUNE_SITES x transformer blocks
    int *m;         // input features of site s's layer
    double **sum;   // (m + 1)^2, row-major, both triangles; NULL for a site not measured
    double *count;  // tokens seen at site s
} PruneMoments;

typedef struct {
    int steps;          // DDIM steps, eta 0
    double scale;       // classifier-free guidance scale (both passes are seen)
    int n_samples;      // class-balanced trajectories
    int batch;
    uint64_t seed;      // x_T streams (seed, i)
    void (*on_progress)(long done, long total, void *user);  // sampler batches; may be NULL
    void *user;
} PruneSampling;

// The moments of teacher m over s's trajectories at the sites o prunes: the FeedForwards when
// o->ff_ratio > 0, the attentions of more than one head when o->head_ratio > 0 (its UNet is
// left unhooked).
int prune_moments(Ldm *m, const PruneSampling *s, const PruneOpts *o, PruneMoments *mom, Err *e);
void prune_moments_free(PruneMoments *mom);
// n_sites empty sites (mom->m[k] to be set by the caller); -1 when out of memory (free it).
int prune_moments_alloc(PruneMoments *mom, int n_sites);
// Hands site k's sums (upper triangle of (m[k] + 1)^2) to mom, filling the lower triangle;
// *sum becomes NULL.
void prune_moments_set(PruneMoments *mom, int k, double **sum, double count);
// Runs s's class-balanced DDIM trajectories through m (whatever hooks its layers carry record
// what they see): the one data source of every moment here.
int prune_sample_teacher(Ldm *m, const PruneSampling *s, Err *e);

// UDFC for weight-quantization error (prune_quant.c): one site per transformer block, the
// moments over v = [h; h_q; 1] (mom->m[k] = 2 x units), h_q the hidden units with
// ff.net.0.proj's weights quantized to `bits` (uniform, per row, min/max range including 0:
// quant.weight_init max).
int prune_ff_quant_moments(Ldm *m, const PruneSampling *s, int bits, PruneMoments *mom, Err *e);

typedef struct {
    int n_blocks;
    double err_before, err_after;  // E||W2 (h - h_q)||^2 and E||W2 h - (W2' h_q + b2' - b2)||^2 per token, summed over blocks
} PruneQuantSummary;

// Folds h ~ C [h_q; 1] into every ff.net.2 of u, in place (ff.net.0.proj is left FP).
int prune_ff_quant_fold(UNet *u, const PruneMoments *mom, double ridge, PruneQuantSummary *qs, Err *e);

// The units of the FeedForward (proj, out) to keep: keep[0..n_keep) ascending, the n_keep of
// largest score (ties: the lower index).
int prune_ff_select(const ModelLayer *proj, const ModelLayer *out, int n_keep, PruneNorm norm, int *keep, Err *e);
// The heads of the attention l (to_q, to_k, to_v, to_out.0; heads of dim_head rows) to keep,
// the same way.
int prune_heads_select(ModelLayer *const l[4], int dim_head, int n_keep, PruneNorm norm, int *keep, Err *e);

// UDFC's closed form on one site: m features in groups of g consecutive ones (m / g groups);
// mom_sum ((m+1)^2, the sums of [h;1][h;1]^T; any positive scale); keep[0..n_keep) the kept
// groups, ascending. C ((m - g n_keep) x (g n_keep + 1), row-major, the removed features in
// ascending order) = E[h_P u^T] (E[u u^T] + λ I)^-1, u = [h_kept; 1] (kept features ascending),
// λ = ridge x the mean diagonal of E[u u^T]. ERR_VALUE when E[u u^T] + λ I is not positive
// definite.
int prune_udfc_solve(const double *mom_sum, int m, int g, const int *keep, int n_keep, double ridge, double *C,
                     Err *e);

typedef struct {
    int n_blocks;
    int units_before, units_after;  // FeedForward units, summed over blocks
    int heads_before, heads_after;  // attention heads, summed over attn1 and attn2 of every block
    size_t params_before, params_after;  // UNet parameters
} PruneSummary;

// A new UNet: src's config with each FeedForward's width and each attention's heads reduced,
// every other parameter copied, the kept groups' rows and columns gathered and, with o->udfc,
// ff.net.2 / to_out.0 reconstructed from mom. Both ratios 0 copy src bit for bit.
int prune_unet(UNet *src, const PruneOpts *o, const PruneMoments *mom, UNet **dst, PruneSummary *s, Err *e);

// The pruned model as a checkpoint: every tensor of src (the checkpoint the teacher came from)
// as stored, floats as F32, but model.diffusion_model.* from m's (pruned) UNet and no
// model_ema.* (the UNet written is the one pruned: raw or EMA weights, as loaded). meta_json:
// effdm.pruned (what was done). Written to path.tmp, renamed when complete.
int prune_write(Ldm *m, WeightFile *src, const char *yaml, const char *meta_json, const char *path, Err *e);

#endif
