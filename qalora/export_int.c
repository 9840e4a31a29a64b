/* export_int.c: how an export layer runs (export_int.h): the integer path (quantize to u8,
   im2col, int_gemm, rescale) and the float reference path. */
#include "qalora/export_int.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "autograd/ops/fastmath.h"
#include "autograd/ops/gemm_util.h"
#include "qalora/int_gemm.h"
#include "qalora/pack.h"
#include "qalora/token_quant.h"
#include "qalora/qkind.h"
#include "qalora/rotate.h"
#include "util/par.h"

// Elements one thread quantizes per work item.
#define QUANT_CHUNK 4096

// Position of weight (ci, ki, kj) in a stored row (export_int.h: taps outer, channels inner).
static size_t kpos(const ExportLayer *L, int ci, int ki, int kj) { return (size_t)(ki * L->kw + kj) * L->cp + ci; }

/* ---- level tables (export_int.h) ---------------------------------------------------------- */

// The levels y (n, level l used cnt[l] times) rounded to integers t on the grid s (t - z), t in
// [tmin, tmax], minimising the weighted squared error Σ cnt (y - s (t - z))²: for each step of
// a grid from s0 (the step that spans the levels and 0, which stays exact) down to s0 / 2
// (smaller steps clamp the outer levels, rare in bell-shaped data, for finer inner ones),
// t = clamp(round(y / s) + z), z the integer of 0; then the least-squares s for the best t.
// Returns the relative error sqrt(Σ cnt (y - s (t - z))² / Σ cnt y²) (0 for y = 0).
static double round_levels(const float *y, const double *cnt, int n, int tmin, int tmax, int *t, float *s, int *z) {
    double lo = 0, hi = 0, yy = 0;
    for (int l = 0; l < n; l++) {
        lo = y[l] < lo ? y[l] : lo;
        hi = y[l] > hi ? y[l] : hi;
        yy += cnt[l] * y[l] * y[l];
    }
    double s0 = tmin < 0 ? fmax(-lo, hi) / tmax : (hi - lo) / (tmax - tmin);  // symmetric (z = 0) or affine
    if (!(s0 > 0) || !(yy > 0)) {
        *z = tmin < 0 ? 0 : tmin;
        for (int l = 0; l < n; l++) t[l] = *z;
        *s = 1.0f;
        return 0;
    }
    double best = INFINITY, bs = s0;
    int bz = 0;
    for (int j = 0; j <= 32; j++) {
        double sc = s0 * (1.0 - j / 64.0), zz = tmin < 0 ? 0 : rint(-lo / sc) + tmin, err = 0;
        zz = zz > tmax ? tmax : zz;
        for (int l = 0; l < n; l++) {
            double v = rint(y[l] / sc) + zz, d;
            v = v < tmin ? tmin : (v > tmax ? tmax : v);
            d = y[l] - sc * (v - zz);
            err += cnt[l] * d * d;
        }
        if (err < best) best = err, bs = sc, bz = (int)zz;
    }
    *z = bz;
    double num = 0, den = 0;
    for (int l = 0; l < n; l++) {
        double v = rint(y[l] / bs) + bz;
        t[l] = (int)(v < tmin ? tmin : (v > tmax ? tmax : v));
        num += cnt[l] * y[l] * (t[l] - bz);
        den += cnt[l] * (double)(t[l] - bz) * (t[l] - bz);
    }
    *s = den > 0 ? (float)(num / den) : (float)bs;
    double err = 0;
    for (int l = 0; l < n; l++) {
        double d = (double)y[l] - (double)*s * (t[l] - bz);
        err += cnt[l] * d * d;
    }
    return sqrt(err / yy);
}

// Each channel's 2^b levels (the weight kind's decode) as int8 t_c and s_c (w_lut, w_iscale),
// weighted by how often the channel uses each level (levels: cout K codes, C order); w_lut_err
// is the layer's ||W - Ŵ|| / ||W||.
static int weight_tables(ExportLayer *L, const uint8_t *levels, Err *e) {
    int nl = 1 << L->w_bits, t[16], z;
    float y[16];
    double cnt[16];
    uint8_t codes[16];
    for (int l = 0; l < nl; l++) codes[l] = (uint8_t)l;
    L->w_lut = malloc((size_t)L->cout * (size_t)nl);
    L->w_iscale = malloc((size_t)L->cout * sizeof(float));
    if (!L->w_lut || !L->w_iscale) return err_set(e, ERR_NOMEM, "out of memory loading layer '%s'", L->layer->name);
    double num = 0, den = 0;
    for (int o = 0; o < L->cout; o++) {
        quantizer_ops(&L->wq)->decode(&L->wq, o, y, codes, (size_t)nl);
        memset(cnt, 0, sizeof cnt);
        for (int k = 0; k < L->K; k++) cnt[levels[(size_t)o * L->K + k]] += 1;
        double err = round_levels(y, cnt, nl, -127, 127, t, &L->w_iscale[o], &z), ww = 0;
        for (int l = 0; l < nl; l++) ww += cnt[l] * (double)y[l] * y[l];
        num += err * err * ww;  // the channel's ||W - Ŵ||²
        den += ww;
        for (int l = 0; l < nl; l++) L->w_lut[(size_t)o * nl + l] = (int8_t)t[l];
    }
    L->w_lut_err = den > 0 ? sqrt(num / den) : 0.0;
    L->w_ic = 128;  // the linear GEMM's u8 weight operand: t + 128
    L->w_umax = 255;
    return 0;
}

// Floats in order as unsigned keys (-inf < ... < -0 < +0 < ... < +inf), and back.
static uint32_t float_key(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}

static float key_float(uint32_t k) {
    uint32_t u = k & 0x80000000u ? k & 0x7fffffffu : ~k;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

static int encode1(const Quantizer *q, int k, float x) {
    uint8_t c;
    quantizer_ops(q)->encode(q, k, &c, &x, 1);
    return c;
}

// The smallest float x with encode(x) >= l (-inf: every x; NaN: none), by bisection over the
// ordered floats: with a non-decreasing encode, code(x) = #{l : x >= bound_l} is encode(x).
static float code_bound(const Quantizer *q, int k, int l) {
    uint32_t lo = float_key(-INFINITY), hi = float_key(INFINITY);
    if (encode1(q, k, -INFINITY) >= l) return -INFINITY;
    if (encode1(q, k, INFINITY) < l) return NAN;
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (encode1(q, k, key_float(mid)) >= l) hi = mid;
        else lo = mid;
    }
    return key_float(hi);
}

// Each entry's 2^b levels (the activation kind's decode) as u8 t on s_a (t - z), and the
// code thresholds (a_lut, a_bound, a_iscale, a_izero).
static int act_tables(ExportLayer *L, Err *e) {
    int nl = 1 << L->a_bits, n = L->entries, z;
    int *t = malloc((size_t)nl * sizeof(int));
    float *y = malloc((size_t)nl * sizeof(float));
    uint8_t *codes = malloc((size_t)nl);
    double *ones = malloc((size_t)nl * sizeof(double));  // no data at load time: every level alike
    L->a_lut = malloc((size_t)n * (size_t)nl);
    L->a_bound = malloc((size_t)n * (size_t)(nl - 1) * sizeof(float));
    L->a_iscale = malloc((size_t)n * sizeof(float));
    L->a_izero = malloc((size_t)n * sizeof(float));
    if (!t || !y || !codes || !ones || !L->a_lut || !L->a_bound || !L->a_iscale || !L->a_izero) {
        free(t), free(y), free(codes), free(ones);
        return err_set(e, ERR_NOMEM, "out of memory loading layer '%s'", L->layer->name);
    }
    for (int l = 0; l < nl; l++) codes[l] = (uint8_t)l, ones[l] = 1.0;
    L->a_lut_err = 0;
    for (int k = 0; k < n; k++) {
        quantizer_ops(&L->aq)->decode(&L->aq, k, y, codes, (size_t)nl);
        double err = round_levels(y, ones, nl, 0, 255, t, &L->a_iscale[k], &z);
        L->a_lut_err = err > L->a_lut_err ? err : L->a_lut_err;
        L->a_izero[k] = (float)z;
        for (int l = 0; l < nl; l++) L->a_lut[(size_t)k * nl + l] = (uint8_t)t[l];
        for (int l = 1; l < nl; l++) L->a_bound[(size_t)k * (nl - 1) + l - 1] = code_bound(&L->aq, k, l);
    }
    free(t), free(y), free(codes), free(ones);
    L->a_imax = 255;
    return 0;
}

