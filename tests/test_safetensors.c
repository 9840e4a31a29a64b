/* test_safetensors.c: the safetensors reader and writer (io/safetensors.c) through
   io/weights.h, against ref.safetensors (written by tests/data/ckpt/make_ckpts.py by hand
   from the format spec, with the values torch/numpy saved beside it), the writer's bytes
   against that same file, round trips of every dtype, and the error paths. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/dtype.h"
#include "io/fileio.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "io/weights.h"

static const char *const REF_NAMES[] = {"f32", "f16", "bf16", "f64", "i64", "i32", "i16", "i8", "u8", "bool", "a.scalar", "z.empty"};
#define N_REF 12

static void tmp_path(char *out, size_t cap, const char *name) { snprintf(out, cap, "/tmp/effdm_test_st_%d_%s", (int)getpid(), name); }

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static void test_read_reference(void **state) {
    char p[4096];
    snprintf(p, sizeof p, "%s", test_data_path("ckpt/ref.safetensors"));
    WeightFile *f;
    Err e = {0};
    assert_int_equal(weights_open(&f, p, &e), 0);
    assert_string_equal(weights_format(f), "safetensors");
    assert_int_equal(weights_count(f), N_REF);
    for (int k = 0; k < N_REF; k++) {
        const char *name = REF_NAMES[k];
        char npy[256];
        snprintf(npy, sizeof npy, "ckpt/ref__%s.npy", name);
        for (char *c = npy + 9; *c; c++)
            if (*c == '.' && strcmp(c, ".npy") != 0) *c = '_';
        NpyArray ref;
        assert_int_equal(npy_read(test_data_path(npy), &ref, &e), 0);
        const WeightInfo *wi = weights_find(f, name);
        assert_non_null(wi);
        assert_int_equal(wi->ndim, ref.ndim);
        float *got = malloc((ref.n ? ref.n : 1) * sizeof(float));
        if (weights_read_f32(f, name, got, ref.ndim, ref.shape, &e)) {
            print_error("%s\n", e.msg);
            fail();
        }
        for (size_t i = 0; i < ref.n; i++)
            if (memcmp(&got[i], &ref.data[i], 4)) {
                print_error("'%s'[%zu]: got %.9g, expected %.9g\n", name, i, got[i], ref.data[i]);
                fail();
            }
        free(got);
        npy_free(&ref);
    }
    // listed in file (offset) order: the reference writer's order, F64/I64 first ... BOOL last
    assert_string_equal(weights_info(f, 0)->name, "i64");
    assert_string_equal(weights_info(f, 1)->name, "f64");
    assert_string_equal(weights_info(f, N_REF - 1)->name, "bool");
    int64_t big[3];
    assert_int_equal(weights_read_raw(f, "i64", big, sizeof big, &e), 0);
    assert_true(big[0] == -5 && big[1] == ((int64_t)1 << 40) && big[2] == 7);
    assert_int_equal(weights_metadata_count(f), 3);
    assert_string_equal(weights_metadata(f, "effdm.format"), "1");
    assert_string_equal(weights_metadata(f, "effdm.note"), "tab\there \"quoted\" \xc3\xbc");
    assert_null(weights_metadata(f, "nope"));
    assert_int_equal(weights_top_count(f), 0);
    weights_close(f);
}

// The writer, given the reference's tensors and metadata in another order, writes the
// reference's bytes: same tensor order, JSON, escaping and padding as the reference writer.
static void test_writer_matches_reference(void **state) {
    unsigned char *ref;
    size_t n;
    Err e = {0};
    assert_int_equal(file_read_all(test_data_path("ckpt/ref.safetensors"), &ref, &n, &e), 0);
    StFile sf;
    assert_int_equal(st_open_mem(&sf, ref, n, "ref.safetensors", &e), 0);
    StWriter w = {0};
    for (int i = sf.n_tensors - 1; i >= 0; i--) {
        const StTensor *t = &sf.tensors[i];
        assert_int_equal(st_writer_add(&w, t->name, t->dtype, t->ndim, t->shape, st_data(&sf, i), &e), 0);
    }
    for (int i = sf.n_meta - 1; i >= 0; i--) assert_int_equal(st_writer_meta(&w, sf.meta[i].key, sf.meta[i].value, &e), 0);
    char out[256];
    tmp_path(out, sizeof out, "rewrite.safetensors");
    assert_int_equal(st_write(&w, out, &e), 0);
    st_writer_free(&w);
    unsigned char *got;
    size_t gn;
    assert_int_equal(file_read_all(out, &got, &gn, &e), 0);
    if (gn != n || memcmp(got, ref, n)) {
        size_t i = 0;
        while (i < gn && i < n && got[i] == ref[i]) i++;
        print_error("rewritten file differs from the reference at byte %zu (sizes %zu, %zu)\n%.*s\n%.*s\n", i, gn, n,
                    (int)(gn < 400 ? gn : 400), (const char *)got, (int)(n < 400 ? n : 400), (const char *)ref);
        fail();
    }
    assert_false(file_exists(strcat(out, ".tmp")));
    out[strlen(out) - 4] = '\0';
    unlink(out);
    free(got);
    st_close(&sf);
    free(ref);
}

// Every dtype written and read back bit for bit; the header's 8-byte alignment.
static void test_round_trip_all_dtypes(void **state) {
    Rng rng;
    rng_seed(&rng, 7, 0);
    StWriter w = {0};
    Err e = {0};
    unsigned char *data[DT_COUNT];
    int64_t shape[DT_COUNT][3];
    for (int t = 0; t < DT_COUNT; t++) {
        shape[t][0] = 2 + t % 3;
        shape[t][1] = 3;
        shape[t][2] = t == DT_BOOL ? 1 : 2;
        size_t numel = (size_t)(shape[t][0] * shape[t][1] * shape[t][2]), es = dtype_size((DType)t);
        data[t] = malloc(numel * es);
        for (size_t i = 0; i < numel; i++) {
            float v;
            rng_normal_fill(&rng, &v, 1);
            v *= 10.0f;
            unsigned char *d = data[t] + i * es;
            switch ((DType)t) {
            case DT_F32: memcpy(d, &v, 4); break;
            case DT_F16: { uint16_t h = f32_to_f16(v); memcpy(d, &h, 2); break; }
            case DT_BF16: { uint16_t h = f32_to_bf16(v); memcpy(d, &h, 2); break; }
            case DT_F64: { double x = (double)v / 3.0; memcpy(d, &x, 8); break; }
            case DT_BOOL: d[0] = v > 0; break;
            default:
                for (size_t b = 0; b < es; b++) d[b] = (unsigned char)(rng_u32(&rng) >> 24);
            }
        }
        char name[32];
        snprintf(name, sizeof name, "t.%s", dtype_name((DType)t));
        assert_int_equal(st_writer_add(&w, name, (DType)t, 3, shape[t], data[t], &e), 0);
    }
    assert_int_equal(st_writer_add(&w, "t.F32", DT_F32, 1, (int64_t[]){1}, data[0], &e), ERR_KEY);
    e = (Err){0};
    assert_int_equal(st_writer_add(&w, "__metadata__", DT_F32, 1, (int64_t[]){1}, data[0], &e), ERR_KEY);
    e = (Err){0};
    assert_int_equal(st_writer_meta(&w, "effdm.format", "1", &e), 0);
    assert_int_equal(st_writer_meta(&w, "odd\nkey", "v\x01\\", &e), 0);
    assert_int_equal(st_writer_meta(&w, "effdm.format", "2", &e), ERR_KEY);
    e = (Err){0};
    char out[256];
    tmp_path(out, sizeof out, "all.safetensors");
    assert_int_equal(st_write(&w, out, &e), 0);
    st_writer_free(&w);

    WeightFile *f;
    assert_int_equal(weights_open(&f, out, &e), 0);
    assert_int_equal(weights_count(f), DT_COUNT);
    for (int t = 0; t < DT_COUNT; t++) {
        char name[32];
        snprintf(name, sizeof name, "t.%s", dtype_name((DType)t));
        const WeightInfo *wi = weights_find(f, name);
        assert_non_null(wi);
        assert_int_equal(wi->dtype, t);
        assert_int_equal(wi->ndim, 3);
        for (int d = 0; d < 3; d++) assert_true(wi->shape[d] == shape[t][d]);
        size_t bytes = wi->numel * dtype_size((DType)t);
        unsigned char *back = malloc(bytes);
        assert_int_equal(weights_read_raw(f, name, back, bytes, &e), 0);
        assert_memory_equal(back, data[t], bytes);
        free(back);
        free(data[t]);
    }
    assert_string_equal(weights_metadata(f, "odd\nkey"), "v\x01\\");
    weights_close(f);
    unsigned char *raw;
    size_t n;
    assert_int_equal(file_read_all(out, &raw, &n, &e), 0);
    uint64_t hlen;
    memcpy(&hlen, raw, 8);
    assert_int_equal(hlen % 8, 0);
    free(raw);
    unlink(out);
}

static void test_writer_io_error(void **state) {
    StWriter w = {0};
    Err e = {0};
    float x = 1;
    assert_int_equal(st_writer_add(&w, "x", DT_F32, 0, NULL, &x, &e), 0);
    assert_int_equal(st_write(&w, "/nonexistent-dir/out.safetensors", &e), ERR_IO);
    assert_non_null(strstr(e.msg, "/nonexistent-dir/out.safetensors"));
    assert_false(file_exists("/nonexistent-dir/out.safetensors.tmp"));
    st_writer_free(&w);
}

// A file image: 8-byte length + header (padded to 8 with spaces) + data.
static size_t make_st(unsigned char *buf, const char *header, const void *data, size_t data_len) {
    size_t h = strlen(header), padded = (h + 7) / 8 * 8;
    uint64_t n = padded;
    memcpy(buf, &n, 8);
    memcpy(buf + 8, header, h);
    memset(buf + 8 + h, ' ', padded - h);
    if (data_len) memcpy(buf + 8 + padded, data, data_len);
    return 8 + padded + data_len;
}

static void expect_st_error(const unsigned char *buf, size_t n, int code, const char *needle1, const char *needle2) {
    WeightFile *f = NULL;
    Err e = {0};
    int rc = weights_open_mem(&f, buf, n, "bad.safetensors", &e);
    if (rc != code || !strstr(e.msg, "bad.safetensors") || (needle1 && !strstr(e.msg, needle1)) || (needle2 && !strstr(e.msg, needle2))) {
        print_error("expected %s with '%s' '%s', got %s: %s\n", err_name(code), needle1 ? needle1 : "", needle2 ? needle2 : "",
                    err_name(rc), e.msg);
        fail();
    }
    assert_null(f);
}

static void test_errors(void **state) {
    static unsigned char b[4096];
    static const float d4[4] = {1, 2, 3, 4};
    // header, bytes of d4 after it, the error and two parts of its message
    static const struct {
        const char *header;
        size_t data_len;
        int code;
        const char *part1, *part2;
    } cases[] = {
        {"{\"w\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, ERR_DTYPE, "'w'", "unknown dtype 'F33'"},
        {"{\"w\":{\"dtype\":\"U16\",\"shape\":[4],\"data_offsets\":[0,8]}}", 8, ERR_DTYPE, "'w'", "U16 not supported"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, ERR_FORMAT, "'w'", "appears twice"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, ERR_FORMAT, "'a' and 'b' overlap", NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, ERR_FORMAT, "'a'", "unused bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 12, ERR_FORMAT, "'a'", "outside the data section"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", 16, ERR_FORMAT, "'a'", "need 12 bytes, data_offsets span 16"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}", 16, ERR_FORMAT, "cover 12 bytes of a 16-byte data section", NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,4]}}", 4, ERR_FORMAT, "'a'", "overflows"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, ERR_FORMAT, "'a'", "not a non-negative integer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, ERR_FORMAT, "'a'", "data_offsets"},
        {"{\"__metadata__\":{\"k\":1}}", 0, ERR_FORMAT, "metadata 'k'", "not a string"},
        {"{\"a\":", 0, ERR_FORMAT, "not a JSON object", NULL},
        {"{} x", 0, ERR_FORMAT, "after its JSON object", NULL},
        {"{\"\xff\":1}", 0, ERR_FORMAT, "UTF-8", NULL},
    };
    size_t n;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        n = make_st(b, cases[i].header, d4, cases[i].data_len);
        expect_st_error(b, n, cases[i].code, cases[i].part1, cases[i].part2);
    }
    // header length past the end of the file, and past the 100 MB limit
    n = make_st(b, "{}", NULL, 0);
    uint64_t big = 1000;
    memcpy(b, &big, 8);
    expect_st_error(b, n, ERR_FORMAT, "header length 1000 runs past the end", NULL);
    big = (uint64_t)1 << 40;
    memcpy(b, &big, 8);
    b[8] = '{';
    expect_st_error(b, n, ERR_FORMAT, "exceeds the 100 MB limit", NULL);
    // truncations of the reference file
    unsigned char *ref;
    Err e = {0};
    assert_int_equal(file_read_all(test_data_path("ckpt/ref.safetensors"), &ref, &n, &e), 0);
    size_t cuts[] = {9, 16, 100, n / 2, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) expect_st_error(ref, cuts[i], ERR_FORMAT, NULL, NULL);
    StFile sf;
    e = (Err){0};
    assert_int_equal(st_open_mem(&sf, ref, 5, "short.safetensors", &e), ERR_FORMAT);
    assert_non_null(strstr(e.msg, "too short"));
    free(ref);
    // an empty file and a NaN weight
    e = (Err){0};
    n = make_st(b, "{}", NULL, 0);
    WeightFile *f;
    assert_int_equal(weights_open_mem(&f, b, n, "empty.safetensors", &e), 0);
    assert_int_equal(weights_count(f), 0);
    weights_close(f);
    float nanv[3] = {1.0f, NAN, 2.0f};
    n = make_st(b, "{\"layer.w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}", nanv, 12);
    assert_int_equal(weights_open_mem(&f, b, n, "nan.safetensors", &e), 0);
    float out[3];
    assert_int_equal(weights_read_f32(f, "layer.w", out, 1, (int[]){3}, &e), ERR_VALUE);
    assert_non_null(strstr(e.msg, "'layer.w'"));
    assert_non_null(strstr(e.msg, "element 1 is NaN"));
    weights_close(f);
}

// The format comes from the bytes, not the name.
static void test_format_by_magic(void **state) {
    unsigned char *buf;
    size_t n;
    Err e = {0};
    char p1[256], p2[256];
    tmp_path(p1, sizeof p1, "really_safetensors.ckpt");
    tmp_path(p2, sizeof p2, "really_torch.safetensors");
    assert_int_equal(file_read_all(test_data_path("ckpt/ref.safetensors"), &buf, &n, &e), 0);
    FILE *fp = fopen(p1, "wb");
    fwrite(buf, 1, n, fp);
    fclose(fp);
    free(buf);
    assert_int_equal(file_read_all(test_data_path("ckpt/views.ckpt"), &buf, &n, &e), 0);
    fp = fopen(p2, "wb");
    fwrite(buf, 1, n, fp);
    fclose(fp);
    free(buf);
    WeightFile *f;
    assert_int_equal(weights_open(&f, p1, &e), 0);
    assert_string_equal(weights_format(f), "safetensors");
    weights_close(f);
    assert_int_equal(weights_open(&f, p2, &e), 0);
    assert_string_equal(weights_format(f), "pytorch");
    weights_close(f);
    unlink(p1);
    unlink(p2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_reference),
        cmocka_unit_test(test_writer_matches_reference),
        cmocka_unit_test(test_round_trip_all_dtypes),
        cmocka_unit_test(test_writer_io_error),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_format_by_magic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
