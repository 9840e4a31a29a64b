/* testutil.h: shared helpers for the cmocka tests.
   - rel_l2 / assert_rel_l2: parity with upstream fixtures by relative L2 error; a failure
     prints the error, the largest |diff| and its index.
   - gradcheck: an op's (or a whole model's) backward against central finite differences
     of loss = sum(out * G) with random G, the loss summed in double.
   - test_data_path: tests/data/<name> of the source tree (TEST_DATA_DIR from CMake).
   - test_load_npy: a fixture .npy as a per-step tensor. */
#ifndef EFFDM_TESTUTIL_H
#define EFFDM_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "autograd/ops.h"
#include "models/unet/unet.h"
#include "util/rng.h"

// ||a - b|| / ||b|| in double (||b|| == 0: ||a - b||).
double rel_l2(const float *a, const float *b, size_t n);
// cmocka failure (with a report) when rel_l2(ours, ref, n) > tol.
#define assert_rel_l2(ours, ref, n, tol) assert_rel_l2_impl((ours), (ref), (n), (tol), #ours, __FILE__, __LINE__)
void assert_rel_l2_impl(const float *ours, const float *ref, size_t n, double tol, const char *what,
                        const char *file, int line);

// cmocka failure unless whole (na + nb floats) is a's na floats then b's nb, bit for bit (a
// batch computed at once against its two parts computed alone).
#define assert_parts_equal(whole, n_whole, a, na, b, nb)                          \
    do {                                                                      \
        assert_int_equal((n_whole), (na) + (nb));                             \
        assert_memory_equal((whole), (a), (na) * sizeof(float));              \
        assert_memory_equal((whole) + (na), (b), (nb) * sizeof(float));       \
    } while (0)

// The op tests' context: one static Ctx with a 1 GiB arena, initialised afresh by each call
// (ctx_free it before the next).
Ctx *test_ctx_static(void);
// cmocka failure unless the string msg contains part; prints both when it does not (a macro,
// so that cmocka reports the caller's line).
#define assert_has(msg, part)                                                              \
    do {                                                                                   \
        if (!strstr((msg), (part))) print_error("'%s' not in message: %s\n", (part), (msg)); \
        assert_non_null(strstr((msg), (part)));                                            \
    } while (0)

// A heap-allocated context with an arena of `bytes` (fails the test if it cannot be made);
// release with test_ctx_delete.
Ctx *test_ctx_new(size_t bytes);
void test_ctx_delete(Ctx *c);

// A fresh private directory /tmp/effdm_<tag>_XXXXXX (mkdtemp) written into dir[cap], and
// its removal with everything in it (no shell). 0 on success, -1 otherwise, as cmocka group
// setup/teardown functions return.
int test_tmpdir_make(char *dir, size_t cap, const char *tag);
int test_tmpdir_remove(const char *dir);

// "dir/name" in one of 8 static buffers used in turn: valid for the next 7 calls, so one
// call may take a few such paths.
const char *test_path_in(const char *dir, const char *name);
// Path of a file in tests/data (static buffer, valid until the next call).
const char *test_data_path(const char *name);
// The whole file at path, NUL-terminated (malloc'd), or NULL when it cannot be read.
char *test_slurp(const char *path);
// The same for dir/name.
char *test_slurp_in(const char *dir, const char *name);
// Writes the printf-formatted text to path (replacing it); fails the test if it cannot.
void test_write_file(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// 1 when dir/name exists, else 0.
int test_exists_in(const char *dir, const char *name);
// Runs `effdm <args>` (the built binary; args as shell words) with stdout and stderr to
// dir/stdout.txt and dir/stderr.txt; its exit status, or -1 when it did not exit normally.
int test_run_cli(const char *dir, const char *args);
// Runs cmd through the shell: its exit status, or -1 when it did not exit normally.
int test_shell_status(const char *cmd);
// Removes the n malloc'd paths (rm -rf: files or folders; asserts it succeeds) and frees them.
void test_remove_paths(char *const *paths, int n);
// Writes a run config of the shipped teacher (models/zoo/fmnist-ldm) to cfg: its model line,
// the YAML lines of body, run.out = run_dir; then runs `effdm calibrate --config cfg opts`
// (opts: more arguments and redirections). Its exit status.
int test_calibrate_teacher(const char *cfg, const char *body, const char *run_dir, const char *opts);
// "<working directory>/rel" (rel: a plain relative path, no "." or ".."), in a static buffer.
const char *test_cwd_path(const char *rel);
// Loads tests/data/<name> (a .npy) into a per-step tensor of c; fails the test if missing.
Tensor *test_load_npy(Ctx *c, const char *name);
// A per-step tensor of c filled with N(0, 1) from r (fails the test when c is full).
Tensor *test_tensor_normal(Ctx *c, int ndim, const int *shape, Rng *r);
// A persistent test tensor with its own malloc'ed data (and grad when requires_grad),
// filled with N(0, scale^2) from rng. Free with test_param_free.
Tensor *test_param_new(int ndim, const int *shape, int requires_grad, Rng *rng, float scale);
// Asserts t (a model parameter looked up by name) is there and [rows, cols], then fills it
// with N(0, 1) from r.
void test_fill_matrix_normal(Tensor *t, int rows, int cols, Rng *r);
void test_param_free(Tensor *t);

// Runs run(2) twice and run(1) once (each returns a malloc'ed buffer of *len floats: the
// outputs and gradients of a computation) and fails unless all three are bit-identical:
// same inputs + same threads = same bits, and the thread count does not change the bits.
void assert_thread_deterministic(float *(*run)(int threads, size_t *len));
// The end of such a run: G = out->n normals from r, tape_backward(out, G), then a malloc'ed
// copy of out's data followed by the gradients of inputs[0 .. n) (*len floats in all).
float *test_backward_outputs(Ctx *c, Tensor *out, Rng *r, Tensor *const *inputs, int n, size_t *len);

// Builds the op's output from inputs; called repeatedly by gradcheck.
typedef Tensor *(*GradcheckFn)(Ctx *c, Tensor *const *inputs, void *user);
typedef struct {
    double eps;        // finite-difference step (default 1e-3 when 0)
    double tol;        // max relative L2 of analytic vs numeric gradient (default 1e-2 when 0)
    double kink;       // skip elements where out moves non-smoothly: |num(eps) - num(eps/2)| > kink * scale (0: never skip)
    int max_elems;     // check at most this many elements per input (0: all)
} GradcheckOpts;
// For each input with requires_grad: analytic gradient (tape_backward with random G) vs
// central differences of sum(out * G) in double. Fails the test on mismatch, printing
// the input index, error, worst element. Returns the worst relative error seen.
double gradcheck(GradcheckFn f, Tensor *const *inputs, int n_inputs, void *user, GradcheckOpts opts);

// The small class-conditional UNet of the unet_cin parity case (tests/data/parity/unet_cin/
// config.yaml): 8x8x4, 32 channels, mult (1, 2), attention at 1 and 2, spatial transformer
// with a 32-wide context.
void test_unet_config_cin(UNetConfig *c);
// What the parity cases' UNets share (8x8 latents of 4 channels, 32 model channels) and what
// each case sets: attention resolutions, residual blocks per level, channel multipliers, heads.
void test_unet_config_parity(UNetConfig *c, const int *attn, int n_attn, int num_res_blocks, const int *mult,
                             int n_mult, int num_heads);

#endif
