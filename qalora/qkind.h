/* qkind.h: the quantizer kinds - one row of operations per kind, one file per kind, one
   table (as ggml's type_traits: adding a kind is a new row and a new file; no switch on the
   kind grows anywhere else).

       QuantKind k;
       if (qkind_find("uniform", &k) != 0) ...          // config values and file records
       const QKindOps *ops = qkind_get(k);              // or quantizer_ops(&q)
       ops->pack(&q, dst, levels, n);

   Rows (QuantKind in quantizer.h, in the same order):
       QUANT_UNIFORM   "uniform"   qkind_uniform.c   EfficientDM's uniform affine quantizer
       QUANT_EASYQUANT "easyquant" qkind_easyquant.c uniform, each channel's largest weights kept
                                                     in float16 (EasyQuant, Tang et al. 2023)
       QUANT_NUPES     "nupes"     qkind_nupes.c     uniform in a power-warped domain, one learnable
                                                     exponent per entry (NUPES, Yvinec et al. 2023)

   The generic functions of quantizer.h check arguments, cut x into slices, thread and
   reduce; a kind supplies serial kernels over one slice:
   - a channel-wise quantizer (weights) calls them once per output channel k with the
     whole channel (n = row length);
   - a layer-wise quantizer (activations, TALSQ tables) calls them with the active entry k
     on fixed chunks of x (any length), from several threads at once: fake, backward,
     encode and decode must be element-wise there (a value's result depends only on the
     value and the entry), so that chunking and thread count never change a bit.
   A kind's contracts (docs/QUANTIZERS.md says how to add one):
     fit       sets entry k (Δ_k, z_k, the kind's parameters and side table) from the n
               values of x; `how` is the run's init (max / mse); parallel = 1 only for a
               layer-wise fit (one slice: the kernel may thread inside and must give the same
               bits as with parallel = 0). x is finite (checked). 0, or ERR_NOMEM (scratch).
     fake      y = q(x) with entry k (y may equal x).
     backward  the gradient of sum(q(x) · dy): adds into dx (NULL: not needed) and
               returns the slice's sums in g[0] (d/dΔ_k), g[1] (d/dz_k), g[2 + j] (the
               kind's parameter j), in double; g has 2 + QKIND_MAX_PARAM slots, all
               written. Straight-through where q is flat, the exact derivative elsewhere.
     encode    out = the integer level (0 .. 2^bits - 1) of each x, so that decode(encode(x))
               == fake(x) bit for bit whenever z_k is an integer (the export's contract:
               the exported model computes exactly the fake-quantized student).
     decode    y = the value of each level with entry k.
     decode_backward
               the gradient of sum(decode(levels) · dy) in the entry's values, levels fixed:
               g as for backward. (QALoRA's base weight W_base = decode(W_int) trains Δ_w
               through it; qlayer.h.)
     packed_size / pack / unpack
               the export's byte layout of n levels (pack.h's for uniform); unpack(pack(l)) == l.
     affine    1: encode and decode are the uniform ones on (Δ_k, z_k), the side positions
               apart - level =
               clamp(round(round(x/Δ) + z)), value = (level - z)·Δ - so the export's integer
               kernels (export_int.h: activation levels by int_quant_u8, int8 x uint8 GEMM,
               then a Δ_a Δ_w (...) rescale) compute layers of this kind from the levels;
               0: such layers run the export's float path (the weight decoded, the input
               fake-quantized), or, for a lut kind, the integer kernels through level tables.
     lut       1 for a kind that is not affine but whose encode is non-decreasing in x (over
               the floats, -inf to +inf) and without a side table: the export's integer path then
               rounds each entry's 2^b levels (decode of 0 .. 2^b - 1) to an int8 (weights) or u8
               (activations) table and finds codes by thresholds bisected from encode
               (export_int.h "level tables"); 0: not affine means the float path.
     side_count
               the side positions per entry for slices of slice_len values (Quantizer's side
               table: values the kind keeps unquantized, decode returns side_val there and
               the export's integer path adds them back as a sparse correction); 0: none.
     side      1: the kind keeps a side table (side_count may be > 0 and decode reads it);
               0: side_count is 0 and a file's side table for the kind is refused.
     weight_only
               1: channel-wise use only (a side table is per channel); a layer-wise quantizer
               of the kind is refused (quantizer_fit, qlayer_sizes).
     n_param   learnable values per entry beyond (Δ, z) (Quantizer.param), 0..QKIND_MAX_PARAM:
               at the end of the layers' trainable blocks (qlayer.h), trained at
               train.optimizer.lr_exponent, stored as <layer>.w_param / a_param in the state
               and the export.
*/
#ifndef EFFDM_QKIND_H
#define EFFDM_QKIND_H

