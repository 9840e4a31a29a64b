#include "util/err.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

int err_set(Err *e, int code, const char *fmt, ...) {
    if (!e || e->code != ERR_OK) return code;  // keep the first (root) cause
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return code;
}

int err_prefix(Err *e, const char *fmt, ...) {
    if (!e) return ERR_INTERNAL;
    char prefix[256], old[sizeof e->msg];
    // (truncation of very long messages is acceptable: they stay one line)
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    snprintf(e->msg, sizeof e->msg, "%s: %s", prefix, old);
    return e->code;
}

int err_exit_status(int code) {
    if (code == ERR_OK) return 0;
    return code < ERR_NOMEM ? 2 : 1;
}

const char *err_name(int code) {
    static const char *names[] = {"ok", "io", "format", "dtype", "shape", "key", "value",
                                  "arg", "unsupported", "nomem", "nan", "internal", "interrupted"};
    _Static_assert(sizeof names / sizeof names[0] == ERR_COUNT, "err name table out of step");
    return (code >= 0 && code < ERR_COUNT) ? names[code] : "?";
}

int size_mul_ok(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

int size_add_ok(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return 0;
    *out = a + b;
    return 1;
}
