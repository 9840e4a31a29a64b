/* err.h: the error value every library function fills instead of printing or exiting.

       Err e = {0};
       if (st_open(&f, path, &e) != 0) { fprintf(stderr, "effdm: %s\n", e.msg); return err_exit_status(e.code); }

   Codes below ERR_NOMEM are "bad input" (file, argument, config: exit status 2);
   ERR_NOMEM and above are failures of the run itself (exit status 1).
*/
#ifndef EFFDM_ERR_H
#define EFFDM_ERR_H

#include <stddef.h>

enum {
    ERR_OK = 0,
    ERR_IO,          // file missing, unreadable, unwritable
    ERR_FORMAT,      // file is not what it claims: bad magic, truncated, corrupt structure
    ERR_DTYPE,       // tensor dtype not supported where it is used
    ERR_SHAPE,       // tensor shape differs from what the model/config expects
    ERR_KEY,         // missing or unknown key (checkpoint tensor, config key)
    ERR_VALUE,       // a value out of range or of the wrong type
    ERR_ARG,         // bad command-line argument
    ERR_UNSUPPORTED, // a valid input this build does not handle (e.g. pre-1.6 torch files)
    ERR_NOMEM,       // allocation or arena capacity exhausted
    ERR_NAN,         // NaN/Inf appeared in a computation
    ERR_INTERNAL,    // a bug: an invariant did not hold
    ERR_INTERRUPTED, // stopped by a signal (after saving what had to be saved)
    ERR_COUNT
};

typedef struct {
    int code;
    char msg[512];
} Err;

// Sets e->code and e->msg (printf format) unless e already holds an error; returns code.
// e may be NULL (the error is then only returned).
int err_set(Err *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
// Prefixes e->msg with "prefix: " (e.g. a file name added by a caller); returns e->code.
int err_prefix(Err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Process exit status for an error code: 0 for ERR_OK, 2 for bad input, 1 otherwise.
int err_exit_status(int code);
// Short name of a code ("format", "shape", ...), for logs and tests.
const char *err_name(int code);

// a * b into *out; 0 (and *out untouched) when it would overflow size_t.
int size_mul_ok(size_t a, size_t b, size_t *out);
// a + b into *out; 0 when it would overflow.
int size_add_ok(size_t a, size_t b, size_t *out);

#endif
