/* export_int.h: the quantized layers of a loaded export and the two ways they run (internal
   to qalora/: export_load.c builds them, export_int.c runs them).

   In memory a layer keeps its integer levels packed (pack.h containers: 2 per byte at 4
   bits, 4 at 2 bits, 8 in 3 bytes at 3 bits, 1 at 8 bits), one byte-aligned row of K4*4 levels per output channel
   in tap-major order (below; input channels padded to a multiple of 4 with the level that
   means 0), plus per channel Δ_w, z_w and the two integers the kernel needs. The float
   W_eff is never materialized in the model: the UNet's weight pages of these layers stay
   untouched.
   - integer path: x -> u8 levels with the active TALSQ entry (exactly t_fake_quant's
     levels), 4 channels interleaved into 32-bit words, im2col of the words (padding = z_a,
     the level of a real 0) straight into int_gemm's col4 layout, int_gemm against
     the unpacked s8 weights (unpacked once at load, 1 byte per weight: w_s8 below),
     then y[o,n] = Δ_a Δ_w[o] (D[o,n] - zoff[o] S[n] - z_a R[o]) + bias[o], with
     D = Σ_k a_k (q_k - c), S[n] = Σ_k a_k (convs: a ones row of the same GEMM),
     R[o] = Σ_k (q_k - z_w[o]), zoff[o] = z_w[o] - c; c = 0 for 2/4-bit containers (q fits
     s8), 128 for 8 bits. Linear layers swap the GEMM's operands (see int_linear).
   - float path (EFFDM_KERNEL=float, and layers the integer path cannot take exactly): the
     deployed model as it was first written, fake_quant(x) then the FP op on W_eff
     dequantized per call; the reference the integer path is tested against.
   The quantizer kinds (qkind.h) decide which: the integer path needs each kind affine
   (uniform levels) or lut (level tables, below: approximate); other kinds always run the
   float path, which decodes the weight and fake-quantizes the input through the kind table. A weight kind's side table (easyquant's
   outliers, kept in float16) is exact in both: the float path's decode returns the side
   values, the integer path adds y[o, n] += Σ_s c[o, s] Δ_a (a[kpos(o, s), n] - z_a) after the
   dense kernel, c = v - (q - z_w) Δ_w (v itself when the stored level is z_w, as easyquant
   stores).
   Level tables (qkind.h lut = 1: a kind whose levels are not uniform but whose encode is
   monotone in x, e.g. nupes). At load time each weight channel's 2^b decoded levels (b <= 4)
   become int8 values t_c[code] with a scale s_c (level ~ s_c t_c, t in [-127, 127], s_c the
   least-squares scale for the rounded t) and the per-call unpack maps the codes through the
   table: to the kernels the layer is a uniform 8-bit one with z_w = 128 (zoff = 0, R = Σ t).
   Each activation entry's levels become u8 values t[code] on an affine grid (level ~ s_a (t -
   z), t in 0..255, z the integer of 0) and the thresholds a_bound between the codes (found
   from the kind's encode by bisection over the floats, so that counting the thresholds below
   x is the kind's encode exactly); the input's code through the table is the u8 operand, z
   its zero point and padding. The only approximation is the rounding of the levels to the
   tables: the loader measures it (w_lut_err, a_lut_err) and keeps the float path for a layer
   whose tables are coarser than EXPORT_LUT_MAX_ERR. */
#ifndef EFFDM_EXPORT_INT_H
#define EFFDM_EXPORT_INT_H

#include <stdint.h>

#include "qalora/export.h"

