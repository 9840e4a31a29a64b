/* featnet.c: feature networks behind one interface and streaming extraction (featnet.h). */
#include "eval/featnet.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "eval/frechet.h"
#include "io/idx.h"
#include "io/image_read.h"

#define FEATNET_ARENA ((size_t)16 << 30)  // address space only (arena.h: pages are touched on use)

const char *featnet_kind_name(FeatKind k) {
    static const char *names[FEAT_COUNT] = {"judge", "inception"};
    return (k >= 0 && k < FEAT_COUNT) ? names[k] : "?";
}

int featnet_kind_parse(const char *s, FeatKind *k, Err *e) {
    for (int i = 0; i < FEAT_COUNT; i++)
        if (s && !strcmp(s, featnet_kind_name((FeatKind)i))) {
            *k = (FeatKind)i;
            return 0;
        }
    return err_set(e, ERR_ARG, "--features: expected 'judge' or 'inception', found '%s'", s ? s : "(none)");
}

int featnet_open(FeatNet *net, FeatKind kind, const char *weights, Err *e) {
    memset(net, 0, sizeof *net);
    net->kind = kind;
    int rc;
    if (kind == FEAT_JUDGE) {
        rc = judge_load(&net->judge, weights ? weights : FEATNET_DEFAULT_JUDGE, e);
        net->channels = 1;
        net->dim = JUDGE_FEATURES;
        net->n_classes = JUDGE_CLASSES;
    } else if (kind == FEAT_INCEPTION) {
        if (!weights)
            return err_set(e, ERR_ARG, "--features inception needs --weights pt_inception-2015-12-05-6726825d.pth "
                                       "(pytorch-fid's FID Inception weights, .pth or .safetensors)");
        rc = inception_load(&net->inception, weights, e);
        net->channels = 3;
        net->dim = INCEPTION_FEATURES;
        net->n_classes = INCEPTION_CLASSES;
        net->spatial_dim = INCEPTION_SPATIAL_DIM;
    } else {
        return err_set(e, ERR_ARG, "unknown feature network %d", (int)kind);
    }
    if (!rc) rc = ctx_init(&net->ctx, FEATNET_ARENA, e);
    if (rc) featnet_close(net);
    return rc;
}

void featnet_close(FeatNet *net) {
    judge_free(&net->judge);
    inception_free(net->inception);
    if (net->ctx.arena.base) ctx_free(&net->ctx);
    memset(net, 0, sizeof *net);
}

FeatOpts featnet_default_opts(const FeatNet *net) {
    FeatOpts o = {0};
    o.batch = net->kind == FEAT_JUDGE ? 256 : 8;
    o.max_rows = 10000;
    return o;
}

int featnet_forward(FeatNet *net, const float *x, int N, int H, int W, float *feats, float *logits, float *spatial,
                    Err *e) {
    if (net->kind == FEAT_JUDGE) {
        if (H != JUDGE_SIZE || W != JUDGE_SIZE)
            return err_set(e, ERR_SHAPE, "judge: input is %dx%d, expected %dx%d", W, H, JUDGE_SIZE, JUDGE_SIZE);
        return judge_forward(&net->judge, &net->ctx, x, N, feats, logits, e);
    }
    return inception_forward(net->inception, &net->ctx, x, N, H, W, feats, logits, spatial, NULL, NULL, e);
}

void featset_free(FeatSet *s) {
    free(s->mu);
    free(s->sigma);
    free(s->mu_s);
    free(s->sigma_s);
    free(s->rows);
    free(s->logits);
    free(s->labels);
    memset(s, 0, sizeof *s);
}

/* ---- image sources ------------------------------------------------------------- */

typedef struct {
    int is_idx;
    IdxArray idx;      // images (N, 28, 28)
    IdxArray idx_lab;  // labels (N) or empty
    ImageList list;
    size_t n;          // images to use
} Source;

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static void source_free(Source *s) {
    idx_free(&s->idx);
    idx_free(&s->idx_lab);
    image_list_free(&s->list);
    memset(s, 0, sizeof *s);
}

