/* image_read.c: stb_image decoding and folder listing (see image_read.h). */
#include "io/image_read.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_NO_STDIO  // we read files ourselves: one code path for files and fuzzing
#define STBI_MAX_DIMENSIONS IMAGE_READ_MAX_DIM
#define STB_IMAGE_STATIC  // stbi_* stay private to this file: no clash with other users of stb
#define STB_IMAGE_IMPLEMENTATION
// stb_image is third-party code compiled into this file only; its warnings (unused static
// entry points, GCC's false maybe-uninitialized after inlining) stay off for the whole file,
// since GCC reports the first kind at the end of the translation unit.
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmisleading-indentation"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <stb/stb_image.h>

#include "io/fileio.h"

// Debian's stb_image (2.27) writes past its Huffman tables when a JPEG DHT segment's 16
// code counts sum past 256 (later stb releases reject it: "bad DHT header"). We walk the
// JPEG's marker segments first, including DHTs between the scans of progressive files,
// and refuse such a table before stb sees it. Returns 0 when the file is not a JPEG or
// every DHT is sane.
static int jpeg_check_dht(const unsigned char *b, size_t n, const char *name, Err *e) {
    // stb's marker reader skips 0xFF fill bytes, even before SOI
    size_t i = 0;
    while (i < n && b[i] == 0xFF) i++;
    if (i == 0 || i >= n || b[i] != 0xD8) return 0;
    i++;
    while (i + 1 < n) {
        if (b[i] != 0xFF) {
            i++;  // entropy-coded data after a scan header: look for the next marker
            continue;
        }
        unsigned char m = b[i + 1];
        if (m == 0xFF) { i++; continue; }                                          // fill byte
        if (m == 0x00 || (m >= 0xD0 && m <= 0xD7) || m == 0x01) { i += 2; continue; }  // stuffing, RSTn, TEM
        if (m == 0xD9) return 0;                                                   // end of image
        if (i + 4 > n) return 0;  // truncated: stb reports it
        size_t len = ((size_t)b[i + 2] << 8) | b[i + 3], end = i + 2 + len;
        if (len < 2) return 0;  // stb skips to the end and reports the missing marker
        if (end > n) end = n;   // stb reads past the end as zeros: check what is there
        if (m == 0xC4) {
            size_t k = i + 4;
            while (k < end) {
                size_t sum = 0;
                // stb reads all 16 counts even when the segment claims fewer bytes
                for (size_t c = k + 1; c <= k + 16 && c < n; c++) sum += b[c];
                if (sum > 256)
                    return err_set(e, ERR_FORMAT, "%s: bad JPEG Huffman table: %zu codes (at most 256)", name, sum);
                k += 17 + sum;
            }
        }
        i = end;
    }
    return 0;
}

// stb_image grows its IDAT buffer to a chunk's declared length before checking that the
// bytes exist, so a 140-byte PNG can make it allocate 2 GiB. Every chunk must lie inside
// the file: then stb's buffers stay within a small multiple of the file size.
static int png_check_chunks(const unsigned char *b, size_t n, const char *name, Err *e) {
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    if (n < 8 || memcmp(b, sig, 8) != 0) return 0;
    size_t i = 8;
    while (i + 8 <= n) {
        size_t len = ((size_t)b[i] << 24) | ((size_t)b[i + 1] << 16) | ((size_t)b[i + 2] << 8) | b[i + 3];
        if (len > n - i - 8 || n - i - 8 - len < 4)
            return err_set(e, ERR_FORMAT, "%s: PNG chunk '%.4s' at byte %zu claims %zu bytes past the end of the file",
                           name, (const char *)b + i + 4, i, len);
        if (!memcmp(b + i + 4, "IEND", 4)) return 0;
        i += 12 + len;
    }
    return 0;  // no IEND: stb reports it
}

int image_read_mem(const unsigned char *buf, size_t size, const char *name, int channels, LoadedImage *img, Err *e) {
    memset(img, 0, sizeof *img);
    if (jpeg_check_dht(buf, size, name, e) || png_check_chunks(buf, size, name, e)) return e ? e->code : ERR_FORMAT;
    if (channels != 1 && channels != 3)
        return err_set(e, ERR_VALUE, "%s: %d channels asked for, expected 1 or 3", name, channels);
    if (size > 0x7fffffff) return err_set(e, ERR_FORMAT, "%s: image file larger than 2 GiB", name);
    int w = 0, h = 0, file_c = 0;
    unsigned char *px = stbi_load_from_memory(buf, (int)size, &w, &h, &file_c, channels);
    if (!px) return err_set(e, ERR_FORMAT, "%s: cannot decode image: %s", name, stbi_failure_reason());
    size_t hw = (size_t)w * (size_t)h;  // stb checked w, h <= IMAGE_READ_MAX_DIM
    img->data = malloc(hw * channels * sizeof(float));
    if (!img->data) {
        stbi_image_free(px);
        return err_set(e, ERR_NOMEM, "%s: cannot allocate a %dx%d image", name, w, h);
    }
    // stb gives interleaved (H, W, C) bytes; we want planes (C, H, W)
    for (int c = 0; c < channels; c++)
        for (size_t i = 0; i < hw; i++) img->data[c * hw + i] = px[i * channels + c] / 255.0f;
    stbi_image_free(px);
    img->C = channels;
    img->H = h;
    img->W = w;
    return 0;
}

