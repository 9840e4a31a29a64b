/* plot_axes.c: the figure, axes with ticks and numbers, lines, bars and legends of plot.h,
   drawn with cairo. */
#include "plot/plot.h"

#include <cairo.h>
#include <fontconfig/fontconfig.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/image.h"

#define FONT_FACE "DejaVu Sans"
#define TICK_LEN 5.0
#define MINOR_LEN 3.0
#define MAX_TICKS 64

struct PlotFig {
    cairo_surface_t *s;
    cairo_t *cr;
    int w, h;
};

static const PlotColor INK = {0.13, 0.13, 0.13, 1.0};      // text, frame
static const PlotColor GRID = {0.885, 0.885, 0.885, 1.0};  // grid lines

static void set_color(cairo_t *cr, PlotColor c) { cairo_set_source_rgba(cr, c.r, c.g, c.b, c.a); }

// A 1-pixel line centred on a pixel (crisp, not smeared over two).
static double crisp(double v) { return floor(v) + 0.5; }

int plot_fig_new(PlotFig **out, int width, int height, Err *e) {
    *out = NULL;
    if (width < 1 || height < 1 || width > PLOT_MAX_DIM || height > PLOT_MAX_DIM)
        return err_set(e, ERR_ARG, "figure size %dx%d: expected 1..%d pixels each", width, height, PLOT_MAX_DIM);
    PlotFig *f = calloc(1, sizeof *f);
    if (!f) return err_set(e, ERR_NOMEM, "out of memory");
    f->w = width;
    f->h = height;
    f->s = cairo_image_surface_create(CAIRO_FORMAT_RGB24, width, height);
    if (cairo_surface_status(f->s) != CAIRO_STATUS_SUCCESS) {
        plot_fig_free(f);
        return err_set(e, ERR_NOMEM, "cannot make a %dx%d image (cairo)", width, height);
    }
    f->cr = cairo_create(f->s);
    if (cairo_status(f->cr) != CAIRO_STATUS_SUCCESS) {
        plot_fig_free(f);
        return err_set(e, ERR_NOMEM, "cannot draw on a %dx%d image (cairo)", width, height);
    }
    cairo_set_source_rgb(f->cr, 1, 1, 1);
    cairo_paint(f->cr);
    *out = f;
    return 0;
}

void plot_fig_free(PlotFig *f) {
    if (!f) return;
    if (f->cr) cairo_destroy(f->cr);
    if (f->s) cairo_surface_destroy(f->s);
    free(f);
}

void plot_release(void) {
    cairo_debug_reset_static_data();  // drops cairo's font faces, which hold fontconfig patterns
    FcFini();
}

int plot_fig_write_png(PlotFig *f, const char *path, Err *e) {
    cairo_surface_flush(f->s);
    if (cairo_status(f->cr) != CAIRO_STATUS_SUCCESS)
        return err_set(e, ERR_INTERNAL, "%s: drawing failed: %s", path, cairo_status_to_string(cairo_status(f->cr)));
    // CAIRO_FORMAT_RGB24: one native-endian uint32 per pixel, 0x00RRGGBB
    const unsigned char *data = cairo_image_surface_get_data(f->s);
    int stride = cairo_image_surface_get_stride(f->s);
    uint8_t *rgb = malloc((size_t)f->w * (size_t)f->h * 3);
    if (!rgb) return err_set(e, ERR_NOMEM, "%s: out of memory", path);
    for (int y = 0; y < f->h; y++) {
        const uint32_t *src = (const uint32_t *)(data + (size_t)y * (size_t)stride);
        uint8_t *dst = rgb + (size_t)y * (size_t)f->w * 3;
        for (int x = 0; x < f->w; x++) {
            dst[3 * x] = (uint8_t)(src[x] >> 16);
            dst[3 * x + 1] = (uint8_t)(src[x] >> 8);
            dst[3 * x + 2] = (uint8_t)src[x];
        }
    }
    // fast: effdm finetune draws a figure at every checkpoint (image.c: 30 ms instead of 70 ms
    // with cairo's own PNG writer, for the run curves)
    int rc = image_write_png_u8(path, rgb, 3, f->h, f->w, (size_t)f->w * 3, 1, e);
    free(rgb);
    return rc;
}

