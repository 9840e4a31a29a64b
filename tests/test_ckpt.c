/* test_ckpt.c: the torch.save reader (io/ckpt.c, io/pickle.c) through io/weights.h, against
   files written by real torch.save and the values numpy saved beside them
   (tests/data/ckpt/make_ckpts.py), the parity fixtures, the shipped teacher, and the error
   paths (hand-made archives, truncations, crafted pickles). Also dtype conversion and
   `effdm info`. */
#include "testutil.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "io/ckpt.h"
#include "io/dtype.h"
#include "io/fileio.h"
#include "io/npy.h"
#include "io/pickle.h"
#include "io/safetensors.h"
#include "io/weights.h"

// Converting f16/bf16/f64 to float32 and copying f32 are exact (numpy did the same
// conversions): values must match bit for bit.
static const double TOL_EXACT = 0.0;
// Peak memory growth allowed while opening the 48 MB fp16 Inception file (tensors not read).
static const long MAX_OPEN_RSS_KB = 16 * 1024;

static char *path_dup(const char *name) { return strdup(test_data_path(name)); }

// Opens the file at path p; a failure fails the test with the opener's message.
static WeightFile *open_path_ok(const char *p) {
    WeightFile *f = NULL;
    Err e = {0};
    if (weights_open(&f, p, &e)) {
        print_error("%s\n", e.msg);
        fail();
    }
    return f;
}

static WeightFile *open_ok(const char *name) {
    char *p = path_dup(name);
    WeightFile *f = open_path_ok(p);
    free(p);
    return f;
}

// Opens name and expects code, with every `needles` substring in the message.
static void open_fails(const char *name, int code, const char *needle1, const char *needle2) {
    char *p = path_dup(name);
    WeightFile *f = NULL;
    Err e = {0};
    int rc = weights_open(&f, p, &e);
    if (rc != code || (needle1 && !strstr(e.msg, needle1)) || (needle2 && !strstr(e.msg, needle2))) {
        print_error("%s: expected %s containing '%s' '%s', got %s: %s\n", name, err_name(code), needle1 ? needle1 : "",
                    needle2 ? needle2 : "", err_name(rc), e.msg);
        fail();
    }
    assert_null(f);
    assert_non_null(strstr(e.msg, p));  // names the file
    free(p);
}

// Reads tensor `name` of f and compares it with ckpt/<stem>__<name, '.' -> '_'>.npy exactly (shape too).
static void check_tensor(WeightFile *f, const char *stem, const char *name) {
    char npy[512];
    int k = snprintf(npy, sizeof npy, "ckpt/%s__", stem);
    for (const char *s = name; *s; s++) npy[k++] = *s == '.' ? '_' : *s;
    snprintf(npy + k, sizeof npy - (size_t)k, ".npy");
    NpyArray ref;
    Err e = {0};
    if (npy_read(test_data_path(npy), &ref, &e)) {
        print_error("%s\n", e.msg);
        fail();
    }
    const WeightInfo *wi = weights_find(f, name);
    assert_non_null(wi);
    assert_int_equal(wi->ndim, ref.ndim);
    for (int d = 0; d < ref.ndim; d++) assert_int_equal(wi->shape[d], ref.shape[d]);
    assert_int_equal(wi->numel, ref.n);
    float *got = malloc((ref.n ? ref.n : 1) * sizeof(float));
    if (weights_read_f32(f, name, got, ref.ndim, ref.shape, &e)) {
        print_error("%s\n", e.msg);
        fail();
    }
    for (size_t i = 0; i < ref.n; i++) {
        if (memcmp(&got[i], &ref.data[i], 4) != 0) {
            print_error("%s '%s'[%zu]: got %.9g, expected %.9g\n", stem, name, i, got[i], ref.data[i]);
            fail();
        }
    }
    assert_rel_l2(got, ref.data, ref.n, TOL_EXACT);
    free(got);
    npy_free(&ref);
}

