/* inception.c: pytorch-fid's FID Inception-v3 (see inception.h). Block structure from
   torchvision models/inception.py (Inception3, InceptionA..E, BasicConv2d) with the
   pytorch-fid patches (FIDInceptionA/C/E_1/E_2 in src/pytorch_fid/inception.py). */
#include "eval/inception.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "io/weights.h"
#include "util/par.h"

#define INC_MAX_CONVS 100
#define INC_NAME 48

// One BasicConv2d: conv with the BatchNorm folded in (so it has a bias), then ReLU.
typedef struct {
    char name[INC_NAME];  // "Mixed_5b.branch1x1"
    int cin, cout, kh, kw, sh, sw, ph, pw;
    Tensor w, b;          // (cout, cin, kh, kw), (cout)
} IncConv;

struct Inception {
    IncConv conv[INC_MAX_CONVS];
    int n_conv;
    Tensor fc_w, fc_b;  // (1008, 2048), (1008)
    float *block;       // owns every weight
    Ctx *split_ctx;     // one context per thread of a batch split (inception_forward), made on first use
    int n_split_ctx;
};

/* ---- the layer table ------------------------------------------------------------ */

static void add_conv(Inception *m, const char *block, const char *branch, int cin, int cout, int kh, int kw, int sh,
                     int sw, int ph, int pw) {
    IncConv *c = &m->conv[m->n_conv++];
    if (branch) snprintf(c->name, sizeof c->name, "%s.%s", block, branch);
    else snprintf(c->name, sizeof c->name, "%s", block);
    c->cin = cin;
    c->cout = cout;
    c->kh = kh;
    c->kw = kw;
    c->sh = sh;
    c->sw = sw;
    c->ph = ph;
    c->pw = pw;
}

// torchvision InceptionA(in, pool_features)
static void add_a(Inception *m, const char *b, int in, int pool) {
    add_conv(m, b, "branch1x1", in, 64, 1, 1, 1, 1, 0, 0);
    add_conv(m, b, "branch5x5_1", in, 48, 1, 1, 1, 1, 0, 0);
    add_conv(m, b, "branch5x5_2", 48, 64, 5, 5, 1, 1, 2, 2);
    add_conv(m, b, "branch3x3dbl_1", in, 64, 1, 1, 1, 1, 0, 0);
    add_conv(m, b, "branch3x3dbl_2", 64, 96, 3, 3, 1, 1, 1, 1);
    add_conv(m, b, "branch3x3dbl_3", 96, 96, 3, 3, 1, 1, 1, 1);
    add_conv(m, b, "branch_pool", in, pool, 1, 1, 1, 1, 0, 0);
}

// InceptionB(in)
static void add_b(Inception *m, const char *b, int in) {
    add_conv(m, b, "branch3x3", in, 384, 3, 3, 2, 2, 0, 0);
    add_conv(m, b, "branch3x3dbl_1", in, 64, 1, 1, 1, 1, 0, 0);
    add_conv(m, b, "branch3x3dbl_2", 64, 96, 3, 3, 1, 1, 1, 1);
    add_conv(m, b, "branch3x3dbl_3", 96, 96, 3, 3, 2, 2, 0, 0);
}

// InceptionC(in, channels_7x7)
static void add_c(Inception *m, const char *b, int in, int c7) {
    add_conv(m, b, "branch1x1", in, 192, 1, 1, 1, 1, 0, 0);
    add_conv(m, b, "branch7x7_1", in, c7, 1, 1, 1, 1, 0, 0);
    add_conv(m, b, "branch7x7_2", c7, c7, 1, 7, 1, 1, 0, 3);
    add_conv(m, b, "branch7x7_3", c7, 192, 7, 1, 1, 1, 3, 0);
    add_conv(m, b, "branch7x7dbl_1", in, c7, 1, 1, 1, 1, 0, 0);
    add_conv(m, b, "branch7x7dbl_2", c7, c7, 7, 1, 1, 1, 3, 0);
    add_conv(m, b, "branch7x7dbl_3", c7, c7, 1, 7, 1, 1, 0, 3);
    add_conv(m, b, "branch7x7dbl_4", c7, c7, 7, 1, 1, 1, 3, 0);
    add_conv(m, b, "branch7x7dbl_5", c7, 192, 1, 7, 1, 1, 0, 3);
    add_conv(m, b, "branch_pool", in, 192, 1, 1, 1, 1, 0, 0);
}