/* ---- load time ----------------------------------------------------------------------- */

static void int_row(int8_t *dst, const ExportLayer *q, int o);

// The integer path's weight operands (export_int.h: w_s8, or w_col4 and w_colsum) from the
// packed rows. 0, or -1 when out of memory.
static int build_operands(ExportLayer *L) {
    size_t kp = (size_t)L->K4 * 4, co = (size_t)L->cout;
    int kzmax = 0;  // int_gemm_taps' tap sums: |Σ u (a - z) + kz Z| <= (255 + |kz|) a_imax cp < 2^31
    for (int o = 0; o < L->cout; o++) kzmax = abs(128 + L->zoff[o]) > kzmax ? abs(128 + L->zoff[o]) : kzmax;
    if (L->layer->kind != LAYER_LINEAR && L->a_token && int_gemm_taps_ok(L->a_imax) &&
        (255.0 + kzmax) * L->a_imax * (double)kp < 2147483647.0) {
        // int_gemm_taps' operands
        int8_t *row = malloc(kp);
        L->w_u8 = malloc(co * kp);
        L->kz = malloc(co * sizeof(int32_t));
        if (!row || !L->w_u8 || !L->kz) {
            free(row);
            return -1;
        }
        for (int o = 0; o < L->cout; o++) {
            int_row(row, L, o);
            for (size_t k = 0; k < kp; k++) L->w_u8[(size_t)o * kp + k] = (uint8_t)(row[k] + 128);
            L->kz[o] = 128 + L->zoff[o];
        }
        free(row);
        return 0;
    }
    if (L->layer->kind != LAYER_LINEAR) {
        if (!(L->w_s8 = malloc((co + 1) * kp))) return -1;
        for (int o = 0; o < L->cout; o++) int_row(L->w_s8 + (size_t)o * kp, L, o);
        int8_t *ones = L->w_s8 + co * kp;
        for (size_t k = 0; k < kp; k++) ones[k] = (int)(k % (size_t)L->cp) < L->cin ? 1 : 0;
        return 0;
    }
    int8_t *row = malloc(kp);
    L->w_col4 = malloc(kp * co);
    L->w_colsum = malloc(co * sizeof(int32_t));
    if (!row || !L->w_col4 || !L->w_colsum) {
        free(row);
        return -1;
    }
    // q of output o at column o of every k-group (0 past cin)
    for (size_t o = 0; o < co; o++) {
        int_row(row, L, (int)o);
        int32_t sum = 0;
        for (size_t k = 0; k < kp; k++) {
            uint8_t v = (int)k < L->cin ? (uint8_t)(row[k] + L->w_ic) : 0;
            L->w_col4[((k / 4) * co + o) * 4 + k % 4] = v;
            sum += v;
        }
        L->w_colsum[o] = sum;
    }
    free(row);
    return 0;
}

