#!/usr/bin/python3
"""judge_np.py: the Fashion-MNIST judge (docs/EVALUATION.md) in numpy, for tools only.
Loads models/zoo/fmnist-ldm/judge.ckpt (a torch zip checkpoint) without torch."""
import collections
import pickle
import zipfile

import numpy as np


class _Storage:
    def __init__(self, key, dtype):
        self.key, self.dtype = key, dtype


def _rebuild(storage, offset, size, stride, *args):
    return ("T", storage, offset, tuple(size), tuple(stride))


class _U(pickle.Unpickler):
    def find_class(self, mod, name):
        if name == "_rebuild_tensor_v2":
            return _rebuild
        if name == "OrderedDict":
            return collections.OrderedDict
        if name.endswith("Storage"):
            return name
        return super().find_class(mod, name)

    def persistent_load(self, pid):  # ('storage', storage_type, key, location, numel)
        return _Storage(pid[2], pid[1])


_DT = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "LongStorage": np.int64,
       "HalfStorage": np.float16, "IntStorage": np.int32}


def load(path):
    z = zipfile.ZipFile(path)
    pk = [n for n in z.namelist() if n.endswith("data.pkl")][0]
    root = pk[: -len("data.pkl")]
    obj = _U(z.open(pk)).load()

    def conv(v):
        if isinstance(v, tuple) and len(v) == 5 and v[0] == "T":
            _, st, off, size, stride = v
            dt = _DT[st.dtype if isinstance(st.dtype, str) else st.dtype.__name__]
            buf = np.frombuffer(z.read(root + "data/" + st.key), dtype=dt)
            it = np.dtype(dt).itemsize
            return np.lib.stride_tricks.as_strided(buf[off:], shape=size,
                                                   strides=[s * it for s in stride]).copy()
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    obj = conv(obj)
    while isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    return obj


def _conv(x, w, b):  # x N,C,H,W; w O,C,3,3; padding 1
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, :, i:i + h, j:j + wd] for i in range(3) for j in range(3)], axis=2)
    y = np.einsum("nckhw,ock->nohw", cols, w.reshape(w.shape[0], c, 9), optimize=True)
    return y + b[None, :, None, None]


def _pool(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


class Judge:
    def __init__(self, path="models/zoo/fmnist-ldm/judge.ckpt"):
        sd = load(path)
        ks = list(sd.keys())
        convs = [k for k in ks if k.endswith("weight") and sd[k].ndim == 4]
        fcs = [k for k in ks if k.endswith("weight") and sd[k].ndim == 2]
        assert len(convs) == 4 and len(fcs) == 2, ks
        self.c = [(sd[k].astype(np.float32), sd[k[:-6] + "bias"].astype(np.float32)) for k in convs]
        self.f = [(sd[k].astype(np.float32), sd[k[:-6] + "bias"].astype(np.float32)) for k in fcs]

    def forward(self, x):  # x N,1,32,32 in [-1, 1] -> features (N, 128: fc1 after ReLU), logits (N, 10)
        def r(t):
            return np.maximum(t, 0)
        feats, out = [], []
        for s in range(0, x.shape[0], 200):
            h = x[s:s + 200]
            h = r(_conv(h, *self.c[0]))
            h = _pool(r(_conv(h, *self.c[1])))
            h = r(_conv(h, *self.c[2]))
            h = _pool(r(_conv(h, *self.c[3])))
            h = h.reshape(h.shape[0], -1)
            h = r(h @ self.f[0][0].T + self.f[0][1])
            feats.append(h)
            out.append(h @ self.f[1][0].T + self.f[1][1])
        return np.concatenate(feats), np.concatenate(out)

    def logits(self, x):  # x N,1,32,32 in [-1, 1]
        return self.forward(x)[1]