// InceptionD(in)
static void add_d(Inception *m, const char *b, int in) {
    add_conv(m, b, "branch3x3_1", in, 192, 1, 1, 1, 1, 0, 0);
    add_conv(m, b, "branch3x3_2", 192, 320, 3, 3, 2, 2, 0, 0);
    add_conv(m, b, "branch7x7x3_1", in, 192, 1, 1, 1, 1, 0, 0);
    add_conv(m, b, "branch7x7x3_2", 192, 192, 1, 7, 1, 1, 0, 3);
    add_conv(m, b, "branch7x7x3_3", 192, 192, 7, 1, 1, 1, 3, 0);
    add_conv(m, b, "branch7x7x3_4", 192, 192, 3, 3, 2, 2, 0, 0);
}

// InceptionE(in)
static void add_e(Inception *m, const char *b, int in) {
    add_conv(m, b, "branch1x1", in, 320, 1, 1, 1, 1, 0, 0);
    add_conv(m, b, "branch3x3_1", in, 384, 1, 1, 1, 1, 0, 0);
    add_conv(m, b, "branch3x3_2a", 384, 384, 1, 3, 1, 1, 0, 1);
    add_conv(m, b, "branch3x3_2b", 384, 384, 3, 1, 1, 1, 1, 0);
    add_conv(m, b, "branch3x3dbl_1", in, 448, 1, 1, 1, 1, 0, 0);
    add_conv(m, b, "branch3x3dbl_2", 448, 384, 3, 3, 1, 1, 1, 1);
    add_conv(m, b, "branch3x3dbl_3a", 384, 384, 1, 3, 1, 1, 0, 1);
    add_conv(m, b, "branch3x3dbl_3b", 384, 384, 3, 1, 1, 1, 1, 0);
    add_conv(m, b, "branch_pool", in, 192, 1, 1, 1, 1, 0, 0);
}

// Inception3.__init__ with fid_inception_v3's replacements (same shapes as torchvision's).
static void build_table(Inception *m) {
    add_conv(m, "Conv2d_1a_3x3", NULL, 3, 32, 3, 3, 2, 2, 0, 0);
    add_conv(m, "Conv2d_2a_3x3", NULL, 32, 32, 3, 3, 1, 1, 0, 0);
    add_conv(m, "Conv2d_2b_3x3", NULL, 32, 64, 3, 3, 1, 1, 1, 1);
    add_conv(m, "Conv2d_3b_1x1", NULL, 64, 80, 1, 1, 1, 1, 0, 0);
    add_conv(m, "Conv2d_4a_3x3", NULL, 80, 192, 3, 3, 1, 1, 0, 0);
    add_a(m, "Mixed_5b", 192, 32);
    add_a(m, "Mixed_5c", 256, 64);
    add_a(m, "Mixed_5d", 288, 64);
    add_b(m, "Mixed_6a", 288);
    add_c(m, "Mixed_6b", 768, 128);
    add_c(m, "Mixed_6c", 768, 160);
    add_c(m, "Mixed_6d", 768, 160);
    add_c(m, "Mixed_6e", 768, 192);
    add_d(m, "Mixed_7a", 768);
    add_e(m, "Mixed_7b", 1280);
    add_e(m, "Mixed_7c", 2048);
}

/* ---- loading ------------------------------------------------------------------- */