int export_layer_prepare(ExportLayer *L, const uint8_t *levels, const float *w_delta, const float *w_zero, Err *e) {
    ModelLayer *l = L->layer;
    int co = l->weight.shape[0];
    size_t K = l->weight.n / (size_t)co;
    L->cout = co;
    L->K = (int)K;
    L->cin = l->kind == LAYER_CONV2D ? l->weight.shape[1] : (int)K;
    L->kh = l->kind == LAYER_CONV2D ? l->weight.shape[2] : 1;
    L->kw = l->kind == LAYER_CONV2D ? l->weight.shape[3] : 1;
    L->cp = (L->cin + 3) / 4 * 4;
    L->K4 = L->kh * L->kw * L->cp / 4;
    L->cbits = pack_container_bits(L->w_bits);
    L->wc = L->cbits == 8 ? 128 : 0;
    size_t kp = (size_t)L->K4 * 4;
    L->row_bytes = pack_size(kp, L->cbits);
    L->wpack = malloc((size_t)co * L->row_bytes);
    L->w_delta = malloc((size_t)co * sizeof(float));
    L->w_zero = malloc((size_t)co * sizeof(float));
    L->zoff = malloc((size_t)co * sizeof(int32_t));
    L->rsum = malloc((size_t)co * sizeof(int32_t));
    uint8_t *row = malloc(kp);
    if (!L->wpack || !L->w_delta || !L->w_zero || !L->zoff || !L->rsum || !row) {
        free(row);
        return err_set(e, ERR_NOMEM, "out of memory loading layer '%s'", l->name);
    }
    memcpy(L->w_delta, w_delta, (size_t)co * sizeof(float));
    memcpy(L->w_zero, w_zero, (size_t)co * sizeof(float));
    quantizer_setup(&L->wq, L->w_kind, L->w_bits, 1, co, L->w_delta, L->w_zero, NULL, NULL);
    if (L->w_param) quantizer_setup_param(&L->wq, L->w_param, NULL);
    quantizer_setup_side(&L->wq, L->n_side, L->side_idx, L->side_val);
    // The int32 sums must not overflow: bound |D| + |zoff| S + |z_a| |R| per channel (S <=
    // 255 K) in double; zero points far outside the level range get the float path.
    double amax = (double)((1 << L->a_bits) - 1), zamax = 0;
    int pad_ok = 1;
    for (int i = 0; i < L->entries; i++) {
        double z = fabs((double)L->a_zero[i]);
        zamax = z > zamax ? z : zamax;
        if (L->a_zero[i] < 0.0f || L->a_zero[i] > (float)amax) pad_ok = 0;
    }
    // the integer kernels compute uniform levels (qkind.h "affine"), or a lut kind's levels
    // rounded to 8-bit tables when they are fine enough
    const QKindOps *wops = quantizer_ops(&L->wq), *aops = quantizer_ops(&L->aq);
    int w_tab = !wops->affine && wops->lut && L->w_bits <= 4 && !L->n_side;
    int a_tab = !aops->affine && aops->lut;
    L->w_iscale = L->w_delta;
    L->w_ic = L->wc;
    L->w_umax = (1 << L->cbits) - 1;
    L->a_imax = (1 << L->a_bits) - 1;
    if ((w_tab && weight_tables(L, levels, e)) || (a_tab && act_tables(L, e))) {
        free(row);
        return e->code;
    }
    if (L->a_lut) {
        zamax = 255;
        pad_ok = 1;  // the table's z is in 0..255
    }
    int taps = L->kh * L->kw;
    if (L->a_token) {
        zamax = amax;  // each token's z is in 0..2^b - 1
        pad_ok = 1;    // padding contributes through a step of 0 (int_conv_token)
        if (l->kind == LAYER_CONV2D && !(L->rsum_tap = calloc((size_t)co * taps, sizeof(int32_t)))) {
            free(row);
            return err_set(e, ERR_NOMEM, "out of memory loading layer '%s'", l->name);
        }
    }
    int ok = (l->kind == LAYER_LINEAR || l->kind == LAYER_CONV2D) && (wops->affine || L->w_lut) &&
             (aops->affine || L->a_lut);
    if (l->kind == LAYER_CONV2D && l->pad > 0 && !pad_ok) ok = 0;  // padding needs the level z_a
    L->wmax = 0;
    for (int o = 0; o < co; o++) {
        const uint8_t *q = levels + (size_t)o * K;
        double wz = (double)w_zero[o];
        if (fabs(wz) > (double)(1 << 20)) {
            ok = 0;
            wz = 0;
        }
        long long r = 0;
        const int8_t *t = L->w_lut ? L->w_lut + ((size_t)o << L->w_bits) : NULL;
        if (t) wz = 0;  // the table's integers are centred: W ~ s_c t, zoff = 0, R = Σ t
        memset(row, L->wc, kp);  // padded channels: stored as 0
        for (int ci = 0; ci < L->cin; ci++)
            for (int ki = 0; ki < L->kh; ki++)
                for (int kj = 0; kj < L->kw; kj++) {
                    uint8_t v = q[((size_t)ci * L->kh + ki) * L->kw + kj];
                    row[kpos(L, ci, ki, kj)] = v;
                    int iv = t ? t[v] : (int)v - L->wc;  // the s8 weight the kernel multiplies
                    long long dr = t ? (long long)iv : (long long)v - (long long)wz;
                    r += dr;
                    if (L->rsum_tap) L->rsum_tap[(size_t)o * taps + ki * L->kw + kj] += (int32_t)dr;
                    int a = abs(iv);
                    L->wmax = a > L->wmax ? a : L->wmax;
                }
        pack_ints(L->wpack + (size_t)o * L->row_bytes, row, kp, L->cbits);
        double zo = t ? 0.0 : wz - L->wc;
        double bound = (double)kp * 255.0 * 128.0 + fabs(zo) * 255.0 * (double)K + zamax * fabs((double)r);
        if (bound >= 2147483647.0 || fabs((double)r) >= 2147483647.0) ok = 0;
        L->zoff[o] = ok ? (int32_t)zo : 0;
        L->rsum[o] = ok ? (int32_t)r : 0;
    }
    free(row);
    if (L->w_lut_err > EXPORT_LUT_MAX_ERR || L->a_lut_err > EXPORT_LUT_MAX_ERR) ok = 0;  // too coarse: float path
    L->int_ok = ok;
    L->lut = ok && (L->w_lut || L->a_lut);
    if (ok && build_operands(L)) return err_set(e, ERR_NOMEM, "out of memory loading layer '%s'", l->name);
    if (!L->n_side) return 0;
    size_t cnt = (size_t)co * (size_t)L->n_side;
    L->side_kpos = malloc(cnt * sizeof *L->side_kpos);
    L->side_coef = malloc(cnt * sizeof *L->side_coef);
    if (!L->side_kpos || !L->side_coef) return err_set(e, ERR_NOMEM, "out of memory loading layer '%s'", l->name);
    for (size_t j = 0; j < cnt; j++) {
        int o = (int)(j / (size_t)L->n_side), p = L->side_idx[j];  // C order: p = (ci kh + ki) kw + kj
        int ci = p / taps, ki = p % taps / L->kw, kj = p % L->kw;
        L->side_kpos[j] = (int32_t)kpos(L, ci, ki, kj);
        float dense = ((float)levels[(size_t)o * K + (size_t)p] - w_zero[o]) * w_delta[o];
        L->side_coef[j] = L->side_val[j] - dense;
    }
    if (l->kind != LAYER_LINEAR) return 0;
    L->side_kpos_t = malloc(cnt * sizeof *L->side_kpos_t);
    L->side_coef_t = malloc(cnt * sizeof *L->side_coef_t);
    if (!L->side_kpos_t || !L->side_coef_t) return err_set(e, ERR_NOMEM, "out of memory loading layer '%s'", l->name);
    for (size_t j = 0; j < cnt; j++) {
        size_t o = j / (size_t)L->n_side, s = j % (size_t)L->n_side;
        L->side_kpos_t[s * (size_t)co + o] = L->side_kpos[j];
        L->side_coef_t[s * (size_t)co + o] = L->side_coef[j];
    }
    return 0;
}

void export_layer_release(ExportLayer *L) {
    free(L->a_delta);
    free(L->a_zero);
    free(L->w_param);
    free(L->a_param);
    free(L->wpack);
    free(L->w_zero);
    free(L->zoff);
    free(L->rsum);
    free(L->rsum_tap);
    free(L->side_idx);
    free(L->side_val);
    free(L->side_kpos);
    free(L->side_coef);
    free(L->side_kpos_t);
    free(L->side_coef_t);
    free(L->w_s8);
    free(L->w_u8);
    free(L->kz);
    free(L->w_col4);
    free(L->w_colsum);
    free(L->w_lut);
    if (L->w_iscale != L->w_delta) free(L->w_iscale);
    free(L->w_delta);
    free(L->a_lut);
    free(L->a_bound);
    free(L->a_iscale);
    free(L->a_izero);
}

size_t export_layer_level_bytes(const ExportLayer *L) { return (size_t)L->cout * L->row_bytes; }

size_t export_layer_operand_bytes(const ExportLayer *L) {
    size_t kp = (size_t)L->K4 * 4, co = (size_t)L->cout;
    size_t side_t = L->side_kpos_t ? co * (size_t)L->n_side * (sizeof(int32_t) + sizeof(float)) : 0;
    return (L->w_s8 ? (co + 1) * kp : 0) + (L->w_u8 ? co * kp + co * sizeof(int32_t) : 0) +
           (L->w_col4 ? kp * co + co * sizeof(int32_t) : 0) + side_t;
}

size_t export_layer_scale_bytes(const ExportLayer *L) {
    // per channel Δ_w, z_w, zoff, rsum; per side entry its position, value, stored position,
    // coefficient; the level tables (per channel 2^b int8 and s_c; per entry 2^b u8, the
    // 2^b - 1 thresholds, s_a and z)
    size_t tab = L->w_lut ? (size_t)L->cout * (((size_t)1 << L->w_bits) + sizeof(float)) : 0;
    if (L->a_lut) tab += (size_t)L->entries * (((size_t)1 << L->a_bits) * (1 + sizeof(float)) + sizeof(float));
    return (size_t)L->cout * (2 * sizeof(float) + 2 * sizeof(int32_t)) +
           (size_t)L->cout * (size_t)L->n_side * (2 * sizeof(int32_t) + 2 * sizeof(float)) + tab;
}

// One packed row as s8 weights q - c (K4*4 of them).
static void unpack_row_s8(int8_t *dst, const uint8_t *src, int K4, int cbits, int wc) {
    size_t kp = (size_t)K4 * 4;
    if (cbits == 3) {  // groups of 8 levels in 3 bytes; a row of K4*4 levels may end in half a group
        size_t i = 0;
        for (; i + 8 <= kp; i += 8, src += 3) {
            uint32_t w = (uint32_t)src[0] | (uint32_t)src[1] << 8 | (uint32_t)src[2] << 16;
            for (int j = 0; j < 8; j++) dst[i + (size_t)j] = (int8_t)((w >> (3 * j)) & 7u);
        }
        if (i < kp) {  // 4 levels in 12 bits
            uint32_t w = (uint32_t)src[0] | (uint32_t)src[1] << 8;
            for (int j = 0; j < 4; j++) dst[i + (size_t)j] = (int8_t)((w >> (3 * j)) & 7u);
        }
    } else if (cbits == 4) {
        for (size_t i = 0; i < kp / 2; i++) {
            dst[2 * i] = (int8_t)(src[i] & 15);
            dst[2 * i + 1] = (int8_t)(src[i] >> 4);
        }
    } else if (cbits == 2) {
        for (size_t i = 0; i < kp / 4; i++) {
            uint8_t b = src[i];
            dst[4 * i] = (int8_t)(b & 3);
            dst[4 * i + 1] = (int8_t)((b >> 2) & 3);
            dst[4 * i + 2] = (int8_t)((b >> 4) & 3);
            dst[4 * i + 3] = (int8_t)(b >> 6);
        }
    } else {
        for (size_t i = 0; i < kp; i++) dst[i] = (int8_t)((int)src[i] - wc);
    }
}

