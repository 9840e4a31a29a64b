#!/usr/bin/python3
"""make_fixture.py: the `effdm compare` fixture (README.md beside this file says what and why).
Run from the repository root:  /usr/bin/python3 tests/data/compare/make_fixture.py

Writes tests/data/compare/{a,b}/<class>/<NNNNN>.png (20 images each, the layout of
`effdm sample`: image i has class i mod 10) and expected.json, every value computed here in
numpy / float64 from the PNG bytes, independently of effdm:
  pixels / RMSE     PIL decoding, float64
  judge outputs     scripts/quality/judge_np.py (the judge re-implemented in numpy)
  FID               np.cov + tr sqrt(S1 S2) from the eigenvalues of the (non-symmetric) product
                    S1 S2 (np.linalg.eigvals, LAPACK dgeev); effdm takes them from the symmetric
                    sqrt(S1) S2 sqrt(S1) with dsyevd, a different route. The script checks that
                    both routes agree here, so the expected value does not depend on the choice.
  precision/recall  brute-force float64 distance matrices, k = 3
Deterministic: the images are tiles of models/zoo/fmnist-ldm/grid.png (teacher samples,
class = row) and a seeded perturbation of them."""
import json
import os
import shutil
import sys

import numpy as np
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts", "quality"))
import judge_np  # noqa: E402

OUT = os.path.join(ROOT, "tests", "data", "compare")
GRID = os.path.join(ROOT, "models", "zoo", "fmnist-ldm", "grid.png")
JUDGE = os.path.join(ROOT, "models", "zoo", "fmnist-ldm", "judge.ckpt")
REF = os.path.join(ROOT, "models", "zoo", "fmnist-ldm", "fmnist_test_judge.safetensors")
N, K, CLASSES = 20, 3, 10


def tile(grid, row, col):
    return grid[row * 32:(row + 1) * 32, col * 32:(col + 1) * 32].copy()


