/* test_image.c: PNG output (io/image.h) read back with stb_image and compared with the
   rounding formula value = round(clamp(x, 0, 1) * 255) computed here; the grid layout against
   torchvision make_grid's (padding 2, pad value 0) written out from its definition; errors. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#include <stb/stb_image.h>
#pragma GCC diagnostic pop

#include "io/image.h"

// The reference: clamp to [0, 1], scale, round half away from zero; NaN is 0.
static int ref_u8(float x) {
    if (isnan(x)) return 0;
    float c = x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x);
    return (int)lroundf(c * 255.0f);
}

static unsigned char *read_png(const char *path, int *w, int *h, int *comp) {
    unsigned char *p = stbi_load(path, w, h, comp, 0);
    if (!p) print_error("stbi_load(%s): %s\n", path, stbi_failure_reason());
    assert_non_null(p);
    return p;
}

static void test_known_values(void **state) {
    // hand-computed: 0.5 * 255 = 127.5 -> 128 (half away from zero); 0.25 * 255 = 63.75 -> 64;
    // 0.1f * 255 is 25.5 in float -> 26
    assert_int_equal(image_to_u8(0.0f), 0);
    assert_int_equal(image_to_u8(1.0f), 255);
    assert_int_equal(image_to_u8(0.5f), 128);
    assert_int_equal(image_to_u8(0.25f), 64);
    assert_int_equal(image_to_u8(-3.0f), 0);
    assert_int_equal(image_to_u8(7.0f), 255);
    assert_int_equal(image_to_u8(NAN), 0);
    assert_int_equal(image_to_u8(INFINITY), 255);
    assert_int_equal(image_to_u8(-INFINITY), 0);
    assert_int_equal(image_to_u8(1.0f / 255.0f), 1);
    assert_int_equal(image_to_u8(0.1f), 26);
}

static void test_gray_png(void **state) {
    // every half step k / 510 plus values outside [0, 1] and NaN
    enum { H = 3, W = 200 };
    float x[H * W];
    for (int i = 0; i < H * W; i++) x[i] = (float)(i - 40) / 510.0f;
    x[0] = NAN;
    x[1] = -0.0f;
    x[2] = 1e30f;
    const char *path = "test_image_gray.png";
    Err e = {0};
    assert_int_equal(image_write_png(path, x, 1, H, W, &e), 0);
    assert_int_equal(access("test_image_gray.png.tmp", F_OK), -1);
    int w, h, comp;
    unsigned char *p = read_png(path, &w, &h, &comp);
    assert_int_equal(w, W);
    assert_int_equal(h, H);
    assert_int_equal(comp, 1);
    for (int i = 0; i < H * W; i++) {
        if (p[i] != ref_u8(x[i])) print_error("pixel %d: x %.9g: got %d, want %d\n", i, x[i], p[i], ref_u8(x[i]));
        assert_int_equal(p[i], ref_u8(x[i]));
    }
    assert_int_equal(p[0], 0);
    assert_int_equal(p[2], 255);
    stbi_image_free(p);
    remove(path);
}

static void test_rgb_png(void **state) {
    // planar CHW input, interleaved RGB in the file
    enum { C = 3, H = 5, W = 7 };
    float x[C * H * W];
    for (int c = 0; c < C; c++)
        for (int y = 0; y < H; y++)
            for (int i = 0; i < W; i++) x[(c * H + y) * W + i] = (float)(c * 0.3 + y * 0.05 + i * 0.013 - 0.1);
    const char *path = "test_image_rgb.png";
    Err e = {0};
    assert_int_equal(image_write_png(path, x, C, H, W, &e), 0);
    int w, h, comp;
    unsigned char *p = read_png(path, &w, &h, &comp);
    assert_int_equal(w, W);
    assert_int_equal(h, H);
    assert_int_equal(comp, 3);
    for (int y = 0; y < H; y++)
        for (int i = 0; i < W; i++)
            for (int c = 0; c < C; c++) assert_int_equal(p[(y * W + i) * 3 + c], ref_u8(x[(c * H + y) * W + i]));
    stbi_image_free(p);
    remove(path);
}

// make_grid(tensor, nrow=per_row, padding=2, pad_value=0), written out from its definition:
// xmaps = min(nrow, N), ymaps = ceil(N / xmaps), canvas (ymaps*(H+2)+2, xmaps*(W+2)+2) of 0,
// image k at y = k / xmaps, x = k % xmaps, rows y*(H+2)+2 .. +H, cols x*(W+2)+2 .. +W.
static float ref_grid_pixel(const float *imgs, int N, int C, int H, int W, int per_row, int c, int gy, int gx) {
    int xmaps = per_row < N ? per_row : N;
    int ry = (gy - 2) / (H + 2), oy = (gy - 2) % (H + 2);
    int rx = (gx - 2) / (W + 2), ox = (gx - 2) % (W + 2);
    if (gy < 2 || gx < 2 || oy >= H || ox >= W || rx >= xmaps) return 0.0f;
    int k = ry * xmaps + rx;
    if (k >= N) return 0.0f;
    return imgs[(((size_t)k * C + c) * H + oy) * W + ox];
}

static void check_grid(int N, int C, int H, int W, int per_row, int want_h, int want_w) {
    size_t n = (size_t)N * C * H * W;
    float *imgs = malloc(n * sizeof *imgs);
    for (size_t i = 0; i < n; i++) imgs[i] = 0.1f + 0.8f * (float)((i * 37) % 101) / 100.0f;  // never 0: pads show
    int gh = 0, gw = 0;
    Err e = {0};
    assert_int_equal(image_grid_size(N, H, W, per_row, &gh, &gw, &e), 0);
    assert_int_equal(gh, want_h);
    assert_int_equal(gw, want_w);
    float *g = malloc((size_t)C * gh * gw * sizeof *g);
    assert_int_equal(image_grid(g, imgs, N, C, H, W, per_row, &e), 0);
    for (int c = 0; c < C; c++)
        for (int y = 0; y < gh; y++)
            for (int x = 0; x < gw; x++) {
                float want = N == 1 ? imgs[((size_t)c * H + y) * W + x]
                                    : ref_grid_pixel(imgs, N, C, H, W, per_row, c, y, x);
                assert_true(g[((size_t)c * gh + y) * gw + x] == want);
            }
    // and through a PNG
    const char *path = "test_image_grid.png";
    assert_int_equal(image_write_grid(path, imgs, N, C, H, W, per_row, &e), 0);
    int w, h, comp;
    unsigned char *p = read_png(path, &w, &h, &comp);
    assert_int_equal(w, gw);
    assert_int_equal(h, gh);
    assert_int_equal(comp, C);
    for (int c = 0; c < C; c++)
        for (int y = 0; y < gh; y++)
            for (int x = 0; x < gw; x++)
                assert_int_equal(p[((size_t)y * gw + x) * C + c], ref_u8(g[((size_t)c * gh + y) * gw + x]));
    stbi_image_free(p);
    remove(path);
    free(g);
    free(imgs);
}

static void test_grid_layout(void **state) {
    // 5 images of 2 x 3, 2 per row: 3 rows; (3 * 4 + 2) x (2 * 5 + 2)
    check_grid(5, 1, 2, 3, 2, 14, 12);
    // 10 classes x 8 samples of 32 x 32 as the teacher's grid.png: 10 rows of 8
    check_grid(80, 1, 32, 32, 8, 10 * 34 + 2, 8 * 34 + 2);
    // fewer images than per_row: one row of N
    check_grid(3, 3, 4, 4, 8, 6 + 2, 3 * 6 + 2);
    // RGB, a partial last row
    check_grid(7, 3, 5, 6, 3, 3 * 7 + 2, 3 * 8 + 2);
    // one image: itself, no padding (make_grid returns it unchanged)
    check_grid(1, 3, 4, 5, 8, 4, 5);
}

static void test_errors(void **state) {
    float x[12] = {0};
    Err e = {0};
    assert_int_equal(image_write_png("test_image_bad.png", x, 2, 2, 3, &e), ERR_SHAPE);
    assert_non_null(strstr(e.msg, "test_image_bad.png: expected 1 or 3 channels, found 2"));
    assert_int_equal(access("test_image_bad.png", F_OK), -1);
    memset(&e, 0, sizeof e);
    assert_int_equal(image_write_png("test_image_bad.png", x, 1, 0, 3, &e), ERR_SHAPE);
    assert_non_null(strstr(e.msg, "test_image_bad.png"));
    memset(&e, 0, sizeof e);
    assert_int_equal(image_write_png("/nonexistent/dir/x.png", x, 1, 2, 3, &e), ERR_IO);
    assert_non_null(strstr(e.msg, "/nonexistent/dir/x.png"));
    memset(&e, 0, sizeof e);
    int gh, gw;
    assert_int_equal(image_grid_size(0, 2, 2, 8, &gh, &gw, &e), ERR_SHAPE);
    memset(&e, 0, sizeof e);
    assert_int_equal(image_write_grid("test_image_bad.png", x, 3, 1, 2, 2, 0, &e), ERR_SHAPE);
    assert_non_null(strstr(e.msg, "test_image_bad.png: image grid"));
    memset(&e, 0, sizeof e);
    assert_int_equal(image_grid_size(1000000, 100, 100, 1, &gh, &gw, &e), ERR_SHAPE);  // too tall
    assert_int_equal(access("test_image_bad.png", F_OK), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_values),
        cmocka_unit_test(test_gray_png),
        cmocka_unit_test(test_rgb_png),
        cmocka_unit_test(test_grid_layout),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests_name("image", tests, NULL, NULL);
}