// W_eff in the weight's own (Cout, Cin, kh, kw) order into w, from the stored rows: each
// row's levels back in C order (lv, K bytes), decoded by the weight kind. row: K4*4 bytes.
static void dequant_into(const ExportLayer *L, float *w, int8_t *row, uint8_t *lv) {
    const QKindOps *ops = quantizer_ops(&L->wq);
    for (int o = 0; o < L->cout; o++) {
        unpack_row_s8(row, L->wpack + (size_t)o * L->row_bytes, L->K4, L->cbits, L->wc);
        for (int ci = 0; ci < L->cin; ci++)
            for (int ki = 0; ki < L->kh; ki++)
                for (int kj = 0; kj < L->kw; kj++)
                    lv[((size_t)ci * L->kh + ki) * L->kw + kj] = (uint8_t)(row[kpos(L, ci, ki, kj)] + L->wc);
        ops->decode(&L->wq, o, w + (size_t)o * L->K, lv, (size_t)L->K);
    }
}

int export_layer_dequant(const ExportLayer *L, float *w) {
    int8_t *row = malloc((size_t)L->K4 * 4);
    uint8_t *lv = malloc((size_t)L->K);
    int ok = row && lv;
    if (ok) dequant_into(L, w, row, lv);
    if (ok) rotate_apply(w, (size_t)L->cout, L->cin, (size_t)L->kh * (size_t)L->kw, L->rot);
    free(row);
    free(lv);
    return ok ? 0 : ERR_NOMEM;
}

/* ---- the float path ------------------------------------------------------------------ */

// fake_quant(x) with the table entry, then the FP op on W_eff (dequantized into the arena).
static Tensor *float_forward(Ctx *c, ModelLayer *l, ExportLayer *q, Tensor *x, int entry) {
    Tensor *xq = q->a_token ? t_fake_quant_token(c, x, &q->aq, entry, l->kind != LAYER_LINEAR)
                            : t_fake_quant(c, x, &q->aq, entry);
    Tensor *w = tensor_new(c, l->weight.ndim, l->weight.shape);
    if (!xq || !w) return NULL;
    int8_t *row = ctx_alloc(c, (size_t)q->K4 * 4);
    uint8_t *lv = ctx_alloc(c, (size_t)q->K);
    if (!row || !lv) return NULL;
    dequant_into(q, w->data, row, lv);
    Tensor *b = l->bias.data ? &l->bias : NULL;
    if (l->kind == LAYER_LINEAR) return t_linear(c, xq, w, b);
    return t_conv2d(c, xq, w, b, l->stride, l->pad);
}

/* ---- the integer path ---------------------------------------------------------------- */

// y[i] += c (col[4 i] - za) for i < n: one side-table weight's contribution over a column of
// the col4 im2col (its input level is every 4th byte). Compiled for AVX-512, AVX2 and baseline
// (picked at load time): the byte stride keeps the baseline loop scalar. Same bits in each.
/* A linear layer's side correction of one output row y (co): y[o] += c[s][o] av[kpos[s][o]]
   for each side entry s in order, av the row's activation levels minus z_a (exact as floats)
   and c = side_coef Δ_a: per output the same products, added in the same order, as the
   (o, s) loop of the float reference, but over the outputs (gathers) rather than entries. */
FASTMATH_CLONES static void side_row(float *restrict y, const float *restrict av, const int32_t *restrict kpos,
                                     const float *restrict c, int co, int n_side) {
    for (int s = 0; s < n_side; s++) {
        const int32_t *kp = kpos + (size_t)s * co;
        const float *cs = c + (size_t)s * co;
        for (int o = 0; o < co; o++) y[o] += cs[o] * av[kp[o]];
    }
}

/* One output row of a conv, image g and output o (P positions): y = (D - zoff S - z_a R) Δ_a Δ_w
   + bias, then the side table's entries: y += c Δ_a (a - z_a), the activation levels being A's
   bytes at (group kpos/4, byte kpos%4) of the image's columns (Ag: A from the image's first
   column on, n columns a group). One call per row, so both loops run in the clone's vectors. */
FASTMATH_CLONES static void conv_row(float *restrict yr, const int32_t *restrict d, const int32_t *restrict sg,
                                     size_t P, float sc, float b, int32_t zo, int32_t zr, const uint8_t *restrict Ag,
                                     size_t n, const int32_t *kpos, const float *coef, int n_side, float da, int za) {
    for (size_t i = 0; i < P; i++) yr[i] = (float)(d[i] - zo * sg[i] - zr) * sc + b;
    for (int s = 0; s < n_side; s++) {
        size_t kp = (size_t)kpos[s];
        // the level is byte kp % 4 of each column's 4-byte word: read as words (as im2col_words
        // wrote them), so that the loop runs in 32-bit lanes at any P
        const uint32_t *col = (const uint32_t *)(const void *)Ag + (kp / 4) * n;
        int sh = 8 * (int)(kp % 4);
        float c = coef[s] * da;
        for (size_t i = 0; i < P; i++) yr[i] += c * (float)((int)((col[i] >> sh) & 0xFFu) - za);
    }
}

/* One output row of a per-token conv at one tap (int_conv_token): y += Δ_w Δ_src (D - zoff S - z_src R)
   over the row's P positions, then the side entries that sit at this tap (kpos / cp == tap). */
FASTMATH_CLONES static void conv_token_row(float *yr, const int32_t *d, const int32_t *sg, const float *ds,
                                           const float *zs, size_t P, float sw, int32_t zo, int32_t rt,
                                           const uint8_t *Ag, size_t n, const int32_t *kpos, const float *coef,
                                           int n_side, int tap, int cp) {
    for (size_t i = 0; i < P; i++) yr[i] += (float)(d[i] - zo * sg[i] - (int32_t)zs[i] * rt) * (ds[i] * sw);
    for (int s = 0; s < n_side; s++) {
        size_t kp = (size_t)kpos[s];
        if ((int)(kp / (size_t)cp) != tap) continue;
        const uint8_t *col = Ag + (kp / 4) * n * 4 + kp % 4;
        float cf = coef[s];
        for (size_t i = 0; i < P; i++) yr[i] += cf * ds[i] * ((float)col[4 * i] - zs[i]);
    }
}

/* One row of a linear layer's output from its GEMM row cr (int_linear): the per-output
   constants k1, zw, sc, bo and the row's level sum s. Compiled for the vector widths (the
   products of int32 need AVX2's pmulld to vectorize). */
FASTMATH_CLONES static void linear_row(float *yr, const int32_t *cr, const int32_t *k1, const int32_t *zw,
                                       const float *sc, const float *bo, int32_t s, int co) {
    for (int o = 0; o < co; o++) yr[o] = (float)(cr[o] + k1[o] - zw[o] * s) * sc[o] + bo[o];
}