static void test_dtypes(void **state) {
    WeightFile *f = open_ok("ckpt/dtypes.ckpt");
    assert_string_equal(weights_format(f), "pytorch");
    assert_int_equal(weights_count(f), 9);
    const char *names[] = {"f32", "f16", "f16_rand", "bf16", "f64", "i64", "i32", "scalar", "empty"};
    const DType types[] = {DT_F32, DT_F16, DT_F16, DT_BF16, DT_F64, DT_I64, DT_I32, DT_F32, DT_F32};
    for (int i = 0; i < 9; i++) {
        assert_string_equal(weights_info(f, i)->name, names[i]);  // file order
        assert_int_equal(weights_info(f, i)->dtype, types[i]);
        check_tensor(f, "dtypes", names[i]);
    }
    const WeightInfo *s = weights_find(f, "scalar");
    assert_int_equal(s->ndim, 0);
    assert_int_equal(s->numel, 1);
    assert_int_equal(weights_find(f, "empty")->numel, 0);
    // int64 kept exactly by the raw read (numpy's int64 .npy, read as float, is exact here too)
    int64_t raw[12];
    Err e = {0};
    assert_int_equal(weights_read_raw(f, "i64", raw, sizeof raw, &e), 0);
    for (int i = 0; i < 12; i++) assert_true(raw[i] == (int64_t)(i - 3) * 1000003);
    assert_int_equal(weights_read_raw(f, "i64", raw, 8, &e), ERR_SHAPE);
    weights_close(f);
}

static void test_views(void **state) {
    const char *names[] = {"base", "t", "slice", "row", "col", "bcast", "half_t", "half_row"};
    const char *files[] = {"ckpt/views.ckpt", "ckpt/archive.ckpt"};  // archive: deflated, folder "archive/"
    for (int k = 0; k < 2; k++) {
        WeightFile *f = open_ok(files[k]);
        assert_int_equal(weights_count(f), 8);
        for (int i = 0; i < 8; i++) check_tensor(f, "views", names[i]);
        // read twice, in another order: reads are independent of each other
        check_tensor(f, "views", "half_row");
        check_tensor(f, "views", "t");
        weights_close(f);
    }
}

static void test_lightning(void **state) {
    WeightFile *f = open_ok("ckpt/lightning.ckpt");
    assert_int_equal(weights_count(f), 15);  // state_dict only: no optimizer state tensors
    FILE *names = fopen(test_data_path("ckpt/lightning__names.txt"), "r");  // the state_dict order torch kept
    assert_non_null(names);
    char line[256];
    for (int i = 0; i < 15; i++) {
        assert_non_null(fgets(line, sizeof line, names));
        line[strcspn(line, "\n")] = '\0';
        assert_string_equal(weights_info(f, i)->name, line);
        check_tensor(f, "lightning", line);
    }
    fclose(names);
    assert_int_equal(weights_find(f, "model_ema.num_updates")->dtype, DT_I32);
    assert_int_equal(weights_top_count(f), 11);
    const char *keys[] = {"epoch", "global_step", "pytorch-lightning_version", "state_dict", "optimizer_states",
                          "lr_schedulers", "callbacks", "hyper_parameters", "hparams_name", "seed", "big"};
    const char *descs[] = {"int 3", "int 1234", "str '1.4.2'", "dict (15 entries)", "list (1 items)", "list (1 items)",
                           "dict (1 entries)", "object argparse.Namespace", "str 'kwargs'", "int 1099511627779", "int (9 bytes)"};
    for (int i = 0; i < 11; i++) {
        const char *d;
        assert_string_equal(weights_top_key(f, i, &d), keys[i]);
        assert_string_equal(d, descs[i]);
    }
    assert_null(weights_metadata(f, "anything"));
    weights_close(f);
}

static void test_protocols(void **state) {
    const char *files[] = {"ckpt/proto4.ckpt", "ckpt/proto5.ckpt"};
    for (int k = 0; k < 2; k++) {
        WeightFile *f = open_ok(files[k]);
        assert_int_equal(weights_count(f), 3);
        check_tensor(f, "proto4", "w");  // an nn.Parameter: _rebuild_parameter
        check_tensor(f, "proto4", "b");
        check_tensor(f, "proto4", "n");
        weights_close(f);
    }
}