// Reads conv + bn of one BasicConv2d and folds them into cv->w, cv->b (already pointed
// into the weight block). raw: scratch for the unfolded weight.
static int load_conv(WeightFile *f, IncConv *cv, float *raw, Err *e) {
    char key[INC_NAME + 24];
    int wshape[4] = {cv->cout, cv->cin, cv->kh, cv->kw};
    snprintf(key, sizeof key, "%s.conv.weight", cv->name);
    if (weights_read_f32(f, key, raw, 4, wshape, e)) return e->code;
    const char *bn_keys[4] = {"weight", "bias", "running_mean", "running_var"};
    float *bn = malloc(4 * (size_t)cv->cout * sizeof(float));  // gamma, beta, mean, var
    if (!bn) return err_set(e, ERR_NOMEM, "%s: out of memory", weights_path(f));
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof key, "%s.bn.%s", cv->name, bn_keys[i]);
        if (weights_read_f32(f, key, bn + (size_t)i * cv->cout, 1, (int[]){cv->cout}, e)) {
            free(bn);
            return e->code;
        }
    }
    size_t k = (size_t)cv->cin * cv->kh * cv->kw;
    const float *g = bn, *beta = bn + cv->cout, *mean = bn + 2 * cv->cout, *var = bn + 3 * cv->cout;
    for (int o = 0; o < cv->cout; o++) {
        if (!(var[o] + INCEPTION_BN_EPS > 0)) {
            err_set(e, ERR_VALUE, "%s: tensor '%s.bn.running_var'[%d] = %g, expected > -%g", weights_path(f), cv->name, o,
                    var[o], INCEPTION_BN_EPS);
            free(bn);
            return e ? e->code : ERR_VALUE;
        }
        double s = (double)g[o] / sqrt((double)var[o] + INCEPTION_BN_EPS);
        for (size_t i = 0; i < k; i++) cv->w.data[o * k + i] = (float)(raw[o * k + i] * s);
        cv->b.data[o] = (float)((double)beta[o] - (double)mean[o] * s);
    }
    free(bn);
    return 0;
}

