/* test_eval_io.c: the evaluation inputs: idx files (Fashion-MNIST, plain and gzip'ed,
   and their error paths) and image folders (decoding, channel conversion, sorted
   recursive listing with labels from class folders). */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <math.h>

#include "test_png_write.h"

#include "io/fileio.h"
#include "io/idx.h"
#include "io/image_read.h"

#define FMNIST_DIR "/usr/share/datasets/fashion-mnist"  // Debian dataset-fashion-mnist (setup.sh)

static char tmpdir[256];

static int setup_tmp(void **state) { return test_tmpdir_make(tmpdir, sizeof tmpdir, "eval_io"); }

static int teardown_tmp(void **state) { return test_tmpdir_remove(tmpdir); }

static const char *tmp_path(const char *name) { return test_path_in(tmpdir, name); }

static void write_file(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, n, fp), n);
    assert_int_equal(fclose(fp), 0);
}

// The published Fashion-MNIST test set: 10000 images of 28x28, 1000 per class.
static void test_idx_fashion_mnist(void **state) {
    IdxArray im, lab;
    Err e = {0};
    assert_int_equal(idx_read(FMNIST_DIR "/t10k-images-idx3-ubyte.gz", &im, &e), 0);
    assert_int_equal(im.ndim, 3);
    assert_int_equal(im.dims[0], 10000);
    assert_int_equal(im.dims[1], 28);
    assert_int_equal(im.dims[2], 28);
    assert_int_equal(im.n, 10000 * 28 * 28);
    assert_int_equal(idx_read(FMNIST_DIR "/t10k-labels-idx1-ubyte.gz", &lab, &e), 0);
    assert_int_equal(lab.ndim, 1);
    assert_int_equal(lab.dims[0], 10000);
    int count[10] = {0};
    for (size_t i = 0; i < lab.n; i++) {
        assert_true(lab.data[i] < 10);
        count[lab.data[i]]++;
    }
    for (int c = 0; c < 10; c++) assert_int_equal(count[c], 1000);
    idx_free(&im);
    idx_free(&lab);
}

