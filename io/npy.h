/* npy.h: NumPy .npy files (format 1.0-3.0), for tests, tools and `effdm forward`.
   Reads little-endian '<f4', '<f8', '<i8', '<i4', '|u1', '|b1' arrays in C order and
   converts them to float32; fortran_order True and other dtypes are ERR_DTYPE.
   Writes float32 arrays (format 1.0), atomically (path.tmp + rename).

       NpyArray a; if (npy_read(path, &a, &e)) return e.code;
       ... a.data[0 .. a.n) with shape a.shape[0 .. a.ndim) ...
       npy_free(&a);
*/
#ifndef EFFDM_NPY_H
#define EFFDM_NPY_H

#include <stddef.h>

#include "util/err.h"

#define NPY_MAX_DIMS 8

typedef struct {
    float *data;  // malloc'ed, n floats
    size_t n;
    int ndim;
    int shape[NPY_MAX_DIMS];
} NpyArray;

// Reads path into a float32 array. 0 or an ERR_ code (message names the file).
int npy_read(const char *path, NpyArray *a, Err *e);
// Parses an in-memory .npy image (name is used in messages). 0 or an ERR_ code.
int npy_read_mem(const unsigned char *buf, size_t size, const char *name, NpyArray *a, Err *e);
// Writes data (n = product of shape) as a '<f4' array. 0 or an ERR_ code.
int npy_write(const char *path, const float *data, int ndim, const int *shape, Err *e);
// Frees a.data; accepts a zeroed array.
void npy_free(NpyArray *a);

#endif
