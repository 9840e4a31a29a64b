/* judge.c: the Fashion-MNIST judge network (see judge.h). */
#include "eval/judge.h"

#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "io/weights.h"

typedef struct {
    const char *name;
    Tensor *t;
    int ndim;
    int shape[4];
} JudgeParam;

// The parameter table: names, shapes, and where each tensor lives.
static int judge_params(Judge *j, JudgeParam *p) {
    static const char *conv_names[4][2] = {{"conv1.weight", "conv1.bias"}, {"conv2.weight", "conv2.bias"},
                                           {"conv3.weight", "conv3.bias"}, {"conv4.weight", "conv4.bias"}};
    static const int cin[4] = {1, 32, 32, 64}, cout[4] = {32, 32, 64, 64};
    int n = 0;
    for (int i = 0; i < 4; i++) {
        p[n++] = (JudgeParam){conv_names[i][0], &j->conv_w[i], 4, {cout[i], cin[i], 3, 3}};
        p[n++] = (JudgeParam){conv_names[i][1], &j->conv_b[i], 1, {cout[i]}};
    }
    p[n++] = (JudgeParam){"fc1.weight", &j->fc1_w, 2, {JUDGE_FEATURES, 64 * 8 * 8}};
    p[n++] = (JudgeParam){"fc1.bias", &j->fc1_b, 1, {JUDGE_FEATURES}};
    p[n++] = (JudgeParam){"fc2.weight", &j->fc2_w, 2, {JUDGE_CLASSES, JUDGE_FEATURES}};
    p[n++] = (JudgeParam){"fc2.bias", &j->fc2_b, 1, {JUDGE_CLASSES}};
    return n;
}

int judge_load(Judge *j, const char *path, Err *e) {
    memset(j, 0, sizeof *j);
    JudgeParam p[12];
    int np = judge_params(j, p);
    size_t total = 0;
    for (int i = 0; i < np; i++) total += tensor_shape_numel(p[i].ndim, p[i].shape);
    j->block = malloc(total * sizeof(float));
    if (!j->block) return err_set(e, ERR_NOMEM, "%s: cannot allocate the judge's %zu weights", path, total);
    WeightFile *f = NULL;
    int rc = weights_open(&f, path, e);
    size_t off = 0;
    for (int i = 0; i < np && !rc; i++) {
        float *dst = j->block + off;
        rc = weights_read_f32(f, p[i].name, dst, p[i].ndim, p[i].shape, e);
        tensor_init_param(p[i].t, dst, NULL, p[i].ndim, p[i].shape);
        off += tensor_shape_numel(p[i].ndim, p[i].shape);
    }
    weights_close(f);
    if (rc) {
        judge_free(j);
        return rc;
    }
    return 0;
}

void judge_free(Judge *j) {
    free(j->block);
    memset(j, 0, sizeof *j);
}

int judge_forward(const Judge *j, Ctx *c, const float *x, int N, float *feats, float *logits, Err *e) {
    int prev = ctx_set_grad(c, 0);
    CtxScope s = ctx_scope_begin(c);
    // const: the parameters are only read; the op signatures take non-const tensors
    Judge *m = (Judge *)j;
    Tensor *h = tensor_from(c, x, 4, (int[]){N, 1, JUDGE_SIZE, JUDGE_SIZE});
    for (int i = 0; i < 4; i++) {
        h = t_relu(c, t_conv2d(c, h, &m->conv_w[i], &m->conv_b[i], 1, 1));
        if (i == 1 || i == 3) h = t_max_pool2d(c, h, 2, 2, 0);
    }
    h = t_reshape(c, h, 2, (int[]){N, 64 * 8 * 8});  // (C, H, W) flatten order, as torch.flatten(x, 1)
    Tensor *f = t_relu(c, t_linear(c, h, &m->fc1_w, &m->fc1_b));
    Tensor *l = t_linear(c, f, &m->fc2_w, &m->fc2_b);
    int rc = 0;
    if (!l) {
        rc = c->err.code ? c->err.code : ERR_INTERNAL;
        err_set(e, rc, "judge forward (batch of %d): %s", N, c->err.code ? c->err.msg : "an op returned NULL");
    } else {
        if (feats) memcpy(feats, f->data, (size_t)N * JUDGE_FEATURES * sizeof(float));
        if (logits) memcpy(logits, l->data, (size_t)N * JUDGE_CLASSES * sizeof(float));
    }
    // grad mode was off, so nothing was recorded: everything since the scope start can go
    arena_release(&c->arena, s.mark);
    ctx_set_grad(c, prev);
    return rc;
}

void judge_prep_u8_28(const uint8_t *px, float *out) {
    for (int i = 0; i < JUDGE_SIZE * JUDGE_SIZE; i++) out[i] = -1.0f;
    for (int y = 0; y < 28; y++)
        for (int x = 0; x < 28; x++) out[(y + 2) * JUDGE_SIZE + x + 2] = (float)px[y * 28 + x] / 127.5f - 1.0f;
}

int judge_prep_unit(const float *x, int H, int W, float *out, const char *name, Err *e) {
    if (H == JUDGE_SIZE && W == JUDGE_SIZE) {
        for (int i = 0; i < JUDGE_SIZE * JUDGE_SIZE; i++) out[i] = x[i] * 2.0f - 1.0f;
        return 0;
    }
    if (H == 28 && W == 28) {
        for (int i = 0; i < JUDGE_SIZE * JUDGE_SIZE; i++) out[i] = -1.0f;
        for (int y = 0; y < 28; y++)
            for (int xx = 0; xx < 28; xx++) out[(y + 2) * JUDGE_SIZE + xx + 2] = x[y * 28 + xx] * 2.0f - 1.0f;
        return 0;
    }
    return err_set(e, ERR_SHAPE, "%s: image is %dx%d, the judge takes 32x32 (or 28x28, padded) images", name, W, H);
}
