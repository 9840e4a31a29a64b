/* test_profile.c: the op/block profiler (autograd/profile.h) on a forward + backward of a
   small cross-attention UNet (the cin-style parity config, random weights): op counts equal
   the model's own layer counts, backward nodes are counted and placed in blocks, the block
   totals and the op-kind totals partition one total, every UNet block is named, and nothing
   is counted while the profiler is off. One file per module (STYLE.md). */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/profile.h"
#include "models/unet/unet.h"
#include "models/unet/unet_impl.h"
#include "util/rng.h"

static const double TOL_PARTITION = 0.01;  // block totals vs op totals (the brief: within 1%)
static const size_t ARENA_BYTES = (size_t)256 << 20;

static int find_block(const Profile *p, const char *name) {
    for (int i = 0; i < p->n_blocks; i++)
        if (!strcmp(p->block_name[i], name)) return i;
    return -1;
}

// One forward (x requires grad, weights trainable) and the backward of sum(eps * G).
static void forward_backward(Ctx *c, UNet *m, Rng *r) {
    const int N = 2;
    Tensor *x = tensor_new4(c, N, 4, 8, 8), *ctx = tensor_new3(c, N, 1, 32);
    rng_normal_fill(r, x->data, x->n);
    rng_normal_fill(r, ctx->data, ctx->n);
    x->requires_grad = 1;
    const float t[2] = {10.0f, 500.0f};
    Tensor *eps = unet_forward(c, m, x, t, ctx, NULL);
    if (!eps) {
        print_error("unet_forward: %s\n", c->err.msg);
        fail();
    }
    float *G = malloc(eps->n * sizeof *G);
    rng_normal_fill(r, G, eps->n);
    assert_int_equal(tape_backward(c, eps, G), 0);
    free(G);
}

static void test_counts_and_blocks(void **state) {
    (void)state;
    UNetConfig cfg;
    test_unet_config_cin(&cfg);
    UNet *m = NULL;
    Err e = {0};
    assert_int_equal(unet_new(&m, &cfg, &e), 0);
    Rng r;
    rng_seed(&r, 11, 0);
    for (int i = 0; i < unet_param_tensors(m); i++) {
        Tensor *p = unet_param_at(m, i, NULL);
        rng_uniform_fill(&r, p->data, p->n, -0.1f, 0.1f);
    }
    assert_int_equal(unet_set_trainable(m, 1, &e), 0);
    int n_layers, n_conv = 0, n_linear = 0;
    ModelLayer **layers = unet_layers(m, &n_layers);
    for (int i = 0; i < n_layers; i++) {
        if (layers[i]->kind == LAYER_LINEAR) n_linear++;
        else n_conv++;  // Conv2d and the kernel-1 Conv1d of AttentionBlock both run t_conv2d
    }
    Ctx *c = test_ctx_new(ARENA_BYTES);
    Profile *p = malloc(sizeof *p);
    prof_init(p);

    // off: nothing counted
    forward_backward(c, m, &r);
    ctx_reset(c);
    c->prof = p;
    forward_backward(c, m, &r);
    c->prof = NULL;
    ctx_reset(c);
    forward_backward(c, m, &r);  // off again

    assert_int_equal(p->count[0][OP_CONV2D], n_conv);
    assert_int_equal(p->count[0][OP_LINEAR], n_linear);
    assert_int_equal(p->count[1][OP_CONV2D], n_conv);  // every conv has a trainable weight: one node each
    assert_int_equal(p->count[1][OP_LINEAR], n_linear);
    // one attention per attn1 / attn2 of each transformer block; one concat per output block
    assert_int_equal(p->count[0][OP_ATTENTION], 2 * m->n_tblocks);
    assert_int_equal(p->count[0][OP_CONCAT], m->n_output_blocks);
    assert_int_equal(p->count[0][OP_TIMESTEP_EMBEDDING], 1);
    assert_true(p->flops[0][OP_CONV2D] > 0 && p->flops[1][OP_CONV2D] > p->flops[0][OP_CONV2D]);
    print_message("  %d conv, %d linear layers; conv2d fwd %ld bwd %ld, linear fwd %ld bwd %ld\n", n_conv, n_linear,
                  p->count[0][OP_CONV2D], p->count[1][OP_CONV2D], p->count[0][OP_LINEAR], p->count[1][OP_LINEAR]);

    // every top-level block is named; conv layers are all inside blocks
    char name[PROF_NAME_MAX];
    for (int i = 0; i < m->n_input_blocks; i++) {
        snprintf(name, sizeof name, "input_blocks.%d", i);
        assert_true(find_block(p, name) > 0);
    }
    for (int i = 0; i < m->n_output_blocks; i++) {
        snprintf(name, sizeof name, "output_blocks.%d", i);
        assert_true(find_block(p, name) > 0);
    }
    assert_true(find_block(p, "middle_block") > 0);
    assert_true(find_block(p, "out") > 0);
    assert_true(find_block(p, "time_embed") > 0);
    int ib0 = find_block(p, "input_blocks.0");
    assert_int_equal(p->block_count[ib0][0], 1);  // conv_in only
    assert_int_equal(p->block_count[ib0][1], 1);  // and its backward node
    // conv_in's GEMM work in closed form: 2 x N x H x W x C_out x C_in x 3 x 3 forward, twice
    // that backward (forward_backward's input: N = 2, C_in 4, 8 x 8)
    double conv_in = 2.0 * 2 * 8 * 8 * cfg.model_channels * 4 * 9;
    assert_true(fabs(p->block_flops[ib0][0] - conv_in) <= 1e-9 * conv_in);
    assert_true(fabs(p->block_flops[ib0][1] - 2 * conv_in) <= 1e-9 * conv_in);

    // two partitions of one total; op calls add up too
    double total = prof_total(p), blocks = 0, flops = 0, block_flops = 0;
    long calls = 0, block_calls = 0;
    for (int i = 0; i < p->n_blocks; i++) {
        blocks += p->block_sec[i][0] + p->block_sec[i][1];
        block_calls += p->block_count[i][0] + p->block_count[i][1];
        block_flops += p->block_flops[i][0] + p->block_flops[i][1];
    }
    for (int i = 0; i < OP_COUNT; i++) {
        calls += p->count[0][i] + p->count[1][i];
        flops += p->flops[0][i] + p->flops[1][i];
    }
    assert_true(flops > 0);
    assert_true(fabs(block_flops - flops) <= 1e-12 * flops);
    assert_true(total > 0);
    assert_true(fabs(blocks - total) <= TOL_PARTITION * total);
    assert_int_equal(block_calls, calls);
    assert_int_equal(p->depth, 0);
    assert_int_equal(p->cur_block, 0);

    char buf[8192];
    int len = prof_format(p, 0, buf, sizeof buf);
    assert_true(len > 0 && (size_t)len < sizeof buf);
    assert_non_null(strstr(buf, "conv2d"));
    assert_non_null(strstr(buf, "middle_block"));
    free(p);
    test_ctx_delete(c);
    unet_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_counts_and_blocks)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
