#!/usr/bin/python3
"""grid.py OUT.png K DIR... : same-noise grids side by side. For each DIR (an `effdm sample`
folder), a panel of 10 rows (classes) x K columns (the first K images of each class);
panels left to right in the order given, 2x upscaled, 8 px gaps."""
import os
import sys

from PIL import Image


def panel(d, k):
    rows = []
    for c in range(10):
        fs = sorted(f for f in os.listdir(os.path.join(d, str(c))) if f.endswith(".png"))[:k]
        rows.append([Image.open(os.path.join(d, str(c), f)).convert("L") for f in fs])
    s = rows[0][0].size[0]
    im = Image.new("L", (k * s, 10 * s), 255)
    for r, row in enumerate(rows):
        for j, x in enumerate(row):
            im.paste(x, (j * s, r * s))
    return im


def main():
    out, k, dirs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    ps = [panel(d, k) for d in dirs]
    w, h = ps[0].size
    im = Image.new("L", (len(ps) * w + (len(ps) - 1) * 8, h), 255)
    for i, p in enumerate(ps):
        im.paste(p, (i * (w + 8), 0))
    im.resize((im.size[0] * 2, im.size[1] * 2), Image.NEAREST).save(out)


if __name__ == "__main__":
    main()
