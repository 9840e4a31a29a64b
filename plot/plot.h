/* plot.h: line and bar charts drawn with cairo into PNG files (effdm plot, effdm info --plot).

       PlotFig *f;
       if (plot_fig_new(&f, 1200, 800, &e)) return e.code;
       plot_fig_text(f, 600, 12, PLOT_TITLE, 0.5, 0, "run x: training curves");
       PlotAxes a;
       plot_axes_init(&a, f, 90, 60, 1080, 300);                  // the plot area in pixels
       plot_axes_range(&a, 0, 160, 1.4, 150, PLOT_LOG);            // data range, y scale
       plot_axes_draw(&a, "Training loss", "epoch", "loss");       // grid, ticks, numbers, labels
       plot_line(&a, x, y, n, &(PlotStyle){PLOT_BLUE, 2.5, 0, 0, "epoch mean"});
       plot_legend(&a);                                            // the labelled styles, above the area
       int rc = plot_fig_write_png(f, "curves.png", &e);           // atomic (fileio.h)
       plot_fig_free(f);

   Coordinates are pixels from the top left; data are mapped by the axes' range (linear, or
   log10 for PLOT_LOG, where values <= 0 are not drawn). NaN values break a line (nothing is
   drawn between the points on either side). Ticks are "nice" numbers (1, 2, 5 x 10^k; on a
   log axis the decades, with 2 and 5 between them when the axis spans less than three).
   Text uses cairo's toy font API with the "DejaVu Sans" face (fontconfig substitutes another
   sans face when it is missing): ASCII and the UTF-8 the face has (superscript digits, ε, ×).
   Limitations: one y axis per axes, no clipping of text, at most PLOT_MAX_LEGEND entries.
*/
#ifndef EFFDM_PLOT_H
#define EFFDM_PLOT_H

#include "util/err.h"

typedef struct {
    double r, g, b, a;
} PlotColor;

// Okabe & Ito's colour-blind-safe palette (and black, greys).
#define PLOT_BLACK ((PlotColor){0.0, 0.0, 0.0, 1.0})
#define PLOT_ORANGE ((PlotColor){0.902, 0.624, 0.0, 1.0})
#define PLOT_SKY ((PlotColor){0.337, 0.706, 0.914, 1.0})
#define PLOT_GREEN ((PlotColor){0.0, 0.620, 0.451, 1.0})
#define PLOT_BLUE ((PlotColor){0.0, 0.447, 0.698, 1.0})
#define PLOT_VERMILLION ((PlotColor){0.835, 0.369, 0.0, 1.0})
#define PLOT_PURPLE ((PlotColor){0.800, 0.475, 0.655, 1.0})
#define PLOT_GREY ((PlotColor){0.45, 0.45, 0.45, 1.0})

// Text sizes in pixels.
#define PLOT_TITLE 20.0
#define PLOT_HEADING 16.0
#define PLOT_LABEL 15.0
#define PLOT_TICK 13.0

#define PLOT_MAX_LEGEND 8
#define PLOT_MAX_DIM 8192

typedef enum { PLOT_LINEAR, PLOT_LOG } PlotScale;

typedef struct {
    PlotColor color;
    double width;       // line width in pixels (0: no line, markers only)
    int dashed;
    double marker;      // radius of a filled circle at every point (0: none)
    const char *label;  // legend entry (NULL: none); the axes keep a copy
} PlotStyle;

typedef struct PlotFig PlotFig;

typedef struct {
    PlotFig *fig;
    double px, py, pw, ph;        // the plot area in pixels: left, top, width, height
    double x0, x1, y0, y1;        // data range (y in data units even on a log axis)
    double xstep_min;             // smallest step between x ticks (1: whole numbers only; 0: any)
    PlotScale yscale;
    int n_legend;
    PlotStyle legend[PLOT_MAX_LEGEND];
    char legend_text[PLOT_MAX_LEGEND][128];
} PlotAxes;

// A white width x height RGB figure (1..PLOT_MAX_DIM each). 0, ERR_ARG or ERR_NOMEM.
int plot_fig_new(PlotFig **f, int width, int height, Err *e);
// Accepts NULL.
void plot_fig_free(PlotFig *f);
// Frees the font caches cairo and fontconfig keep for the process (so leak checkers see a
// clean exit); the commands call it once when done drawing. Drawing afterwards still works.
void plot_release(void);
// Writes the figure as an 8-bit RGB PNG, atomically (path.tmp, then rename). 0 or ERR_IO.
int plot_fig_write_png(PlotFig *f, const char *path, Err *e);
// Text at (x, y) of `size` pixels: ax, ay place the point on the text's box (0, 0: (x, y) is
// its top left; 0.5, 0.5: its centre; 1, 1: its bottom right, the baseline). Bold when
// size >= PLOT_HEADING. Returns the text's width in pixels.
double plot_fig_text(PlotFig *f, double x, double y, double size, double ax, double ay, const char *text);

// The axes over the pixel rectangle (px, py, pw, ph) of f; range 0..1 linear until set.
void plot_axes_init(PlotAxes *a, PlotFig *f, double px, double py, double pw, double ph);
// Sets the data range (x0 < x1; y0 < y1, both > 0 on a log axis; an empty range is widened).
void plot_axes_range(PlotAxes *a, double x0, double x1, double y0, double y1, PlotScale yscale);
// A y range around [lo, hi] with a margin of `margin` of its span on each side (in log10
// on a log axis), for plot_axes_range.
void plot_range_pad(double lo, double hi, PlotScale scale, double margin, double *y0, double *y1);
// Background grid, frame, ticks with numbers on both axes, the heading above the area (left)
// and the axis labels (any may be NULL). xnumbers 0: x ticks without numbers (stacked panels).
void plot_axes_draw(PlotAxes *a, const char *heading, const char *xlabel, const char *ylabel, int xnumbers);
// The pixel of a data point.
double plot_px(const PlotAxes *a, double x);
double plot_py(const PlotAxes *a, double y);
// A polyline through (x[i], y[i]) (NaN / non-positive on a log axis: a gap), clipped to the area.
void plot_line(PlotAxes *a, const double *x, const double *y, int n, const PlotStyle *s);
// Open circles of radius r around the points (x[i], y[i]) (highlights).
void plot_rings(PlotAxes *a, const double *x, const double *y, int n, PlotColor c, double r);
// A vertical / horizontal line across the area at a data coordinate (named in the legend by
// its style's label: a note inside the area would hide data).
void plot_vline(PlotAxes *a, double x, const PlotStyle *s);
void plot_hline(PlotAxes *a, double y, const PlotStyle *s);
// Bars from the axis bottom (log) or 0 (linear) to y[i], centred on x[i], `width` data units
// wide, filled with colors[i].
void plot_bars(PlotAxes *a, const double *x, const double *y, const PlotColor *colors, int n, double width);
// Labels under the x axis at data positions x[i] (categories instead of numbers; used with
// xnumbers 0), and thin vertical separators at sep[0..n_sep).
void plot_xcategories(PlotAxes *a, const double *x, const char *const *labels, int n, const double *sep, int n_sep);
// Adds an entry to the legend without drawing anything (bar colours).
void plot_legend_add(PlotAxes *a, const PlotStyle *s);
// The legend of the labelled styles drawn so far: one row right-aligned above the area,
// level with the heading.
void plot_legend(PlotAxes *a);

#endif