// linear_row of a per-token layer: the row's own zero point z (times R) and step d.
FASTMATH_CLONES static void linear_token_row(float *yr, const int32_t *cr, const int32_t *k1, const int32_t *rsum,
                                             const int32_t *zw, const float *ws, const float *bo, int32_t z, int32_t s,
                                             float d, int co) {
    for (int o = 0; o < co; o++) yr[o] = (float)(cr[o] + k1[o] - z * rsum[o] - zw[o] * s) * (d * ws[o]) + bo[o];
}

// The u8 operands of n activations of layer q with table entry `entry`: uniform levels
// (int_quant_u8 with Δ_a, z_a), or the level table's (int_lut_u8: the code by thresholds).
static void quant_act(const ExportLayer *q, int entry, uint8_t *xq, const float *x, size_t n) {
    if (q->a_lut) {
        int nb = (1 << q->a_bits) - 1;
        int_lut_u8(q->model->kernel, xq, x, n, q->a_bound + (size_t)entry * nb, nb, q->a_lut + ((size_t)entry << q->a_bits));
        return;
    }
    int_quant_u8(q->model->kernel, xq, x, n, q->aq.delta.data[entry], q->aq.zero.data[entry], (1 << q->a_bits) - 1);
}

// Operands of n activations, in parallel chunks.
static void quantize(const ExportLayer *q, int entry, uint8_t *xq, const float *x, size_t n) {
    size_t chunks = (n + QUANT_CHUNK - 1) / QUANT_CHUNK;
    PAR_FOR(schedule(static), n >= GEMM_OMP_MIN_WORK,
    for (size_t i = 0; i < chunks; i++) {
        size_t a = i * QUANT_CHUNK, len = n - a < QUANT_CHUNK ? n - a : QUANT_CHUNK;
        quant_act(q, entry, xq + a, x + a, len);
    });
}

// Row o of the layer's s8 weights as the kernels multiply them (K4*4): q - c, or the weight
// table's t_c[q] (0 at the padded channels).
static void int_row(int8_t *dst, const ExportLayer *q, int o) {
    unpack_row_s8(dst, q->wpack + (size_t)o * q->row_bytes, q->K4, q->cbits, q->wc);
    if (!q->w_lut) return;
    const int8_t *t = q->w_lut + ((size_t)o << q->w_bits);  // w_bits <= 4: wc = 0, dst holds the codes
    for (int tap = 0; tap < q->kh * q->kw; tap++) {
        int8_t *d = dst + (size_t)tap * q->cp;
        for (int ci = 0; ci < q->cin; ci++) d[ci] = t[(uint8_t)d[ci]];
        for (int ci = q->cin; ci < q->cp; ci++) d[ci] = 0;
    }
}

/* One image's part of a col4 row of words when stride is 1 and Wo == W: all valid output
   rows read one block of the plane src (H, W) shifted by ki - p rows and kj - p columns, so
   they are one copy; the columns that wrapped around row ends are set to pad after (as
   conv.c's im2col_row_same_width, on 4-channel words). */
static void im2col_words_same_width(uint32_t *dst, const uint32_t *src, int H, int W, int p, int ki, int kj,
                                    int Ho, uint32_t pad) {
    int oh0 = p - ki > 0 ? p - ki : 0, oh1 = H + p - ki < Ho ? H + p - ki : Ho;
    if (oh1 < oh0) oh1 = oh0;
    for (size_t i = 0; i < (size_t)oh0 * W; i++) dst[i] = pad;
    for (size_t i = (size_t)oh1 * W; i < (size_t)Ho * W; i++) dst[i] = pad;
    if (oh1 == oh0) return;
    uint32_t *blk = dst + (size_t)oh0 * W;
    long s0 = (long)(oh0 - p + ki) * W + (kj - p), n = (long)(oh1 - oh0) * W, plane = (long)H * W;
    long e0 = s0 < 0 ? -s0 : 0, e1 = s0 + n > plane ? plane - s0 : n;
    if (e1 < e0) e1 = e0;
    for (long i = 0; i < e0; i++) blk[i] = pad;
    if (e1 > e0) memcpy(blk + e0, src + s0 + e0, (size_t)(e1 - e0) * sizeof(uint32_t));
    for (long i = e1; i < n; i++) blk[i] = pad;
    int lo = p - kj > 0 ? p - kj : 0, hi = W + p - kj < W ? W + p - kj : W;  // valid ow: iw = ow - p + kj in [0, W)
    for (int ow = 0; ow < lo; ow++)
        for (int r = 0; r < oh1 - oh0; r++) blk[(size_t)r * W + ow] = pad;
    for (int ow = hi; ow < W; ow++)
        for (int r = 0; r < oh1 - oh0; r++) blk[(size_t)r * W + ow] = pad;
}

/* A (col4 as words, K4 = kh kw C4 groups of ld columns) from x4 (N, C4, H, W) words of 4
   channel levels: group (ki kw + kj) C4 + c4, column g P + oh Wo + ow holds
   x4[g, c4, oh s - p + ki, ow s - p + kj], pad outside the image. */
static void im2col_words(uint32_t *A, size_t ld, const uint32_t *x4, int N, int C4, int H, int W, int kh, int kw,
                         int s, int p, int Ho, int Wo, uint32_t pad) {
    int groups = kh * kw * C4;
    size_t P = (size_t)Ho * Wo;
    int same_width = s == 1 && Wo == W;
    PAR_FOR(schedule(static) collapse(2), (size_t)groups * ld >= GEMM_OMP_MIN_WORK / 4,
    for (int gk = 0; gk < groups; gk++) {
        for (int g = 0; g < N; g++) {
            int tap = gk / C4, c4 = gk % C4, ki = tap / kw, kj = tap % kw;
            const uint32_t *src = x4 + ((size_t)g * C4 + c4) * H * W;
            uint32_t *dst = A + (size_t)gk * ld + (size_t)g * P;
            if (same_width) {
                im2col_words_same_width(dst, src, H, W, p, ki, kj, Ho, pad);
                continue;
            }
            for (int oh = 0; oh < Ho; oh++) {
                int ih = oh * s - p + ki;
                uint32_t *d = dst + (size_t)oh * Wo;
                for (int ow = 0; ow < Wo; ow++) {
                    int iw = ow * s - p + kj;
                    d[ow] = ih >= 0 && ih < H && iw >= 0 && iw < W ? src[(size_t)ih * W + iw] : pad;
                }
            }
        }
    });
}

/* Group g of interleave4: A[(g n + j) 4 + i] = rows[4g + i][j] over j. */
static void interleave4_group(uint8_t *A, const uint8_t *rows, int g, size_t n) {
    const uint8_t *r0 = rows + (size_t)4 * g * n, *r1 = r0 + n, *r2 = r1 + n, *r3 = r2 + n;
    uint8_t *d = A + (size_t)g * n * 4;
    size_t j = 0;
#if defined(__SSE2__)
    // two rounds of unpacking: bytes of rows (0,1) and (2,3) into pairs, pairs into quads
    for (; j + 16 <= n; j += 16) {
        __m128i a = _mm_loadu_si128((const __m128i *)(r0 + j)), b = _mm_loadu_si128((const __m128i *)(r1 + j));
        __m128i c = _mm_loadu_si128((const __m128i *)(r2 + j)), e = _mm_loadu_si128((const __m128i *)(r3 + j));
        __m128i ab0 = _mm_unpacklo_epi8(a, b), ab1 = _mm_unpackhi_epi8(a, b);
        __m128i ce0 = _mm_unpacklo_epi8(c, e), ce1 = _mm_unpackhi_epi8(c, e);
        _mm_storeu_si128((__m128i *)(d + 4 * j), _mm_unpacklo_epi16(ab0, ce0));
        _mm_storeu_si128((__m128i *)(d + 4 * j + 16), _mm_unpackhi_epi16(ab0, ce0));
        _mm_storeu_si128((__m128i *)(d + 4 * j + 32), _mm_unpacklo_epi16(ab1, ce1));
        _mm_storeu_si128((__m128i *)(d + 4 * j + 48), _mm_unpackhi_epi16(ab1, ce1));
    }
#endif
    for (; j < n; j++) {
        d[4 * j] = r0[j];
        d[4 * j + 1] = r1[j];
        d[4 * j + 2] = r2[j];
        d[4 * j + 3] = r3[j];
    }
}

