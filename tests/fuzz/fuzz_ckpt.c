/* fuzz_ckpt.c: .ckpt files from memory through weights_open_mem, then every listed tensor
   read (as float32 and raw). Two kinds of input:
   - a zip ("PK..."): the whole archive as given (zip directory, data.pkl, records);
   - anything else: taken as a data.pkl and wrapped into a torch-like archive whose
     storages "0".."7" hold 16 << key bytes. A mutated zip mostly fails data.pkl's CRC, so
     this is what drives fuzzed pickles into the tensor index (views vs storages) and the
     strided reads.
   Replay: build/fuzz_ckpt_replay FILE|DIR. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zip.h>

#include "io/weights.h"
#include "fuzz_weights.h"

static void add_stored(zip_t *za, const char *name, const void *data, size_t n) {
    zip_source_t *s = zip_source_buffer(za, data, n, 0);
    if (!s) return;
    zip_int64_t i = zip_file_add(za, name, s, ZIP_FL_OVERWRITE);
    if (i < 0) {
        zip_source_free(s);
        return;
    }
    zip_set_file_compression(za, (zip_uint64_t)i, ZIP_CM_STORE, 0);
}

// An archive of fz/data.pkl = pkl and fz/data/<k> (16 << k bytes, k < 8); malloc'ed, or NULL.
static unsigned char *wrap(const uint8_t *pkl, size_t n, size_t *out_n) {
    static unsigned char blob[16 << 7];
    for (size_t i = 0; i < sizeof blob; i++) blob[i] = (unsigned char)(i * 37 + 11);
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *src = zip_source_buffer_create(NULL, 0, 0, &ze);
    unsigned char *buf = NULL;
    if (!src) goto done;
    zip_source_keep(src);
    zip_t *za = zip_open_from_source(src, ZIP_TRUNCATE, &ze);
    if (!za) goto done;
    add_stored(za, "fz/data.pkl", pkl, n);
    for (int k = 0; k < 8; k++) {
        char name[32];
        snprintf(name, sizeof name, "fz/data/%d", k);
        add_stored(za, name, blob, (size_t)16 << k);
    }
    if (zip_close(za) != 0) {
        zip_discard(za);
        goto done;
    }
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_source_stat(src, &st) != 0 || zip_source_open(src) != 0) goto done;
    buf = malloc(st.size ? st.size : 1);
    if (buf && zip_source_read(src, buf, st.size) != (zip_int64_t)st.size) {
        free(buf);
        buf = NULL;
    }
    zip_source_close(src);
    *out_n = st.size;
done:
    if (src) zip_source_free(src);
    zip_error_fini(&ze);
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    WeightFile *f;
    Err e = {0};
    if (size >= 2 && data[0] == 'P' && data[1] == 'K') {
        if (weights_open_mem(&f, data, size, "fuzz.ckpt", &e) == 0) {
            fuzz_read_every_tensor(f);
            weights_close(f);
        }
        return 0;
    }
    size_t n = 0;
    unsigned char *zipped = wrap(data, size, &n);
    if (!zipped) return 0;
    if (weights_open_mem(&f, zipped, n, "fuzz.ckpt", &e) == 0) {
        fuzz_read_every_tensor(f);
        weights_close(f);
    }
    free(zipped);
    return 0;
}
