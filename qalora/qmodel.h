/* qmodel.h: the quantized student over a loaded UNet - every layer chosen by select.h
   wrapped in a QLayer, one flat block of trainable parameters, the TALSQ entry all layers
   read, and the switch between the FP teacher and the student.

   The teacher and the student share ONE UNet: the FP weights, norms and embeddings are
   the same frozen tensors; qmodel_enable(q, 1) attaches the QLayers (layer_forward runs
   the fake-quantized path), qmodel_enable(q, 0) detaches them (the FP teacher). So a
   distillation step is: enable(0) -> teacher forward (no grad) -> enable(1) -> student
   forward + backward.

       QModel q;
       QModelConfig qc; qmodel_config_from_run(&qc, &run_config);     // or qmodel_config_defaults
       if (qmodel_init(&q, unet, &qc, T, &rng, &e)) goto fail;         // selection, W_int, LoRA init
       qmodel_enable(&q, 1);
       qmodel_set_timestep(&q, t);          // picks the TALSQ entry of the nearest training timestep
       Tensor *eps = ldm_apply_model(&ctx, ldm, x, tvec, y);
       qmodel_free(&q);                     // detaches, frees

   Trainable parameters (per trainable layer, in layer order): LoRA A, B, Δ_w, Δ_a table,
   z_a table, all in q->params (q->n_params floats); qmodel_trainable lists them as tensors
   for the optimizer. Everything else a run checkpoint needs (W_int, z_w, special-layer
   ranges, activation calibration) is reached through qmodel_state_* below.
*/
#ifndef EFFDM_QMODEL_H
#define EFFDM_QMODEL_H

#include <stddef.h>
#include <stdint.h>

#include "models/unet/unet.h"
#include "qalora/qlayer.h"
#include "qalora/select.h"
#include "qalora/talsq.h"
#include "util/rng.h"

typedef struct {
    QSelConfig sel;             // bit widths, special layers, overrides
    int rank;                   // LoRA rank (32)
    int train_steps;            // training DDIM steps S: TALSQ table entries (100 reference)
    int talsq;                  // 0: one activation (Δ, z) per layer (table of 1 entry)
    QuantInit w_init, a_init;   // 'max' / 'mse'
} QModelConfig;

typedef struct {
    UNet *unet;
    QModelConfig cfg;
    int n_all;                  // every conv/linear of the UNet
    ModelLayer **all;           // registration order (unet_layers)
    QSelChoice *choice;         // [n_all]
    int n_q;                    // quantized layers (trainable + special)
    QLayer *q;                  // [n_q], in registration order
    TalsqSchedule train_sched;  // training timesteps (entry i <-> train_sched.timesteps[i])
    int entry;                  // current TALSQ entry, read by every QLayer
    int enabled;
    float *params;              // flat trainable block (n_params floats)
    size_t n_params;
    float *grads;               // flat gradient block, same layout (n_params + base-path Δ_w grads)
    size_t n_grads;
} QModel;

// The reference defaults: W4A4, special 8-bit first 3 + last 1, rank 32, 100 entries, max / mse init.
void qmodel_config_defaults(QModelConfig *cfg);
// Wraps the UNet's layers per cfg. Weights are fitted now (w_init); activations are
// uncalibrated until qmodel_calibrate_acts. T: the model's DDPM timesteps (for the TALSQ
// schedule). 0 or an ERR_ code.
int qmodel_init(QModel *q, UNet *unet, const QModelConfig *cfg, int T, Rng *rng, Err *e);
// Detaches every layer and frees; accepts a zeroed QModel.
void qmodel_free(QModel *q);
// 1: layer_forward runs the quantized path (student); 0: the FP path (teacher).
void qmodel_enable(QModel *q, int on);
// Selects the TALSQ entry of the training timestep nearest to DDPM timestep t.
void qmodel_set_timestep(QModel *q, int t);
// Number of trainable / special / FP layers.
void qmodel_counts(const QModel *q, int *trainable, int *special, int *fp);

#endif
