/* path.h: file path text (joining, folders, absolute form). Lexical only: nothing here touches
   the file system except path_absolute's getcwd, so paths that do not exist yet (a run
   directory to create) work the same as existing ones. */
#ifndef EFFDM_PATH_H
#define EFFDM_PATH_H

#include <stddef.h>

#include "util/err.h"

// dst = dir/name (no doubled '/'). Truncated to cap like snprintf.
void path_join(char *dst, size_t cap, const char *dir, const char *name);

// dst = the folder part of path ("a/b.yaml" -> "a", "b.yaml" -> ".", "/b" -> "/").
void path_dir(char *dst, size_t cap, const char *path);

// dst = path as an absolute path with "." and ".." resolved lexically: path itself when it
// starts with '/', else base/path, where base is a folder (NULL: the working directory; a
// relative base is itself taken from the working directory). 0, or ERR_ARG when the result
// does not fit cap (what names the value for the message) or the working directory is unknown.
int path_absolute(char *dst, size_t cap, const char *base, const char *path, const char *what, Err *e);

#endif
