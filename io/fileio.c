#include "io/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
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
    if (fwrite(data, 1, n, f->fp) != n) {
        f->failed = 1;
        f->err_no = errno ? errno : EIO;
    }
}

// fsync of the folder holding path: a rename is durable only once its directory entry is.
// File systems that cannot sync a directory (EINVAL) are not an error.
static int sync_dir(const char *path) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = '\0';
    else if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return errno;
    int rc = fsync(fd) != 0 && errno != EINVAL ? errno : 0;
    close(fd);
    return rc;
}

int atomic_commit(AtomicFile *f, Err *e) {
    if (!f->fp) return err_set(e, ERR_IO, "%s: not open", f->path);
    // each errno is taken right after its call (a later call may change it)
    int err_no = f->failed ? f->err_no : 0;
    if (!err_no && fflush(f->fp) != 0) err_no = errno ? errno : EIO;
    if (!err_no && fsync(fileno(f->fp)) != 0) err_no = errno;
    if (fclose(f->fp) != 0 && !err_no) err_no = errno ? errno : EIO;
    f->fp = NULL;
    if (err_no) {
        remove(f->tmp);
        return err_set(e, ERR_IO, "%s: write failed: %s", f->tmp, strerror(err_no));
    }
    if (rename(f->tmp, f->path) != 0) {
        err_no = errno;
        remove(f->tmp);
        return err_set(e, ERR_IO, "%s: cannot rename into place: %s", f->path, strerror(err_no));
    }
    if ((err_no = sync_dir(f->path)))
        return err_set(e, ERR_IO, "%s: written, but its folder cannot be synced to disk: %s", f->path,
                       strerror(err_no));
    return 0;
}

void atomic_abort(AtomicFile *f) {
    if (f->fp) fclose(f->fp);
    f->fp = NULL;
    if (f->tmp[0]) remove(f->tmp);
}
