#include "autograd/profile.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void prof_init(Profile *p) {
    memset(p, 0, sizeof *p);
    snprintf(p->block_name[0], PROF_NAME_MAX, "(outside blocks)");
    p->n_blocks = 1;
}

ProfMark prof_begin_on(Ctx *c) {
    Profile *p = c->prof;
    if (p->depth++ > 0) return (ProfMark){-1.0, NULL};  // nested op: the outer one is timed
    return (ProfMark){prof_now(), c->last};
}

void prof_end_on(Ctx *c, ProfMark m, int op, double flops) {
    Profile *p = c->prof;
    p->depth--;
    if (m.t0 < 0) return;
    double dt = prof_now() - m.t0;
    p->sec[0][op] += dt;
    p->count[0][op]++;
    p->flops[0][op] += flops;
    p->block_sec[p->cur_block][0] += dt;
    p->block_flops[p->cur_block][0] += flops;
    p->block_count[p->cur_block][0]++;
    if (c->last != m.last) {  // the op recorded a node: its backward belongs to this block
        c->last->prof_block = p->cur_block;
        c->last->prof_flops = flops;
    }
}

void prof_add_backward(Profile *p, const TapeNode *nd, double sec) {
    int op = nd->op >= 0 && nd->op < OP_COUNT ? nd->op : 0;
    int b = nd->prof_block >= 0 && nd->prof_block < p->n_blocks ? nd->prof_block : 0;
    p->sec[1][op] += sec;
    p->count[1][op]++;
    p->flops[1][op] += 2.0 * nd->prof_flops;  // dx and dW: two GEMMs of the forward's size
    p->block_sec[b][1] += sec;
    p->block_flops[b][1] += 2.0 * nd->prof_flops;
    p->block_count[b][1]++;
}

int prof_block_begin(Ctx *c, const char *name, int index) {
    Profile *p = c->prof;
    if (!p) return 0;
    int prev = p->cur_block;
    char full[PROF_NAME_MAX];
    if (index >= 0) snprintf(full, sizeof full, "%s.%d", name, index);
    else snprintf(full, sizeof full, "%s", name);
    for (int i = 1; i < p->n_blocks; i++)
        if (!strcmp(p->block_name[i], full)) {
            p->cur_block = i;
            return prev;
        }
    if (p->n_blocks < PROF_MAX_BLOCKS) {
        snprintf(p->block_name[p->n_blocks], PROF_NAME_MAX, "%s", full);
        p->cur_block = p->n_blocks++;
    } else {
        p->cur_block = 0;
    }
    return prev;
}

double prof_total(const Profile *p) {
    double t = 0;
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < OP_COUNT; i++) t += p->sec[d][i];
    return t;
}

typedef struct {
    char *buf;
    size_t cap, len;
} Out;

static void out(Out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out(Out *o, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    size_t room = o->len < o->cap ? o->cap - o->len : 0;
    int n = vsnprintf(room ? o->buf + o->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0) o->len += (size_t)n;
}

// idx[0..n) = 0..n-1 ordered by key descending (insertion sort: n <= PROF_MAX_BLOCKS, and
// qsort would need the keys in a global).
static void order_desc(const double *key, int *idx, int n) {
    for (int i = 0; i < n; i++) {
        int j = i;
        while (j > 0 && key[idx[j - 1]] < key[i]) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = i;
    }
}

int prof_format(const Profile *p, double wall, char *buf, size_t cap) {
    Out o = {buf, cap, 0};
    if (cap) buf[0] = '\0';
    double total = prof_total(p), pct = total > 0 ? 100.0 / total : 0, flops = 0;
    double key[PROF_MAX_BLOCKS > OP_COUNT ? PROF_MAX_BLOCKS : OP_COUNT];
    int idx[PROF_MAX_BLOCKS > OP_COUNT ? PROF_MAX_BLOCKS : OP_COUNT];

    out(&o, "profile by op kind (forward + backward)\n");
    out(&o, "  %-20s %10s %8s %10s %8s %10s %6s %8s\n", "op", "fwd s", "calls", "bwd s", "nodes", "total s", "%",
        "GFLOP/s");
    for (int i = 0; i < OP_COUNT; i++) key[i] = p->sec[0][i] + p->sec[1][i];
    order_desc(key, idx, OP_COUNT);
    for (int k = 0; k < OP_COUNT; k++) {
        int i = idx[k];
        if (!p->count[0][i] && !p->count[1][i]) continue;
        double f = p->flops[0][i] + p->flops[1][i];
        out(&o, "  %-20s %10.3f %8ld %10.3f %8ld %10.3f %6.1f", op_name(i), p->sec[0][i], p->count[0][i],
            p->sec[1][i], p->count[1][i], key[i], key[i] * pct);
        if (f > 0 && key[i] > 0) out(&o, " %8.1f", 1e-9 * f / key[i]);
        out(&o, "\n");
    }
    out(&o, "profile by block\n");
    out(&o, "  %-20s %10s %8s %10s %8s %10s %6s %10s\n", "block", "fwd s", "calls", "bwd s", "nodes", "total s", "%",
        "MFLOP");
    for (int i = 0; i < p->n_blocks; i++) key[i] = p->block_sec[i][0] + p->block_sec[i][1];
    order_desc(key, idx, p->n_blocks);
    for (int k = 0; k < p->n_blocks; k++) {
        int i = idx[k];
        if (!p->block_count[i][0] && !p->block_count[i][1]) continue;
        out(&o, "  %-20s %10.3f %8ld %10.3f %8ld %10.3f %6.1f %10.3f\n", p->block_name[i], p->block_sec[i][0],
            p->block_count[i][0], p->block_sec[i][1], p->block_count[i][1], key[i], key[i] * pct,
            1e-6 * (p->block_flops[i][0] + p->block_flops[i][1]));
        flops += p->block_flops[i][0] + p->block_flops[i][1];
    }
    out(&o, "  GEMM work %.3f GFLOP (conv2d, linear, matmul, attention; backward counted as 2x forward)\n",
        1e-9 * flops);
    out(&o, "  total in ops %.3f s", total);
    if (wall > 0) out(&o, " of %.3f s wall (%.3f s outside ops: optimizer, sampler updates, I/O)", wall, wall - total);
    out(&o, "\n");
    return (int)o.len;
}
