#include "io/fileio.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int file_read_all(const char *path, unsigned char **buf, size_t *size, Err *e) {
    *buf = NULL;
    *size = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) return err_set(e, ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(fp);
        return err_set(e, ERR_IO, "%s: not a regular file", path);
    }
    size_t n = (size_t)st.st_size;
    unsigned char *b = malloc(n ? n : 1);
    if (!b) {
        fclose(fp);
        return err_set(e, ERR_NOMEM, "%s: cannot allocate %zu bytes", path, n);
    }
    if (fread(b, 1, n, fp) != n) {
        free(b);
        fclose(fp);
        return err_set(e, ERR_IO, "%s: read failed", path);
    }
    fclose(fp);
    *buf = b;
    *size = n;
    return 0;
}

int atomic_open(AtomicFile *f, const char *path, Err *e) {
    memset(f, 0, sizeof *f);
    if (strlen(path) >= sizeof f->path) return err_set(e, ERR_ARG, "%s: path too long", path);
    strcpy(f->path, path);
    snprintf(f->tmp, sizeof f->tmp, "%s.tmp", path);
    f->fp = fopen(f->tmp, "wb");
    if (!f->fp) return err_set(e, ERR_IO, "%s: cannot create: %s", f->tmp, strerror(errno));
    return 0;
}

void atomic_write(AtomicFile *f, const void *data, size_t n) {
    if (f->failed || !f->fp || n == 0) return;
    if (fwrite(data, 1, n, f->fp) != n) f->failed = 1;
}

int atomic_commit(AtomicFile *f, Err *e) {
    if (!f->fp) return err_set(e, ERR_IO, "%s: not open", f->path);
    int bad = f->failed || fflush(f->fp) != 0 || fsync(fileno(f->fp)) != 0;
    int saved = errno;
    if (fclose(f->fp) != 0) bad = 1;
    f->fp = NULL;
    if (bad) {
        remove(f->tmp);
        return err_set(e, ERR_IO, "%s: write failed: %s", f->tmp, strerror(saved));
    }
    if (rename(f->tmp, f->path) != 0) {
        saved = errno;
        remove(f->tmp);
        return err_set(e, ERR_IO, "%s: cannot rename into place: %s", f->path, strerror(saved));
    }
    return 0;
}

void atomic_abort(AtomicFile *f) {
    if (f->fp) fclose(f->fp);
    f->fp = NULL;
    if (f->tmp[0]) remove(f->tmp);
}
