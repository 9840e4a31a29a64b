#include "util/path.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

void path_join(char *dst, size_t cap, const char *dir, const char *name) {
    size_t n = strlen(dir);
    snprintf(dst, cap, "%s%s%s", dir, (n && dir[n - 1] == '/') ? "" : "/", name);
}

void path_dir(char *dst, size_t cap, const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dst, cap, ".");
    else if (slash == path) snprintf(dst, cap, "/");
    else snprintf(dst, cap, "%.*s", (int)(slash - path), path);
}

// Writes the absolute path p with "." and ".." and doubled '/' resolved to out (as large as p):
// "/a/./b/../c" -> "/a/c"; ".." above the root stays at the root, as the kernel does.
static void normalize(const char *p, char *out) {
    size_t o = 0;
    out[o++] = '/';
    const char *in = p + 1;  // p[0] == '/'
    while (*in) {
        size_t n = strcspn(in, "/");
        if (n == 2 && in[0] == '.' && in[1] == '.') {
            while (o > 1 && out[o - 1] != '/') o--;  // drop the last component...
            if (o > 1) o--;                            // ...and its '/'
            while (o > 1 && out[o - 1] != '/') o--;
        } else if (n > 0 && !(n == 1 && in[0] == '.')) {
            memcpy(out + o, in, n);
            o += n;
            out[o++] = '/';
        }
        in += n;
        if (*in == '/') in++;
    }
    if (o > 1) o--;  // no trailing '/'
    out[o] = '\0';
}

int path_absolute(char *dst, size_t cap, const char *base, const char *path, const char *what, Err *e) {
    char cwd[4096], buf[3 * 4096];
    if (path[0] == '/') {
        snprintf(buf, sizeof buf, "%s", path);
    } else if (base && base[0] == '/') {
        snprintf(buf, sizeof buf, "%s/%s", base, path);
    } else {
        if (!getcwd(cwd, sizeof cwd)) return err_set(e, ERR_ARG, "%s: cannot resolve '%s': working directory unknown", what, path);
        if (base) snprintf(buf, sizeof buf, "%s/%s/%s", cwd, base, path);
        else snprintf(buf, sizeof buf, "%s/%s", cwd, path);
    }
    char norm[sizeof buf];
    normalize(buf, norm);
    size_t n = strlen(norm);
    if (n >= cap) return err_set(e, ERR_ARG, "%s: path too long (%zu bytes, at most %zu): '%s'", what, n, cap - 1, path);
    memcpy(dst, norm, n + 1);
    return 0;
}