static int source_open(Source *s, const char *path, size_t max_images, Err *e) {
    memset(s, 0, sizeof *s);
    struct stat st;
    if (stat(path, &st) != 0) return err_set(e, ERR_IO, "%s: no such file or folder", path);
    int rc;
    if (S_ISDIR(st.st_mode)) {
        rc = image_list(path, &s->list, e);
        s->n = s->list.n;
    } else {
        s->is_idx = 1;
        rc = idx_read(path, &s->idx, e);
        if (!rc && (s->idx.ndim != 3 || s->idx.dims[1] != 28 || s->idx.dims[2] != 28))
            rc = err_set(e, ERR_SHAPE, "%s: expected idx images of shape (N, 28, 28), found %d dimensions (%d, %d, ...)",
                         path, s->idx.ndim, s->idx.dims[0], s->idx.ndim > 1 ? s->idx.dims[1] : 0);
        if (!rc) s->n = (size_t)s->idx.dims[0];
        // X-images-idx3-ubyte[.gz] -> X-labels-idx1-ubyte[.gz]
        const char *tag = strstr(path, "-images-idx3-ubyte");
        if (!rc && tag) {
            char lab[4096];
            size_t pre = (size_t)(tag - path);
            if (pre + 64 < sizeof lab) {
                snprintf(lab, sizeof lab, "%.*s-labels-idx1-ubyte%s", (int)pre, path, tag + strlen("-images-idx3-ubyte"));
                if (file_exists(lab)) {
                    rc = idx_read(lab, &s->idx_lab, e);
                    if (!rc && (s->idx_lab.ndim != 1 || s->idx_lab.dims[0] != s->idx.dims[0]))
                        rc = err_set(e, ERR_SHAPE, "%s: expected %d labels for %s, found shape (%d%s)", lab,
                                     s->idx.dims[0], path, s->idx_lab.dims[0], s->idx_lab.ndim > 1 ? ", ..." : "");
                }
            }
        }
    }
    if (!rc && max_images && s->n > max_images) s->n = max_images;
    if (rc) source_free(s);
    return rc;
}

static int source_label(const Source *s, size_t i) {
    if (s->is_idx) return s->idx_lab.data ? s->idx_lab.data[i] : -1;
    return s->list.labels[i];
}

/* ---- extraction ---------------------------------------------------------------- */

typedef struct {
    FeatNet *net;
    const FeatOpts *o;
    FeatSet *s;
    FrechetAcc acc, acc_s;
    float *x;           // (batch, C, H, W) prepared inputs
    size_t x_cap;       // floats
    int H, W, nb;       // current batch geometry and count
    size_t first;       // index of the batch's first image
    float *feats, *spatial, *logits;  // batch outputs
    size_t next_row_j;  // next strided row index j (keeps row floor(j n / cap))
} Extract;

static int run_batch(Extract *x, Err *e) {
    if (x->nb == 0) return 0;
    FeatNet *net = x->net;
    FeatSet *s = x->s;
    int rc = featnet_forward(net, x->x, x->nb, x->H, x->W, x->feats, x->logits, net->spatial_dim ? x->spatial : NULL, e);
    if (rc) return err_prefix(e, "images %zu..%zu", x->first, x->first + x->nb - 1);
    if ((rc = frechet_acc_add(&x->acc, x->feats, (size_t)x->nb, e))) return rc;
    if (net->spatial_dim && (rc = frechet_acc_add(&x->acc_s, x->spatial, (size_t)x->nb, e))) return rc;
    for (int b = 0; b < x->nb; b++) {
        size_t i = x->first + (size_t)b;
        if (s->logits) memcpy(s->logits + i * s->n_classes, x->logits + (size_t)b * s->n_classes,
                              (size_t)s->n_classes * sizeof(float));
        // keep row i when it is floor(j n / cap) for the next j
        while (x->next_row_j < s->n_rows && (x->next_row_j * s->n) / s->n_rows < i) x->next_row_j++;
        if (x->next_row_j < s->n_rows && (x->next_row_j * s->n) / s->n_rows == i) {
            memcpy(s->rows + x->next_row_j * s->dim, x->feats + (size_t)b * s->dim, (size_t)s->dim * sizeof(float));
            x->next_row_j++;
        }
    }
    x->first += (size_t)x->nb;
    x->nb = 0;
    if (x->o->progress) x->o->progress(x->o->progress_user, x->first, s->n);
    return 0;
}

// Makes room for one more (C, H, W) input in the batch, flushing it first when it is full
// or holds images of another size.
static int batch_slot(Extract *x, int H, int W, float **slot, Err *e) {
    int C = x->net->channels;
    if (x->nb > 0 && (x->nb == x->o->batch || H != x->H || W != x->W)) {
        int rc = run_batch(x, e);
        if (rc) return rc;
    }
    size_t need = (size_t)x->o->batch * C * H * W;
    if (need > x->x_cap) {
        float *nx = realloc(x->x, need * sizeof(float));
        if (!nx) return err_set(e, ERR_NOMEM, "out of memory for a batch of %d %dx%d images", x->o->batch, W, H);
        x->x = nx;
        x->x_cap = need;
    }
    x->H = H;
    x->W = W;
    *slot = x->x + (size_t)x->nb * C * H * W;
    return 0;
}

