/* run_log.h: a run directory's log.csv, one line per optimizer step and one per validation,
   appended and flushed line by line (a killed run keeps every line it wrote).

       epoch,step,loss,lr,seconds,val_error,val_sample_mse,val_sample_fd,val_sample_real
       0,0,2.13456793,0.0005,0.412,
       ...
       0,99,81.2000122,0.000496875,0.398,
       0,100,,,3.105,0.0123456789,,,      <- validation after epoch 0 (step = steps per epoch)

   epoch and step are 0-based (step within the epoch); loss is the step's raw loss (before any
   step weighting, "%.9g": the float32 value exactly); lr the activation tables' learning rate
   after the schedule (the other groups scale by the same factor); seconds the wall time of the
   step (or of the validation). A validation row has empty loss and lr, step = steps per epoch,
   and the sampled validation's three measures (train.val_samples; empty when it is off).
   A log with the older six-column header is accepted; its header is renewed on open.

   Resume: run_log_open with the checkpoint's position (epoch, step) keeps exactly the rows
   that precede it - step rows (e, s) and validation rows (e, S) with (e, s) < (epoch, step)
   in lexicographic order - and drops the rest (rows of steps the checkpoint does not hold, and
   a torn last line), rewriting the file atomically before appending.
*/
#ifndef EFFDM_RUN_LOG_H
#define EFFDM_RUN_LOG_H

#include <stdio.h>

#include "util/err.h"

#define RUN_LOG_HEADER "epoch,step,loss,lr,seconds,val_error,val_sample_mse,val_sample_fd,val_sample_real"
#define RUN_LOG_HEADER_V1 "epoch,step,loss,lr,seconds,val_error"  // before the sampled validation

typedef struct {
    FILE *fp;
    char path[4096];
} RunLog;

// Opens path for appending after dropping every row at or after (epoch, step) (see top);
// a missing file is created with the header. 0 or ERR_IO / ERR_FORMAT (a file whose first
// line is not the header) / ERR_NOMEM.
int run_log_open(RunLog *l, const char *path, int epoch, int step, Err *e);
// Appends a step row / a validation row and flushes. 0 or ERR_IO.
int run_log_step(RunLog *l, int epoch, int step, float loss, double lr, double seconds, Err *e);
// sample_*: the sampled validation's measures (train/sample_check.c), NaN when off (empty fields).
int run_log_val(RunLog *l, int epoch, int steps_per_epoch, double val_error, double sample_mse, double sample_fd,
                double sample_real, double seconds, Err *e);
// Closes; accepts a zeroed RunLog. 0 or ERR_IO (a failed final flush).
int run_log_close(RunLog *l, Err *e);

#endif