struct ExportLayer {
    ModelLayer *layer;   // the UNet's layer (its weight data is never written)
    const ExportModel *model;
    int special;
    int w_bits, a_bits, entries;
    int rot;             // Hadamard block of the input channels (rotate.h; 0: none): both paths rotate x
                         // first, and the levels are those of the rotated weight W Hᵀ
    int a_token;         // 1: per-token activation ranges (token_quant.h; aq.delta holds the ratio α, one
                         // (Δ, z) per token at run time: a linear input's row, a conv input's pixel)
    QuantKind w_kind, a_kind;  // quantizer kinds (qkind.h; uniform when the export names none)
    Quantizer wq;        // the weight quantizer: channel-wise over w_delta / w_zero (export_layer_prepare)
    Quantizer aq;        // the activation table (rounded z_a), of a_kind
    float *a_delta, *a_zero;
    float *w_param, *a_param;  // the kinds' own values (qkind.h n_param; NULL: none), w_param set before prepare
    // weights; a row's levels are reordered to k' = (ki kw + kj) cp + ci (channels innermost,
    // padded to cp = a multiple of 4 with zero weights), so that a k-group of 4 is 4 channels
    // at one kernel tap: the im2col of 4-channel words (export_int.c). Linear: kh = kw = 1.
    int cout, K, K4;     // K = cin kh kw real weights per output; K4 = kh kw cp / 4 groups
    int cin, cp, kh, kw;
    int cbits;           // container width: 2, 3, 4 or 8
    int wc;              // c above: the level stored as 0 in the s8 weights
    int wmax;            // max |q - c|
    size_t row_bytes;    // packed bytes of one row of K4*4 levels
    uint8_t *wpack;      // (cout, row_bytes)
    float *w_delta;      // (cout) Δ_w
    float *w_zero;       // (cout) z_w (integers)
    int32_t *zoff;       // (cout) z_w - c
    int32_t *rsum;       // (cout) Σ_k (q - z_w)
    int32_t *rsum_tap;   // per-token convs: (cout, kh kw) Σ_k (q - z_w) over each tap's channels
    // the weight kind's side table (n_side per channel; set before export_layer_prepare), and per
    // entry its position in a stored row and the integer path's correction coefficient
    // v - (q - z_w) Δ_w (the side value minus what the dense levels contribute there)
    int n_side;
    int32_t *side_idx;   // (cout, n_side) positions in the C-order row
    float *side_val;     // (cout, n_side)
    int32_t *side_kpos;  // (cout, n_side) positions in the stored (tap-major) row
    float *side_coef;    // (cout, n_side)
    int32_t *side_kpos_t;  // linear layers: side_kpos and side_coef transposed, (n_side, cout), so
    float *side_coef_t;    // that the epilogue's correction runs over the outputs (export_int.c)
    int int_ok;          // 1: the layer runs the integer path (exactly, or through level tables: lut)
    /* The level tables of a kind that is not affine but has monotone levels (qkind.h lut, e.g.
       nupes): the integer path runs its codes through them (export_int.c "level tables"); NULL
       for affine kinds, whose levels the kernels take as they are. */
    int lut;             // 1: a side of the layer runs through a level table (approximate; int_ok too)
    int8_t *w_lut;       // (cout, 2^w_bits) the int8 weight t_c[code]: W ~ s_c t_c[code]
    float *w_iscale;     // (cout) the integer path's weight scale: w_delta (affine), or s_c
    uint8_t *a_lut;      // (entries, 2^a_bits) the u8 activation t[code]: x^ ~ s_a (t[code] - z)
    float *a_bound;      // (entries, 2^a_bits - 1) the smallest float of code l = 1 .. 2^a_bits - 1
    float *a_iscale;     // (entries) Δ_a (affine: aq's), or s_a
    float *a_izero;      // (entries) z_a (affine: aq's), or the table's z (an integer in 0..255)
    int a_imax, w_umax;  // largest activation operand (2^a_bits - 1, 255 with a table); largest
                         // weight level q (u8, the linear GEMM's operand): 2^cbits - 1, 255 with a table
    int w_ic;            // the level of weight 0 in the linear GEMM's u8 operand: wc, 128 with a table
    /* The integer path's weight operands, built once at load (export_layer_prepare) from the
       packed rows, 1 byte per weight: unpacking them per call cost more than the GEMM at the
       small batches of a batch-split part. Convs: w_s8 (cout + 1, K4*4), the s8 rows then a
       ones row over the real channels (its GEMM row is S). Linear: w_col4, the u8 levels q in
       int_gemm's col4 layout over cout columns, and w_colsum[o] = Σ_k q. NULL when !int_ok. */
    int8_t *w_s8;
    uint8_t *w_col4;
    /* Per-token convs whose activations fit int_gemm_taps (a_bits <= 6): the weights as its u8
       operand w_u8 = w_s8 + 128 (cout, K4*4), and kz[o] = 128 + zoff[o], the multiple of a
       column's level sum that takes the 128 and the weight zero point back out (w_s8 is not
       built then); NULL otherwise (the tap-by-tap int_gemm path). */
    uint8_t *w_u8;
    int32_t *kz;
    int32_t *w_colsum;
    double w_lut_err, a_lut_err;  // the tables' worst relative L2 level error (channel / entry); 0: none
};

// Largest relative L2 error of a level table (over a channel's or an entry's 2^b levels)
// that the loader accepts for the integer path; above it the layer runs the float path.
#define EXPORT_LUT_MAX_ERR 0.01

// Builds the packed rows and per-channel integers of L from its n = cout K levels (one per
// byte, C order), Δ_w and z_w (cout each, copied) and sets up wq (w_kind, w_bits, the side
// table when n_side > 0). Decides int_ok (aq must be set up). 0 or ERR_NOMEM.
int export_layer_prepare(ExportLayer *L, const uint8_t *levels, const float *w_delta, const float *w_zero, Err *e);
// Frees what export_layer_prepare allocated (and the activation table); accepts a zeroed layer.
void export_layer_release(ExportLayer *L);
// W_eff = the weight kind's decode of the levels (uniform: (q - z_w[o]) Δ_w[o]) into w (cout K
// floats): the student's weight exactly, brought back to the layer's own basis (W_eff H) when the
// layer is rotated. 0, or ERR_NOMEM (w untouched).
int export_layer_dequant(const ExportLayer *L, float *w);
// Bytes the layer's weights occupy in memory: packed levels, and Δ_w / z_w / zoff / rsum;
// the integer path's unpacked operands (w_s8 / w_col4, w_colsum).
size_t export_layer_level_bytes(const ExportLayer *L);
size_t export_layer_scale_bytes(const ExportLayer *L);
size_t export_layer_operand_bytes(const ExportLayer *L);
// ModelLayer.quant_forward of an export layer: the integer or the float path (above).
Tensor *export_layer_forward(Ctx *c, ModelLayer *l, Tensor *x);

#endif