// Text with its box anchored at (x, y) by (ax, ay) (plot_fig_text), turned by `angle`
// radians (counter-clockwise on screen) about the anchor. Returns the text's width.
static double text_at(cairo_t *cr, double x, double y, double size, double ax, double ay, double angle, PlotColor c,
                      const char *text) {
    cairo_select_font_face(cr, FONT_FACE, CAIRO_FONT_SLANT_NORMAL,
                           size >= PLOT_HEADING ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, size);
    cairo_text_extents_t te, digit;
    cairo_text_extents(cr, text, &te);
    cairo_text_extents(cr, "0", &digit);  // the height of digits and capitals places text vertically
    double cap = -digit.y_bearing;
    cairo_save(cr);
    cairo_translate(cr, x, y);
    cairo_rotate(cr, -angle);
    cairo_move_to(cr, -te.x_advance * ax, cap * (1.0 - ay));
    set_color(cr, c);
    cairo_show_text(cr, text);
    cairo_restore(cr);
    return te.x_advance;
}

static double text_width(cairo_t *cr, double size, const char *text) {
    cairo_select_font_face(cr, FONT_FACE, CAIRO_FONT_SLANT_NORMAL,
                           size >= PLOT_HEADING ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, size);
    cairo_text_extents_t te;
    cairo_text_extents(cr, text, &te);
    return te.x_advance;
}

double plot_fig_text(PlotFig *f, double x, double y, double size, double ax, double ay, const char *text) {
    return text_at(f->cr, x, y, size, ax, ay, 0.0, INK, text);
}

void plot_axes_init(PlotAxes *a, PlotFig *f, double px, double py, double pw, double ph) {
    memset(a, 0, sizeof *a);
    a->fig = f;
    a->px = px;
    a->py = py;
    a->pw = pw;
    a->ph = ph;
    a->x1 = 1.0;
    a->y1 = 1.0;
}

void plot_axes_range(PlotAxes *a, double x0, double x1, double y0, double y1, PlotScale yscale) {
    if (!(x1 > x0)) {  // one point (or none): a unit around it
        x0 = isfinite(x0) ? x0 - 0.5 : 0.0;
        x1 = x0 + 1.0;
    }
    if (yscale == PLOT_LOG && !(y0 > 0 && y1 > 0 && isfinite(y0) && isfinite(y1))) yscale = PLOT_LINEAR;
    if (!(y1 > y0)) {
        double c = isfinite(y0) ? y0 : 0.0, d = c != 0.0 ? fabs(c) * 0.1 : 1.0;
        if (yscale == PLOT_LOG) {
            y0 = c / 2.0;
            y1 = c * 2.0;
        } else {
            y0 = c - d;
            y1 = c + d;
        }
    }
    a->x0 = x0;
    a->x1 = x1;
    a->y0 = y0;
    a->y1 = y1;
    a->yscale = yscale;
}

void plot_range_pad(double lo, double hi, PlotScale scale, double margin, double *y0, double *y1) {
    if (scale == PLOT_LOG && lo > 0 && hi > 0) {
        double l = log10(lo), h = log10(hi), m = (h - l) * margin;
        if (m == 0.0) m = 0.1;
        *y0 = pow(10.0, l - m);
        *y1 = pow(10.0, h + m);
        return;
    }
    double m = (hi - lo) * margin;
    if (m == 0.0) m = lo != 0.0 ? fabs(lo) * 0.1 : 1.0;
    *y0 = lo - m;
    *y1 = hi + m;
}

double plot_px(const PlotAxes *a, double x) { return a->px + (x - a->x0) / (a->x1 - a->x0) * a->pw; }

double plot_py(const PlotAxes *a, double y) {
    double t, t0, t1;
    if (a->yscale == PLOT_LOG) {
        t = log10(y);
        t0 = log10(a->y0);
        t1 = log10(a->y1);
    } else {
        t = y;
        t0 = a->y0;
        t1 = a->y1;
    }
    return a->py + a->ph - (t - t0) / (t1 - t0) * a->ph;
}

