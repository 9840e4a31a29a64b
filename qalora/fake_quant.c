/* fake_quant.c: the fake-quant op on the tape (OP_FAKE_QUANT).

   Gradients, from the reference's formula (EfficientDM quant_layer.py):
       u = round_ste(x/Δ) + z                  round_ste: value round(x/Δ), gradient of x/Δ
       w = u + relu(0 - u) - relu(u' - L)      u' = u + relu(-u); L = 2^b - 1; relu'(0) = 0
       q = (w - z) Δ
   dw/du is 1 when 0 <= u <= L ("inside", both ends included since relu'(0) = 0), else 0.
       dq/dx = Δ · dw/du · 1/Δ                 = inside
       dq/dΔ = (w - z) + Δ · dw/du · (-x/Δ^2)  = inside ? round(x/Δ) - x/Δ : clamp(u) - z
       dq/dz = Δ · (dw/du - 1)                 = inside ? 0 : -Δ
   Checked against tests/data/parity/qalora (d_a_delta_list, d_a_zp_list, d_w_delta,
   d_w_zero_point) in tests/test_qalora.c. Those are the uniform kind's (qkind_uniform.c);
   the op itself runs any kind of the table (qkind.h), and a kind's own learnable values
   (Quantizer.param) are a fourth input.
*/
#include <string.h>

#include "autograd/profile.h"
#include "qalora/qkind.h"
#include "qalora/quantizer.h"

// in[0] = x, in[1] = delta, in[2] = zero, in[3] = the kind's parameters (NULL: none);
// saved = the Quantizer; iarg[0] = entry.
static void fake_quant_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0], *delta = nd->in[1], *zero = nd->in[2], *param = nd->in[3];
    const Quantizer *q = nd->saved;
    float *dx = x->requires_grad ? tensor_grad(c, x) : NULL;
    float *dd = delta->requires_grad ? tensor_grad(c, delta) : NULL;
    float *dz = zero->requires_grad ? tensor_grad(c, zero) : NULL;
    int want_dp = param && param->requires_grad;
    float *dp = want_dp ? tensor_grad(c, param) : NULL;
    if ((x->requires_grad && !dx) || (delta->requires_grad && !dd) || (zero->requires_grad && !dz) || (want_dp && !dp))
        return;
    quantizer_fake_backward_all(q, dx, dd, dz, dp, nd->out->grad, x->data, x->n, nd->iarg[0]);
}

static Tensor *fake_quant_op(Ctx *c, Tensor *x, Quantizer *q, int entry) {
    if (!x || !q) return NULL;
    if (q->bits < QUANT_MIN_BITS || q->bits > QUANT_MAX_BITS || !qkind_valid((int)q->kind)) {
        err_set(&c->err, ERR_VALUE, "fake_quant: %s quantizer with %d bits", quant_kind_name(q->kind), q->bits);
        return NULL;
    }
    if (q->channel_wise) {
        if (x->ndim < 1 || x->shape[0] != q->n) {
            char s[64];
            err_set(&c->err, ERR_SHAPE, "fake_quant: %d channels for a tensor of shape %s", q->n,
                    tensor_shape_str(x, s, sizeof s));
            return NULL;
        }
        entry = 0;
    } else if (entry < 0 || entry >= q->n) {
        err_set(&c->err, ERR_VALUE, "fake_quant: entry %d of a %d-entry table", entry, q->n);
        return NULL;
    }
    Tensor *out = tensor_new(c, x->ndim, x->shape);
    if (!out) return NULL;
    quantizer_fake(q, out->data, x->data, x->n, entry);
    Tensor *in[4] = {x, &q->delta, &q->zero, q->param.data ? &q->param : NULL};
    TapeNode *nd = tape_record(c, OP_FAKE_QUANT, fake_quant_backward, out, in, 4);
    if (nd) {
        nd->saved = q;  // the quantizer outlives the step (model-owned)
        nd->iarg[0] = entry;
    }
    return out;
}

/* ---- public entry points: the op timed by the profiler (autograd/profile.h) ---- */

Tensor *t_fake_quant(Ctx *c, Tensor *x, Quantizer *q, int entry) {
    PROF_OP(c, OP_FAKE_QUANT, fake_quant_op(c, x, q, entry), 0.0);
}