static void test_idx_plain_and_errors(void **state) {
    // (2, 3) bytes 0..5
    unsigned char good[4 + 8 + 6] = {0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 0, 1, 2, 3, 4, 5};
    IdxArray a;
    Err e = {0};
    write_file(tmp_path("good.idx"), good, sizeof good);
    assert_int_equal(idx_read(tmp_path("good.idx"), &a, &e), 0);
    assert_int_equal(a.ndim, 2);
    assert_int_equal(a.dims[0], 2);
    assert_int_equal(a.dims[1], 3);
    for (int i = 0; i < 6; i++) assert_int_equal(a.data[i], i);
    idx_free(&a);

    // the same, gzip'ed
    gzFile gz = gzopen(tmp_path("good.idx.gz"), "wb");
    assert_non_null(gz);
    assert_int_equal(gzwrite(gz, good, sizeof good), (int)sizeof good);
    assert_int_equal(gzclose(gz), Z_OK);
    assert_int_equal(idx_read(tmp_path("good.idx.gz"), &a, &e), 0);
    assert_int_equal(a.n, 6);
    assert_int_equal(a.data[5], 5);
    idx_free(&a);

    struct {
        const char *what;
        size_t cut;         // bytes kept (0: all)
        int byte, value;    // one byte changed (-1: none)
        int code;
        const char *msg;    // part of the message
    } cases[] = {
        {"truncated data", sizeof good - 1, -1, 0, ERR_FORMAT, "truncated"},
        {"truncated header", 7, -1, 0, ERR_FORMAT, "header"},
        {"bad magic", 0, 1, 0x08, ERR_FORMAT, "magic"},
        {"float type", 0, 2, 0x0D, ERR_UNSUPPORTED, "0x0d"},
        {"zero dims", 0, 3, 0, ERR_FORMAT, "dimensions"},
        {"zero size", 0, 11, 0, ERR_FORMAT, "dimension 1"},
        {"trailing", sizeof good, 7, 1, ERR_FORMAT, "trailing"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned char bad[sizeof good];
        memcpy(bad, good, sizeof good);
        if (cases[i].byte >= 0) bad[cases[i].byte] = (unsigned char)cases[i].value;
        size_t n = cases[i].cut ? cases[i].cut : sizeof good;
        write_file(tmp_path("bad.idx"), bad, n);
        Err e2 = {0};
        int rc = idx_read(tmp_path("bad.idx"), &a, &e2);
        if (rc != cases[i].code || !strstr(e2.msg, cases[i].msg) || !strstr(e2.msg, "bad.idx"))
            print_error("case %s: code %d msg '%s'\n", cases[i].what, rc, e2.msg);
        assert_int_equal(rc, cases[i].code);
        assert_non_null(strstr(e2.msg, cases[i].msg));
        assert_non_null(strstr(e2.msg, "bad.idx"));  // the message names the file
        assert_null(a.data);
    }

    // a gzip stream cut in the middle
    unsigned char *gzbuf;
    size_t gzsize;
    assert_int_equal(file_read_all(tmp_path("good.idx.gz"), &gzbuf, &gzsize, &e), 0);
    write_file(tmp_path("cut.idx.gz"), gzbuf, gzsize - 6);
    free(gzbuf);
    Err e3 = {0};
    assert_int_equal(idx_read(tmp_path("cut.idx.gz"), &a, &e3), ERR_FORMAT);
    assert_non_null(strstr(e3.msg, "cut.idx.gz"));
    Err e4 = {0};
    assert_int_equal(idx_read(tmp_path("missing.idx"), &a, &e4), ERR_IO);
    assert_non_null(strstr(e4.msg, "missing.idx"));
}

// RGB and gray PNGs (and a JPEG) decoded to (C, H, W) floats with either channel count.
static void test_image_decode(void **state) {
    // 3 wide, 2 high, RGB interleaved
    unsigned char rgb[2 * 3 * 3] = {255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30, 255, 255, 255, 0, 0, 0};
    assert_true(stbi_write_png(tmp_path("rgb.png"), 3, 2, 3, rgb, 3 * 3));
    LoadedImage im;
    Err e = {0};
    assert_int_equal(image_read(tmp_path("rgb.png"), 3, &im, &e), 0);
    assert_int_equal(im.C, 3);
    assert_int_equal(im.H, 2);
    assert_int_equal(im.W, 3);
    for (int c = 0; c < 3; c++)
        for (int p = 0; p < 6; p++) assert_true(im.data[c * 6 + p] == rgb[p * 3 + c] / 255.0f);
    image_free(&im);
    assert_int_equal(image_read(tmp_path("rgb.png"), 1, &im, &e), 0);
    assert_int_equal(im.C, 1);
    for (int p = 0; p < 6; p++) {
        int y = (77 * rgb[p * 3] + 150 * rgb[p * 3 + 1] + 29 * rgb[p * 3 + 2]) >> 8;
        assert_true(im.data[p] == y / 255.0f);
    }
    image_free(&im);

    unsigned char gray[4] = {0, 64, 128, 255};
    assert_true(stbi_write_png(tmp_path("gray.png"), 2, 2, 1, gray, 2));
    assert_int_equal(image_read(tmp_path("gray.png"), 3, &im, &e), 0);
    for (int c = 0; c < 3; c++)
        for (int p = 0; p < 4; p++) assert_true(im.data[c * 4 + p] == gray[p] / 255.0f);
    image_free(&im);

    // an 8x8 JPEG of gray 200 (quality 100, made with stb_image_write; not written here
    // because stb's JPEG encoder trips UBSan's shift check)
    assert_int_equal(image_read(test_data_path("eval/flat200_8x8.jpg"), 1, &im, &e), 0);
    for (int p = 0; p < 64; p++) assert_true(fabsf(im.data[p] - 200 / 255.0f) <= 2 / 255.0f);
    image_free(&im);

    write_file(tmp_path("broken.png"), "\x89PNG\r\n\x1a\n\0\0", 10);
    Err e2 = {0};
    assert_int_equal(image_read(tmp_path("broken.png"), 1, &im, &e2), ERR_FORMAT);
    assert_non_null(strstr(e2.msg, "broken.png"));
    assert_null(im.data);
}

// samples/{grid.png, 0/, 2/, 10/, misc/, .hidden/}: sorted with numeric folder order,
// grid.png, dot files and non-images skipped, labels from the numeric folder names.
static void test_image_list(void **state) {
    unsigned char px[4] = {1, 2, 3, 4};
    const char *dirs[] = {"s", "s/0", "s/2", "s/10", "s/misc", "s/.hidden"};
    for (int i = 0; i < 6; i++) assert_int_equal(mkdir(tmp_path(dirs[i]), 0700), 0);
    const char *files[] = {"s/grid.png", "s/top.png", "s/0/00001.png", "s/0/00000.png", "s/2/00000.PNG",
                           "s/10/00000.jpg", "s/10/00002.png", "s/misc/a.png", "s/.hidden/x.png",
                           "s/0/notes.txt", "s/0/.x.png", "s/10/grid.png"};
    for (int i = 0; i < 12; i++) assert_true(stbi_write_png(tmp_path(files[i]), 2, 2, 1, px, 2));
    ImageList l;
    Err e = {0};
    assert_int_equal(image_list(tmp_path("s"), &l, &e), 0);
    const char *want[] = {"s/0/00000.png", "s/0/00001.png", "s/2/00000.PNG", "s/10/00000.jpg", "s/10/00002.png",
                          "s/misc/a.png", "s/top.png"};
    int want_label[] = {0, 0, 2, 10, 10, -1, -1};
    assert_int_equal(l.n, 7);
    for (int i = 0; i < 7; i++) {
        assert_string_equal(l.paths[i], tmp_path(want[i]));
        assert_int_equal(l.labels[i], want_label[i]);
    }
    image_list_free(&l);
    Err e2 = {0};
    assert_int_equal(image_list(tmp_path("s/.hidden/none"), &l, &e2), ERR_IO);
    assert_int_equal(mkdir(tmp_path("empty"), 0700), 0);
    Err e3 = {0};
    assert_int_equal(image_list(tmp_path("empty"), &l, &e3), ERR_VALUE);
    assert_non_null(strstr(e3.msg, "no images"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idx_fashion_mnist),
        cmocka_unit_test(test_idx_plain_and_errors),
        cmocka_unit_test(test_image_decode),
        cmocka_unit_test(test_image_list),
    };
    return cmocka_run_group_tests_name("eval_io", tests, setup_tmp, teardown_tmp);
}