// 1, 2 or 5 x 10^k near span / target.
static double nice_step(double span, double target) {
    double raw = span / (target < 1 ? 1 : target), p = pow(10.0, floor(log10(raw))), m = raw / p;
    return (m < 1.5 ? 1.0 : m < 3.5 ? 2.0 : m < 7.5 ? 5.0 : 10.0) * p;
}

// The ticks of a linear range (at most MAX_TICKS), at least min_step apart; their step in *step.
static int linear_ticks(double lo, double hi, double target, double min_step, double *t, double *step) {
    double s = fmax(nice_step(hi - lo, target), min_step);
    int n = 0;
    for (double k = ceil(lo / s - 1e-9); n < MAX_TICKS; k++) {
        double v = k * s;
        if (v > hi + s * 1e-9) break;
        t[n++] = fabs(v) < s * 1e-9 ? 0.0 : v;
    }
    *step = s;
    return n;
}

// A tick number: as many decimals as the step needs; exponents for very large or small ones.
static void format_linear(double v, double step, double vmax, char *buf, size_t cap) {
    if (vmax >= 1e6 || (vmax < 1e-3 && vmax > 0)) {
        snprintf(buf, cap, "%.3g", v);
        return;
    }
    int d = 0;
    while (d < 8 && fabs(step * pow(10, d) - rint(step * pow(10, d))) > 1e-6 * step * pow(10, d)) d++;
    snprintf(buf, cap, "%.*f", d, v);
}

// UTF-8 superscript of an integer exponent ("⁻³").
static void superscript(int k, char *buf, size_t cap) {
    static const char *const digits[] = {"\u2070", "\u00b9", "\u00b2", "\u00b3", "\u2074",
                                         "\u2075", "\u2076", "\u2077", "\u2078", "\u2079"};
    char raw[16];
    snprintf(raw, sizeof raw, "%d", k);
    buf[0] = '\0';
    for (const char *p = raw; *p; p++) {
        size_t n = strlen(buf);
        snprintf(buf + n, cap - n, "%s", *p == '-' ? "\u207b" : digits[*p - '0']);
    }
}

// m x 10^k on a log axis: plain for 10^-3..10^4, else "10⁵" / "2×10⁵".
static void format_log(int m, int k, char *buf, size_t cap) {
    if (k >= -3 && k <= 4) {
        snprintf(buf, cap, "%g", m * pow(10.0, k));
        return;
    }
    char sup[48];
    superscript(k, sup, sizeof sup);
    if (m == 1) snprintf(buf, cap, "10%s", sup);
    else snprintf(buf, cap, "%d\u00d710%s", m, sup);
}

typedef struct {
    double v;
    int major;  // drawn with a number and a grid line
    char text[48];
} Tick;

// The y ticks of the axes (see plot.h: decades, with 2 and 5 when the axis spans less than
// three; a log axis under one decade is labelled with linear steps).
static int y_ticks(const PlotAxes *a, Tick *t) {
    int n = 0;
    if (a->yscale == PLOT_LOG) {
        double l0 = log10(a->y0), l1 = log10(a->y1), span = l1 - l0;
        if (span >= 1.0) {
            int labels25 = span < 3.0;
            for (int k = (int)floor(l0); k <= (int)ceil(l1) && n < MAX_TICKS - 9; k++)
                for (int m = 1; m <= 9; m++) {
                    double v = m * pow(10.0, k);
                    if (v < a->y0 * (1 - 1e-9) || v > a->y1 * (1 + 1e-9)) continue;
                    Tick *x = &t[n++];
                    x->v = v;
                    x->major = m == 1 || (labels25 && (m == 2 || m == 5));
                    if (x->major) format_log(m, k, x->text, sizeof x->text);
                    else x->text[0] = '\0';
                }
            return n;
        }
    }
    double v[MAX_TICKS], step;
    int k = linear_ticks(a->y0, a->y1, a->ph / 42.0, 0, v, &step);
    double vmax = fmax(fabs(a->y0), fabs(a->y1));
    for (int i = 0; i < k; i++) {
        if (a->yscale == PLOT_LOG && v[i] <= 0) continue;
        t[n].v = v[i];
        t[n].major = 1;
        format_linear(v[i], step, vmax, t[n].text, sizeof t[n].text);
        n++;
    }
    return n;
}