/* A (col4, K4 groups of n columns) from rows (K4*4, n): A[(g n + j) 4 + i] = rows[4g + i][j]. */
static void interleave4(uint8_t *A, const uint8_t *rows, int K4, size_t n) {
    PAR_FOR(schedule(static), (size_t)K4 * n * 4 >= GEMM_OMP_MIN_WORK,
    for (int g = 0; g < K4; g++) interleave4_group(A, rows, g, n););
}

// int_gemm of the layer's s8 rows (and ones row) against A (n columns) into Cm (cout + 1, n)
// int32 from the arena.
static int32_t *gemm(Ctx *c, const ExportLayer *q, const uint8_t *A, size_t n) {
    int32_t *Cm = ctx_alloc(c, (size_t)(q->cout + 1) * n * sizeof(int32_t));
    if (!Cm) return NULL;
    int_gemm(q->model->kernel, Cm, n, q->w_s8, (size_t)q->K4 * 4, A, n, q->cout + 1, (int)n, q->K4,
             q->wmax > 1 ? q->wmax : 1, q->a_imax);
    return Cm;
}

// Operands of `rows` rows of len floats into rows of lenp >= len bytes (the rest 0).
static void quantize_rows(const ExportLayer *q, int entry, uint8_t *xq, const float *x, size_t rows, size_t len,
                          size_t lenp) {
    if (len == lenp) {
        quantize(q, entry, xq, x, rows * len);
        return;
    }
    PAR_FOR(schedule(static), rows * len >= GEMM_OMP_MIN_WORK,
    for (size_t r = 0; r < rows; r++) {
        quant_act(q, entry, xq + r * lenp, x + r * len, len);
        memset(xq + r * lenp + len, 0, lenp - len);
    });
}

// A conv's input x checked against the layer, and its output size (Ho, Wo): 0, or -1 with c->err set.
static int conv_out_size(Ctx *c, const ModelLayer *l, const ExportLayer *q, const Tensor *x, int *Ho, int *Wo) {
    if (x->ndim != 4 || x->shape[1] != q->cin) {
        err_set(&c->err, ERR_SHAPE, "export layer '%s': input of %d dims, %d channels (expected 4, %d)", l->name,
                x->ndim, x->ndim > 1 ? x->shape[1] : 0, q->cin);
        return -1;
    }
    int H = x->shape[2], W = x->shape[3];
    *Ho = (H + 2 * l->pad - q->kh) / l->stride + 1;
    *Wo = (W + 2 * l->pad - q->kw) / l->stride + 1;
    if (*Ho < 1 || *Wo < 1 || (size_t)x->shape[0] * (size_t)*Ho * (size_t)*Wo > INT_MAX) {
        err_set(&c->err, ERR_SHAPE, "export layer '%s': %dx%d input gives no output or too many", l->name, H, W);
        return -1;
    }
    return 0;
}

static Tensor *int_conv(Ctx *c, ModelLayer *l, ExportLayer *q, Tensor *x, int entry, float da, int za) {
    int Ho, Wo;
    if (conv_out_size(c, l, q, x, &Ho, &Wo)) return NULL;
    int N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    int kh = q->kh, kw = q->kw, s = l->stride, p = l->pad, C4 = q->cp / 4;
    size_t P = (size_t)Ho * Wo, n = (size_t)N * P, HW = (size_t)H * W;
    Tensor *y = tensor_new4(c, N, q->cout, Ho, Wo);
    if (!y) return NULL;
    size_t mark = arena_mark(&c->arena);
    size_t nxp = (size_t)N * q->cp * HW;
    uint8_t *xq = ctx_alloc(c, nxp), *x4 = ctx_alloc(c, nxp), *A = ctx_alloc(c, (size_t)q->K4 * 4 * n);
    if (!xq || !x4 || !A) return NULL;
    quantize_rows(q, entry, xq, x->data, (size_t)N, (size_t)C * HW, (size_t)q->cp * HW);
    // planes (g, 4 c4 .. 4 c4 + 3) -> words of 4 channel levels: the same interleave as col4
    interleave4(x4, xq, N * C4, HW);
    uint32_t pad = (uint32_t)za * 0x01010101u;
    im2col_words((uint32_t *)(void *)A, n, (const uint32_t *)(const void *)x4, N, C4, H, W, kh, kw, s, p, Ho, Wo,
                 pad);
    int32_t *Cm = gemm(c, q, A, n);
    if (!Cm) return NULL;
    const int32_t *S = Cm + (size_t)q->cout * n;
    const float *bias = l->bias.data;
    int co = q->cout;
    PAR_FOR(schedule(static) collapse(2), (size_t)co * n >= GEMM_OMP_MIN_WORK,
    for (int g = 0; g < N; g++) {
        for (int o = 0; o < co; o++) {
            size_t j = (size_t)o * q->n_side;
            conv_row(y->data + ((size_t)g * co + o) * P, Cm + (size_t)o * n + (size_t)g * P, S + (size_t)g * P, P,
                     da * q->w_iscale[o], bias ? bias[o] : 0.0f, q->zoff[o], za * q->rsum[o],
                     A + (size_t)g * P * 4, n, q->n_side ? q->side_kpos + j : NULL,
                     q->n_side ? q->side_coef + j : NULL, q->n_side, da, za);
        }
    });
    arena_release(&c->arena, mark);
    return y;
}

/* A per-token conv when its activations do not fit int_gemm_taps (a_bits > 6): every input
   pixel has its own (Δ, z), which do not factor out of im2col's columns (a column mixes kh kw
   pixels), so the GEMM runs tap by tap over the tap's cp channels and each tap's sums are
   rescaled by the step of the pixel it read:
       y[o, j] = bias[o] + Σ_tap Δ_w[o] Δ_src (D_tap - zoff S_tap - z_src R_tap[o])
   with D_tap, S_tap the tap's rows of the GEMM (weights, ones), R_tap = rsum_tap, and Δ_src = 0
   where the tap reads padding. Side-table entries add coef Δ_src (a - z_src) at their tap. */