static void test_handmade_folder_name(void **state) {
    WeightFile *f = open_ok("ckpt/good_handmade.ckpt");  // top folder "weird-name.v2", byteorder "little"
    float w[4];
    Err e = {0};
    assert_int_equal(weights_read_f32(f, "a.weight", w, 2, (int[]){2, 2}, &e), 0);
    for (int i = 0; i < 4; i++) assert_true(w[i] == (float)(i + 1));
    weights_close(f);
}

static void test_nan_inf(void **state) {
    WeightFile *f = open_ok("ckpt/bad_nan.ckpt");
    float buf[8];
    Err e = {0};
    assert_int_equal(weights_read_f32(f, "good", buf, 1, (int[]){2}, &e), 0);
    assert_int_equal(weights_read_f32(f, "has_nan", buf, 2, (int[]){2, 3}, &e), ERR_VALUE);
    assert_non_null(strstr(e.msg, "'has_nan'"));
    assert_non_null(strstr(e.msg, "element 5 is NaN"));
    e = (Err){0};
    assert_int_equal(weights_read_f32(f, "has_inf", buf, 1, (int[]){4}, &e), ERR_VALUE);
    assert_non_null(strstr(e.msg, "'has_inf'"));
    assert_non_null(strstr(e.msg, "Inf"));
    weights_close(f);
}

static void test_read_errors(void **state) {
    WeightFile *f = open_ok("ckpt/views.ckpt");
    float buf[64];
    Err e = {0};
    assert_int_equal(weights_read_f32(f, "base", buf, 2, (int[]){6, 4}, &e), ERR_SHAPE);
    assert_non_null(strstr(e.msg, "'base'"));
    assert_non_null(strstr(e.msg, "expected shape [6, 4], found [4, 6]"));
    e = (Err){0};
    assert_int_equal(weights_read_f32(f, "nope.weight", buf, 0, NULL, &e), ERR_KEY);
    assert_non_null(strstr(e.msg, "'nope.weight' not found"));
    weights_close(f);
}

static void test_error_files(void **state) {
    open_fails("ckpt/legacy.pt", ERR_UNSUPPORTED, "legacy (pre-1.6)", "torch>=1.6");
    open_fails("ckpt/bad_nopkl.ckpt", ERR_FORMAT, "data.pkl", NULL);
    open_fails("ckpt/bad_two_pkl.ckpt", ERR_FORMAT, "several data.pkl", NULL);
    open_fails("ckpt/bad_nostorage.ckpt", ERR_FORMAT, "'b.bias'", "'top/data/1' is missing");
    open_fails("ckpt/bad_offset.ckpt", ERR_FORMAT, "'c.weight'", "reaches element 5, its storage '0' holds 4");
    open_fails("ckpt/bad_shape.ckpt", ERR_FORMAT, "'huge.weight'", "1099511627776");  // refused before any allocation
    open_fails("ckpt/bad_bcast.ckpt", ERR_FORMAT, "'huge.bias'", "from a storage of 4");
    open_fails("ckpt/bad_storage_size.ckpt", ERR_FORMAT, "'a.weight'", "holds 12 bytes, expected 16");
    open_fails("ckpt/bad_dtype.ckpt", ERR_DTYPE, "'z.weight'", "ComplexFloatStorage");
    open_fails("ckpt/bad_deep.ckpt", ERR_FORMAT, "data.pkl", "nested deeper");
    open_fails("ckpt/bad_bigendian.ckpt", ERR_UNSUPPORTED, "big-endian", NULL);
    open_fails("ckpt/make_ckpts.py", ERR_FORMAT, "not a tensor file", NULL);
    Err e = {0};
    WeightFile *f = NULL;
    assert_int_equal(weights_open(&f, "/nonexistent/x.ckpt", &e), ERR_IO);
}

