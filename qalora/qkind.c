/* qkind.c: the table of quantizer kinds (qkind.h). A new kind: a value before
   QUANT_KIND_COUNT in quantizer.h, its file qkind_<name>.c defining QKIND_<NAME>_OPS, and
   one line in each table below, in the same order. */
#include "qalora/qkind.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

static const QKindOps *const QKIND_TABLE[] = {
    &QKIND_UNIFORM_OPS,   // QUANT_UNIFORM
    &QKIND_EASYQUANT_OPS, // QUANT_EASYQUANT
    &QKIND_NUPES_OPS,     // QUANT_NUPES
};

const char *const QKIND_NAMES[QUANT_KIND_COUNT] = {
    "uniform",            // QUANT_UNIFORM
    "easyquant",          // QUANT_EASYQUANT
    "nupes",              // QUANT_NUPES
};

// The tables and the enum in step (as ggml's GGML_OP_NAME / GGML_OP_COUNT); qkind_get's rows
// carry the same names (tests/test_qkind.c).
_Static_assert(sizeof QKIND_TABLE / sizeof QKIND_TABLE[0] == QUANT_KIND_COUNT,
               "QKIND_TABLE needs one row per QuantKind");
_Static_assert(sizeof QKIND_NAMES / sizeof QKIND_NAMES[0] == QUANT_KIND_COUNT,
               "QKIND_NAMES needs one name per QuantKind");
_Static_assert(QUANT_KIND_COUNT == 3, "a new kind: add its row to QKIND_TABLE and QKIND_NAMES, then this count");

int qkind_valid(int k) { return k >= 0 && k < QUANT_KIND_COUNT; }

const QKindOps *qkind_get(QuantKind k) {
    assert(qkind_valid((int)k));
    return QKIND_TABLE[k];
}

const QKindOps *quantizer_ops(const Quantizer *q) { return qkind_get(q->kind); }

const char *quant_kind_name(QuantKind k) { return qkind_valid((int)k) ? QKIND_NAMES[k] : "?"; }

int qkind_find(const char *name, QuantKind *out) {
    for (int k = 0; name && k < QUANT_KIND_COUNT; k++)
        if (!strcmp(name, QKIND_NAMES[k])) {
            *out = (QuantKind)k;
            return 0;
        }
    return ERR_VALUE;
}

char *qkind_list(char *buf, size_t n) {
    size_t used = 0;
    if (n) buf[0] = '\0';
    for (int k = 0; k < QUANT_KIND_COUNT && used < n; k++)
        used += (size_t)snprintf(buf + used, n - used, "%s%s", k ? ", " : "", QKIND_NAMES[k]);
    return buf;
}
