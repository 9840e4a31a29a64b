/* run_dir.c: resolving a finetune command's run directory and config (see run_dir.h). */
#include "run/run_dir.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "io/weights.h"

static int file_exists(const char *path) { return access(path, F_OK) == 0; }

int run_dir_status(const char *dir, RunDirStatus *status, Err *e) {
    char path[RC_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/state.safetensors", dir);
    if (!file_exists(path)) {
        *status = RUN_DIR_EMPTY;
        return 0;
    }
    WeightFile *f;
    if (weights_open(&f, path, e)) return err_prefix(e, "run directory %s", dir);
    *status = weights_find(f, "train.position") ? RUN_DIR_RUNNING : RUN_DIR_CALIBRATED;
    weights_close(f);
    return 0;
}

void run_dir_clean_tmp(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n > 4 && !strcmp(de->d_name + n - 4, ".tmp")) {
            char path[RC_PATH_MAX + 300];
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            unlink(path);
        }
    }
    closedir(d);
}

// Loads dir/config.yaml into *saved. 0 or the loader's error.
static int load_saved(const char *dir, RunConfig *saved, Err *e) {
    char path[RC_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    if (!file_exists(path))
        return err_set(e, ERR_IO, "%s: missing: %s is not a run directory (effdm finetune --config writes one)", path,
                       dir);
    return run_config_load(path, saved, e);
}

// Writes c to dir/config.yaml when it differs from saved.
static int write_if_changed(const char *dir, const RunConfig *saved, const RunConfig *c, Err *e) {
    if (saved && !run_config_first_diff(saved, c)) return 0;
    char path[RC_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    return run_config_write(c, path, e);
}

int run_dir_resolve(const char *resume_dir, const RunConfig *given, RunConfig *out, RunDirStatus *status, Err *e) {
    RunConfig saved;
    int rc;
    if (!resume_dir) {
        *out = *given;
        const char *dir = out->run.out;
        run_dir_clean_tmp(dir);
        if ((rc = run_dir_status(dir, status, e))) return rc;
        if (*status == RUN_DIR_EMPTY) return 0;
        if (*status == RUN_DIR_RUNNING)
            return err_set(e, ERR_ARG, "%s already holds a fine-tuning run: continue it with effdm finetune --resume %s "
                           "(or set another run.out)", dir, dir);
        if ((rc = load_saved(dir, &saved, e))) return rc;
        if ((rc = run_config_compare(&saved, out, NULL, e))) return err_prefix(e, "%s/config.yaml", dir);
        return write_if_changed(dir, &saved, out, e);
    }
    run_dir_clean_tmp(resume_dir);
    if ((rc = load_saved(resume_dir, &saved, e))) return rc;
    if (given) {
        if ((rc = run_config_compare(&saved, given, NULL, e))) return err_prefix(e, "%s/config.yaml", resume_dir);
        *out = *given;
    } else {
        *out = saved;
    }
    snprintf(out->run.out, sizeof out->run.out, "%s", resume_dir);
    if ((rc = run_dir_status(resume_dir, status, e))) return rc;
    if (*status == RUN_DIR_EMPTY)
        return err_set(e, ERR_IO, "%s/state.safetensors: missing: calibration of this run did not finish (start it "
                       "again with effdm finetune --config)", resume_dir);
    return write_if_changed(resume_dir, &saved, out, e);
}