static int add_image(Extract *x, const Source *src, size_t i, Err *e) {
    FeatNet *net = x->net;
    float *slot;
    int rc;
    if (src->is_idx) {
        const uint8_t *px = src->idx.data + i * 28 * 28;
        if (net->kind == FEAT_JUDGE) {
            if ((rc = batch_slot(x, JUDGE_SIZE, JUDGE_SIZE, &slot, e))) return rc;
            judge_prep_u8_28(px, slot);
        } else {
            if ((rc = batch_slot(x, 28, 28, &slot, e))) return rc;
            for (int c = 0; c < 3; c++)
                for (int p = 0; p < 28 * 28; p++) slot[c * 28 * 28 + p] = px[p] / 255.0f;
        }
    } else {
        LoadedImage im;
        if ((rc = image_read(src->list.paths[i], net->channels, &im, e))) return rc;
        if (net->kind == FEAT_JUDGE) {
            rc = batch_slot(x, JUDGE_SIZE, JUDGE_SIZE, &slot, e);
            if (!rc) rc = judge_prep_unit(im.data, im.H, im.W, slot, src->list.paths[i], e);
        } else {
            rc = batch_slot(x, im.H, im.W, &slot, e);
            if (!rc) memcpy(slot, im.data, (size_t)3 * im.H * im.W * sizeof(float));
        }
        image_free(&im);
        if (rc) return rc;
    }
    x->nb++;
    return 0;
}

int featnet_extract(FeatNet *net, const char *path, const FeatOpts *o, FeatSet *s, Err *e) {
    memset(s, 0, sizeof *s);
    if (o->batch < 1) return err_set(e, ERR_ARG, "batch size %d, expected >= 1", o->batch);
    Source src;
    int rc = source_open(&src, path, o->max_images, e);
    if (rc) return rc;
    Extract x = {0};
    x.net = net;
    x.o = o;
    x.s = s;
    s->kind = net->kind;
    s->n = src.n;
    s->dim = net->dim;
    s->spatial_dim = net->spatial_dim;
    s->n_classes = net->n_classes;
    s->n_rows = o->max_rows < src.n ? o->max_rows : src.n;
    size_t D = (size_t)net->dim, DS = (size_t)net->spatial_dim;
    int any_label = 0;
    for (size_t i = 0; i < src.n; i++) any_label |= source_label(&src, i) >= 0;
    s->mu = malloc(D * sizeof(double));
    s->sigma = malloc(D * D * sizeof(double));
    s->rows = s->n_rows ? malloc(s->n_rows * D * sizeof(float)) : NULL;
    s->logits = o->keep_logits ? malloc(src.n * (size_t)net->n_classes * sizeof(float)) : NULL;
    s->labels = any_label ? malloc(src.n * sizeof(int)) : NULL;
    x.feats = malloc((size_t)o->batch * D * sizeof(float));
    x.logits = malloc((size_t)o->batch * net->n_classes * sizeof(float));
    x.spatial = DS ? malloc((size_t)o->batch * DS * sizeof(float)) : NULL;
    if (DS) {
        s->mu_s = malloc(DS * sizeof(double));
        s->sigma_s = malloc(DS * DS * sizeof(double));
    }
    if (!s->mu || !s->sigma || (s->n_rows && !s->rows) || (o->keep_logits && !s->logits) || (any_label && !s->labels) ||
        !x.feats || !x.logits || (DS && (!x.spatial || !s->mu_s || !s->sigma_s))) {
        rc = err_set(e, ERR_NOMEM, "%s: out of memory for the features of %zu images", path, src.n);
        goto done;
    }
    if ((rc = frechet_acc_init(&x.acc, net->dim, e))) goto done;
    if (DS && (rc = frechet_acc_init(&x.acc_s, net->spatial_dim, e))) goto done;
    for (size_t i = 0; i < src.n && !rc; i++) {
        if (s->labels) s->labels[i] = source_label(&src, i);
        rc = add_image(&x, &src, i, e);
    }
    if (!rc) rc = run_batch(&x, e);
    if (!rc) rc = frechet_acc_finish(&x.acc, s->mu, s->sigma, e);
    if (!rc && DS) rc = frechet_acc_finish(&x.acc_s, s->mu_s, s->sigma_s, e);
    if (rc) err_prefix(e, "%s", path);
done:
    frechet_acc_free(&x.acc);
    frechet_acc_free(&x.acc_s);
    free(x.x);
    free(x.feats);
    free(x.logits);
    free(x.spatial);
    source_free(&src);
    if (rc) featset_free(s);
    return rc;
}
