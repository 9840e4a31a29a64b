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

static const char *const usage[] = {
    "usage: effdm info FILE [--tensors]",
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
    "Tensor data is not read (except to check an effdm run file's checksum). Exit status: 0,",
    "or 2 when FILE is missing or not a valid tensor file (the message says why).",
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
               "quantizers):\n", cJSON_GetArraySize(layers));
        const cJSON *l;
        cJSON_ArrayForEach(l, layers) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(l, "name"), *ro = cJSON_GetObjectItemCaseSensitive(l, "role");
            // exports written before quantizer kinds existed name none: uniform
            const cJSON *wk = cJSON_GetObjectItemCaseSensitive(l, "w_quantizer");
            const cJSON *ak = cJSON_GetObjectItemCaseSensitive(l, "a_quantizer");
            printf("    %-58s %-9s W%d A%d %3d %s/%s\n", cJSON_IsString(nm) ? nm->valuestring : "?",
                   cJSON_IsString(ro) ? ro->valuestring : "?", json_int_or(l, "w_bits", 0), json_int_or(l, "a_bits", 0),
                   json_int_or(l, "entries", 0), cJSON_IsString(wk) ? wk->valuestring : "uniform",
                   cJSON_IsString(ak) ? ak->valuestring : "uniform");
        }
    }
    cJSON_Delete(q);
    const char *yaml = weights_metadata(f, "effdm.ldm_config");
    if (yaml) print_yaml(yaml);
}

int cmd_info(int argc, char **argv) {
    Err e = {0};
    const char *pos[1];
    int n_pos = 0, help = 0, tensors = 0;
    CliOpt opts[] = {{"--tensors", OPT_FLAG, &tensors, 0}};
    if (cli_parse(argc, argv, opts, 1, pos, &n_pos, 1, &help, &e)) return cli_fail("info", &e);
    if (help) {
        for (int i = 0; usage[i]; i++) puts(usage[i]);
        return 0;
    }
    if (n_pos != 1) {
        err_set(&e, ERR_ARG, "expected one FILE (see effdm info --help)");
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
    int summarized = is_export || is_compvis;  // their effdm.* entries: print_export, print_compvis
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
