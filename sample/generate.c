/* generate.c: batched, seeded image generation around sampler_run, as CompVis'
   scripts/sample_diffusion.py and the cin256 notebook drive DDIMSampler: x_T, sample,
   decode_first_stage, clamp((x + 1) / 2, 0, 1). */
#include "sample/generate.h"

#include <stdlib.h>
#include <string.h>

#include "sample/ddim.h"

int sample_labels(const Ldm *m, int n, int fixed_class, int *y, Err *e) {
    if (!ldm_is_class_conditional(m)) {
        if (fixed_class >= 0) return err_set(e, ERR_ARG, "--class %d: the model is unconditional", fixed_class);
        return 0;
    }
    int nc = ldm_n_classes(m), real = nc - 1;
    if (fixed_class >= nc)
        return err_set(e, ERR_ARG, "--class %d: expected 0 to %d (the model has %d labels; %d is unconditional)",
                       fixed_class, nc - 1, nc, nc - 1);
    if (real < 1 && fixed_class < 0)
        return err_set(e, ERR_ARG, "the model has a single label; give --class");
    for (int i = 0; i < n; i++) y[i] = fixed_class >= 0 ? fixed_class : i % real;
    return 0;
}

void sample_initial_noise(Rng *r, uint64_t seed, int index, float *x, size_t n) {
    rng_seed(r, seed, (uint64_t)index);
    rng_normal_fill(r, x, n);
}

void sample_to_unit_range(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = (x[i] + 1.0f) / 2.0f;
        x[i] = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
    }
}

typedef struct {
    const GenerateOpts *o;
    long done_before;
    long total;
} ProgressState;

static void on_step(int step, int total, void *user) {
    ProgressState *p = user;
    (void)total;
    if (p->o->on_progress) p->o->on_progress(p->done_before + step + 1, p->total, p->o->user);
}

static void on_eval(int step, int total, int timestep, void *user) {
    ProgressState *p = user;
    p->o->sampler.on_eval(step, total, timestep, p->o->sampler.user);
}

// First-stage decode of latents z (count, C, h, w) in chunks; images written to img. 0 or a code.
static int decode_batch(Ctx *c, Ldm *m, const float *z, int count, int chunk, const int *zshape, float *img,
                        int *img_shape, Err *e) {
    size_t per_z = (size_t)zshape[1] * zshape[2] * zshape[3], done_px = 0;
    for (int k = 0; k < count; k += chunk) {
        int nb = count - k < chunk ? count - k : chunk;
        size_t mark = arena_mark(&c->arena);
        Tensor *zt = tensor_from(c, z + (size_t)k * per_z, 4, (const int[]){nb, zshape[1], zshape[2], zshape[3]});
        Tensor *x = ldm_decode_first_stage(c, m, zt);
        if (!x) return err_set(e, c->err.code ? c->err.code : ERR_INTERNAL, "%s", c->err.msg);
        memcpy(img_shape, x->shape, 4 * sizeof(int));
        memcpy(img + done_px, x->data, x->n * sizeof(float));
        done_px += x->n;
        arena_release(&c->arena, mark);
    }
    img_shape[0] = count;
    return 0;
}

int sample_generate(Ctx *c, Ldm *m, const GenerateOpts *o, const int *y, int n, Err *e) {
    if (!m->ae && !o->skip_decode)
        return err_set(e, ERR_UNSUPPORTED, "%s: the model has no first stage to decode images with", m->cfg.path);
    if (ldm_is_class_conditional(m) && !y) return err_set(e, ERR_VALUE, "class-conditional sampling needs labels");
    int steps;
    if (ddim_check_steps(m->T, o->sampler.steps, &steps, e)) return e->code;
    int batch = o->batch > 0 ? o->batch : 16;
    int chunk = o->decode_batch > 0 ? o->decode_batch : (batch < 8 ? batch : 8);
    int C, H, W;
    ldm_latent_shape(m, &C, &H, &W);
    const int zshape[4] = {batch, C, H, W};
    size_t per = (size_t)C * H * W;
    // decoded size: out_ch x (H f) x (W f) with f = 2^(levels - 1)
    size_t per_img = 0;
    if (!o->skip_decode) {
        const AeDDConfig *dd = &ae_config(m->ae)->dd;
        size_t f = (size_t)1 << (dd->n_ch_mult - 1);
        per_img = (size_t)dd->out_ch * H * f * W * f;
    }
    float *z = malloc((size_t)batch * per * sizeof(float));
    float *img = o->skip_decode ? NULL : malloc((size_t)batch * per_img * sizeof(float));
    Rng *rng = malloc((size_t)batch * sizeof(Rng));
    if (!z || (!img && !o->skip_decode) || !rng) {
        free(z);
        free(img);
        free(rng);
        return err_set(e, ERR_NOMEM, "out of memory for a batch of %d images", batch);
    }
    long n_batches = (n + batch - 1) / batch;
    ProgressState ps = {o, 0, n_batches * (long)steps};
    SamplerOpts so = o->sampler;
    so.on_step = on_step;
    so.user = &ps;
    so.on_eval = o->sampler.on_eval ? on_eval : NULL;  // forwarded with the caller's user pointer
    int rc = 0;
    for (int first = 0; first < n && !rc; first += batch) {
        int count = n - first < batch ? n - first : batch;
        for (int i = 0; i < count; i++) sample_initial_noise(&rng[i], o->seed, first + i, z + (size_t)i * per, per);
        if ((rc = sampler_run(c, m, &so, z, count, y ? y + first : NULL, rng, e))) break;
        ps.done_before += steps;
        int img_shape[4] = {count, C, H, W};
        if (!o->skip_decode) {
            if ((rc = decode_batch(c, m, z, count, chunk, zshape, img, img_shape, e))) break;
            sample_to_unit_range(img, (size_t)count * per_img);
        }
        if (o->on_batch) rc = o->on_batch(img, img_shape, z, y ? y + first : NULL, first, count, o->user, e);
    }
    free(z);
    free(img);
    free(rng);
    return rc;
}