static void test_truncated_and_corrupt(void **state) {
    unsigned char *buf;
    size_t n;
    Err e = {0};
    assert_int_equal(file_read_all(test_data_path("ckpt/views.ckpt"), &buf, &n, &e), 0);
    size_t cuts[] = {0, 1, 3, 4, 30, 100, n / 2, n - 200, n - 23, n - 22, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        WeightFile *f = NULL;
        e = (Err){0};
        int rc = weights_open_mem(&f, buf, cuts[i], "cut.ckpt", &e);
        if (rc != ERR_FORMAT) {
            print_error("cut at %zu of %zu: expected format error, got %s: %s\n", cuts[i], n, err_name(rc), e.msg);
            fail();
        }
        assert_non_null(strstr(e.msg, "cut.ckpt"));
        assert_null(f);
    }
    // wrong magic
    unsigned char *bad = malloc(n);
    memcpy(bad, buf, n);
    bad[0] = 'Q';
    WeightFile *f = NULL;
    e = (Err){0};
    assert_int_equal(weights_open_mem(&f, bad, n, "magic.ckpt", &e), ERR_FORMAT);
    // the storage bytes of 'base' corrupted in place: found by their values (-3, -2.5, -2, -1.5);
    // the CRC check fails at read time (open reads no tensor data)
    memcpy(bad, buf, n);
    static const float first[4] = {-3.0f, -2.5f, -2.0f, -1.5f};
    unsigned char *hit = NULL;
    for (size_t i = 0; i + 16 <= n && !hit; i++)
        if (!memcmp(buf + i, first, 16)) hit = bad + i;
    assert_non_null(hit);
    hit[5] ^= 0x40;
    e = (Err){0};
    assert_int_equal(weights_open_mem(&f, bad, n, "crc.ckpt", &e), 0);
    float out[24];
    assert_int_equal(weights_read_f32(f, "base", out, 2, (int[]){4, 6}, &e), ERR_FORMAT);
    assert_non_null(strstr(e.msg, "'base'"));
    assert_non_null(strstr(e.msg, "crc.ckpt"));
    weights_close(f);
    free(bad);
    free(buf);
}

// --- the pickle parser alone ---

static int parse(const char *bytes, size_t n, Err *e) {
    PklDoc d;
    int rc = pkl_parse(&d, (const unsigned char *)bytes, n, "t.pkl", e);
    pkl_free(&d);
    return rc;
}

static void expect_pkl_error(const char *bytes, size_t n, const char *needle) {
    Err e = {0};
    int rc = parse(bytes, n, &e);
    if (rc != ERR_FORMAT || !strstr(e.msg, needle)) {
        print_error("expected format error containing '%s', got %s: %s\n", needle, err_name(rc), e.msg);
        fail();
    }
}

