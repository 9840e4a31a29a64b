#include "util/zoo.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// The shipped model folder: $EFFDM_ZOO, else the first of <exe>/../models/zoo (the build
// tree), <exe>/../share/effdm/zoo (cmake --install), the source tree's models/zoo and the
// install prefix's share/effdm/zoo as configured (an out-of-tree build, an installed binary
// run from elsewhere) that holds fmnist-ldm/<name>.
int zoo_path(const char *name, char *out, size_t cap, Err *e) {
    const char *zoo = getenv("EFFDM_ZOO");
    if (zoo && *zoo) {
        snprintf(out, cap, "%s/fmnist-ldm/%s", zoo, name);
        if (access(out, R_OK) != 0)
            return err_set(e, ERR_IO, "%s: not found (EFFDM_ZOO=%s should hold fmnist-ldm/)", out, zoo);
        return 0;
    }
    char exe[4096] = "";
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[len > 0 ? len : 0] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) *slash = '\0';
    char cand[4][4200];
    int n = 0;
    if (exe[0]) {
        snprintf(cand[n++], sizeof cand[0], "%s/../models/zoo", exe);
        snprintf(cand[n++], sizeof cand[0], "%s/../share/effdm/zoo", exe);
    }
    snprintf(cand[n++], sizeof cand[0], "%s", EFFDM_SOURCE_ZOO);
    snprintf(cand[n++], sizeof cand[0], "%s", EFFDM_INSTALL_ZOO);
    for (int i = 0; i < n; i++) {
        snprintf(out, cap, "%s/fmnist-ldm/%s", cand[i], name);
        if (access(out, R_OK) == 0) return 0;
    }
    return err_set(e, ERR_IO, "fmnist-ldm/%s: not found next to the effdm executable, in %s or in %s; set EFFDM_ZOO "
                   "to the folder holding fmnist-ldm/", name, EFFDM_SOURCE_ZOO, EFFDM_INSTALL_ZOO);
}
