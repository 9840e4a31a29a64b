/* plot_layers.c: a number per UNet layer as grouped, coloured bars (plot_layers.h). */
#include "plot/plot_layers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plot/plot.h"

typedef struct {
    const char *pattern;  // a part of the module name
    const char *label;
    PlotColor color;
} LayerKind;

// First match wins: "attn1.to_out" is attention before anything else matches "out".
static const LayerKind KINDS[] = {
    {".attn", "attention q/k/v/out", PLOT_VERMILLION},
    {".ff.", "feed-forward", PLOT_ORANGE},
    {".proj_", "proj_in/out", PLOT_PURPLE},
    {".emb_layers.", "ResBlock emb", PLOT_GREEN},
    {"_layers.", "ResBlock conv", PLOT_BLUE},  // in_layers, out_layers
    {".skip_connection", "ResBlock conv", PLOT_BLUE},
    {".conv", "Upsample conv", PLOT_SKY},  // Upsample.conv (Downsample's is .op)
    {".op", "Downsample conv", PLOT_SKY},
};
#define N_KINDS (int)(sizeof KINDS / sizeof KINDS[0])
static const LayerKind OTHER = {"", "time embedding, in/out conv", PLOT_GREY};

static const LayerKind *kind_of(const char *name) {
    for (int k = 0; k < N_KINDS; k++)
        if (strstr(name, KINDS[k].pattern)) return &KINDS[k];
    return &OTHER;
}

// The block of a layer and its short label: "input_blocks.4.1.proj_in" -> "in 4".
static void block_of(const char *name, char *block, size_t cap, char *label, size_t lcap) {
    static const char *const tops[][2] = {{"input_blocks.", "in "}, {"output_blocks.", "out "}};
    for (int t = 0; t < 2; t++) {
        size_t n = strlen(tops[t][0]);
        if (strncmp(name, tops[t][0], n) != 0) continue;
        size_t k = n;
        while (name[k] >= '0' && name[k] <= '9') k++;
        snprintf(block, cap, "%.*s", (int)k, name);
        snprintf(label, lcap, "%s%.*s", tops[t][1], (int)(k - n), name + n);
        return;
    }
    const char *dot = strchr(name, '.');
    size_t k = dot ? (size_t)(dot - name) : strlen(name);
    snprintf(block, cap, "%.*s", (int)k, name);
    if (!strcmp(block, "middle_block")) snprintf(label, lcap, "mid");
    else if (!strcmp(block, "time_embed")) snprintf(label, lcap, "temb");
    else snprintf(label, lcap, "%s", block);
}

int plot_layers_png(const char *const *names, const double *v, int n, const char *title, const char *ylabel,
                    const char *path, Err *e) {
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++)
        if (isfinite(v[i])) {
            lo = fmin(lo, v[i]);
            hi = fmax(hi, v[i]);
        }
    if (n < 1 || !isfinite(lo)) return err_set(e, ERR_VALUE, "%s: no finite value to plot", path);
    double *x = malloc((size_t)n * sizeof *x), *cx = malloc((size_t)n * sizeof *cx);
    double *sep = malloc((size_t)n * sizeof *sep);
    PlotColor *col = malloc((size_t)n * sizeof *col);
    char (*lab)[32] = malloc((size_t)n * sizeof *lab);
    const char **labp = malloc((size_t)n * sizeof *labp);
    PlotFig *f = NULL;
    int rc = 0;
    if (!x || !cx || !sep || !col || !lab || !labp) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto done;
    }
    // groups: consecutive layers of one block
    int ng = 0, nsep = 0, start = 0, used[N_KINDS + 1] = {0};
    char prev[160] = "";
    for (int i = 0; i <= n; i++) {
        char block[160] = "", label[32] = "";
        if (i < n) block_of(names[i], block, sizeof block, label, sizeof label);
        if (i == n || strcmp(block, prev) != 0) {
            if (i > 0) {
                cx[ng] = (start + i - 1) / 2.0;
                ng++;
                if (i < n) sep[nsep++] = i - 0.5;
            }
            if (i < n) snprintf(lab[ng], sizeof lab[ng], "%s", label);
            start = i;
            snprintf(prev, sizeof prev, "%s", block);
        }
        if (i == n) break;
        x[i] = i;
        const LayerKind *k = kind_of(names[i]);
        col[i] = k->color;
        used[k == &OTHER ? N_KINDS : (int)(k - KINDS)] = 1;
    }
    for (int g = 0; g < ng; g++) labp[g] = lab[g];

    if ((rc = plot_fig_new(&f, PLOT_LAYERS_W, PLOT_LAYERS_H, e))) goto done;
    if (title) plot_fig_text(f, 36, 32, PLOT_TITLE, 0.0, 1.0, title);
    PlotAxes a;  // the legend goes in the row above the area, the block names below it
    plot_axes_init(&a, f, 96, 76, PLOT_LAYERS_W - 96 - 28, PLOT_LAYERS_H - 76 - 64);
    PlotScale sc = lo > 0 && log10(hi / lo) > 1.5 ? PLOT_LOG : PLOT_LINEAR;
    double y0, y1;
    plot_range_pad(lo, hi, sc, 0.04, &y0, &y1);
    if (sc == PLOT_LINEAR && lo >= 0) y0 = 0;  // bars from 0
    plot_axes_range(&a, -0.6, n - 0.4, y0, y1, sc);
    plot_axes_draw(&a, NULL, NULL, ylabel, 0);
    plot_xcategories(&a, cx, labp, ng, sep, nsep);
    plot_bars(&a, x, v, col, n, 0.72);
    // the legend: the kinds that occur, in table order, each once
    const char *shown[N_KINDS + 1];
    int n_shown = 0;
    for (int k = 0; k <= N_KINDS; k++) {
        const LayerKind *K = k < N_KINDS ? &KINDS[k] : &OTHER;
        int dup = 0;
        for (int j = 0; j < n_shown; j++) dup |= !strcmp(shown[j], K->label);
        if (!used[k] || dup) continue;
        shown[n_shown++] = K->label;
        plot_legend_add(&a, &(PlotStyle){K->color, 0, 0, 0, K->label});
    }
    plot_legend(&a);
    rc = plot_fig_write_png(f, path, e);
done:
    plot_fig_free(f);
    free(x);
    free(cx);
    free(sep);
    free(col);
    free(lab);
    free(labp);
    return rc;
}