static void test_pickle(void **state) {
    PklDoc d;
    Err e = {0};
    // {'a': [1, -1, 2**40, 0.5, True, None, 'x', b'yz'], 'b': ('a' memo'd)}; LONG1 -1; BINFLOAT 0.5
    static const char ok[] =  // (hex escapes end where a string piece ends)
        "\x80\x02}q\x00" "(X\x01\x00\x00\x00" "aq\x01]q\x02(K\x01J\xff\xff\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01"
        "G\x3f\xe0\x00\x00\x00\x00\x00\x00\x88NX\x01\x00\x00\x00" "xC\x02yze"
        "X\x01\x00\x00\x00" "bh\x01\x85u.";
    assert_int_equal(pkl_parse(&d, (const unsigned char *)ok, sizeof ok - 1, "ok.pkl", &e), 0);
    const PklValue *a = pkl_dict_get(d.root, "a");
    assert_non_null(a);
    assert_int_equal(a->type, PKL_LIST);
    assert_int_equal(a->u.seq.n, 8);
    assert_true(a->u.seq.items[0]->u.i == 1);
    assert_true(a->u.seq.items[1]->u.i == -1);
    assert_true(a->u.seq.items[2]->u.i == ((int64_t)1 << 40));
    assert_true(a->u.seq.items[3]->u.f == 0.5);
    assert_int_equal(a->u.seq.items[4]->type, PKL_BOOL);
    assert_int_equal(a->u.seq.items[5]->type, PKL_NONE);
    assert_string_equal(a->u.seq.items[6]->u.str.s, "x");
    assert_int_equal(a->u.seq.items[7]->type, PKL_BYTES);
    const PklValue *b = pkl_dict_get(d.root, "b");
    assert_int_equal(b->type, PKL_TUPLE);
    assert_string_equal(b->u.seq.items[0]->u.str.s, "a");
    pkl_free(&d);

    // a list appended to itself: a cycle is not walked, only its depth grows
    static const char cyc[] = "\x80\x02]q\x00h\x00" "a.";
    assert_int_equal(parse(cyc, sizeof cyc - 1, &e), 0);

    expect_pkl_error("\x80\x02t.", 4, "without a MARK");
    expect_pkl_error("\x80\x02" "a.", 4, "APPEND: stack underflow");
    expect_pkl_error("\x80\x02(a.", 5, "APPEND: stack underflow");  // the MARK fences the stack
    expect_pkl_error("\x80\x02.", 3, "STOP: stack underflow");
    expect_pkl_error("\x80\x02h\x05.", 5, "memo slot never set");
    expect_pkl_error("\x80\x02Nr\xff\xff\xff\x7f.", 9, "memo index larger");
    expect_pkl_error("\x80\x02X\xff\xff\xff\x7f" "abc.", 11, "truncated");
    expect_pkl_error("\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff.", 12, "truncated");
    expect_pkl_error("\x80\x02N", 3, "without STOP");
    expect_pkl_error("\x80\x06N.", 4, "protocol 6");
    expect_pkl_error("\x80\x02I1\n.", 6, "opcode 0x49");
    expect_pkl_error("\x80\x02N\x8b\xff\xff\xff\xff.", 9, "negative length");
    expect_pkl_error("\x80\x02NNR.", 6, "REDUCE: callable is a None");
    expect_pkl_error("\x80\x02(K\x01u.", 7, "SETITEMS: stack underflow");
    expect_pkl_error("\x80\x02}K\x01s.", 7, "SETITEM: stack underflow");
    expect_pkl_error("\x80\x02NN\x86Q.", 7, "persistent id");
    expect_pkl_error("\x80\x02K\x01K\x02K\x03s.", 10, "SETITEM on a int");
    // _rebuild_tensor_v2 with a non-storage argument
    static const char badt[] = "\x80\x02" "ctorch._utils\n_rebuild_tensor_v2\n" "(NK\x00)))\x89t" "R.";
    expect_pkl_error(badt, sizeof badt - 1, "expected a storage");

    // nesting: MARKs and containers are bounded, whatever the input size
    size_t n = 10000;
    char *deep = malloc(n + 4);
    memcpy(deep, "\x80\x02", 2);
    memset(deep + 2, '(', n);
    deep[n + 2] = '.';
    expect_pkl_error(deep, n + 3, "MARKs nested deeper");
    memset(deep + 2, ']', n / 2);
    memset(deep + 2 + n / 2, 'a', n / 2 - 1);
    deep[n + 1] = '.';
    expect_pkl_error(deep, n + 2, "nested deeper than");
    free(deep);
}

// --- dtype conversion ---

