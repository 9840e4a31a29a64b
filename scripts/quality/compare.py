#!/usr/bin/python3
"""compare.py FP_DIR MODEL_DIR OUT.json: same-noise comparison of two `effdm sample` folders
sampled with the same seed (image DIR/<class>/<NNNNN>.png in both).
  rmse       sqrt(mean over all pixels of all images of (x_model - x_fp)^2), pixels in [0, 1]
  rmse_img_mean  mean over images of the per-image RMSE
  agreement  fraction of images whose judge argmax equals the FP image's
  judge_acc_model / judge_acc_fp  judge argmax == folder class (cross-check of effdm eval)"""
import json
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import judge_np  # noqa: E402


def listing(d):
    """(class folder, file) of every image; an unconditional model's flat folder: class ''."""
    out = [("", f) for f in sorted(os.listdir(d)) if f.endswith(".png") and f != "grid.png"
           and not f.startswith(".")]
    if out:
        return out
    for c in sorted(os.listdir(d), key=lambda s: (len(s), s)):
        p = os.path.join(d, c)
        if os.path.isdir(p):
            for f in sorted(os.listdir(p)):
                if f.endswith(".png") and not f.startswith("."):
                    out.append((c, f))
    return out


def load(d, items):
    a = [np.asarray(Image.open(os.path.join(d, c, f)).convert("L"), dtype=np.float32) / 255.0
         for c, f in items]
    x = np.stack(a)
    if x.shape[1] == 28:
        x = np.pad(x, ((0, 0), (2, 2), (2, 2)), constant_values=0.0)
    return x


def main():
    fp_dir, m_dir, out = sys.argv[1:4]
    items = listing(fp_dir)
    mi = set(listing(m_dir))
    missing = [i for i in items if i not in mi]
    if missing or len(mi) != len(items):
        sys.exit("compare: %s and %s do not hold the same images" % (fp_dir, m_dir))
    a, b = load(fp_dir, items), load(m_dir, items)
    d = (b - a).reshape(len(items), -1)
    judge = judge_np.Judge(os.environ.get("JUDGE", "models/zoo/fmnist-ldm/judge.ckpt"))
    pa = judge.logits(a[:, None] * 2 - 1).argmax(1)
    pb = judge.logits(b[:, None] * 2 - 1).argmax(1)
    lab = np.array([int(c) if c else -1 for c, _ in items])
    res = {
        "n": len(items),
        "rmse": float(np.sqrt(np.mean(d ** 2))),
        "rmse_img_mean": float(np.mean(np.sqrt(np.mean(d ** 2, axis=1)))),
        "agreement": float(np.mean(pa == pb)),
        "judge_acc_model": float(np.mean(pb == lab)) if (lab >= 0).all() else None,
        "judge_acc_fp": float(np.mean(pa == lab)) if (lab >= 0).all() else None,
    }
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, out)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
