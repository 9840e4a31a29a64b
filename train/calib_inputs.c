/* calib_inputs.c: calib.safetensors as the trainer reads it:
     x     F32 (N, C, H, W)   recorded UNet inputs x_t
     t     F32 or I64 (N)     their DDPM timesteps
     y     I64 (N)            their class labels (class-conditional models)
     used  I64 (K)            indices of the inputs the activation initialisation used */
#include "train/calib_inputs.h"

#include <stdlib.h>
#include <string.h>

#include "io/weights.h"

static int need(WeightFile *f, const char *name, const WeightInfo **out, Err *e) {
    *out = weights_find(f, name);
    if (!*out) return err_set(e, ERR_KEY, "%s: tensor '%s' is missing (not a calibration file?)", weights_path(f), name);
    return 0;
}

static int read_i64_as_int(WeightFile *f, const WeightInfo *wi, int *dst, int lo, int hi, Err *e) {
    if (wi->dtype != DT_I64 || wi->ndim != 1)
        return err_set(e, ERR_DTYPE, "%s: tensor '%s': expected I64 of 1 dim, found %s of %d", weights_path(f), wi->name,
                       dtype_name(wi->dtype), wi->ndim);
    int64_t *tmp = malloc((wi->numel ? wi->numel : 1) * sizeof(int64_t));
    if (!tmp) return err_set(e, ERR_NOMEM, "out of memory reading %s", wi->name);
    int rc = weights_read_raw(f, wi->name, tmp, wi->numel * sizeof(int64_t), e);
    for (size_t i = 0; i < wi->numel && !rc; i++) {
        if (tmp[i] < lo || tmp[i] >= hi)
            rc = err_set(e, ERR_VALUE, "%s: %s[%zu] = %lld, expected 0..%d", weights_path(f), wi->name, i,
                         (long long)tmp[i], hi - 1);
        else
            dst[i] = (int)tmp[i];
    }
    free(tmp);
    return rc;
}

int calib_inputs_read(CalibInputs *ci, const char *path, int C, int H, int W, int cond, Err *e) {
    memset(ci, 0, sizeof *ci);
    WeightFile *f;
    int rc = weights_open(&f, path, e);
    if (rc) return rc;
    const WeightInfo *wx, *wt, *wy = NULL, *wu;
    if ((rc = need(f, "x", &wx, e)) || (rc = need(f, "t", &wt, e)) || (cond && (rc = need(f, "y", &wy, e))) ||
        (rc = need(f, "used", &wu, e)))
        goto done;
    if (wx->ndim != 4 || wx->shape[1] != C || wx->shape[2] != H || wx->shape[3] != W || wx->shape[0] < 1 ||
        wx->shape[0] > (1 << 30)) {
        rc = err_set(e, ERR_SHAPE, "%s: tensor 'x': expected (N, %d, %d, %d) for this model", path, C, H, W);
        goto done;
    }
    int n = (int)wx->shape[0];
    if (wt->numel != (size_t)n || (wy && wy->numel != (size_t)n) || wu->numel > (size_t)n) {
        rc = err_set(e, ERR_SHAPE, "%s: tensors 't', 'y', 'used' do not match the %d inputs of 'x'", path, n);
        goto done;
    }
    ci->n = n;
    ci->n_used = (int)wu->numel;
    ci->x = malloc((size_t)n * C * H * W * sizeof(float));
    ci->t = malloc((size_t)n * sizeof(float));
    ci->y = cond ? malloc((size_t)n * sizeof(int)) : NULL;
    ci->used = malloc((size_t)(ci->n_used ? ci->n_used : 1) * sizeof(int));
    if (!ci->x || !ci->t || (cond && !ci->y) || !ci->used) {
        rc = err_set(e, ERR_NOMEM, "out of memory reading %s", path);
        goto done;
    }
    if ((rc = weights_read_f32(f, "x", ci->x, 4, (const int[]){n, C, H, W}, e)) ||
        (rc = weights_read_f32(f, "t", ci->t, 1, (const int[]){n}, e)) ||
        (cond && (rc = read_i64_as_int(f, wy, ci->y, 0, 1 << 30, e))) ||
        (rc = read_i64_as_int(f, wu, ci->used, 0, n, e)))
        goto done;
done:
    weights_close(f);
    if (rc) calib_inputs_free(ci);
    return rc;
}

void calib_inputs_free(CalibInputs *ci) {
    free(ci->x);
    free(ci->t);
    free(ci->y);
    free(ci->used);
    memset(ci, 0, sizeof *ci);
}