void plot_axes_draw(PlotAxes *a, const char *heading, const char *xlabel, const char *ylabel, int xnumbers) {
    cairo_t *cr = a->fig->cr;
    double L = a->px, T = a->py, R = a->px + a->pw, B = a->py + a->ph;
    Tick yt[MAX_TICKS];
    int ny = y_ticks(a, yt);
    double xv[MAX_TICKS], xstep;
    int nx = linear_ticks(a->x0, a->x1, a->pw / 95.0, a->xstep_min, xv, &xstep);

    // grid under everything
    cairo_set_line_width(cr, 1.0);
    set_color(cr, GRID);
    for (int i = 0; i < ny; i++) {
        if (!yt[i].major) continue;
        double y = crisp(plot_py(a, yt[i].v));
        cairo_move_to(cr, L, y);
        cairo_line_to(cr, R, y);
    }
    for (int i = 0; i < nx; i++) {
        double x = crisp(plot_px(a, xv[i]));
        cairo_move_to(cr, x, T);
        cairo_line_to(cr, x, B);
    }
    cairo_stroke(cr);

    // frame and ticks
    set_color(cr, INK);
    cairo_rectangle(cr, crisp(L), crisp(T), floor(R) - floor(L), floor(B) - floor(T));
    for (int i = 0; i < ny; i++) {
        double y = crisp(plot_py(a, yt[i].v));
        cairo_move_to(cr, crisp(L), y);
        cairo_line_to(cr, crisp(L) - (yt[i].major ? TICK_LEN : MINOR_LEN), y);
    }
    for (int i = 0; i < nx; i++) {
        double x = crisp(plot_px(a, xv[i]));
        cairo_move_to(cr, x, crisp(B));
        cairo_line_to(cr, x, crisp(B) + TICK_LEN);
    }
    cairo_stroke(cr);

    // numbers
    double wmax = 0;
    for (int i = 0; i < ny; i++) {
        if (!yt[i].major) continue;
        double w = text_at(cr, L - TICK_LEN - 4, plot_py(a, yt[i].v), PLOT_TICK, 1.0, 0.5, 0, INK, yt[i].text);
        if (w > wmax) wmax = w;
    }
    double vmax = fmax(fabs(a->x0), fabs(a->x1));
    for (int i = 0; xnumbers && i < nx; i++) {
        char s[48];
        format_linear(xv[i], xstep, vmax, s, sizeof s);
        text_at(cr, plot_px(a, xv[i]), B + TICK_LEN + 5, PLOT_TICK, 0.5, 0.0, 0, INK, s);
    }
    if (heading) text_at(cr, L, T - 10, PLOT_HEADING, 0.0, 1.0, 0, INK, heading);
    if (xlabel) text_at(cr, (L + R) / 2, B + TICK_LEN + (xnumbers ? 26 : 8), PLOT_LABEL, 0.5, 0.0, 0, INK, xlabel);
    if (ylabel) text_at(cr, L - TICK_LEN - 12 - wmax, (T + B) / 2, PLOT_LABEL, 0.5, 1.0, M_PI / 2, INK, ylabel);
}

static void clip_to_area(PlotAxes *a) {
    cairo_t *cr = a->fig->cr;
    cairo_save(cr);
    cairo_rectangle(cr, a->px, a->py, a->pw, a->ph);
    cairo_clip(cr);
}

static int drawable(const PlotAxes *a, double x, double y) {
    return isfinite(x) && isfinite(y) && (a->yscale != PLOT_LOG || y > 0);
}

static void stroke_style(cairo_t *cr, const PlotStyle *s) {
    set_color(cr, s->color);
    cairo_set_line_width(cr, s->width);
    static const double dash[] = {7.0, 4.0};
    cairo_set_dash(cr, dash, s->dashed ? 2 : 0, 0);
    cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
    cairo_set_line_cap(cr, CAIRO_LINE_CAP_ROUND);
}