int image_read(const char *path, int channels, LoadedImage *img, Err *e) {
    memset(img, 0, sizeof *img);
    unsigned char *buf;
    size_t size;
    if (file_read_all(path, &buf, &size, e)) return e ? e->code : ERR_IO;
    int rc = image_read_mem(buf, size, path, channels, img, e);
    free(buf);
    return rc;
}

void image_free(LoadedImage *img) {
    free(img->data);
    memset(img, 0, sizeof *img);
}

/* ---- listing ------------------------------------------------------------------ */

// strcmp, except that runs of digits compare as numbers ("2" < "10"; "007" == "7" falls
// back to the shorter run first, then strcmp, so the order is total).
static int natural_cmp(const char *a, const char *b) {
    const char *a0 = a, *b0 = b;
    while (*a && *b) {
        if (isdigit((unsigned char)*a) && isdigit((unsigned char)*b)) {
            while (*a == '0') a++;
            while (*b == '0') b++;
            size_t la = 0, lb = 0;
            while (isdigit((unsigned char)a[la])) la++;
            while (isdigit((unsigned char)b[lb])) lb++;
            if (la != lb) return la < lb ? -1 : 1;
            int c = strncmp(a, b, la);
            if (c) return c;
            a += la;
            b += lb;
        } else {
            if (*a != *b) return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
            a++;
            b++;
        }
    }
    if (*a || *b) return *a ? 1 : -1;
    return strcmp(a0, b0);
}

static int cmp_names(const void *x, const void *y) {
    return natural_cmp(*(const char *const *)x, *(const char *const *)y);
}

static int has_image_ext(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot) return 0;
    return !strcasecmp(dot, ".png") || !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg");
}

// Decimal folder name -> label; -1 if not a plain number below 10^9.
static int label_of(const char *folder) {
    size_t n = strlen(folder);
    if (n == 0 || n > 9) return -1;
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)folder[i])) return -1;
    return atoi(folder);
}

typedef struct {
    ImageList *l;
    size_t cap;
} ListBuilder;

static int list_push(ListBuilder *b, const char *path, int label, Err *e) {
    ImageList *l = b->l;
    if (l->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        char **p = realloc(l->paths, cap * sizeof *p);
        if (!p) return err_set(e, ERR_NOMEM, "listing images: out of memory at %zu files", l->n);
        l->paths = p;
        int *lab = realloc(l->labels, cap * sizeof *lab);
        if (!lab) return err_set(e, ERR_NOMEM, "listing images: out of memory at %zu files", l->n);
        l->labels = lab;
        b->cap = cap;
    }
    l->paths[l->n] = strdup(path);
    if (!l->paths[l->n]) return err_set(e, ERR_NOMEM, "listing images: out of memory at %zu files", l->n);
    l->labels[l->n] = label;
    l->n++;
    return 0;
}

// Lists dir (depth levels below the root); label applies to the files directly in dir.
static int list_dir(ListBuilder *b, const char *dir, int depth, int label, Err *e) {
    if (depth > IMAGE_READ_MAX_DEPTH)
        return err_set(e, ERR_VALUE, "%s: folders nested deeper than %d levels (a symlink loop?)", dir, IMAGE_READ_MAX_DEPTH);
    DIR *d = opendir(dir);
    if (!d) return err_set(e, ERR_IO, "%s: cannot open folder: %s", dir, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nn = realloc(names, cap * sizeof *nn);
            if (!nn) {
                rc = err_set(e, ERR_NOMEM, "%s: out of memory listing the folder", dir);
                goto done;
            }
            names = nn;
        }
        if (!(names[n] = strdup(de->d_name))) {
            rc = err_set(e, ERR_NOMEM, "%s: out of memory listing the folder", dir);
            goto done;
        }
        n++;
    }
    if (n > 1) qsort(names, n, sizeof *names, cmp_names);
    for (size_t i = 0; i < n && !rc; i++) {
        size_t len = strlen(dir) + strlen(names[i]) + 2;
        char *path = malloc(len);
        if (!path) {
            rc = err_set(e, ERR_NOMEM, "%s: out of memory", dir);
            break;
        }
        snprintf(path, len, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", names[i]);
        struct stat st;
        if (stat(path, &st) != 0) {
            rc = err_set(e, ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        } else if (S_ISDIR(st.st_mode)) {
            rc = list_dir(b, path, depth + 1, label_of(names[i]), e);
        } else if (S_ISREG(st.st_mode) && has_image_ext(names[i]) && strcmp(names[i], "grid.png") != 0) {
            rc = list_push(b, path, label, e);
        }
        free(path);
    }
done:
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    closedir(d);
    return rc;
}

int image_list(const char *dir, ImageList *l, Err *e) {
    memset(l, 0, sizeof *l);
    ListBuilder b = {l, 0};
    int rc = list_dir(&b, dir, 0, -1, e);
    if (!rc && l->n == 0) rc = err_set(e, ERR_VALUE, "%s: no images (.png, .jpg, .jpeg) found", dir);
    if (rc) image_list_free(l);
    return rc;
}

void image_list_free(ImageList *l) {
    for (size_t i = 0; i < l->n; i++) free(l->paths[i]);
    free(l->paths);
    free(l->labels);
    memset(l, 0, sizeof *l);
}