int inception_load(Inception **out, const char *path, Err *e) {
    *out = NULL;
    Inception *m = calloc(1, sizeof *m);
    if (!m) return err_set(e, ERR_NOMEM, "%s: out of memory", path);
    build_table(m);
    size_t total = (size_t)INCEPTION_CLASSES * INCEPTION_FEATURES + INCEPTION_CLASSES, max_w = 0;
    for (int i = 0; i < m->n_conv; i++) {
        size_t nw = (size_t)m->conv[i].cout * m->conv[i].cin * m->conv[i].kh * m->conv[i].kw;
        total += nw + (size_t)m->conv[i].cout;
        if (nw > max_w) max_w = nw;
    }
    m->block = malloc(total * sizeof(float));
    float *raw = malloc(max_w * sizeof(float));
    WeightFile *f = NULL;
    int rc = 0;
    if (!m->block || !raw) {
        rc = err_set(e, ERR_NOMEM, "%s: cannot allocate %zu Inception weights", path, total);
        goto done;
    }
    if ((rc = weights_open(&f, path, e))) goto done;
    float *p = m->block;
    for (int i = 0; i < m->n_conv && !rc; i++) {
        IncConv *cv = &m->conv[i];
        tensor_init_param(&cv->w, p, NULL, 4, (int[]){cv->cout, cv->cin, cv->kh, cv->kw});
        p += cv->w.n;
        tensor_init_param(&cv->b, p, NULL, 1, (int[]){cv->cout});
        p += cv->b.n;
        rc = load_conv(f, cv, raw, e);
    }
    if (rc) goto done;
    tensor_init_param(&m->fc_w, p, NULL, 2, (int[]){INCEPTION_CLASSES, INCEPTION_FEATURES});
    p += m->fc_w.n;
    tensor_init_param(&m->fc_b, p, NULL, 1, (int[]){INCEPTION_CLASSES});
    if ((rc = weights_read_f32(f, "fc.weight", m->fc_w.data, 2, m->fc_w.shape, e))) goto done;
    rc = weights_read_f32(f, "fc.bias", m->fc_b.data, 1, m->fc_b.shape, e);
done:
    weights_close(f);
    free(raw);
    if (rc) {
        inception_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void inception_free(Inception *m) {
    if (!m) return;
    for (int i = 0; i < m->n_split_ctx; i++) ctx_free(&m->split_ctx[i]);
    free(m->split_ctx);
    free(m->block);
    free(m);
}

/* ---- forward ------------------------------------------------------------------- */

static IncConv *find_conv(Inception *m, const char *block, const char *branch) {
    char name[INC_NAME];
    if (branch) snprintf(name, sizeof name, "%s.%s", block, branch);
    else snprintf(name, sizeof name, "%s", block);
    for (int i = 0; i < m->n_conv; i++)
        if (!strcmp(m->conv[i].name, name)) return &m->conv[i];
    return NULL;  // a typo below: caught by the first run of any test
}

// BasicConv2d: relu(conv(x) + folded BN). inception_forward runs with gradients off.
static Tensor *bconv(Ctx *c, Inception *m, Tensor *x, const char *block, const char *branch) {
    IncConv *cv = find_conv(m, block, branch);
    if (!cv) {
        err_set(&c->err, ERR_INTERNAL, "inception: no layer %s.%s", block, branch ? branch : "");
        return NULL;
    }
    Tensor *y = t_conv2d_ex(c, x, &cv->w, &cv->b, cv->sh, cv->sw, cv->ph, cv->pw);
    if (!y) return NULL;
    // ReLU in place, as t_relu computes it (`v < 0 ? 0 : v`, NaN passes): the forward runs
    // without gradients (nothing keeps the conv output), so no second tensor and no second
    // write of fresh memory
    float *d = y->data;
    PAR_FOR(schedule(static), y->n >= 65536,
    for (size_t i = 0; i < y->n; i++) d[i] = d[i] < 0 ? 0 : d[i];);
    return y;
}

// Ends a block's scope keeping only its output (the branches' intermediates are freed).
static Tensor *block_end(Ctx *c, CtxScope s, Tensor *out, const char *name, InceptionTap tap, void *user) {
    out = ctx_scope_end(c, s, out);
    if (out && tap) tap(user, name, out);
    return out;
}

// FIDInceptionA: [1x1, 5x5, 3x3dbl, pool] with avg_pool2d(3, 1, 1, count_include_pad=False).
static Tensor *block_a(Ctx *c, Inception *m, Tensor *x, const char *b) {
    Tensor *br[4];
    br[0] = bconv(c, m, x, b, "branch1x1");
    br[1] = bconv(c, m, bconv(c, m, x, b, "branch5x5_1"), b, "branch5x5_2");
    br[2] = bconv(c, m, bconv(c, m, bconv(c, m, x, b, "branch3x3dbl_1"), b, "branch3x3dbl_2"), b, "branch3x3dbl_3");
    br[3] = bconv(c, m, t_avg_pool2d(c, x, 3, 1, 1, 0), b, "branch_pool");
    return t_concat(c, br, 4, 1);
}

// InceptionB (Mixed_6a): [3x3 s2, 3x3dbl (last s2), max_pool2d(3, 2)].
static Tensor *block_b(Ctx *c, Inception *m, Tensor *x, const char *b) {
    Tensor *br[3];
    br[0] = bconv(c, m, x, b, "branch3x3");
    br[1] = bconv(c, m, bconv(c, m, bconv(c, m, x, b, "branch3x3dbl_1"), b, "branch3x3dbl_2"), b, "branch3x3dbl_3");
    br[2] = t_max_pool2d(c, x, 3, 2, 0);
    return t_concat(c, br, 3, 1);
}

// FIDInceptionC: [1x1, 7x7 (1x7, 7x1), 7x7dbl (7x1, 1x7, 7x1, 1x7), pool] with the
// count_include_pad=False average pool.
static Tensor *block_c(Ctx *c, Inception *m, Tensor *x, const char *b) {
    Tensor *br[4];
    br[0] = bconv(c, m, x, b, "branch1x1");
    Tensor *t = bconv(c, m, x, b, "branch7x7_1");
    t = bconv(c, m, t, b, "branch7x7_2");
    br[1] = bconv(c, m, t, b, "branch7x7_3");
    t = bconv(c, m, x, b, "branch7x7dbl_1");
    t = bconv(c, m, t, b, "branch7x7dbl_2");
    t = bconv(c, m, t, b, "branch7x7dbl_3");
    t = bconv(c, m, t, b, "branch7x7dbl_4");
    br[2] = bconv(c, m, t, b, "branch7x7dbl_5");
    br[3] = bconv(c, m, t_avg_pool2d(c, x, 3, 1, 1, 0), b, "branch_pool");
    return t_concat(c, br, 4, 1);
}

// InceptionD (Mixed_7a): [3x3 (1x1, 3x3 s2), 7x7x3 (1x1, 1x7, 7x1, 3x3 s2), max_pool2d(3, 2)].
static Tensor *block_d(Ctx *c, Inception *m, Tensor *x, const char *b) {
    Tensor *br[3];
    br[0] = bconv(c, m, bconv(c, m, x, b, "branch3x3_1"), b, "branch3x3_2");
    Tensor *t = bconv(c, m, x, b, "branch7x7x3_1");
    t = bconv(c, m, t, b, "branch7x7x3_2");
    t = bconv(c, m, t, b, "branch7x7x3_3");
    br[1] = bconv(c, m, t, b, "branch7x7x3_4");
    br[2] = t_max_pool2d(c, x, 3, 2, 0);
    return t_concat(c, br, 3, 1);
}

// FIDInceptionE_1 (max_pool = 0: avg_pool2d(3, 1, 1, count_include_pad=False)) and
// FIDInceptionE_2 (max_pool = 1: max_pool2d(3, 1, 1)):
// [1x1, cat(3x3_2a, 3x3_2b), cat(3x3dbl_3a, 3x3dbl_3b), pool], i.e. 320 + 768 + 768 + 192.
static Tensor *block_e(Ctx *c, Inception *m, Tensor *x, const char *b, int max_pool) {
    Tensor *br[6];
    br[0] = bconv(c, m, x, b, "branch1x1");
    Tensor *t = bconv(c, m, x, b, "branch3x3_1");
    br[1] = bconv(c, m, t, b, "branch3x3_2a");
    br[2] = bconv(c, m, t, b, "branch3x3_2b");
    t = bconv(c, m, bconv(c, m, x, b, "branch3x3dbl_1"), b, "branch3x3dbl_2");
    br[3] = bconv(c, m, t, b, "branch3x3dbl_3a");
    br[4] = bconv(c, m, t, b, "branch3x3dbl_3b");
    Tensor *p = max_pool ? t_max_pool2d(c, x, 3, 1, 1) : t_avg_pool2d(c, x, 3, 1, 1, 0);
    br[5] = bconv(c, m, p, b, "branch_pool");
    // torch.cat of [branch1x1, cat(2a, 2b), cat(3a, 3b), pool] along channels is the flat
    // concatenation of the six tensors in this order
    return t_concat(c, br, 6, 1);
}

void inception_resize_bilinear(const float *x, int N, int C, int H, int W, float *y, int Ho, int Wo) {
    // torch aten/src/ATen/native/UpSample.h area_pixel_compute_source_index (opmath float)
    float sh = (float)H / (float)Ho, sw = (float)W / (float)Wo;
    int *x0 = malloc((size_t)Wo * 2 * sizeof(int));
    float *xl = malloc((size_t)Wo * sizeof(float));
    if (!x0 || !xl) {  // tiny; only fails when everything else would
        free(x0);
        free(xl);
        return;
    }
    for (int o = 0; o < Wo; o++) {
        float src = sw * ((float)o + 0.5f) - 0.5f;
        if (src < 0) src = 0;
        int i0 = (int)src;
        x0[2 * o] = i0;
        x0[2 * o + 1] = i0 < W - 1 ? i0 + 1 : i0;
        float l = src - (float)i0;
        xl[o] = l < 0 ? 0 : (l > 1 ? 1 : l);
    }
    PAR_FOR(schedule(static), 1,
    for (long nc = 0; nc < (long)N * C; nc++) {
        const float *xp = x + (size_t)nc * H * W;
        float *yp = y + (size_t)nc * Ho * Wo;
        for (int oh = 0; oh < Ho; oh++) {
            float src = sh * ((float)oh + 0.5f) - 0.5f;
            if (src < 0) src = 0;
            int h0 = (int)src, h1 = h0 < H - 1 ? h0 + 1 : h0;
            float hl1 = src - (float)h0;
            hl1 = hl1 < 0 ? 0 : (hl1 > 1 ? 1 : hl1);
            float hl0 = 1.0f - hl1;
            const float *r0 = xp + (size_t)h0 * W, *r1 = xp + (size_t)h1 * W;
            for (int ow = 0; ow < Wo; ow++) {
                int a = x0[2 * ow], b = x0[2 * ow + 1];
                float wl1 = xl[ow], wl0 = 1.0f - wl1;
                yp[(size_t)oh * Wo + ow] = hl0 * (wl0 * r0[a] + wl1 * r0[b]) + hl1 * (wl0 * r1[a] + wl1 * r1[b]);
            }
        }
    });
    free(x0);
    free(xl);
}

static int forward_batch(Inception *m, Ctx *c, const float *x, int N, int H, int W, float *pool3, float *logits,
                         float *spatial, InceptionTap tap, void *tap_user, Err *e) {
    int prev = ctx_set_grad(c, 0);
    CtxScope all = ctx_scope_begin(c);
    const int S = INCEPTION_SIZE;
    Tensor *h = tensor_new4(c, N, 3, S, S);
    if (h) {
        inception_resize_bilinear(x, N, 3, H, W, h->data, S, S);
        // InceptionV3.forward: x = 2 * x - 1
        for (size_t i = 0; i < h->n; i++) h->data[i] = 2.0f * h->data[i] - 1.0f;
    }
    // block 0 and 1 of pytorch-fid's InceptionV3: the stem
    const char *stem[5] = {"Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"};
    for (int i = 0; i < 5; i++) {
        CtxScope s = ctx_scope_begin(c);
        h = bconv(c, m, h, stem[i], NULL);
        if (i == 2 || i == 4) h = t_max_pool2d(c, h, 3, 2, 0);  // maxpool1, maxpool2
        h = block_end(c, s, h, stem[i], tap, tap_user);
    }
    const char *a_blocks[3] = {"Mixed_5b", "Mixed_5c", "Mixed_5d"};
    for (int i = 0; i < 3; i++) {
        CtxScope s = ctx_scope_begin(c);
        h = block_end(c, s, block_a(c, m, h, a_blocks[i]), a_blocks[i], tap, tap_user);
    }
    CtxScope s = ctx_scope_begin(c);
    h = block_end(c, s, block_b(c, m, h, "Mixed_6a"), "Mixed_6a", tap, tap_user);
    const char *c_blocks[4] = {"Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"};
    for (int i = 0; i < 4; i++) {
        s = ctx_scope_begin(c);
        h = block_end(c, s, block_c(c, m, h, c_blocks[i]), c_blocks[i], tap, tap_user);
    }
    if (h && spatial) {
        // Mixed_6e (N, 768, 17, 17): the first 7 channels of each image, (C, H, W) order
        size_t per = (size_t)INCEPTION_SPATIAL_CH * h->shape[2] * h->shape[3];
        if (per != INCEPTION_SPATIAL_DIM) {
            err_set(&c->err, ERR_INTERNAL, "inception: Mixed_6e is %dx%d, expected 17x17", h->shape[2], h->shape[3]);
            h = NULL;
        } else {
            for (int n = 0; n < N; n++)
                memcpy(spatial + (size_t)n * per, h->data + (size_t)n * h->shape[1] * h->shape[2] * h->shape[3],
                       per * sizeof(float));
        }
    }
    if (pool3 || logits) {
        s = ctx_scope_begin(c);
        h = block_end(c, s, block_d(c, m, h, "Mixed_7a"), "Mixed_7a", tap, tap_user);
        s = ctx_scope_begin(c);
        h = block_end(c, s, block_e(c, m, h, "Mixed_7b", 0), "Mixed_7b", tap, tap_user);
        s = ctx_scope_begin(c);
        h = block_end(c, s, block_e(c, m, h, "Mixed_7c", 1), "Mixed_7c", tap, tap_user);
        // AdaptiveAvgPool2d((1, 1)): mean over the spatial positions, summed in double
        Tensor *p = h ? tensor_new2(c, N, INCEPTION_FEATURES) : NULL;
        if (p) {
            int HW = h->shape[2] * h->shape[3];
            PAR_FOR(schedule(static), 1,
            for (long nc = 0; nc < (long)N * INCEPTION_FEATURES; nc++) {
                const float *src = h->data + (size_t)nc * HW;
                double acc = 0;
                for (int i = 0; i < HW; i++) acc += src[i];
                p->data[nc] = (float)(acc / HW);
            });
            if (pool3) memcpy(pool3, p->data, p->n * sizeof(float));
            if (logits) {
                // torchvision: dropout (identity in eval), flatten, fc
                Tensor *l = t_linear(c, p, &m->fc_w, &m->fc_b);
                if (l) memcpy(logits, l->data, l->n * sizeof(float));
                else p = NULL;
            }
        }
        h = p;
    }
    int rc = 0;
    if (!h) {
        rc = c->err.code ? c->err.code : ERR_INTERNAL;
        err_set(e, rc, "inception forward (batch of %d, %dx%d): %s", N, H, W,
                c->err.code ? c->err.msg : "an op returned NULL");
    }
    // grad mode was off, so nothing was recorded: everything since the start can go
    arena_release(&c->arena, all.mark);
    ctx_set_grad(c, prev);
    return rc;
}

/* ---- batch split ---------------------------------------------------------------- */

/* Each op of a forward spreads its own loops over the threads and waits at their ends:
   on 2 cores a batch ran at 1.5x one core. Parts of INC_SPLIT_ROWS images instead run
   whole forwards on the threads at once, each thread on a context of its own (its ops'
   loops then single-threaded: nested regions run on their own thread, util/par.h).
   Every op works image by image and the GEMMs' sums do not depend on the number of
   columns with effdm's AVX-512 kernel, so the features are those of the whole batch at
   once; with OpenBLAS a part's GEMM shapes set its rounding, so the parts depend on N
   alone (never on the thread count) and the result stays the same for any thread count. */
#define INC_SPLIT_ROWS 2
#define INC_SPLIT_ARENA ((size_t)16 << 30)  // address space per context (MAP_NORESERVE)

static int split_contexts(Inception *m, int n, Err *e) {
    if (m->n_split_ctx >= n) return 0;
    Ctx *cs = realloc(m->split_ctx, (size_t)n * sizeof *cs);
    if (!cs) return err_set(e, ERR_NOMEM, "inception: out of memory for %d thread contexts", n);
    m->split_ctx = cs;
    for (; m->n_split_ctx < n; m->n_split_ctx++) {
        int rc = ctx_init(&cs[m->n_split_ctx], INC_SPLIT_ARENA, e);
        if (rc) return rc;
    }
    return 0;
}

int inception_forward(Inception *m, Ctx *c, const float *x, int N, int H, int W, float *pool3, float *logits,
                      float *spatial, InceptionTap tap, void *tap_user, Err *e) {
    if (N < 1 || H < 1 || W < 1)
        return err_set(e, ERR_SHAPE, "inception: input (%d, 3, %d, %d) is empty", N, H, W);
    int parts = (N + INC_SPLIT_ROWS - 1) / INC_SPLIT_ROWS, threads = omp_get_max_threads();
    if (parts < 2 || tap || c->prof || !par_wanted())
        return forward_batch(m, c, x, N, H, W, pool3, logits, spatial, tap, tap_user, e);
    if (threads > parts) threads = parts;
    int rc = split_contexts(m, threads, e);
    if (rc) return rc;
    Err first = {0};  // the first failing part's error
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int p = 0; p < parts; p++) {
        int n0 = p * INC_SPLIT_ROWS, n = N - n0 < INC_SPLIT_ROWS ? N - n0 : INC_SPLIT_ROWS;
        Err pe = {0};
        int prc = forward_batch(m, &m->split_ctx[omp_get_thread_num()], x + (size_t)n0 * 3 * H * W, n, H, W,
                                pool3 ? pool3 + (size_t)n0 * INCEPTION_FEATURES : NULL,
                                logits ? logits + (size_t)n0 * INCEPTION_CLASSES : NULL,
                                spatial ? spatial + (size_t)n0 * INCEPTION_SPATIAL_DIM : NULL, NULL, NULL, &pe);
        if (prc) {
#pragma omp critical(inception_split_err)
            if (!failed++) first = pe;
        }
    }
    if (failed) {
        *e = first;
        return e->code ? e->code : ERR_INTERNAL;
    }
    return 0;
}