static void test_dtype_conversion(void **state) {
    // known bit patterns (IEEE 754 binary16)
    assert_true(f16_to_f32(0x3c00) == 1.0f);
    assert_true(f16_to_f32(0xc000) == -2.0f);
    assert_true(f16_to_f32(0x7bff) == 65504.0f);
    assert_true(f16_to_f32(0x0400) == 0x1p-14f);          // smallest normal
    assert_true(f16_to_f32(0x0001) == 0x1p-24f);          // smallest subnormal
    assert_true(f16_to_f32(0x03ff) == 0x3ffp-24f);        // largest subnormal
    assert_true(signbit(f16_to_f32(0x8000)) && f16_to_f32(0x8000) == 0.0f);
    assert_true(isinf(f16_to_f32(0x7c00)) && f16_to_f32(0x7c00) > 0);
    assert_true(isinf(f16_to_f32(0xfc00)) && f16_to_f32(0xfc00) < 0);
    assert_true(isnan(f16_to_f32(0x7e00)) && isnan(f16_to_f32(0xfc01)));
    assert_true(bf16_to_f32(0x3f80) == 1.0f);
    assert_true(bf16_to_f32(0xc2f7) == -123.5f);
    assert_true(isnan(bf16_to_f32(0x7fc0)));
    // every non-NaN half and bfloat16 survives the round trip through float32
    for (uint32_t h = 0; h < 65536; h++) {
        float f = f16_to_f32((uint16_t)h);
        if (!isnan(f)) assert_int_equal(f32_to_f16(f), h);
        else assert_true(isnan(f16_to_f32(f32_to_f16(f))));
        float g = bf16_to_f32((uint16_t)h);
        if (!isnan(g)) assert_int_equal(f32_to_bf16(g), h);
    }
    // rounding: ties to even, overflow to inf
    assert_int_equal(f32_to_f16(1.0f + 0x1p-11f), 0x3c00);               // tie, even stays
    assert_int_equal(f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);           // tie, odd rounds up
    assert_int_equal(f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
    assert_int_equal(dtype_from_name("BF16"), DT_BF16);
    assert_int_equal(dtype_from_name("bf16"), -1);
    assert_int_equal(dtype_size(DT_I64), 8);
}

// --- fixtures shipped with the repo ---

static void read_all_tensors(WeightFile *f) {
    Err e = {0};
    for (int i = 0; i < weights_count(f); i++) {
        const WeightInfo *wi = weights_info(f, i);
        float *buf = malloc((wi->numel ? wi->numel : 1) * sizeof(float));
        if (weights_read_f32(f, wi->name, buf, 0, NULL, &e)) {
            print_error("%s\n", e.msg);
            fail();
        }
        free(buf);
    }
}

static void test_repo_checkpoints(void **state) {
    const char *d;
    const char *cases[] = {"parity/unet_cin", "parity/unet_cin_head_channels", "parity/unet_uncond", "parity/ae_kl"};
    for (int k = 0; k < 4; k++) {
        char name[256];
        snprintf(name, sizeof name, "%s/model.ckpt", cases[k]);
        WeightFile *f = open_ok(name);
        assert_true(weights_count(f) > 100);
        assert_non_null(weights_find(f, "model.diffusion_model.out.2.weight"));
        assert_string_equal(weights_top_key(f, 1, &d), "global_step");  // {'state_dict': ..., 'global_step': 1234}
        assert_string_equal(d, "int 1234");
        read_all_tensors(f);
        weights_close(f);
    }
    // unet_cin: context.npy = embedding(y): the rows of cond_stage_model.embedding.weight
    WeightFile *f = open_ok("parity/unet_cin/model.ckpt");
    const WeightInfo *wi = weights_find(f, "cond_stage_model.embedding.weight");
    assert_non_null(wi);
    assert_int_equal(wi->ndim, 2);
    assert_int_equal(wi->shape[1], 32);
    float *emb = malloc(wi->numel * sizeof(float));
    Err e = {0};
    assert_int_equal(weights_read_f32(f, wi->name, emb, 2, (int[]){(int)wi->shape[0], 32}, &e), 0);
    NpyArray y, ctx;
    assert_int_equal(npy_read(test_data_path("parity/unet_cin/y.npy"), &y, &e), 0);
    assert_int_equal(npy_read(test_data_path("parity/unet_cin/context.npy"), &ctx, &e), 0);
    assert_int_equal(ctx.n, y.n * 32);
    for (size_t b = 0; b < y.n; b++) {
        int label = (int)y.data[b];
        assert_true(label >= 0 && label < wi->shape[0]);
        assert_rel_l2(emb + (size_t)label * 32, ctx.data + b * 32, 32, TOL_EXACT);
    }
    npy_free(&y);
    npy_free(&ctx);
    free(emb);
    weights_close(f);

    // the shipped teacher: a real Lightning checkpoint; optimizer state is not listed
    f = open_ok("../../models/zoo/fmnist-ldm/model.ckpt");
    assert_int_equal(weights_count(f), 474);
    assert_int_equal(weights_top_count(f), 6);
    assert_string_equal(weights_top_key(f, 1, &d), "global_step");
    assert_string_equal(d, "int 5054");
    assert_string_equal(weights_top_key(f, 4, &d), "optimizer_states");
    read_all_tensors(f);
    weights_close(f);
    f = open_ok("../../models/zoo/fmnist-ldm/judge.ckpt");
    assert_int_equal(weights_count(f), 12);
    read_all_tensors(f);
    weights_close(f);
}

// Every .ckpt/.pth under dir (recursively) opens and reads, except the error fixtures (bad_*:
// they fail to open or, bad_nan, to read).
static int walk_checkpoints(const char *dir) {
    int count = 0;
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        struct stat st;
        if (stat(p, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            count += walk_checkpoints(p);
            continue;
        }
        size_t n = strlen(de->d_name);
        int is_ckpt = (n > 5 && !strcmp(de->d_name + n - 5, ".ckpt")) || (n > 4 && !strcmp(de->d_name + n - 4, ".pth"));
        if (!is_ckpt || !strncmp(de->d_name, "bad_", 4)) continue;
        WeightFile *f = open_path_ok(p);
        read_all_tensors(f);
        weights_close(f);
        count++;
    }
    closedir(d);
    return count;
}

static void test_every_repo_checkpoint_loads(void **state) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", test_data_path(""));
    int n = walk_checkpoints(dir);
    snprintf(dir, sizeof dir, "%s", test_data_path("../../models/zoo"));
    n += walk_checkpoints(dir);
    assert_true(n >= 13);  // 4 parity cases, 2 teacher files, 7 made by make_ckpts.py
}