def make_images():
    """A: teacher samples (class i mod 10, grid column i // 10). B: A with seeded noise (a
    quantized model's small pixel error), except a few images that became something else:
    another class's sample (3, 7, 14: the judge's class likely changes), A shifted by 2 pixels
    (5), A darkened (16)."""
    grid = np.asarray(Image.open(GRID).convert("L"))
    assert grid.shape == (320, 256), grid.shape
    rng = np.random.RandomState(6)  # seed chosen for a wide precision/recall gap (see _min_pr_relative_gap)
    a, b = [], []
    for i in range(N):
        c = i % CLASSES
        x = tile(grid, c, i // CLASSES)
        if i in (3, 7, 14):
            y = tile(grid, (c + 3) % CLASSES, 5)
        elif i == 5:
            y = np.roll(x, 2, axis=1)
        elif i == 16:
            y = (x * 0.6).astype(np.uint8)
        else:
            y = np.clip(np.rint(x + rng.normal(0, 12, x.shape)), 0, 255).astype(np.uint8)
        a.append(x)
        b.append(y)
    return a, b


def write(folder, imgs):
    d = os.path.join(OUT, folder)
    shutil.rmtree(d, ignore_errors=True)
    for i, x in enumerate(imgs):
        os.makedirs(os.path.join(d, str(i % CLASSES)), exist_ok=True)
        Image.fromarray(x, "L").save(os.path.join(d, str(i % CLASSES), "%05d.png" % i))


def read(folder):
    """Back from the PNG files, as effdm will see them: (N, 32, 32) float64 in [0, 1]."""
    x = [np.asarray(Image.open(os.path.join(OUT, folder, str(i % CLASSES), "%05d.png" % i)).convert("L"),
                    dtype=np.float64) / 255.0 for i in range(N)]
    return np.stack(x)


def safetensors_f64(path, names):
    with open(path, "rb") as f:
        raw = f.read()
    hlen = int.from_bytes(raw[:8], "little")
    head = json.loads(raw[8:8 + hlen])
    out = {}
    for k in names:
        t = head[k]
        assert t["dtype"] == "F64", (k, t["dtype"])
        s, e = t["data_offsets"]
        out[k] = np.frombuffer(raw[8 + hlen + s:8 + hlen + e], dtype="<f8").reshape(t["shape"])
    return out


def stats(f):
    f = f.astype(np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def fid(m1, s1, m2, s2):
    """|m1 - m2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2); the trace of the root from the eigenvalues
    of the product (real parts, negatives from rounding of a rank-deficient product -> 0)."""
    ev = np.linalg.eigvals(s1 @ s2)
    tr = np.sqrt(np.clip(ev.real, 0, None)).sum()
    # the other route (effdm's): eigenvalues of the symmetric sqrt(S1) S2 sqrt(S1)
    l, v = np.linalg.eigh(s1)
    r = v @ np.diag(np.sqrt(np.clip(l, 0, None))) @ v.T
    tr2 = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()
    assert abs(tr - tr2) <= 1e-7 * max(1.0, tr), (tr, tr2)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)


def sqdist(x, y):
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def prec_recall(real, fake, k):
    """Improved precision/recall (Kynkäänniemi et al. 2019): radius = distance to the k-th
    nearest other point of the same set. Also the smallest relative gap |d^2 - r^2| / r^2 over
    every (point, ball) pair, so a float32 implementation cannot fall on the other side."""
    real, fake = real.astype(np.float64), fake.astype(np.float64)
    rr = np.sort(sqdist(real, real), axis=1)[:, k]  # column 0 is the point itself
    rf = np.sort(sqdist(fake, fake), axis=1)[:, k]
    d = sqdist(fake, real)  # (fake, real)
    precision = float(np.mean((d <= rr[None, :]).any(1)))
    recall = float(np.mean((d.T <= rf[None, :]).any(1)))
    gap = min(np.min(np.abs(d - rr[None, :]) / rr[None, :]), np.min(np.abs(d.T - rf[None, :]) / rf[None, :]))
    return precision, recall, float(gap)


def main():
    a8, b8 = make_images()
    write("a", a8)
    write("b", b8)
    a, b = read("a"), read("b")
    assert all((a[i] * 255).round().astype(np.uint8).tolist() == a8[i].tolist() for i in range(N))
    d = (b - a).reshape(N, -1)
    judge = judge_np.Judge(JUDGE)
    fa, la = judge.forward((a[:, None] * 2 - 1).astype(np.float32))
    fb, lb = judge.forward((b[:, None] * 2 - 1).astype(np.float32))
    la, lb = la.astype(np.float64), lb.astype(np.float64)
    pa, pb = la.argmax(1), lb.argmax(1)
    labels = np.arange(N) % CLASSES
    # the argmax must not hinge on float32 rounding: top-1 minus top-2 logit
    margin = float(min(np.min(np.diff(np.sort(la, 1)[:, -2:], axis=1)), np.min(np.diff(np.sort(lb, 1)[:, -2:], axis=1))))
    assert margin > 1e-3, margin
    ref = safetensors_f64(REF, ["mu", "sigma"])
    ma, sa = stats(fa)
    mb, sb = stats(fb)
    precision, recall, gap = prec_recall(fb, fa, K)
    assert gap > 1e-3, gap

    def per_class(p):
        return [float(np.mean(p[labels == c] == c)) for c in range(CLASSES)]

    res = {
        "n": N,
        "rmse": float(np.sqrt(np.mean(d ** 2))),
        "rmse_img_mean": float(np.mean(np.sqrt(np.mean(d ** 2, axis=1)))),
        "agreement": float(np.mean(pa == pb)),
        "class_accuracy_a": float(np.mean(pa == labels)),
        "class_accuracy_b": float(np.mean(pb == labels)),
        "class_accuracy_per_class_a": per_class(pa),
        "class_accuracy_per_class_b": per_class(pb),
        "class_counts": [int(np.sum(labels == c)) for c in range(CLASSES)],
        "fid_a_ref": fid(ma, sa, ref["mu"], ref["sigma"]),
        "fid_b_ref": fid(mb, sb, ref["mu"], ref["sigma"]),
        "fid_a_b": fid(ma, sa, mb, sb),
        "precision_a_b": precision,
        "recall_a_b": recall,
        "_min_logit_margin": margin,
        "_min_pr_relative_gap": gap,
        "_predicted_a": pa.tolist(),
        "_predicted_b": pb.tolist(),
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
