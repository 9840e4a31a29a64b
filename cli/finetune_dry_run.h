/* finetune_dry_run.h: effdm finetune --dry-run (see finetune_dry_run.c). */
#ifndef EFFDM_FINETUNE_DRY_RUN_H
#define EFFDM_FINETUNE_DRY_RUN_H

#include "run/run_config.h"

// Prints the run rc would be (student, steps, estimated time and memory from a reduced
// calibration and a few timed steps in a temporary folder) to stdout; writes nothing to
// rc->run.out. 0 or an ERR_ code.
int finetune_dry_run(const RunConfig *rc, Err *e);

#endif