static void marker(cairo_t *cr, double x, double y, double r, PlotColor c) {
    cairo_new_sub_path(cr);
    cairo_arc(cr, x, y, r, 0, 2 * M_PI);
    set_color(cr, c);
    cairo_fill_preserve(cr);
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_set_line_width(cr, 1.0);
    cairo_set_dash(cr, NULL, 0, 0);
    cairo_stroke(cr);
}

void plot_legend_add(PlotAxes *a, const PlotStyle *s) {
    if (!s->label || a->n_legend == PLOT_MAX_LEGEND) return;
    int k = a->n_legend++;
    snprintf(a->legend_text[k], sizeof a->legend_text[k], "%s", s->label);
    a->legend[k] = *s;
    a->legend[k].label = a->legend_text[k];
}

void plot_line(PlotAxes *a, const double *x, const double *y, int n, const PlotStyle *s) {
    cairo_t *cr = a->fig->cr;
    clip_to_area(a);
    if (s->width > 0) {
        int open = 0;
        cairo_new_path(cr);
        for (int i = 0; i < n; i++) {
            if (!drawable(a, x[i], y[i])) {
                open = 0;
                continue;
            }
            if (open) cairo_line_to(cr, plot_px(a, x[i]), plot_py(a, y[i]));
            else cairo_move_to(cr, plot_px(a, x[i]), plot_py(a, y[i]));
            open = 1;
        }
        stroke_style(cr, s);
        cairo_stroke(cr);
    }
    if (s->marker > 0)
        for (int i = 0; i < n; i++)
            if (drawable(a, x[i], y[i])) marker(cr, plot_px(a, x[i]), plot_py(a, y[i]), s->marker, s->color);
    cairo_restore(cr);
    plot_legend_add(a, s);
}

void plot_rings(PlotAxes *a, const double *x, const double *y, int n, PlotColor c, double r) {
    cairo_t *cr = a->fig->cr;
    clip_to_area(a);
    cairo_set_dash(cr, NULL, 0, 0);
    cairo_set_line_width(cr, 1.6);
    set_color(cr, c);
    for (int i = 0; i < n; i++) {
        if (!drawable(a, x[i], y[i])) continue;
        cairo_new_sub_path(cr);
        cairo_arc(cr, plot_px(a, x[i]), plot_py(a, y[i]), r, 0, 2 * M_PI);
    }
    cairo_stroke(cr);
    cairo_restore(cr);
}

void plot_vline(PlotAxes *a, double x, const PlotStyle *s) {
    cairo_t *cr = a->fig->cr;
    clip_to_area(a);
    stroke_style(cr, s);
    cairo_move_to(cr, plot_px(a, x), a->py);
    cairo_line_to(cr, plot_px(a, x), a->py + a->ph);
    cairo_stroke(cr);
    cairo_restore(cr);
    plot_legend_add(a, s);
}

void plot_hline(PlotAxes *a, double y, const PlotStyle *s) {
    if (!drawable(a, 0, y)) return;
    cairo_t *cr = a->fig->cr;
    clip_to_area(a);
    stroke_style(cr, s);
    cairo_move_to(cr, a->px, plot_py(a, y));
    cairo_line_to(cr, a->px + a->pw, plot_py(a, y));
    cairo_stroke(cr);
    cairo_restore(cr);
    plot_legend_add(a, s);
}

void plot_bars(PlotAxes *a, const double *x, const double *y, const PlotColor *colors, int n, double width) {
    cairo_t *cr = a->fig->cr;
    double base = a->yscale == PLOT_LOG ? a->py + a->ph : plot_py(a, a->y0 > 0 ? a->y0 : 0.0);
    if (base > a->py + a->ph) base = a->py + a->ph;
    clip_to_area(a);
    for (int i = 0; i < n; i++) {
        if (!drawable(a, x[i], y[i])) continue;
        double l = plot_px(a, x[i] - width / 2), r = plot_px(a, x[i] + width / 2), top = plot_py(a, y[i]);
        cairo_rectangle(cr, l, fmin(top, base), fmax(r - l, 1.0), fabs(base - top));
        set_color(cr, colors[i]);
        cairo_fill(cr);
    }
    cairo_restore(cr);
}