#include <stddef.h>
#include <stdint.h>

#include "qalora/quantizer.h"

#define QKIND_MAX_PARAM 2
// Gradient sums a backward kernel returns: Δ, z and the kind's parameters.
#define QKIND_GRAD_SLOTS (2 + QKIND_MAX_PARAM)

typedef struct QKindOps {
    const char *name;   // the config and file name ("uniform")
    int n_param;        // learnable values per entry beyond (Δ, z); 0 .. QKIND_MAX_PARAM
    int affine;         // 1: uniform levels on (Δ, z) (side table apart): the export's integer kernels run them
    int lut;            // 1 (not affine): encode is monotone in x and decode gives the levels: the export's
                        // integer path runs them through 8-bit level tables (export_int.h)
    int weight_only;    // 1: channel-wise quantizers only
    int side;           // 1: keeps a side table (side_count; decode returns side_val at its positions)
    // Kernels over one slice with entry k (contracts above). Serial, except fit with parallel = 1.
    int (*fit)(Quantizer *q, int k, const float *x, size_t n, QuantInit how, int parallel);
    void (*fake)(const Quantizer *q, int k, float *y, const float *x, size_t n);
    void (*backward)(const Quantizer *q, int k, float *dx, double g[QKIND_GRAD_SLOTS], const float *dy,
                     const float *x, size_t n);
    void (*encode)(const Quantizer *q, int k, uint8_t *out, const float *x, size_t n);
    void (*decode)(const Quantizer *q, int k, float *y, const uint8_t *in, size_t n);
    void (*decode_backward)(const Quantizer *q, int k, double g[QKIND_GRAD_SLOTS], const float *dy,
                            const uint8_t *in, size_t n);
    // The export's bytes for n levels of q (the whole tensor).
    size_t (*packed_size)(const Quantizer *q, size_t n);
    void (*pack)(const Quantizer *q, uint8_t *dst, const uint8_t *levels, size_t n);
    void (*unpack)(const Quantizer *q, uint8_t *levels, const uint8_t *src, size_t n);
    int (*side_count)(const Quantizer *q, size_t slice_len);
} QKindOps;

// The rows, one per file.
extern const QKindOps QKIND_UNIFORM_OPS;    // qkind_uniform.c
extern const QKindOps QKIND_EASYQUANT_OPS;  // qkind_easyquant.c
extern const QKindOps QKIND_NUPES_OPS;      // qkind_nupes.c

// Row pieces several kinds share (qkind_uniform.c): the uniform levels' bytes (pack.h) and
// "no side table".
size_t qkind_uniform_packed_size(const Quantizer *q, size_t n);
void qkind_uniform_pack(const Quantizer *q, uint8_t *dst, const uint8_t *levels, size_t n);
void qkind_uniform_unpack(const Quantizer *q, uint8_t *levels, const uint8_t *src, size_t n);
int qkind_no_side(const Quantizer *q, size_t slice_len);

// The kind names in QuantKind order (the config's enum names).
extern const char *const QKIND_NAMES[QUANT_KIND_COUNT];

// The row of kind k (k must be a QuantKind below QUANT_KIND_COUNT: checked by assert).
const QKindOps *qkind_get(QuantKind k);
// The row of q's kind.
const QKindOps *quantizer_ops(const Quantizer *q);
// 1 when k is a row of the table.
int qkind_valid(int k);
// The kind named `name` into *out: 0, or ERR_VALUE (no message: callers name the key or
// tensor and list qkind_list's names).
int qkind_find(const char *name, QuantKind *out);
// "uniform, easyquant, ...": every name, for messages. Returns buf.
char *qkind_list(char *buf, size_t n);

#endif
