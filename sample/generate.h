/* generate.h: many images from a LatentDiffusion model in batches: seeded x_T per image,
   sampler_run (sampler.h), first-stage decode, images in [0, 1].

       GenerateOpts g = {.sampler = {SAMPLER_DDIM, 50, 0.0f, 3.0f}, .seed = 0, .batch = 16,
                         .on_batch = write_pngs, .user = &state};
       int *y = malloc(n * sizeof *y);
       sample_labels(m, n, -1, y);                    // class-balanced: image i gets i % (n_classes - 1)
       if (sample_generate(&ctx, m, &g, y, n, &e)) return e.code;

   Image i (0-based over the whole run) draws its x_T from its own stream rng_seed(&r, seed, i)
   (N(0, 1) in (C, H, W) order) and, with eta > 0, its per-step noise from the same stream
   afterwards: an image is the same whatever the batch size (up to float summation order
   inside batched GEMMs).
   Images: x = decode_first_stage(z) (z / scale_factor through the first stage), then
   clamp((x + 1) / 2, 0, 1) as CompVis' scripts do before writing.
*/
#ifndef EFFDM_GENERATE_H
#define EFFDM_GENERATE_H

#include <stdint.h>

#include "sample/sampler.h"

// Receives a finished batch: images (count, shape[1], shape[2], shape[3]) in [0, 1], its
// latents z (count, C, h, w), image indices first .. first + count - 1 and their labels
// (NULL for unconditional models). Returns 0, or an ERR_ code (with e filled) to stop the run.
typedef int (*GenerateBatchFn)(const float *images, const int *shape, const float *z, const int *labels, int first,
                               int count, void *user, Err *e);

typedef struct {
    SamplerOpts sampler;    // its on_step is driven by sample_generate (see on_progress)
    uint64_t seed;
    int batch;              // images per sampling batch (guidance doubles the UNet batch); <= 0: 16
    int skip_decode;        // 1: latents only (on_batch gets images NULL, shape the latents')
    int decode_batch;       // images per first-stage decode call; <= 0: min(batch, 8) (decoder
                            // activations of 256 x 256 images are large)
    // Progress: done of total sampling steps (batches x steps), after every step. May be NULL.
    void (*on_progress)(long done, long total, void *user);
    GenerateBatchFn on_batch;
    void *user;
} GenerateOpts;

// Labels for n images: fixed_class >= 0 gives every image that class; -1 gives image i the
// class i % (n_classes - 1) (the real classes, without the unconditional label). y untouched
// for unconditional models. 0, or ERR_ARG when fixed_class is not a label of the model.
int sample_labels(const Ldm *m, int n, int fixed_class, int *y, Err *e);
// x_T of image `index`: seeds r = rng_seed(seed, index) and fills x[0..n) with N(0, 1).
void sample_initial_noise(Rng *r, uint64_t seed, int index, float *x, size_t n);
// Generates n images (labels y[0..n) or NULL for unconditional models), handing each batch
// to o->on_batch. 0 or an ERR_ code.
int sample_generate(Ctx *c, Ldm *m, const GenerateOpts *o, const int *y, int n, Err *e);
// images = clamp((x + 1) / 2, 0, 1) in place, float32 as torch.
void sample_to_unit_range(float *x, size_t n);

#endif
