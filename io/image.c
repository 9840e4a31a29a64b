/* image.c: PNG writing through libpng into an AtomicFile, and the make_grid layout. */
#include "io/image.h"

#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

#include "io/fileio.h"

uint8_t image_to_u8(float x) {
    if (!(x > 0.0f)) return 0;  // also NaN
    if (x >= 1.0f) return 255;
    return (uint8_t)roundf(x * 255.0f);
}

static int check_dims(const char *what, int C, int H, int W, Err *e) {
    if (C != 1 && C != 3) return err_set(e, ERR_SHAPE, "%s: expected 1 or 3 channels, found %d", what, C);
    if (H < 1 || W < 1 || H > IMAGE_MAX_DIM || W > IMAGE_MAX_DIM)
        return err_set(e, ERR_SHAPE, "%s: expected an image of 1..%d x 1..%d pixels, found %d x %d", what,
                       IMAGE_MAX_DIM, IMAGE_MAX_DIM, H, W);
    return 0;
}

// libpng reports through these: the message is kept, control returns to the setjmp.
typedef struct {
    char msg[200];
} PngErr;

static void on_png_error(png_structp png, png_const_charp msg) {
    PngErr *pe = png_get_error_ptr(png);
    snprintf(pe->msg, sizeof pe->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp msg) {}  // library code never prints

static void on_png_write(png_structp png, png_bytep data, size_t n) { atomic_write(png_get_io_ptr(png), data, n); }
static void on_png_flush(png_structp png) {}  // atomic_commit flushes and fsyncs

// One row of the image to write: y's W * C interleaved bytes, from the caller's pixels or
// made in scratch (W * C bytes).
typedef const uint8_t *(*RowFn)(int y, uint8_t *scratch, const void *user);

// The PNG of H rows of W pixels of C channels (1: gray, 3: RGB), written to path atomically.
// fast: zlib level 1 and the Up filter on every row instead of libpng's defaults (level 6,
// the filter chosen per row), for drawings: on effdm plot's 1200x800 curves 30 ms instead of
// 50 ms with level 1 alone (70 ms with cairo's own writer), 2% larger.
static int write_rows(const char *path, int C, int H, int W, int fast, RowFn row_of, const void *user, Err *e) {
    int r = check_dims(path, C, H, W, e);
    if (r) return r;
    size_t row_bytes;
    if (!size_mul_ok((size_t)W, (size_t)C, &row_bytes)) return err_set(e, ERR_SHAPE, "%s: image too large", path);
    uint8_t *row = malloc(row_bytes);
    if (!row) return err_set(e, ERR_NOMEM, "%s: cannot allocate a row of %zu bytes", path, row_bytes);
    // On the heap: libpng longjmps out of png_write_row, and a local changed since setjmp
    // (f's failure flag) would be indeterminate afterwards.
    AtomicFile *f = malloc(sizeof *f);
    if (!f) {
        free(row);
        return err_set(e, ERR_NOMEM, "%s: out of memory", path);
    }
    if ((r = atomic_open(f, path, e))) {
        free(f);
        free(row);
        return r;
    }
    PngErr pe = {{0}};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &pe, on_png_error, on_png_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, &info);
        atomic_abort(f);
        free(f);
        free(row);
        return err_set(e, ERR_NOMEM, "%s: cannot create the PNG writer", path);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        atomic_abort(f);
        free(f);
        free(row);
        return err_set(e, ERR_IO, "%s: PNG encoding failed: %s", path, pe.msg);
    }
    png_set_write_fn(png, f, on_png_write, on_png_flush);
    png_set_IHDR(png, info, (png_uint_32)W, (png_uint_32)H, 8, C == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (fast) {  // drawings: mostly flat areas and horizontal runs
        png_set_compression_level(png, 1);
        png_set_filter(png, 0, PNG_FILTER_UP);
    }
    png_write_info(png, info);
    for (int y = 0; y < H; y++) png_write_row(png, (png_bytep)row_of(y, row, user));
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(row);
    r = atomic_commit(f, e);
    free(f);
    return r;
}

typedef struct {
    const float *x;
    int C, H, W;
} FloatImage;

// planar CHW floats -> an interleaved row (R, G, B, R, G, B, ...)
static const uint8_t *float_row(int y, uint8_t *row, const void *user) {
    const FloatImage *im = user;
    size_t plane = (size_t)im->H * (size_t)im->W;  // fits: H, W <= IMAGE_MAX_DIM and the caller holds C * plane floats
    for (int xx = 0; xx < im->W; xx++)
        for (int c = 0; c < im->C; c++)
            row[(size_t)xx * im->C + c] = image_to_u8(im->x[(size_t)c * plane + (size_t)y * im->W + xx]);
    return row;
}