static Tensor *int_conv_token_bytap(Ctx *c, ModelLayer *l, ExportLayer *q, Tensor *x, int entry) {
    int Ho, Wo;
    if (conv_out_size(c, l, q, x, &Ho, &Wo)) return NULL;
    int N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    int kh = q->kh, kw = q->kw, s = l->stride, p = l->pad, C4 = q->cp / 4, co = q->cout;
    size_t P = (size_t)Ho * Wo, n = (size_t)N * P, HW = (size_t)H * W;
    Tensor *y = tensor_new4(c, N, co, Ho, Wo);
    if (!y) return NULL;
    size_t mark = arena_mark(&c->arena);
    size_t nxp = (size_t)N * q->cp * HW;
    uint8_t *xq = ctx_alloc(c, nxp), *x4 = ctx_alloc(c, nxp), *A = ctx_alloc(c, (size_t)q->K4 * 4 * n);
    float *dpix = ctx_alloc(c, 2 * (size_t)N * HW * sizeof(float)), *zpix = dpix ? dpix + (size_t)N * HW : NULL;
    float *dsrc = ctx_alloc(c, 2 * n * sizeof(float)), *zsrc = dsrc ? dsrc + n : NULL;
    int32_t *Cm = ctx_alloc(c, (size_t)(co + 1) * n * sizeof(int32_t));
    if (!xq || !x4 || !A || !dpix || !dsrc || !Cm) return NULL;
    token_quant_levels(xq, (size_t)q->cp * HW, dpix, zpix, x->data, (size_t)N, (size_t)C, HW,
                       q->aq.delta.data[entry], q->a_bits);
    interleave4(x4, xq, N * C4, HW);
    im2col_words((uint32_t *)(void *)A, n, (const uint32_t *)(const void *)x4, N, C4, H, W, kh, kw, s, p, Ho, Wo, 0);
    const float *bias = l->bias.data;
    PAR_FOR(schedule(static), (size_t)co * n >= GEMM_OMP_MIN_WORK,
    for (size_t r = 0; r < (size_t)N * co; r++) {
        float b = bias ? bias[r % co] : 0.0f, *yr = y->data + r * P;
        for (size_t i = 0; i < P; i++) yr[i] = b;
    });
    int taps = kh * kw, ns = q->n_side;
    size_t kp = (size_t)q->K4 * 4;
    for (int tap = 0; tap < taps; tap++) {
        int ki = tap / kw, kj = tap % kw;
        int_gemm(q->model->kernel, Cm, n, q->w_s8 + (size_t)tap * q->cp, kp, A + (size_t)tap * C4 * n * 4, n, co + 1,
                 (int)n, C4, q->wmax > 1 ? q->wmax : 1, q->a_imax);
        // the step and zero point of the pixel each column read at this tap (0: padding)
        for (int g = 0; g < N; g++)
            for (int oh = 0; oh < Ho; oh++)
                for (int ow = 0; ow < Wo; ow++) {
                    int ih = oh * s - p + ki, iw = ow * s - p + kj;
                    size_t j = (size_t)g * P + (size_t)oh * Wo + ow, src = (size_t)g * HW + (size_t)ih * W + iw;
                    int in = ih >= 0 && ih < H && iw >= 0 && iw < W;
                    dsrc[j] = in ? dpix[src] : 0.0f;
                    zsrc[j] = in ? zpix[src] : 0.0f;
                }
        const int32_t *Sr = Cm + (size_t)co * n;
        PAR_FOR(schedule(static) collapse(2), (size_t)co * n >= GEMM_OMP_MIN_WORK,
        for (int g = 0; g < N; g++) {
            for (int o = 0; o < co; o++)
                conv_token_row(y->data + ((size_t)g * co + o) * P, Cm + (size_t)o * n + (size_t)g * P,
                               Sr + (size_t)g * P, dsrc + (size_t)g * P, zsrc + (size_t)g * P, P, q->w_iscale[o],
                               q->zoff[o], q->rsum_tap[(size_t)o * taps + tap], A + (size_t)g * P * 4, n,
                               ns ? q->side_kpos + (size_t)o * ns : NULL, ns ? q->side_coef + (size_t)o * ns : NULL,
                               ns, tap, q->cp);
        });
    }
    arena_release(&c->arena, mark);
    return y;
}

/* A per-token conv (token_quant.h): every input pixel has its own (Δ, z), which do not factor out
   of im2col's columns (a column mixes kh kw pixels). So the columns hold the levels minus their
   pixel's zero point (s8, 0 at padding) and int_gemm_taps keeps each tap's sum exact in int32,
   rescaling it by the step of the pixel it read before adding it up in float:
       y[o, j] = bias[o] + Δ_w[o] Σ_tap Δ_src (Σ_c (w_s8 - zoff)(a - z_src))
   where Σ_c (w_s8 - zoff)(a - z) = Σ_c (w_s8 + 128)(a - z) - (128 + zoff) T_src, T the pixel's
   Σ_c (a - z): the kernel's u8 weights w_u8, kz = 128 + zoff and Z = -T. Side-table entries add
   coef Δ_src (a - z_src) at their tap (int_gemm_taps adds them on each tile). The centred levels
   come 4 channels to a word in one pass (token_quant_words) and the kernel writes y's (N, cout,
   P) layout itself. */
static Tensor *int_conv_token(Ctx *c, ModelLayer *l, ExportLayer *q, Tensor *x, int entry) {
    if (!q->w_u8) return int_conv_token_bytap(c, l, q, x, entry);
    int Ho, Wo;
    if (conv_out_size(c, l, q, x, &Ho, &Wo)) return NULL;
    int N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    int kh = q->kh, kw = q->kw, s = l->stride, p = l->pad, C4 = q->cp / 4, co = q->cout, taps = kh * kw;
    size_t P = (size_t)Ho * Wo, n = (size_t)N * P, HW = (size_t)H * W;
    Tensor *y = tensor_new4(c, N, co, Ho, Wo);
    if (!y) return NULL;
    size_t mark = arena_mark(&c->arena);
    uint32_t *x4 = ctx_alloc(c, (size_t)N * C4 * HW * sizeof(uint32_t));
    uint8_t *A = ctx_alloc(c, (size_t)q->K4 * 4 * n);
    float *dpix = ctx_alloc(c, 2 * (size_t)N * HW * sizeof(float)), *zpix = dpix ? dpix + (size_t)N * HW : NULL;
    int32_t *T = ctx_alloc(c, (size_t)N * HW * sizeof(int32_t)), *Z = ctx_alloc(c, (size_t)taps * n * sizeof(int32_t));
    float *E = ctx_alloc(c, (size_t)taps * n * sizeof(float));
    if (!x4 || !A || !dpix || !T || !Z || !E) return NULL;
    token_quant_words(x4, T, dpix, zpix, x->data, (size_t)N, (size_t)C, HW, q->aq.delta.data[entry], q->a_bits);
    im2col_words((uint32_t *)(void *)A, n, x4, N, C4, H, W, kh, kw, s, p, Ho, Wo, 0);
    // per tap and column: the step of the pixel it read and minus its level sum (0 at padding)
    PAR_FOR(schedule(static) collapse(2), (size_t)taps * n >= GEMM_OMP_MIN_WORK / 4,
    for (int tap = 0; tap < taps; tap++)
        for (int g = 0; g < N; g++) {
            int ki = tap / kw, kj = tap % kw;
            float *e = E + (size_t)tap * n + (size_t)g * P;
            int32_t *z = Z + (size_t)tap * n + (size_t)g * P;
            const float *dg = dpix + (size_t)g * HW;
            const int32_t *tg = T + (size_t)g * HW;
            for (int oh = 0; oh < Ho; oh++) {
                int ih = oh * s - p + ki;
                for (int ow = 0; ow < Wo; ow++) {
                    int iw = ow * s - p + kj, in = ih >= 0 && ih < H && iw >= 0 && iw < W;
                    size_t src = in ? (size_t)ih * W + iw : 0;
                    e[oh * Wo + ow] = in ? dg[src] : 0.0f;
                    z[oh * Wo + ow] = in ? -tg[src] : 0;
                }
            }
        });
    IntTapsSide side = {q->side_kpos, q->side_coef, q->n_side, q->cp};
    int_gemm_taps(q->model->kernel, y->data, P, (size_t)co * P, (int)P, q->w_u8, (size_t)q->K4 * 4, q->kz,
                  (const int8_t *)A, n, Z, E, n, q->w_iscale, l->bias.data, co, (int)n, taps, C4,
                  q->n_side ? &side : NULL);
    arena_release(&c->arena, mark);
    return y;
}

