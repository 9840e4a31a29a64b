/* run_export.h: "export this run": a run directory's student as one deployable .safetensors
   (the format: qalora/export.h).

       ExportSummary s;
       ExportOpts o = {.epoch = "last"};
       if (run_export("runs/x", &o, "x-w4a4.safetensors", &s, &e)) return e.code;

   The run's config.yaml names the teacher (model.*) and the student (quant.*, train.steps);
   the student's trained values come from the epoch's state file. With train.guidance_gain fit
   (class-conditional models, train.scale != 1) the gain is fitted now
   (qalora/guidance_gain.h: train.steps, train.eta, train.scale, train.guidance_fit_samples,
   seed train.seed + 1) and stored in the export.

       CompvisSummary cs;
       ExportOpts c = {.epoch = "last", .format = EXPORT_COMPVIS_FP16};
       if (run_export_compvis("runs/x", &c, "x-fp16.safetensors", &cs, &e)) return e.code;

   writes the same student dequantized into the teacher's CompVis state dict instead
   (qalora/export_compvis.h), for PyTorch.
*/
#ifndef EFFDM_RUN_EXPORT_H
#define EFFDM_RUN_EXPORT_H

#include <stddef.h>

#include "qalora/export.h"
#include "qalora/export_compvis.h"
#include "util/err.h"

// What effdm export writes (--format): effdm's own packed integer export (qalora/export.h), or
// the student dequantized into a CompVis state dict (qalora/export_compvis.h), F32 or F16.
typedef enum { EXPORT_EFFDM, EXPORT_COMPVIS_FP32, EXPORT_COMPVIS_FP16 } ExportFormat;

typedef struct {
    const char *epoch;        // "last" (default when NULL) or "best"
    int fp16_layers;          // ExportInfo.fp16_layers (runs with quant.fp_layers f16 write F16 anyway)
    void (*on_progress)(long done, long total, void *user);  // the guidance-gain fit (may be NULL)
    void *user;
    ExportFormat format;      // run_export_compvis: which of the two CompVis dtypes
} ExportOpts;

// The state file of a run directory for epoch "last" (state.safetensors) or "best"
// (best.safetensors) into dst. 0 or ERR_ARG for another name.
int run_export_state_path(char *dst, size_t cap, const char *run_dir, const char *epoch, Err *e);
// The whole export of a run directory (see top) to path. 0 or an ERR_ code (files and tensors named).
int run_export(const char *run_dir, const ExportOpts *o, const char *path, ExportSummary *s, Err *e);
// The format named by --format ("effdm", "compvis-fp32", "compvis-fp16") into *f. 0 or ERR_ARG.
int run_export_format(const char *name, ExportFormat *f, Err *e);
// The run's student as a CompVis state dict (o->format EXPORT_COMPVIS_FP32 or _FP16) to path,
// which must end in .safetensors: a .ckpt name is ERR_UNSUPPORTED (effdm writes no torch zip),
// another ERR_ARG, as is o->fp16_layers. No gain is fitted (the file cannot hold one: s->note).
// 0 or an ERR_ code.
int run_export_compvis(const char *run_dir, const ExportOpts *o, const char *path, CompvisSummary *s, Err *e);

#endif
