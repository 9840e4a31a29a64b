/* cli.h: what the subcommands share: the command table entry type, option parsing,
   the error/exit convention and the progress bar.

   Each subcommand lives in cli/cmd_<name>.c as `int cmd_<name>(int argc, char **argv)`
   (argv[0] is the subcommand name), prints results to stdout, progress and errors to
   stderr, and returns 0, 2 (bad input) or 1 (other failure). */
#ifndef EFFDM_CLI_H
#define EFFDM_CLI_H

#include <stdio.h>

#include "util/err.h"

typedef enum { OPT_STR, OPT_INT, OPT_FLOAT, OPT_FLAG, OPT_STRS } CliOptType;

typedef struct {
    const char *name;  // "--steps"
    CliOptType type;
    void *dst;         // const char **, int *, float *, int * (flag: set to 1), CliStrs * (OPT_STRS)
    int seen;          // set by cli_parse when the option was given
} CliOpt;

// The values of a repeatable option (OPT_STRS: "--set a=1 --set b=2"), in command-line order.
enum { CLI_MAX_REPEAT = 64 };
typedef struct {
    const char *v[CLI_MAX_REPEAT];
    int n;
} CliStrs;

// Parses argv[1..argc) against opts ("--name value" or "--name=value"; only OPT_STRS options
// may be given more than once, at most CLI_MAX_REPEAT times). Non-option
// arguments go to positional[0..*n_positional) (capacity max_positional). "--help" / "-h"
// sets *help. 0 or ERR_ARG (message names the option and what was wrong).
int cli_parse(int argc, char **argv, CliOpt *opts, int n_opts, const char **positional, int *n_positional,
              int max_positional, int *help, Err *e);
// Prints a command's usage (lines up to a NULL) to stdout for --help; returns its exit status, 0.
int cli_help(const char *const *usage);
// Prints "effdm <cmd>: <msg>" to stderr and returns the exit status for e->code.
int cli_fail(const char *cmd, const Err *e);
// The thread count of a command: threads > 0 as given (--threads, run.threads); -1: not
// given, so $EFFDM_THREADS, else the cores (shared by the MPI ranks on the machine). 0 or
// anything else is ERR_ARG; the same rule for the option, the key and the variable. A count
// above the cores gets a note on stderr (it runs, much slower).
int cli_threads(int threads, Err *e);

// Progress bar on stderr: "label [=====>    ] 12/50  3.1 s elapsed, ETA 9.4 s  extra".
typedef struct {
    const char *label;
    long total;
    double start;
    double last_print;
    int is_tty;
} Progress;
void progress_start(Progress *p, const char *label, long total);
// done items finished; extra is printed after the ETA (may be NULL). Rate-limited.
void progress_update(Progress *p, long done, const char *extra);
void progress_finish(Progress *p, const char *extra);
// A (done, total) item callback with user = a Progress: takes the total from the call (the
// feature extractors know it only once they have listed the images) and updates the bar.
void progress_items(void *user, size_t done, size_t total);
// The calibration's progress (CalibOpts.on_progress with user = a CliCalibBar): a bar a phase,
// the teacher trajectories then the activation ranges; with units, "steps" / "layers" after
// the ETA.
typedef struct {
    Progress bar;
    int units;
} CliCalibBar;
void progress_calib(int phase, long done, long total, void *user);

// Writes text and a final newline to path atomically (path.tmp, then renamed: nothing at
// path on failure). 0 or ERR_IO.
int cli_write_text(const char *path, const char *text, Err *e);

// Runs the evaluation of a sample folder against reference statistics with a progress bar,
// prints the result table to stdout and, when json != NULL, writes the JSON. o->judge_weights
// defaults to the shipped judge (zoo_path). 0 or an ERR_ code.
struct EvalOpts;
int cli_eval_report(const char *samples, const char *ref, struct EvalOpts *o, const char *json, Err *e);

// Prints a profile (autograd/profile.h) to stdout: per op kind, per block, the total and
// the wall time it was measured over. 0 or ERR_NOMEM.
struct Profile;
int cli_print_profile(const struct Profile *p, double wall, Err *e);

// Flushes stdout and checks it was really written (a full disk is a failure). 0 or 1.
int cli_close_stdout(void);

#endif
