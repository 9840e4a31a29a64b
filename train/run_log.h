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

   Reading (effdm plot): run_log_read parses a whole log into step and validation rows,
   strictly - a row that is not one of the two forms above is an error naming the file and
   its line - except for a last line without its newline that does not parse (a run killed
   while writing it), which is left out and reported in torn_last. In the val_sample_*
   columns an empty field or "nan" means not measured (NaN); every other number must be finite.
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

/* ---- reading ---------------------------------------------------------------------------- */
typedef struct {
    int epoch, step;  // 0-based
    double loss, lr, seconds;
} RunLogStep;

typedef struct {
    int epoch;        // -1: the starting model (before the first step)
    int step;         // the steps per epoch: the validation follows step `step - 1` of `epoch`
    double seconds, val_error;
    double sample_mse, sample_fd, sample_real;  // NaN: not measured
} RunLogVal;

typedef struct {
    int epoch;        // an epoch with step rows
    int n;            // its step rows
    double mean;      // their mean loss (summed in double)
} RunLogEpoch;

typedef struct {
    RunLogStep *steps;
    int n_steps;      // in file order, which is (epoch, step) ascending
    RunLogVal *vals;
    int n_vals;
    RunLogEpoch *epochs;
    int n_epochs;     // the epochs with step rows, ascending
    int steps_per_epoch;  // the validation rows' step, else the largest step + 1 (0: no rows)
    int torn_last;    // 1: a torn last line was left out (see top)
} RunLogData;

// Reads the log at path (see top). 0, or ERR_IO (missing, unreadable), ERR_FORMAT (not a run
// log, or a malformed row: "path:LINE: ..."), ERR_VALUE (rows out of order, a non-finite
// number), ERR_NOMEM. Free with run_log_data_free.
int run_log_read(const char *path, RunLogData *d, Err *e);
// The same from memory (path names it in messages; tests/fuzz/fuzz_runlog.c).
int run_log_read_mem(const unsigned char *buf, size_t size, const char *path, RunLogData *d, Err *e);
// Accepts a zeroed RunLogData.
void run_log_data_free(RunLogData *d);

#endif
