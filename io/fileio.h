/* fileio.h: whole-file reads and atomic writes (path.tmp, checked writes, fsync, rename,
   fsync of the directory so the rename itself survives a power loss).
   A failed or abandoned AtomicFile leaves no file behind.

       AtomicFile f;
       if (atomic_open(&f, path, &e)) return e.code;
       atomic_write(&f, buf, n);          // errors are remembered, checked at commit
       return atomic_commit(&f, &e);      // or atomic_abort(&f) on an error path
*/
#ifndef EFFDM_FILEIO_H
#define EFFDM_FILEIO_H

#include <stddef.h>
#include <stdio.h>

#include "util/err.h"

typedef struct {
    FILE *fp;
    char path[4096];
    char tmp[4200];
    int failed;  // a write failed; commit will report it
    int err_no;  // errno of that failure, taken when it happened
} AtomicFile;

// Reads a whole file into a malloc'ed buffer (*buf, *size); the caller frees *buf. 0 or ERR_IO.
int file_read_all(const char *path, unsigned char **buf, size_t *size, Err *e);
// Opens path.tmp for writing. 0 or ERR_IO.
int atomic_open(AtomicFile *f, const char *path, Err *e);
// Appends n bytes (failures are reported by atomic_commit).
void atomic_write(AtomicFile *f, const void *data, size_t n);
// Flushes, fsyncs, closes and renames path.tmp to path; on any failure removes path.tmp. 0 or ERR_IO.
int atomic_commit(AtomicFile *f, Err *e);
// Closes and removes path.tmp.
void atomic_abort(AtomicFile *f);

#endif