/* A linear layer computes y (rows, out) with the operands' roles swapped, so that the GEMM
   writes y's layout and no transpose is needed: the activation levels become the broadcast
   s8 operand as a' = a - 128 (XOR 0x80), the weight levels q (0..255) the u8 col4 operand
   over outputs; the row sums S[r] = Σ_k a are taken while flipping. Then
       C[r][o] = Σ_k a'q = D[r][o] - 128 Q[o],
   with D = Σ a q, Q[o] = Σ_k q = R[o] + cin z_w[o], and as for convs
       Σ (a - z_a)(q - z_w) = D - z_w S - z_a R. */
static Tensor *int_linear(Ctx *c, ModelLayer *l, ExportLayer *q, Tensor *x, int entry, float da, int za) {
    int in = q->cin, co = q->cout, K4 = q->K4;
    if (x->ndim < 1 || x->shape[x->ndim - 1] != in) {
        err_set(&c->err, ERR_SHAPE, "export layer '%s': input's last dim is not %d", l->name, in);
        return NULL;
    }
    size_t n = x->n / (size_t)in;  // rows
    if (n > INT_MAX) {
        err_set(&c->err, ERR_SHAPE, "export layer '%s': more than INT_MAX rows", l->name);
        return NULL;
    }
    int shape[TENSOR_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = co;
    Tensor *y = tensor_new(c, x->ndim, shape);
    if (!y) return NULL;
    size_t mark = arena_mark(&c->arena), kp = (size_t)K4 * 4, ldn = (size_t)co;
    uint8_t *xq = ctx_alloc(c, n * kp);
    int32_t *Cm = ctx_alloc(c, n * ldn * sizeof(int32_t)), *S = ctx_alloc(c, n * sizeof(int32_t));
    const int32_t *Q = q->w_colsum;
    // per-token layers: each row's own (Δ_r, z_r) (token_quant.h)
    float *dr = q->a_token ? ctx_alloc(c, 2 * n * sizeof(float)) : NULL, *zr = dr ? dr + n : NULL;
    if (!xq || !Cm || !S || (q->a_token && !dr)) return NULL;
    if (q->a_token)
        token_quant_levels(xq, kp, dr, zr, x->data, n, (size_t)in, 1, q->aq.delta.data[entry], q->a_bits);
    else
        quantize_rows(q, entry, xq, x->data, n, (size_t)in, kp);
    // S[r] here, not as a GEMM column: out + 1 columns would cost a whole extra (masked)
    // 32-column strip of the kernel when out is a multiple of 32
    PAR_FOR(schedule(static), n * kp >= GEMM_OMP_MIN_WORK,
    for (size_t r = 0; r < n; r++) {
        uint8_t *a = xq + r * kp;
        int32_t sum = 0;
        for (int k = 0; k < in; k++) sum += a[k];
        S[r] = sum;
        for (size_t k = 0; k < kp; k++) a[k] ^= 0x80;  // a - 128 as s8 (padding: weights 0 there)
    });
    int_gemm(q->model->kernel, Cm, ldn, (const int8_t *)xq, kp, q->w_col4, ldn, (int)n, (int)ldn, K4, 128,
             q->w_umax);
    const float *bias = l->bias.data;
    // per output, the parts that do not depend on the row: 128 Q - z_a R, and the scale; the
    // side table's coefficients times Δ_a; per row its levels minus z_a as floats (side rows)
    int ns = q->n_side;
    float *sc = ctx_alloc(c, (size_t)co * sizeof(float)), *bo = ctx_alloc(c, (size_t)co * sizeof(float));
    int32_t *k1 = ctx_alloc(c, (size_t)co * sizeof(int32_t)), *zw = ctx_alloc(c, (size_t)co * sizeof(int32_t));
    float *cd = ns ? ctx_alloc(c, (size_t)co * ns * sizeof(float)) : NULL;
    float *av = ns ? ctx_alloc(c, n * (size_t)in * sizeof(float)) : NULL;
    if (!sc || !bo || !k1 || !zw || (ns && (!cd || !av))) return NULL;
    for (int o = 0; o < co; o++) {
        k1[o] = 128 * Q[o] - za * q->rsum[o];
        zw[o] = q->zoff[o] + q->w_ic;
        sc[o] = da * q->w_iscale[o];
        bo[o] = bias ? bias[o] : 0.0f;
    }
    for (size_t j = 0; j < (size_t)co * ns; j++) cd[j] = q->side_coef_t[j] * da;
    if (q->a_token) {
        // as below with the row's Δ_r, z_r: 128 Q - z_r R and Δ_r Δ_w per row; the side rows'
        // levels scaled by Δ_r (the coefficients are then the stored ones)
        for (int o = 0; o < co; o++) k1[o] = 128 * Q[o];
        for (size_t j = 0; j < (size_t)co * ns; j++) cd[j] = q->side_coef_t[j];
        PAR_FOR(schedule(static), (size_t)co * n >= GEMM_OMP_MIN_WORK,
        for (size_t r = 0; r < n; r++) {
            const int32_t *cr = Cm + r * ldn;
            int32_t s = S[r], z = (int32_t)zr[r];
            float d = dr[r], *yr = y->data + r * co;
            linear_token_row(yr, cr, k1, q->rsum, zw, q->w_iscale, bo, z, s, d, co);
            if (ns) {
                const uint8_t *a = xq + r * kp;
                float *ar = av + r * (size_t)in;
                for (int k = 0; k < in; k++) ar[k] = (float)((int)(a[k] ^ 0x80) - z) * d;
                side_row(yr, ar, q->side_kpos_t, cd, co, ns);
            }
        });
        arena_release(&c->arena, mark);
        return y;
    }
    PAR_FOR(schedule(static), (size_t)co * n >= GEMM_OMP_MIN_WORK,
    for (size_t r = 0; r < n; r++) {
        const int32_t *cr = Cm + r * ldn;
        int32_t s = S[r];
        float *yr = y->data + r * co;
        linear_row(yr, cr, k1, zw, sc, bo, s, co);
        if (ns) {
            // the row's levels were flipped to a - 128 above
            const uint8_t *a = xq + r * kp;
            float *ar = av + r * (size_t)in;
            for (int k = 0; k < in; k++) ar[k] = (float)((int)(a[k] ^ 0x80) - za);
            side_row(yr, ar, q->side_kpos_t, cd, co, ns);
        }
    });
    arena_release(&c->arena, mark);
    return y;
}

Tensor *export_layer_forward(Ctx *c, ModelLayer *l, Tensor *x) {
    ExportLayer *q = l->quant;
    if (!x) return NULL;
    if (q->rot && !(x = t_rotate(c, x, l->kind != LAYER_LINEAR, q->rot))) return NULL;
    int entry = (q->special || q->aq.n == 1) ? 0 : q->model->entry;
    if (q->model->use_float || !q->int_ok) return float_forward(c, l, q, x, entry);
    if (q->a_token) return l->kind == LAYER_LINEAR ? int_linear(c, l, q, x, entry, 0.0f, 0) : int_conv_token(c, l, q, x, entry);
    float da = q->a_lut ? q->a_iscale[entry] : q->aq.delta.data[entry];
    int za = (int)(q->a_lut ? q->a_izero[entry] : q->aq.zero.data[entry]);
    if (l->kind == LAYER_LINEAR) return int_linear(c, l, q, x, entry, da, za);
    return int_conv(c, l, q, x, entry, da, za);
}