static void test_shared_inception(void **state) {
    const char *p = SHARED_DIR "/fixtures/fid/inception/inception_random_fp16.pth";
    struct stat st;
    if (stat(p, &st) != 0) {  // the 48 MB fixture lives beside the repository only
        print_message("  (%s not present)\n", p);
        skip();
    }
    WeightFile *f = NULL;
    Err e = {0};
    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    if (weights_open(&f, p, &e)) {
        print_error("%s\n", e.msg);
        fail();
    }
    getrusage(RUSAGE_SELF, &after);
    // lazy: opening a 48 MB file reads its directory and data.pkl, not its tensors
    assert_true(after.ru_maxrss - before.ru_maxrss < MAX_OPEN_RSS_KB);
    assert_int_equal(weights_count(f), 566);  // a plain state dict of an fp16 Inception-v3
    const WeightInfo *wi = weights_find(f, "Conv2d_1a_3x3.conv.weight");
    assert_non_null(wi);
    assert_int_equal(wi->dtype, DT_F16);
    int64_t want[4] = {32, 3, 3, 3};
    for (int d = 0; d < 4; d++) assert_true(wi->shape[d] == want[d]);
    assert_int_equal(weights_find(f, "Conv2d_1a_3x3.bn.num_batches_tracked")->dtype, DT_I64);
    read_all_tensors(f);
    weights_close(f);
}

// --- effdm info ---