int image_write_png(const char *path, const float *x, int C, int H, int W, Err *e) {
    FloatImage im = {x, C, H, W};
    return write_rows(path, C, H, W, 0, float_row, &im, e);
}

typedef struct {
    const uint8_t *pix;
    size_t stride;
} ByteImage;

static const uint8_t *byte_row(int y, uint8_t *scratch, const void *user) {
    const ByteImage *im = user;
    return im->pix + (size_t)y * im->stride;
}

int image_write_png_u8(const char *path, const uint8_t *pix, int C, int H, int W, size_t stride, int fast, Err *e) {
    ByteImage im = {pix, stride};
    return write_rows(path, C, H, W, fast, byte_row, &im, e);
}

int image_grid_size(int N, int H, int W, int per_row, int *grid_h, int *grid_w, Err *e) {
    if (N < 1 || per_row < 1)
        return err_set(e, ERR_SHAPE, "image grid: expected at least 1 image and 1 per row, found %d and %d", N,
                       per_row);
    if (H < 1 || W < 1 || H > IMAGE_MAX_DIM || W > IMAGE_MAX_DIM)
        return err_set(e, ERR_SHAPE, "image grid: expected images of 1..%d pixels a side, found %d x %d",
                       IMAGE_MAX_DIM, H, W);
    if (N == 1) {  // make_grid returns a single image as it is
        *grid_h = H;
        *grid_w = W;
        return 0;
    }
    long long ncol = per_row < N ? per_row : N;
    long long nrow = (N + ncol - 1) / ncol;
    long long gh = nrow * (H + IMAGE_GRID_PAD) + IMAGE_GRID_PAD;
    long long gw = ncol * (W + IMAGE_GRID_PAD) + IMAGE_GRID_PAD;
    if (gh > IMAGE_MAX_DIM || gw > IMAGE_MAX_DIM)
        return err_set(e, ERR_SHAPE, "image grid: %lld x %lld pixels, more than %d a side", gh, gw, IMAGE_MAX_DIM);
    *grid_h = (int)gh;
    *grid_w = (int)gw;
    return 0;
}

int image_grid(float *out, const float *x, int N, int C, int H, int W, int per_row, Err *e) {
    int gh, gw;
    if (image_grid_size(N, H, W, per_row, &gh, &gw, e)) return ERR_SHAPE;
    if (C < 1) return err_set(e, ERR_SHAPE, "image grid: expected at least 1 channel, found %d", C);
    size_t plane = (size_t)H * W, gplane = (size_t)gh * gw;
    if (N == 1) {
        memcpy(out, x, (size_t)C * plane * sizeof *out);
        return 0;
    }
    memset(out, 0, (size_t)C * gplane * sizeof *out);  // pad_value 0
    int ncol = per_row < N ? per_row : N;
    for (int k = 0; k < N; k++) {
        size_t top = (size_t)(k / ncol) * (H + IMAGE_GRID_PAD) + IMAGE_GRID_PAD;
        size_t left = (size_t)(k % ncol) * (W + IMAGE_GRID_PAD) + IMAGE_GRID_PAD;
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                memcpy(out + (size_t)c * gplane + (top + y) * gw + left,
                       x + ((size_t)k * C + c) * plane + (size_t)y * W, (size_t)W * sizeof *out);
    }
    return 0;
}

int image_write_grid(const char *path, const float *x, int N, int C, int H, int W, int per_row, Err *e) {
    int gh, gw;
    int r = check_dims(path, C, H, W, e);
    if (r) return r;
    if ((r = image_grid_size(N, H, W, per_row, &gh, &gw, e))) {
        if (e) err_prefix(e, "%s", path);
        return r;
    }
    size_t n;
    if (!size_mul_ok((size_t)gh * (size_t)gw, (size_t)C * sizeof(float), &n))
        return err_set(e, ERR_SHAPE, "%s: grid too large", path);
    float *g = malloc(n);
    if (!g) return err_set(e, ERR_NOMEM, "%s: cannot allocate %zu bytes for the grid", path, n);
    r = image_grid(g, x, N, C, H, W, per_row, e);
    if (!r) r = image_write_png(path, g, C, gh, gw, e);
    free(g);
    return r;
}
