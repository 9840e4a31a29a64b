/* cmd_sample.c: effdm sample: images from a CompVis LDM (default: the shipped teacher) with
   DDIM or PLMS and classifier-free guidance, written as PNGs plus an overview grid. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/profile.h"
#include "autograd/ops/gemm_util.h"
#include "cli/cli.h"
#include "util/zoo.h"
#include "eval/eval.h"
#include "cli/commands.h"
#include "io/image.h"
#include "models/ldm.h"
#include "qalora/export.h"
#include "sample/ddim.h"
#include "sample/generate.h"
#include "sample/grid.h"
#include "util/clock.h"

static const char *const usage[] = {
    "usage: effdm sample [--ldm-config C.yaml --ckpt M.ckpt | --model M.safetensors] --out DIR [options]",
    "",
    "Samples images from a CompVis latent-diffusion checkpoint as CompVis' DDIMSampler /",
    "PLMSSampler do, decodes them with the first stage and writes 8-bit PNGs.",
    "",
    "model:",
    "  --ldm-config C.yaml  CompVis YAML of the model (model.target LatentDiffusion)",
    "  --ckpt M.ckpt        its weights (.ckpt or .safetensors); both or neither. Default: the",
    "                       shipped teacher fmnist-ldm, found in $EFFDM_ZOO/fmnist-ldm when",
    "                       EFFDM_ZOO is set, else in <effdm's directory>/../models/zoo/fmnist-ldm",
    "  --model M.safetensors  an effdm export (effdm export): the quantized model, which holds",
    "                       its own config, first stage and schedule; every sampling step uses",
    "                       the activation table entry of the nearest training timestep.",
    "                       Its quantized layers run integer kernels (u8 activations, packed",
    "                       weights, int32 sums): the fastest this CPU has, or the one named",
    "                       by $EFFDM_KERNEL (vnni, avx2, ref; float: the fake-quant reference).",
    "                       nupes layers run them through 8-bit tables of their levels",
    "                       (rounded: docs/QUANTIZERS.md; effdm info --layers lists each path)",
    "  --ema auto|on|off    EMA weights (default auto: used when the config's use_ema is true,",
    "                       the CompVis default, and the file has an EMA copy of every UNet",
    "                       parameter; a partial set is reported and the raw weights used)",
    "sampling:",
    "  --n N                number of images (default 64)",
    "  --sampler ddim|plms  (default ddim)",
    "  --steps S            requested steps (default 50). CompVis' 'uniform' schedule takes",
    "                       timesteps range(0, T, T // S) + 1, so the real count can differ",
    "                       (--steps 30 runs 31 steps); it is printed. Counts whose last",
    "                       timestep would pass T are refused, as CompVis fails on them (3 of 1000)",
    "  --eta E              DDIM noise (default 0; PLMS needs 0)",
    "  --scale S            classifier-free guidance scale (default 1.5; 1 = no guidance),",
    "                       e = e_uncond + S (e_cond - e_uncond), uncond = the last label",
    "  --eps-scale G        multiply every step's (guided) eps by G before the update (default",
    "                       1; finite, > 0). Not in CompVis: a diagnosis knob. 1% moves FIDs",
    "                       by far more than 4-bit quantization does (docs/RESULTS_TEACHERS.md)",
    "  --class K            every image of class K (default: class-balanced, image i gets",
    "                       class i mod (n_classes - 1))",
    "  --seed S             (default 0). Image i draws x_T and its noise from its own stream",
    "                       (seed, i): an image does not depend on --batch or --n",
    "  --batch B            images per sampling batch (default 16; guidance doubles the UNet batch)",
    "  --threads N          (default $EFFDM_THREADS, else all cores)",
    "output:",
    "  --out DIR            created if needed; existing files of the same names are replaced.",
    "                       Class-conditional: DIR/<class>/<index>.png, unconditional:",
    "                       DIR/<index>.png (index = 5-digit image number), and DIR/grid.png:",
    "                       one row per class (first 16 images of each, at most 32 classes),",
    "                       or up to 16 x 16 images for unconditional models. Every PNG is",
    "                       written atomically (temp file + rename); when sampling fails, the",
    "                       images written so far and the directories made are removed",
    "evaluation:",
    "  --eval REF           after sampling, evaluate the images against statistics REF from",
    "                       effdm stats (FID, IS, precision/recall, class accuracy; see",
    "                       effdm eval); REF 'fmnist' = the shipped Fashion-MNIST test-set",
    "                       judge statistics",
    "  --eval-json FILE     where to write the results as JSON (default DIR/eval.json)",
    "",
    "other:",
    "  --profile            at the end, print where the time went: per op kind (conv2d, linear,",
    "                       attention, group_norm, fake_quant, ... with calls and % of the total)",
    "                       and per UNet block (input_blocks.N, middle_block, output_blocks.N,",
    "                       out, time_embed; first_stage = the decoder); see docs/USER_GUIDE.md",
    "",
    "Images are clamp((decode(z / scale_factor) + 1) / 2, 0, 1) stored as round(255 x).",
    "Progress and ETA go to stderr; a summary to stdout. Exit status: 0, 2 for bad input",
    "(arguments, files, configs: one line naming the file/key), 1 for other failures.",
    NULL,
};

typedef struct {
    const char *out;
    int class_cond;
    int n_labels;
    char *dir_made;           // (n_labels) class directories already created (2: by this run)
    int out_made;             // the output directory was created by this run
    const int *labels;        // (n) every image's label, for the clean-up on failure
    int complete;             // every image and the grid are written
    SampleGridPlan plan;
    unsigned char *grid_px;   // (rows * cols, C, H, W) 8-bit copies of the grid images
    int img_shape[4];
    Progress prog;
    int written;
} SampleState;

// mkdir -p: the output folder and any missing parents; accepts an existing directory.
// *made (may be NULL) = 1 when path itself was created. 0 or ERR_IO naming the path.
static int make_dir(const char *path, int *made, Err *e) {
    char tmp[PATH_MAX];
    if (strlen(path) >= sizeof tmp) return err_set(e, ERR_ARG, "%s: path too long", path);
    strcpy(tmp, path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        mkdir(tmp, 0777);  // failures show up at the final mkdir below
        *p = '/';
    }
    if (made) *made = 0;
    if (mkdir(path, 0777) == 0) {
        if (made) *made = 1;
        return 0;
    }
    struct stat st;
    if (errno == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
    return err_set(e, ERR_IO, "%s: cannot create the output directory: %s", path,
                   errno == EEXIST ? "a file of that name exists" : strerror(errno));
}

static int write_batch(const float *images, const int *shape, const float *z, const int *labels, int first,
                       int count, void *user, Err *e) {
    (void)z;
    SampleState *s = user;
    int C = shape[1], H = shape[2], W = shape[3];
    size_t per = (size_t)C * H * W;
    char path[PATH_MAX];
    if (!s->grid_px) {
        memcpy(s->img_shape, shape, sizeof s->img_shape);
        s->grid_px = calloc((size_t)s->plan.rows * s->plan.cols * per, 1);
        if (!s->grid_px) return err_set(e, ERR_NOMEM, "out of memory for the grid");
    }
    for (int i = 0; i < count; i++) {
        int idx = first + i;
        if (s->class_cond) {
            int k = labels[i];
            snprintf(path, sizeof path, "%s/%d", s->out, k);
            int made = 0;
            if (!s->dir_made[k] && make_dir(path, &made, e)) return e->code;
            if (!s->dir_made[k]) s->dir_made[k] = made ? 2 : 1;
            snprintf(path, sizeof path, "%s/%d/%05d.png", s->out, k, idx);
        } else {
            snprintf(path, sizeof path, "%s/%05d.png", s->out, idx);
        }
        const float *img = images + (size_t)i * per;
        if (image_write_png(path, img, C, H, W, e)) return e->code;
        s->written++;
        int slot = s->plan.slot[idx];
        if (slot >= 0)
            for (size_t k = 0; k < per; k++) s->grid_px[(size_t)slot * per + k] = image_to_u8(img[k]);
    }
    return 0;
}

// After a failure: removes the images this run wrote (indices 0..written-1, in order), the
// grid, and the directories it created, so that a failed run leaves no partial output.
static void remove_partial(SampleState *s) {
    char path[PATH_MAX];
    for (int idx = 0; idx < s->written; idx++) {
        if (s->class_cond)
            snprintf(path, sizeof path, "%s/%d/%05d.png", s->out, s->labels[idx], idx);
        else
            snprintf(path, sizeof path, "%s/%05d.png", s->out, idx);
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/grid.png", s->out);
    if (s->out_made) unlink(path);
    for (int k = 0; s->dir_made && k < s->n_labels; k++)
        if (s->dir_made[k] == 2) {
            snprintf(path, sizeof path, "%s/%d", s->out, k);
            rmdir(path);
        }
    if (s->out_made) rmdir(s->out);
}

static void on_progress(long done, long total, void *user) {
    SampleState *s = user;
    (void)total;
    progress_update(&s->prog, done, NULL);
}

static int write_grid(SampleState *s, Err *e) {
    int C = s->img_shape[1], H = s->img_shape[2], W = s->img_shape[3];
    size_t per = (size_t)C * H * W, n = (size_t)s->plan.rows * s->plan.cols;
    float *x = malloc(n * per * sizeof(float));
    if (!x) return err_set(e, ERR_NOMEM, "out of memory for the grid");
    for (size_t k = 0; k < n * per; k++) x[k] = (float)s->grid_px[k] / 255.0f;  // round(255 v) gives k back
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/grid.png", s->out);
    int rc = image_write_grid(path, x, (int)n, C, H, W, s->plan.cols, e);
    free(x);
    return rc;
}

// The shipped teacher (zoo_path: $EFFDM_ZOO/fmnist-ldm or next to the executable).
static int find_teacher(char *cfg, char *ckpt, size_t cap, Err *e) {
    if (zoo_path("config.yaml", cfg, cap, e) || zoo_path("model.ckpt", ckpt, cap, e))
        return err_prefix(e, "no model given (--model, or --ldm-config and --ckpt) and the shipped teacher is missing");
    return 0;
}

static int parse_choice(const char *opt, const char *v, const char *const *names, int n, int *out, Err *e) {
    for (int i = 0; i < n; i++)
        if (!strcmp(v, names[i])) {
            *out = i;
            return 0;
        }
    return err_set(e, ERR_ARG, "%s: expected %s%s%s%s%s, found '%s'", opt, names[0], n > 1 ? " or " : "",
                   n > 1 ? names[1] : "", n > 2 ? " or " : "", n > 2 ? names[2] : "", v);
}

int cmd_sample(int argc, char **argv) {
    const char *cfg_path = NULL, *ckpt_path = NULL, *out = NULL, *ema_s = "auto", *sampler_s = "ddim";
    const char *model_path = NULL, *eval_ref = NULL, *eval_json = NULL;
    int n = 64, steps = 50, klass = -1, seed = 0, batch = 16, threads = -1, profile = 0;
    float eta = 0.0f, scale = 1.5f, eps_scale = 1.0f;
    CliOpt opts[] = {
        {"--ldm-config", OPT_STR, &cfg_path}, {"--ckpt", OPT_STR, &ckpt_path}, {"--ema", OPT_STR, &ema_s},
        {"--n", OPT_INT, &n},                 {"--sampler", OPT_STR, &sampler_s}, {"--steps", OPT_INT, &steps},
        {"--eta", OPT_FLOAT, &eta},           {"--scale", OPT_FLOAT, &scale},  {"--class", OPT_INT, &klass},
        {"--seed", OPT_INT, &seed},           {"--batch", OPT_INT, &batch},    {"--threads", OPT_INT, &threads},
        {"--out", OPT_STR, &out},             {"--model", OPT_STR, &model_path},
        {"--eval", OPT_STR, &eval_ref},       {"--eval-json", OPT_STR, &eval_json},
        {"--profile", OPT_FLAG, &profile},    {"--eps-scale", OPT_FLOAT, &eps_scale},
    };
    Err e = {0};
    int help = 0;
    if (cli_parse(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0, &help, &e))
        return cli_fail("sample", &e);
    if (help) return cli_help(usage);
    static const char *const ema_names[] = {"auto", "on", "off"};
    int ema = 0, sampler = 0;
    char tcfg[PATH_MAX], tckpt[PATH_MAX];
    if (!out) err_set(&e, ERR_ARG, "--out DIR is required (see effdm sample --help)");
    else if (model_path && (cfg_path || ckpt_path || opts[2].seen))
        err_set(&e, ERR_ARG, "--model is an effdm export: it takes no --ldm-config, --ckpt or --ema");
    else if (!cfg_path != !ckpt_path)
        err_set(&e, ERR_ARG, "--ldm-config and --ckpt go together (give both or neither)");
    else if (n < 1) err_set(&e, ERR_ARG, "--n: expected a positive number of images, found %d", n);
    else if (batch < 1) err_set(&e, ERR_ARG, "--batch: expected a positive integer, found %d", batch);
    else if (!(eta >= 0 && eta <= 1)) err_set(&e, ERR_ARG, "--eta: expected 0..1 (DDIM), found %g", (double)eta);
    else if (!(scale >= 0) || !isfinite(scale))
        err_set(&e, ERR_ARG, "--scale: expected a finite guidance scale >= 0, found %g", (double)scale);
    else if (!(eps_scale > 0) || !isfinite(eps_scale))
        err_set(&e, ERR_ARG, "--eps-scale: expected a finite factor > 0, found %g", (double)eps_scale);
    else if (seed < 0) err_set(&e, ERR_ARG, "--seed: expected a non-negative integer, found %d", seed);
    else if (opts[8].seen && klass < 0) err_set(&e, ERR_ARG, "--class: expected a label >= 0, found %d", klass);
    if (e.code || parse_choice("--ema", ema_s, ema_names, 3, &ema, &e) ||
        parse_choice("--sampler", sampler_s, SAMPLER_NAMES, SAMPLER_COUNT, &sampler, &e))
        return cli_fail("sample", &e);
    if (sampler_needs_eta_zero((SamplerKind)sampler) && eta != 0.0f) {
        err_set(&e, ERR_ARG, "--eta %g: %s sampling needs eta 0", (double)eta, SAMPLER_NAMES[sampler]);
        return cli_fail("sample", &e);
    }
    if (cli_threads(threads, &e)) return cli_fail("sample", &e);
    char eval_ref_buf[PATH_MAX], eval_json_buf[PATH_MAX];
    if (eval_ref && !strcmp(eval_ref, "fmnist")) {
        if (zoo_path("fmnist_test_judge.safetensors", eval_ref_buf, sizeof eval_ref_buf, &e))
            return cli_fail("sample", &e);
        eval_ref = eval_ref_buf;
    }
    if (eval_ref && access(eval_ref, R_OK) != 0) {  // fail before sampling, not after
        err_set(&e, ERR_IO, "--eval %s: cannot read the reference statistics", eval_ref);
        return cli_fail("sample", &e);
    }
    if (eval_ref && n < EVAL_IS_SPLITS) {  // eval would refuse after the sampling: refuse now
        err_set(&e, ERR_ARG, "--eval needs --n >= %d (the Inception Score splits), found %d", EVAL_IS_SPLITS, n);
        return cli_fail("sample", &e);
    }
    if (eval_json && !eval_ref) {
        err_set(&e, ERR_ARG, "--eval-json needs --eval");
        return cli_fail("sample", &e);
    }
    if (!cfg_path && !model_path) {
        if (find_teacher(tcfg, tckpt, sizeof tcfg, &e)) return cli_fail("sample", &e);
        cfg_path = tcfg;
        ckpt_path = tckpt;
    }

    Ldm *m = NULL;
    ExportModel *em = NULL;
    LdmLoadOpts lo = {(LdmEmaMode)ema, LDM_PARTS_ALL};
    if (model_path) {
        if (export_load(&em, model_path, &e)) return cli_fail("sample", &e);
        m = em->ldm;
        cfg_path = model_path;
    } else if (ldm_load(&m, cfg_path, ckpt_path, &lo, &e)) {
        return cli_fail("sample", &e);
    }
    m->split_batch = 1;  // the batch's images run on the threads at once (models/ldm.h)
    int rc = 0, real_steps = 0;
    int *labels = NULL;
    SampleState st = {0};
    Ctx ctx = {0};
    Profile *prof = NULL;
    if (!m->ae) {
        rc = err_set(&e, ERR_UNSUPPORTED, "%s: model.params.first_stage_config is missing: images cannot be decoded",
                     cfg_path);
        goto done;
    }
    if ((rc = ddim_check_steps(m->T, steps, &real_steps, &e))) goto done;
    st.class_cond = ldm_is_class_conditional(m);
    if (st.class_cond) {
        labels = malloc((size_t)n * sizeof(int));
        st.n_labels = ldm_n_classes(m);
        st.dir_made = calloc((size_t)st.n_labels, 1);
        if (!labels || !st.dir_made) {
            rc = err_set(&e, ERR_NOMEM, "out of memory for %d labels", n);
            goto done;
        }
    }
    if ((rc = sample_labels(m, n, klass, labels, &e))) goto done;
    if ((rc = sample_grid_plan(&st.plan, labels, n, &e))) goto done;
    if ((rc = make_dir(out, &st.out_made, &e))) goto done;
    st.labels = labels;
    if ((rc = ctx_init(&ctx, (size_t)16 << 30, &e))) goto done;  // address space only (MAP_NORESERVE)
    if (profile) {
        if (!(prof = malloc(sizeof *prof))) {
            rc = err_set(&e, ERR_NOMEM, "out of memory for the profile");
            goto done;
        }
        prof_init(prof);
        ctx.prof = prof;
    }
    st.out = out;
    if (m->warning[0]) fprintf(stderr, "effdm sample: note: %s\n", m->warning);
    if (em)
        printf("model:    %s (effdm export W%dA%d%s, %d TALSQ entr%s, UNet part %zu bytes = 1/%.2f of FP32%s)\n",
               model_path, em->w_bits, em->a_bits, em->n_token_layers ? " per-token" : "", em->train_sched.n,
               em->train_sched.n == 1 ? "y" : "ies",
               em->unet_bytes, (double)em->unet_fp32_bytes / (double)em->unet_bytes,
               st.class_cond ? ", class-conditional" : ", unconditional");
    if (em)
        printf("kernels:  %s (%d of %d quantized layers integer, %d of them through level tables; "
               "EFFDM_KERNEL=auto|vnni|avx2|ref|float)\n", export_kernel_name(em), em->use_float ? 0 : em->n_int_layers,
               em->n_layers, em->use_float ? 0 : em->n_lut_layers);
    if (em && em->eps_gain) printf("eps gain: %.4f (the export's train.eps_gain fit)\n", (double)em->eps_gain[0]);
    if (em && em->guidance_gain && st.class_cond && scale != 1.0f) {
        float lo = em->guidance_gain[0], hi = lo;
        for (int k = 1; k < em->train_sched.n; k++) {
            if (em->guidance_gain[k] < lo) lo = em->guidance_gain[k];
            if (em->guidance_gain[k] > hi) hi = em->guidance_gain[k];
        }
        if (lo == hi)
            printf("guidance: x%.3f on the guidance term (the export's fitted gain): effective scale %.3g\n", (double)lo,
                   (double)(scale * lo));
        else
            printf("guidance: the export's gain per step (%.3f to %.3f) multiplies the guidance term\n", (double)lo,
                   (double)hi);
    }
    if (!em)
        printf("model:    %s (%s, %s%s)\n", cfg_path, ckpt_path, m->using_ema ? "EMA weights" : "raw weights",
               st.class_cond ? ", class-conditional" : ", unconditional");
    printf("fp gemm:  %s (EFFDM_SGEMM=auto|blas|avx512)\n", gemm_kernel_name(gemm_kernel_get()));
    printf("sampler:  %s, %d steps (requested %d), eta %g, guidance scale %g%s, seed %d\n",
           SAMPLER_NAMES[sampler], real_steps, steps, (double)eta, (double)scale,
           st.class_cond ? "" : " (unused: unconditional model)", seed);
    if (eps_scale != 1.0f) printf("eps scale: %g at every step (not CompVis' sampler)\n", (double)eps_scale);
    fflush(stdout);
    GenerateOpts g = {.sampler = {(SamplerKind)sampler, steps, eta, scale, em ? export_on_eval : NULL, NULL, em,
                                  .eps_scale = eps_scale},
                      .seed = (uint64_t)seed, .batch = batch, .on_progress = on_progress,
                      .on_batch = write_batch, .user = &st};
    long n_batches = (n + batch - 1) / batch;
    progress_start(&st.prog, "sampling", n_batches * (long)real_steps);
    double t0 = clock_seconds();
    if ((rc = sample_generate(&ctx, m, &g, labels, n, &e))) goto done;
    double secs = clock_seconds() - t0;
    ctx.prof = NULL;
    char extra[64];
    snprintf(extra, sizeof extra, "%.2f images/s", n / secs);
    progress_finish(&st.prog, extra);
    if ((rc = write_grid(&st, &e))) goto done;
    st.complete = 1;  // from here on a failure (the evaluation) keeps the images
    printf("wrote %d images to %s/ (grid: %s/grid.png, %d x %d) in %.1f s, %.2f images/s\n", st.written, out, out,
           st.plan.rows, st.plan.cols, secs, n / secs);
    if (prof && (rc = cli_print_profile(prof, secs, &e))) goto done;
    if (eval_ref) {
        fflush(stdout);
        if (!eval_json) {
            snprintf(eval_json_buf, sizeof eval_json_buf, "%s/eval.json", out);
            eval_json = eval_json_buf;
        }
        EvalOpts eo = eval_default_opts();
        if ((rc = cli_eval_report(out, eval_ref, &eo, eval_json, &e))) goto done;
    }
done:
    if (rc && st.out && !st.complete) remove_partial(&st);
    if (rc) cli_fail("sample", &e);
    ctx_free(&ctx);
    free(prof);
    sample_grid_plan_free(&st.plan);
    free(st.grid_px);
    free(st.dir_made);
    free(labels);
    if (em) export_free(em);  // frees its model
    else ldm_free(m);
    return rc ? err_exit_status(rc) : 0;
}