static int run_cmd(const char *args, char *out, size_t cap) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s info %s 2>&1", EFFDM_BIN, args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_info_cli(void **state) {
    static char out[1 << 16];
    char args[4200];
    snprintf(args, sizeof args, "%s", test_data_path("ckpt/lightning.ckpt"));
    assert_int_equal(run_cmd(args, out, sizeof out), 0);
    assert_non_null(strstr(out, "PyTorch checkpoint"));
    assert_non_null(strstr(out, "hyper_parameters"));
    assert_non_null(strstr(out, "object argparse.Namespace"));
    assert_non_null(strstr(out, "tensors: 15"));
    assert_non_null(strstr(out, "model_ema."));
    assert_non_null(strstr(out, "I32"));
    snprintf(args, sizeof args, "%s", test_data_path("ckpt/ref.safetensors"));
    assert_int_equal(run_cmd(args, out, sizeof out), 0);
    assert_non_null(strstr(out, "format:  safetensors"));
    assert_non_null(strstr(out, "effdm export (format 1):"));
    snprintf(args, sizeof args, "%s", test_data_path("ckpt/bad_offset.ckpt"));
    assert_int_equal(run_cmd(args, out, sizeof out), 2);
    assert_non_null(strstr(out, "effdm info: "));
    assert_non_null(strstr(out, "'c.weight'"));
    assert_null(strchr(strchr(out, '\n') + 1, '\n'));  // one line
    // a run directory's state is not an export (it was shown as one, "source: ?"): its kind,
    // position and checksum; a flipped byte fails the checksum
    char dir[256], st_path[300];
    assert_int_equal(test_tmpdir_make(dir, sizeof dir, "info"), 0);
    snprintf(st_path, sizeof st_path, "%s/state.safetensors", dir);
    StWriter w = {.checksum = 1};
    Err e = {0};
    static float v[1000];
    for (int i = 0; i < 1000; i++) v[i] = (float)i;
    int64_t shape[1] = {1000};
    assert_int_equal(st_writer_add(&w, "opt.m", DT_F32, 1, shape, v, &e), 0);
    assert_int_equal(st_writer_meta(&w, "effdm.kind", "run-state", &e), 0);
    assert_int_equal(st_writer_meta(&w, "effdm.format", "1", &e), 0);
    assert_int_equal(st_writer_meta(&w, "effdm.epoch", "3/10", &e), 0);
    assert_int_equal(st_writer_meta(&w, "effdm.step", "5/20", &e), 0);
    assert_int_equal(st_write(&w, st_path, &e), 0);
    st_writer_free(&w);
    assert_int_equal(run_cmd(st_path, out, sizeof out), 0);
    assert_null(strstr(out, "effdm export"));
    assert_non_null(strstr(out, "effdm run-state: the run state"));
    assert_non_null(strstr(out, "3 of 10 epochs done; epoch 4: 5 of 20 steps done"));
    assert_non_null(strstr(out, "checksum:    the data matches effdm.crc32"));
    char targs[400];
    snprintf(targs, sizeof targs, "--tensors %s", st_path);
    assert_int_equal(run_cmd(targs, out, sizeof out), 0);
    assert_non_null(strstr(out, "tensors (name, dtype, shape):\n  opt.m  F32  [1000]\n"));
    FILE *fp = fopen(st_path, "r+b");
    assert_non_null(fp);
    fseek(fp, -8, SEEK_END);
    fputc(0x7f, fp);
    fclose(fp);
    assert_int_equal(run_cmd(st_path, out, sizeof out), 0);
    assert_non_null(strstr(out, "does not match its checksum"));
    test_tmpdir_remove(dir);
    assert_int_equal(run_cmd("--help", out, sizeof out), 0);
    assert_non_null(strstr(out, "usage: effdm info FILE"));
    assert_int_equal(run_cmd("", out, sizeof out), 2);
    assert_int_equal(run_cmd("/nonexistent.ckpt", out, sizeof out), 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtypes),
        cmocka_unit_test(test_views),
        cmocka_unit_test(test_lightning),
        cmocka_unit_test(test_protocols),
        cmocka_unit_test(test_handmade_folder_name),
        cmocka_unit_test(test_nan_inf),
        cmocka_unit_test(test_read_errors),
        cmocka_unit_test(test_error_files),
        cmocka_unit_test(test_truncated_and_corrupt),
        cmocka_unit_test(test_pickle),
        cmocka_unit_test(test_dtype_conversion),
        cmocka_unit_test(test_repo_checkpoints),
        cmocka_unit_test(test_every_repo_checkpoint_loads),
        cmocka_unit_test(test_shared_inception),
        cmocka_unit_test(test_info_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
