/* cmd_info.c: effdm info FILE: what a checkpoint, safetensors file or effdm export holds. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/commands.h"
#include "io/dtype.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "models/ldm.h"
#include "plot/plot.h"
#include "plot/plot_layers.h"
#include "qalora/export.h"

static const char *const usage[] = {
    "usage: effdm info FILE [--tensors]",
    "       effdm info EXPORT --layers [--ckpt TEACHER_CKPT --ldm-config YAML] [--plot FILE.png]",
    "",
    "Prints what a tensor file holds: its format (PyTorch .ckpt/.pth zip or .safetensors,",
    "picked by content, not by extension), the top-level keys of a .ckpt with their types,",
    "the tensor count, parameters per prefix (model.diffusion_model., first_stage_model.,",
    "cond_stage_model., model_ema., other), a dtype histogram and the safetensors metadata",
    "(for an effdm export: where it came from, bit widths, TALSQ timesteps, one line per",
    "quantized layer, the UNet size against FP32 and the embedded CompVis YAML; for a CompVis",
    "state dict written by effdm export --format compvis-*: its run, the student's bits and",
    "what such a file cannot hold).",
    "",
    "  --tensors   also list every tensor: name, dtype, shape (file order)",
    "",
    "--layers loads an effdm export (effdm export) and prints one row per quantized layer",
    "instead: name, role (trainable / special), weight quantizer kind, weight and activation",
    "bits, weight shape, the range of the activation step size over the TALSQ timesteps",
    "(min..max of the layer's table; one entry for special layers; 'tok' marks a layer with",
    "per-token activation ranges, quant.act_granularity token, whose table holds the clipping",
    "ratio α instead of a step), how the layer runs (path:",
    "int = the integer kernels, exactly; int-lut = the integer kernels through 8-bit level",
    "tables, for a non-uniform kind such as nupes; float = the float path) and, for int-lut,",
    "the tables' rounding errors (weights: ||W - W_table|| / ||W||; activations: the worst",
    "entry's relative L2 over its levels; above 1% the loader keeps the float path), and rotate:",
    "the block of the Hadamard rotation of the layer's input (quant.rotate; - when not rotated;",
    "rel.err compares the weight brought back to the layer's own basis). With the FP teacher",
    "(--ckpt and --ldm-config: the checkpoint and YAML the run started from; EMA weights when",
    "the export says it used them) also rel.err = ||W_q - W_fp|| / ||W_fp||, the relative L2",
    "error of the deployed (dequantized) weight against the teacher's, in double. It mixes",
    "two things: the LoRA update that fine-tuning merged into the weight (intended drift",
    "away from W_fp) and the rounding to 2^bits levels; a naive PTQ export has rounding only.",
    "  --plot FILE.png   also draw rel.err per layer as a bar chart (needs the teacher)",
    "",
    "Without --layers tensor data is not read (except to check an effdm run file's checksum).",
    "Exit status: 0, or 2 when FILE is missing or not a valid tensor file (with --layers: not a",
    "valid export; a teacher that lacks one of its layers or has another shape), or an option",
    "is missing its partner (the message says why).",
    NULL,
};

static const char *const prefixes[] = {"model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "model_ema."};
#define N_PREFIX (int)(sizeof prefixes / sizeof prefixes[0])

// 1234567 -> "1,234,567"
static const char *grouped(size_t v, char *buf, size_t cap) {
    char raw[32];
    int n = snprintf(raw, sizeof raw, "%zu", v), k = 0;
    for (int i = 0; i < n && (size_t)k + 2 < cap; i++) {
        if (i && (n - i) % 3 == 0) buf[k++] = ',';
        buf[k++] = raw[i];
    }
    buf[k] = '\0';
    return buf;
}

// Prints s on one line: control characters as '?', cut after max bytes.
static void print_clean(const char *s, size_t max) {
    size_t n = strlen(s);
    for (size_t i = 0; i < n && i < max; i++) putchar((unsigned char)s[i] < 0x20 ? '?' : s[i]);
    if (n > max) printf("... (%zu bytes)", n);
}

static const char *meta_or(WeightFile *f, const char *key, const char *dflt) {
    const char *v = weights_metadata(f, key);
    return v ? v : dflt;
}

static int json_int_or(const cJSON *o, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valueint : dflt;
}

// A file of a run directory: what it is and whether its data matches its checksum.
static void print_run_file(WeightFile *f, const char *kind, const char *path) {
    static const char *const what[][2] = {
        {"run-state", "the run state of a fine-tuning run (student, optimizer, position; effdm finetune --resume)"},
        {"best-state", "the student of the run's best validation (effdm export --epoch best)"},
        {"calibrated", "a calibrated student before fine-tuning (naive PTQ; effdm calibrate)"},
        {"calib", "the recorded teacher UNet inputs of a calibration"}};
    const char *desc = "a file of an effdm run directory";
    for (size_t i = 0; i < sizeof what / sizeof what[0]; i++)
        if (!strcmp(kind, what[i][0])) desc = what[i][1];
    printf("effdm %s: %s\n", kind, desc);
    const char *ep = weights_metadata(f, "effdm.epoch"), *st = weights_metadata(f, "effdm.step");
    int done, total, step, steps;  // effdm.epoch: epochs done / epochs; effdm.step: steps done in the next
    if (ep && st && sscanf(ep, "%d/%d", &done, &total) == 2 && sscanf(st, "%d/%d", &step, &steps) == 2)
        printf("  position:    %d of %d epochs done; epoch %d: %d of %d steps done\n", done, total, done + 1, step,
               steps);
    if (weights_metadata(f, "effdm.crc32")) {
        StFile sf;
        Err e = {0};
        if (!st_open(&sf, path, &e)) {
            e.code = st_verify(&sf, &e);
            st_close(&sf);
        }
        printf("  checksum:    %s\n", e.code ? e.msg : "the data matches effdm.crc32");
    }
}

// The CompVis YAML of effdm.ldm_config, indented, control characters as '?'.
static void print_yaml(const char *yaml) {
    printf("  CompVis config (effdm.ldm_config):\n    ");
    for (const char *p = yaml; *p; p++) {
        if (*p == '\n') {
            if (p[1]) printf("\n    ");
        } else {
            putchar((unsigned char)*p < 0x20 ? '?' : *p);
        }
    }
    printf("\n");
}

// A checkpoint written by effdm compress.
static void print_pruned(WeightFile *f) {
    printf("effdm pruned: a checkpoint with pruned FeedForward units and/or attention heads (effdm compress); sample, "
           "calibrate or fine-tune it as --ckpt with its YAML\n");
    printf("  source:      %s\n", meta_or(f, "effdm.source", "?"));
    printf("  pruning:     ");
    print_clean(meta_or(f, "effdm.pruned", "?"), 600);
    printf("\n");
    if (weights_metadata(f, "effdm.note")) printf("  note:        %s\n", meta_or(f, "effdm.note", ""));
}

// A dequantized CompVis state dict written by effdm export --format compvis-*.
static void print_compvis(WeightFile *f, const char *kind) {
    printf("effdm %s: a fine-tuned student dequantized into its teacher's CompVis state dict (effdm export "
           "--format %s; PyTorch: LatentDiffusion(**config.model.params).load_state_dict(sd, strict=True))\n", kind,
           kind);
    printf("  source:      %s (config %s)\n", meta_or(f, "effdm.source", "?"), meta_or(f, "effdm.source_config", "?"));
    printf("  run:         %s, epoch %s%s\n", meta_or(f, "effdm.run", "?"), meta_or(f, "effdm.epoch", "?"),
           !strcmp(meta_or(f, "effdm.ema", "0"), "1") ? ", built on the teacher's EMA weights" : "");
    const char *qj = weights_metadata(f, "effdm.quant");
    cJSON *q = qj ? cJSON_Parse(qj) : NULL;
    const cJSON *layers = q ? cJSON_GetObjectItemCaseSensitive(q, "layers") : NULL;
    if (cJSON_IsArray(layers))
        printf("  student:     W%dA%d (special layers %d-bit), LoRA rank %d: %d quantized layers written as the weights "
               "the student computes with\n", json_int_or(q, "w_bits", 0), json_int_or(q, "a_bits", 0),
               json_int_or(q, "special_bits", 0), json_int_or(q, "rank", 0), cJSON_GetArraySize(layers));
    cJSON_Delete(q);
    printf("  not in file: ");
    print_clean(meta_or(f, "effdm.not_in_file", "?"), 400);
    printf("\n");
    const char *keys = weights_metadata(f, "effdm.keys_vs_teacher");
    if (keys) {
        printf("  keys:        ");
        print_clean(keys, 400);
        printf("\n");
    }
    const char *yaml = weights_metadata(f, "effdm.ldm_config");
    if (yaml) print_yaml(yaml);
}

// The effdm.* entries of an export, readable: provenance, bits, one line per quantized layer,
// sizes, the embedded YAML. A malformed effdm.quant is shown raw (effdm sample rejects it).
static void print_export(WeightFile *f) {
    printf("effdm export (format %s):\n", meta_or(f, "effdm.format", "?"));
    printf("  source:      %s (config %s)\n", meta_or(f, "effdm.source", "?"), meta_or(f, "effdm.source_config", "?"));
    printf("  run:         %s, epoch %s%s\n", meta_or(f, "effdm.run", "?"), meta_or(f, "effdm.epoch", "?"),
           !strcmp(meta_or(f, "effdm.ema", "0"), "1") ? ", EMA weights" : "");
    printf("  FP layers:   %s\n", meta_or(f, "effdm.fp_layers", "F32"));
    const char *ub = weights_metadata(f, "effdm.unet_bytes"), *fb = weights_metadata(f, "effdm.unet_fp32_bytes");
    if (ub && fb && atof(ub) > 0)
        printf("  UNet part:   %s bytes vs FP32 UNet %s bytes (1/%.2f)\n", ub, fb, atof(fb) / atof(ub));
    const char *qj = weights_metadata(f, "effdm.quant");
    cJSON *q = qj ? cJSON_Parse(qj) : NULL;
    const cJSON *layers = q ? cJSON_GetObjectItemCaseSensitive(q, "layers") : NULL;
    if (!cJSON_IsArray(layers)) {
        printf("  quant:       ");
        print_clean(qj ? qj : "(missing)", 300);
        printf("\n");
    } else {
        printf("  quant:       W%dA%d, special layers %d-bit, LoRA rank %d, TALSQ %s, %d training steps\n",
               json_int_or(q, "w_bits", 0), json_int_or(q, "a_bits", 0), json_int_or(q, "special_bits", 0),
               json_int_or(q, "rank", 0), cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(q, "talsq")) ? "on" : "off",
               json_int_or(q, "train_steps", 0));
        const cJSON *ts = cJSON_GetObjectItemCaseSensitive(q, "timesteps"), *t;
        printf("  timesteps:  ");
        cJSON_ArrayForEach(t, ts) printf(" %d", t->valueint);
        printf("\n  layers (%d quantized; name, role, weight/activation bits, table entries, weight/activation "
               "quantizers; 'per-token': per-token activation ranges):\n", cJSON_GetArraySize(layers));
        const cJSON *l;
        cJSON_ArrayForEach(l, layers) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(l, "name"), *ro = cJSON_GetObjectItemCaseSensitive(l, "role");
            // exports written before quantizer kinds existed name none: uniform
            const cJSON *wk = cJSON_GetObjectItemCaseSensitive(l, "w_quantizer");
            const cJSON *ak = cJSON_GetObjectItemCaseSensitive(l, "a_quantizer");
            const cJSON *gr = cJSON_GetObjectItemCaseSensitive(l, "a_granularity");
            printf("    %-58s %-9s W%d A%d %3d %s/%s%s\n", cJSON_IsString(nm) ? nm->valuestring : "?",
                   cJSON_IsString(ro) ? ro->valuestring : "?", json_int_or(l, "w_bits", 0), json_int_or(l, "a_bits", 0),
                   json_int_or(l, "entries", 0), cJSON_IsString(wk) ? wk->valuestring : "uniform",
                   cJSON_IsString(ak) ? ak->valuestring : "uniform",
                   cJSON_IsString(gr) && !strcmp(gr->valuestring, "token") ? " per-token" : "");
        }
    }
    cJSON_Delete(q);
    const char *yaml = weights_metadata(f, "effdm.ldm_config");
    if (yaml) print_yaml(yaml);
}

// "64x32x3x3"
static const char *shape_text(const ExportLayerRow *r, char *buf, size_t cap) {
    buf[0] = '\0';
    for (int d = 0; d < r->ndim; d++) snprintf(buf + strlen(buf), cap - strlen(buf), d ? "x%d" : "%d", r->shape[d]);
    return buf;
}

// effdm info EXPORT --layers: the table (and the bar chart) of export_layer_rows.
static int info_layers(const char *path, const char *ckpt, const char *yaml, const char *plot) {
    Err e = {0};
    ExportModel *em = NULL;
    Ldm *t = NULL;
    ExportLayerRow *rows = NULL;
    const char **names = NULL;
    double *err = NULL;
    if (!ckpt != !yaml) {
        err_set(&e, ERR_ARG, "--ckpt and --ldm-config go together (the teacher's checkpoint and its YAML)");
        goto done;
    }
    if (plot && !ckpt) {
        err_set(&e, ERR_ARG, "--plot draws the error against the teacher: give --ckpt and --ldm-config");
        goto done;
    }
    if (export_load(&em, path, &e)) goto done;
    if (ckpt) {
        LdmLoadOpts lo = {em->ema ? LDM_EMA_ON : LDM_EMA_OFF, LDM_PART_UNET, NULL};
        if (ldm_load(&t, yaml, ckpt, &lo, &e)) goto done;
    }
    rows = malloc((size_t)(em->n_layers ? em->n_layers : 1) * sizeof *rows);
    if (!rows) {
        err_set(&e, ERR_NOMEM, "out of memory");
        goto done;
    }
    if (export_layer_rows(em, t ? t->unet : NULL, rows, &e)) {
        if (t) err_prefix(&e, "%s against %s", path, ckpt);
        goto done;
    }
    printf("%s: %d quantized layers (W%dA%d, special layers %d-bit, %d TALSQ timesteps)%s\n", path, em->n_layers,
           em->w_bits, em->a_bits, em->special_bits, em->train_sched.n,
           t ? (em->ema ? "; teacher: EMA weights" : "; teacher: raw weights") : "");
    printf("%-58s %-9s %-9s %2s %2s %-13s %10s  %-17s %-7s %-13s %s\n", "layer", "role", "kind", "W", "A", "shape",
           "rel.err", "a_delta min..max", "path", "table err W/A", "rotate");
    double sum = 0, worst = -1;
    int iw = 0;
    char sh[64];
    for (int k = 0; k < em->n_layers; k++) {
        const ExportLayerRow *r = &rows[k];
        char re[32] = "-";
        if (t) snprintf(re, sizeof re, "%.6g", r->rel_err);
        char da[40], te[40] = "-";
        snprintf(da, sizeof da, "%s%.4g..%.4g", r->a_token ? "tok " : "", r->a_delta_min, r->a_delta_max);
        if (r->w_lut_err > 0 || r->a_lut_err > 0) snprintf(te, sizeof te, "%.2g/%.2g", r->w_lut_err, r->a_lut_err);
        char ro[16] = "-";
        if (r->rot) snprintf(ro, sizeof ro, "%d", r->rot);
        printf("%-58s %-9s %-9s %2d %2d %-13s %10s  %-17s %-7s %-13s %s\n", r->name, r->special ? "special" : "trainable",
               r->w_kind, r->w_bits, r->a_bits, shape_text(r, sh, sizeof sh), re, da, r->path, te, ro);
        if (t) {
            sum += r->rel_err;
            if (r->rel_err > worst) worst = r->rel_err, iw = k;
        }
    }
    if (t && em->n_layers)
        printf("rel.err: mean %.6g, largest %.6g (%s); LoRA drift and rounding together (see --help)\n",
               sum / em->n_layers, worst, rows[iw].name);
    if (plot) {
        names = malloc((size_t)em->n_layers * sizeof *names);
        err = malloc((size_t)em->n_layers * sizeof *err);
        if (!names || !err) {
            err_set(&e, ERR_NOMEM, "out of memory");
            goto done;
        }
        for (int k = 0; k < em->n_layers; k++) {
            names[k] = rows[k].name;
            err[k] = rows[k].rel_err;
        }
        const char *base = strrchr(path, '/');
        char title[300];
        snprintf(title, sizeof title, "%s: W%dA%d, weight error of its %d layers", base ? base + 1 : path, em->w_bits,
                 em->a_bits, em->n_layers);
        int rc = plot_layers_png(names, err, em->n_layers, title, "||W_q \u2212 W_fp|| / ||W_fp||", plot, &e);
        plot_release();
        if (rc) goto done;
        printf("bar chart: %s\n", plot);
    }
done:
    free(names);
    free(err);
    free(rows);
    ldm_free(t);
    export_free(em);
    return e.code ? cli_fail("info", &e) : 0;
}

int cmd_info(int argc, char **argv) {
    Err e = {0};
    const char *pos[1], *ckpt = NULL, *yaml = NULL, *plot = NULL;
    int n_pos = 0, help = 0, tensors = 0, layers = 0;
    CliOpt opts[] = {{"--tensors", OPT_FLAG, &tensors, 0}, {"--layers", OPT_FLAG, &layers, 0},
                     {"--ckpt", OPT_STR, &ckpt, 0},        {"--ldm-config", OPT_STR, &yaml, 0},
                     {"--plot", OPT_STR, &plot, 0}};
    if (cli_parse(argc, argv, opts, 5, pos, &n_pos, 1, &help, &e)) return cli_fail("info", &e);
    if (help) return cli_help(usage);
    if (n_pos != 1) {
        err_set(&e, ERR_ARG, "expected one FILE (see effdm info --help)");
        return cli_fail("info", &e);
    }
    if (layers) return info_layers(pos[0], ckpt, yaml, plot);
    if (ckpt || yaml || plot) {
        err_set(&e, ERR_ARG, "--ckpt, --ldm-config and --plot go with --layers (see effdm info --help)");
        return cli_fail("info", &e);
    }
    WeightFile *f;
    if (weights_open(&f, pos[0], &e)) return cli_fail("info", &e);

    char g1[40], g2[40];
    int is_st = !strcmp(weights_format(f), "safetensors");
    printf("file:    %s\n", pos[0]);
    printf("format:  %s\n", is_st ? "safetensors" : "PyTorch checkpoint (torch.save zip archive)");
    if (!is_st) {
        int nt = weights_top_count(f);
        size_t w = 0;
        for (int i = 0; i < nt; i++) {
            size_t l = strlen(weights_top_key(f, i, NULL));
            if (l > w && l < 40) w = l;
        }
        // a plain state dict has one key per tensor: those are summarised, the rest listed
        int n_tensor_keys = 0;
        for (int i = 0; i < nt; i++) {
            const char *desc;
            weights_top_key(f, i, &desc);
            n_tensor_keys += !strncmp(desc, "tensor", 6);
        }
        printf("top-level keys (%d):\n", nt);
        for (int i = 0; i < nt; i++) {
            const char *desc;
            const char *k = weights_top_key(f, i, &desc);
            if (n_tensor_keys > 8 && !strncmp(desc, "tensor", 6)) continue;
            printf("  %-*s  %s\n", (int)w, k, desc);
        }
        if (n_tensor_keys > 8) printf("  (%d tensor entries: a plain state dict)\n", n_tensor_keys);
    }
    int n = weights_count(f);
    printf("tensors: %d\n", n);

    size_t params[N_PREFIX + 1] = {0}, total = 0;
    int counts[N_PREFIX + 1] = {0};
    size_t dt_params[DT_COUNT] = {0};
    int dt_counts[DT_COUNT] = {0};
    for (int i = 0; i < n; i++) {
        const WeightInfo *wi = weights_info(f, i);
        int p = N_PREFIX;
        for (int k = 0; k < N_PREFIX; k++)
            if (!strncmp(wi->name, prefixes[k], strlen(prefixes[k]))) { p = k; break; }
        params[p] += wi->numel;
        counts[p]++;
        total += wi->numel;
        dt_params[wi->dtype] += wi->numel;
        dt_counts[wi->dtype]++;
    }
    printf("parameters by prefix:\n");
    for (int k = 0; k <= N_PREFIX; k++)
        printf("  %-24s %15s  (%d tensors)\n", k < N_PREFIX ? prefixes[k] : "other", grouped(params[k], g1, sizeof g1), counts[k]);
    printf("  %-24s %15s\n", "total", grouped(total, g2, sizeof g2));
    printf("dtypes:\n");
    for (int t = 0; t < DT_COUNT; t++)
        if (dt_counts[t])
            printf("  %-5s %6d tensors %15s elements\n", dtype_name((DType)t), dt_counts[t], grouped(dt_params[t], g1, sizeof g1));

    // an export has effdm.format and no effdm.kind; run files (run-state, best-state,
    // calibrated, calib) name their kind and are listed as they are
    const char *kind = weights_metadata(f, "effdm.kind");
    int nm = weights_metadata_count(f), is_export = weights_metadata(f, "effdm.format") != NULL && !kind;
    int is_compvis = kind && !strncmp(kind, "compvis-", 8);
    int summarized = is_export || is_compvis || (kind && !strcmp(kind, "pruned"));  // their effdm.* entries: print_*
    int shown = 0;
    for (int i = 0; i < nm; i++) {
        const char *v;
        shown += !(summarized && !strncmp(weights_metadata_key(f, i, &v), "effdm.", 6));
    }
    if (is_st && shown) {
        printf("metadata (%d):\n", shown);
        for (int i = 0; i < nm; i++) {
            const char *v;
            const char *k = weights_metadata_key(f, i, &v);
            if (summarized && !strncmp(k, "effdm.", 6)) continue;  // summarized below
            printf("  ");
            print_clean(k, 60);
            printf(" = ");
            print_clean(v, 100);
            printf("\n");
        }
    }
    if (is_export) print_export(f);
    if (is_compvis) print_compvis(f, kind);
    else if (kind && !strcmp(kind, "pruned")) print_pruned(f);
    else if (kind) print_run_file(f, kind, pos[0]);
    if (tensors) {
        printf("tensors (name, dtype, shape):\n");
        for (int i = 0; i < weights_count(f); i++) {
            const WeightInfo *wi = weights_info(f, i);
            printf("  ");
            print_clean(wi->name, 200);
            printf("  %s  [", dtype_name(wi->dtype));
            for (int d = 0; d < wi->ndim; d++) printf(d ? ", %lld" : "%lld", (long long)wi->shape[d]);
            printf("]\n");
        }
    }
    weights_close(f);
    return 0;
}