void plot_xcategories(PlotAxes *a, const double *x, const char *const *labels, int n, const double *sep, int n_sep) {
    cairo_t *cr = a->fig->cr;
    double B = a->py + a->ph;
    cairo_set_line_width(cr, 1.0);
    cairo_set_dash(cr, NULL, 0, 0);
    set_color(cr, GRID);
    for (int i = 0; i < n_sep; i++) {
        double X = crisp(plot_px(a, sep[i]));
        cairo_move_to(cr, X, a->py + 1);
        cairo_line_to(cr, X, B - 1);
    }
    cairo_stroke(cr);
    set_color(cr, INK);
    for (int i = 0; i < n_sep; i++) {  // the separators' ticks below the axis
        double X = crisp(plot_px(a, sep[i]));
        cairo_move_to(cr, X, crisp(B));
        cairo_line_to(cr, X, crisp(B) + TICK_LEN);
    }
    cairo_stroke(cr);
    // upright when every label fits its share of the axis, else turned to read upwards
    int turn = 0;
    for (int i = 0; i + 1 < n; i++) {
        double room = fabs(plot_px(a, x[i + 1]) - plot_px(a, x[i]));
        if ((text_width(cr, PLOT_TICK, labels[i]) + text_width(cr, PLOT_TICK, labels[i + 1])) / 2 + 6 > room) turn = 1;
    }
    for (int i = 0; i < n; i++) {
        if (turn) text_at(cr, plot_px(a, x[i]), B + TICK_LEN + 4, PLOT_TICK, 1.0, 0.5, M_PI / 2, INK, labels[i]);
        else text_at(cr, plot_px(a, x[i]), B + TICK_LEN + 5, PLOT_TICK, 0.5, 0.0, 0, INK, labels[i]);
    }
}

// Legend entries [i0, i1) as one row ending at the right edge of the area, centred on y.
static void legend_row(PlotAxes *a, int i0, int i1, double y) {
    cairo_t *cr = a->fig->cr;
    const double sample = 26, gap = 6, sep = 18;
    double total = 0;
    for (int i = i0; i < i1; i++) total += sample + gap + text_width(cr, PLOT_TICK, a->legend[i].label) + sep;
    double x = a->px + a->pw - total + sep;
    for (int i = i0; i < i1; i++) {
        const PlotStyle *s = &a->legend[i];
        if (s->width <= 0 && s->marker <= 0) {  // a bar colour: a square
            set_color(cr, s->color);
            cairo_rectangle(cr, x + sample / 2 - 6, y - 6, 12, 12);
            cairo_fill(cr);
        } else {
            if (s->width > 0) {
                PlotStyle w = *s;
                w.width = fmin(fmax(s->width, 1.5), 3.0);
                w.color.a = fmax(s->color.a, 0.6);  // a faint line still shows in a short sample
                stroke_style(cr, &w);
                cairo_move_to(cr, x, y);
                cairo_line_to(cr, x + sample, y);
                cairo_stroke(cr);
            }
            if (s->marker > 0) marker(cr, x + sample / 2, y, s->marker, s->color);
        }
        cairo_set_dash(cr, NULL, 0, 0);
        x += sample + gap;
        x += text_at(cr, x, y, PLOT_TICK, 0.0, 0.5, 0, INK, s->label) + sep;
    }
}

void plot_legend(PlotAxes *a) {
    cairo_t *cr = a->fig->cr;
    // rows that fit the area's width, the last one level with the heading, earlier ones above
    int start[PLOT_MAX_LEGEND + 1], rows = 0;
    double w = 0;
    for (int i = 0; i < a->n_legend; i++) {
        double wi = 26 + 6 + text_width(cr, PLOT_TICK, a->legend[i].label) + 18;
        if (i == 0 || w + wi > a->pw) {
            start[rows++] = i;
            w = 0;
        }
        w += wi;
    }
    start[rows] = a->n_legend;
    for (int r = 0; r < rows; r++)
        legend_row(a, start[r], start[r + 1], a->py - 10 - PLOT_TICK * 0.35 - (rows - 1 - r) * (PLOT_TICK + 8));
}
