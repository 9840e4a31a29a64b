/* fuzz_runlog.c: a run's log.csv from memory (train/run_log_read.c run_log_read_mem); aborts
   when a log that reads breaks what the reader promises (ordered rows, epoch means over their
   step rows, a failure with no message). Replay: build/fuzz_runlog_replay FILE|DIR. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "train/run_log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    RunLogData d;
    Err e = {0};
    if (run_log_read_mem(data, size, "fuzz.csv", &d, &e)) {
        if (!e.code || !e.msg[0]) abort();
        return 0;
    }
    int counted = 0;
    for (int k = 0; k < d.n_epochs; k++) {
        if (d.epochs[k].n < 1 || !isfinite(d.epochs[k].mean)) abort();
        if (k && d.epochs[k].epoch <= d.epochs[k - 1].epoch) abort();
        counted += d.epochs[k].n;
    }
    if (counted != d.n_steps) abort();
    for (int i = 1; i < d.n_steps; i++)
        if (d.steps[i].epoch < d.steps[i - 1].epoch ||
            (d.steps[i].epoch == d.steps[i - 1].epoch && d.steps[i].step <= d.steps[i - 1].step))
            abort();
    for (int i = 0; i < d.n_steps; i++)
        if (d.steps[i].step >= d.steps_per_epoch || !isfinite(d.steps[i].loss)) abort();
    run_log_data_free(&d);
    return 0;
}
