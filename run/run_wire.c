/* run_wire.c: a RunConfig as the structs of qalora/ and train/ (see run_wire.h). */
#include "run/run_wire.h"

#include <stdio.h>
#include <string.h>

#include "qalora/qkind.h"

_Static_assert(QMODEL_MAX_OVERRIDES >= RC_MAX_OVERRIDES, "every run-config override fits a QModelConfig");
_Static_assert(QMODEL_PATTERN_MAX >= RC_PATTERN_MAX, "override patterns fit");
_Static_assert(QMODEL_MAX_FP_NAMES >= RC_MAX_FP_NAMES && QMODEL_FP_NAME_MAX >= RC_NAME_MAX, "fp names fit");

int run_qmodel_config(QModelConfig *cfg, const RunConfig *rc, Err *e) {
    const RcQuant *rq = &rc->quant;
    qmodel_config_defaults(cfg);
    if (rq->n_overrides > QMODEL_MAX_OVERRIDES || rq->n_fp_names > QMODEL_MAX_FP_NAMES)
        return err_set(e, ERR_VALUE, "run config: quant: %d overrides, %d fp names (at most %d, %d)",
                       rq->n_overrides, rq->n_fp_names, QMODEL_MAX_OVERRIDES, QMODEL_MAX_FP_NAMES);
    cfg->sel.w_bits = rq->weight_bits;
    cfg->sel.a_bits = rq->act_bits;
    cfg->sel.special_bits = rq->special_bits;
    cfg->sel.n_first_special = rq->special_first;
    cfg->sel.n_last_special = rq->special_last;
    if (!qkind_valid(rq->weight_quantizer) || !qkind_valid(rq->act_quantizer))
        return err_set(e, ERR_VALUE, "run config: quant.weight_quantizer / act_quantizer: kinds %d / %d outside the "
                       "table", rq->weight_quantizer, rq->act_quantizer);
    cfg->sel.w_kind = (QuantKind)rq->weight_quantizer;
    cfg->sel.a_kind = (QuantKind)rq->act_quantizer;
    cfg->kp = (QKindParams){rq->easyquant_outlier_fraction, rq->easyquant_steps, rq->easyquant_lr,
                            rq->mse_candidates, rq->mse_shrink, rq->mse_norm};
    cfg->rank = rq->lora_rank;
    cfg->rotate_block = rq->rotate;
    cfg->a_token = rq->act_granularity == RC_GRAN_TOKEN;
    cfg->talsq = rq->talsq;
    cfg->train_steps = rc->train.steps;
    cfg->w_init = rq->weight_init == RC_INIT_MSE ? QUANT_INIT_MSE : QUANT_INIT_MAX;
    cfg->a_init = rq->act_init == RC_INIT_MSE ? QUANT_INIT_MSE : QUANT_INIT_MAX;
    cfg->fp_f16 = rq->fp_layers == RC_FP_F16;
    cfg->n_fp_names = rq->n_fp_names;
    for (int i = 0; i < rq->n_fp_names; i++)
        snprintf(cfg->fp_names[i], QMODEL_FP_NAME_MAX, "%s", rq->fp_name_contains[i]);
    for (int i = 0; i < rq->n_overrides; i++) {
        const RcOverride *o = &rq->overrides[i];
        snprintf(cfg->pattern_store[i], QMODEL_PATTERN_MAX, "%s", o->pattern);
        cfg->override_store[i] = (QSelOverride){cfg->pattern_store[i], o->keep_fp, o->weight_bits, o->act_bits,
                                                o->weight_quantizer, o->act_quantizer};
    }
    cfg->sel.overrides = rq->n_overrides ? cfg->override_store : NULL;
    cfg->sel.n_overrides = rq->n_overrides;
    return 0;
}

void run_train_config(TrainConfig *tc, const RunConfig *rc) {
    memset(tc, 0, sizeof *tc);
    tc->train = rc->train;
    tc->sample = rc->sample;
    tc->uncond_label = rc->model.uncond_label;
    tc->arena_mb = rc->run.arena_mb;
    tc->recompute_weights = rc->run.recompute_weights == RC_RECOMPUTE_AUTO  ? -1
                            : rc->run.recompute_weights == RC_RECOMPUTE_ON ? 1
                                                                           : 0;
    tc->init_seed = (uint64_t)rc->calib.seed;
    snprintf(tc->model_name, sizeof tc->model_name, "%s", rc->model.ldm_config);
}
