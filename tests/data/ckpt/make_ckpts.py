#!/usr/bin/env python3
"""Reference files for tests/test_ckpt.c and tests/test_safetensors.c, written by the real
torch.save (Debian's python3-torch 1.13) and numpy, so the C readers are checked against
independent writers. Run from anywhere: python3 tests/data/ckpt/make_ckpts.py
(it writes next to itself; the outputs are committed, keep them small).

Files (expected values: <file stem>__<tensor name, dots as underscores>.npy, float32 unless noted):
  dtypes.ckpt      plain state dict: f32, f16 (incl. subnormals, +-0, 65504), bf16, f64,
                   i64, i32, a 0-d tensor, an empty tensor; i64/i32 expected as int64 .npy
  views.ckpt       views of one storage: the base, a transpose, a slice with a storage offset,
                   a row, a column, a broadcast (stride 0), a half-precision transpose
  lightning.ckpt   a Lightning-like checkpoint: epoch, global_step, version, state_dict (an
                   OrderedDict with _metadata, CompVis prefixes incl. model_ema.*),
                   optimizer_states (Adam state after one step), lr_schedulers, callbacks (an
                   object of a class the reader cannot know), hyper_parameters (argparse.Namespace)
  proto4.ckpt      pickle protocol 4 (FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL) and an
                   nn.Parameter (_rebuild_parameter)
  proto5.ckpt      pickle protocol 5
  archive.ckpt     views.ckpt re-zipped under the folder name "archive/" with DEFLATE
                   (compressed records: read sequentially, not by seeking)
  bad_nan.ckpt     a float tensor holding NaN, a half tensor holding +inf, a good tensor
  legacy.pt        the pre-1.6 format (_use_new_zipfile_serialization=False; its bytes
                   change from run to run: torch writes object ids into it)
  bad_*.ckpt       hand-made archives (see make_bad below) for the error paths
  ref.safetensors  written by hand following the format spec and the reference writer's
                   layout (huggingface/safetensors tensor.rs prepare(): dtype alignment
                   descending, then name; compact JSON, __metadata__ first; header padded
                   with spaces to 8 bytes): one tensor per dtype + metadata; expected values
                   as ref__<name>.npy (float32) and the raw bytes are the file's own
"""
import argparse
import collections
import io
import json
import os
import struct
import zipfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def out(name):
    return os.path.join(HERE, name)


def save_expected(stem, name, t):
    arr = t.detach().contiguous()
    if arr.dtype in (torch.int64, torch.int32):
        a = arr.to(torch.int64).numpy()
    else:
        a = arr.to(torch.float32).numpy()
    np.save(out(f"{stem}__{name.replace('.', '_')}.npy"), a)


def save_ckpt(obj, stem, ext=".ckpt", **kw):
    torch.save(obj, out(stem + ext), **kw)


torch.manual_seed(1234)

# --- dtypes ---
f16_special = torch.tensor([0.0, -0.0, 1.0, -2.5, 65504.0, -65504.0, 6.103515625e-05,  # smallest normal
                            5.960464477539063e-08,  # smallest subnormal
                            1.0e-6, -3.0e-7, 0.333333, 1024.5], dtype=torch.float16)
dtypes = {
    "f32": torch.randn(3, 4),
    "f16": f16_special,
    "f16_rand": torch.randn(2, 3, 2).half(),
    "bf16": (torch.randn(2, 5) * 100).bfloat16(),
    "f64": torch.randn(4, dtype=torch.float64),
    "i64": torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4) * 1000003,
    "i32": torch.arange(6, dtype=torch.int32) - 2,
    "scalar": torch.tensor(3.5),
    "empty": torch.zeros(0, 3),
}
save_ckpt(dtypes, "dtypes")
for k, v in dtypes.items():
    save_expected("dtypes", k, v)

# --- views of one storage ---
base = torch.arange(24, dtype=torch.float32).reshape(4, 6) * 0.5 - 3
hbase = torch.randn(3, 5).half()
views = {
    "base": base,
    "t": base.t(),
    "slice": base[1:3, 2:5],
    "row": base[2],
    "col": base[:, 1],
    "bcast": base[1:2, :].expand(3, 6),
    "half_t": hbase.t(),
    "half_row": hbase[1, 1:4],
}
assert views["slice"].storage_offset() == 8 and not views["t"].is_contiguous()
save_ckpt(views, "views")
for k, v in views.items():
    save_expected("views", k, v)

# --- a Lightning-like checkpoint ---


class Mini(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.diffusion_model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.GroupNorm(1, 3))
        self.first_stage_model = torch.nn.Linear(4, 2)
        self.cond_stage_model = torch.nn.Module()
        self.cond_stage_model.embedding = torch.nn.Embedding(5, 3)
        self.register_buffer("betas", torch.linspace(1e-4, 2e-2, 10, dtype=torch.float64).float())
        self.register_buffer("scale_factor", torch.tensor(0.18215))


class CheckpointCallbackState:  # a class the C reader cannot know (pickled as __main__.X)
    def __init__(self):
        self.best_model_score = torch.tensor(0.25)
        self.monitor = "val/loss"


m = Mini()
opt = torch.optim.Adam(m.parameters(), lr=1e-3)
loss = sum((p * p).sum() for p in m.parameters())
loss.backward()
opt.step()
sd = m.state_dict()
ema = collections.OrderedDict()
for k, v in sd.items():
    if k.startswith("model.diffusion_model."):
        ema["model_ema." + k[len("model.diffusion_model."):].replace(".", "")] = v.clone() * 0.5
sd.update(ema)
sd["model_ema.decay"] = torch.tensor(0.9999)
sd["model_ema.num_updates"] = torch.tensor(1234, dtype=torch.int32)
assert isinstance(sd, collections.OrderedDict) and hasattr(sd, "_metadata")
lightning = {
    "epoch": 3,
    "global_step": 1234,
    "pytorch-lightning_version": "1.4.2",
    "state_dict": sd,
    "optimizer_states": [opt.state_dict()],
    "lr_schedulers": [{"scheduler": None, "interval": "step", "frequency": 1}],
    "callbacks": {"ModelCheckpoint{'monitor': 'val/loss'}": CheckpointCallbackState()},
    "hyper_parameters": argparse.Namespace(lr=1e-3, name="fmnist", sizes=(1, 2)),
    "hparams_name": "kwargs",
    "seed": 2**40 + 3,
    "big": 2**70,
}
save_ckpt(lightning, "lightning")
with open(out("lightning__names.txt"), "w") as f:  # state_dict order, as torch keeps it
    f.write("".join(k + "\n" for k in sd))
for k, v in sd.items():
    save_expected("lightning", k, v)

# --- pickle protocols 4 and 5, nn.Parameter ---
p4 = {"w": torch.nn.Parameter(torch.randn(2, 3)), "b": torch.randn(3).half(), "n": torch.tensor([7, 8], dtype=torch.int64)}
save_ckpt(p4, "proto4", pickle_protocol=4)
save_ckpt(p4, "proto5", pickle_protocol=5)
for k, v in p4.items():
    save_expected("proto4", k, v)

def fixed_info(name, method):  # a fixed timestamp, so that re-running gives the same bytes
    zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    zi.compress_type = method
    return zi


# --- views re-zipped as "archive/" with DEFLATE ---
with zipfile.ZipFile(out("views.ckpt")) as zin, zipfile.ZipFile(out("archive.ckpt"), "w", zipfile.ZIP_DEFLATED) as zout:
    for info in zin.infolist():
        top, rest = info.filename.split("/", 1)
        zout.writestr(fixed_info("archive/" + rest, zipfile.ZIP_DEFLATED), zin.read(info.filename))

# --- NaN / Inf ---
nan_t = torch.randn(2, 3)
nan_t[1, 2] = float("nan")
inf_h = torch.ones(4).half()
inf_h[3] = float("inf")
save_ckpt({"good": torch.ones(2), "has_nan": nan_t, "has_inf": inf_h}, "bad_nan")

# --- legacy format ---
save_ckpt({"w": torch.ones(2)}, "legacy", ext=".pt", _use_new_zipfile_serialization=False)

# --- hand-made archives for error paths ---


def binunicode(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def pyint(v):
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if -2**31 <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    n = (v.bit_length() + 8) // 8
    return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)


def pytuple(vals):
    return b"(" + b"".join(pyint(v) for v in vals) + b"t"


def tensor_pickle(entries, wrap_state_dict=True):
    """entries: (name, storage_key, storage_type, storage_numel, offset, size, stride)"""
    body = b"}("
    for name, key, stype, numel, off, size, stride in entries:
        body += binunicode(name)
        body += b"ctorch._utils\n_rebuild_tensor_v2\n("
        body += b"(" + binunicode("storage") + b"ctorch\n" + stype.encode() + b"\n" + binunicode(key) + binunicode("cpu") + pyint(numel) + b"tQ"
        body += pyint(off) + pytuple(size) + pytuple(stride) + b"\x89ccollections\nOrderedDict\n)Rt" + b"R"
    body += b"u"
    if wrap_state_dict:
        body = b"}(" + binunicode("state_dict") + body + binunicode("global_step") + pyint(5) + b"u"
    return b"\x80\x02" + body + b"."


def write_zip(path, records):
    with zipfile.ZipFile(out(path), "w", zipfile.ZIP_STORED) as z:
        for name, data in records:
            z.writestr(fixed_info(name, zipfile.ZIP_STORED), data)


ok4 = struct.pack("<4f", 1, 2, 3, 4)
good = [("a.weight", "0", "FloatStorage", 4, 0, (2, 2), (2, 1))]
write_zip("bad_nopkl.ckpt", [("top/data/0", ok4), ("top/version", b"3\n")])
write_zip("bad_nostorage.ckpt", [("top/data.pkl", tensor_pickle(good + [("b.bias", "1", "FloatStorage", 4, 0, (4,), (1,))])),
                                 ("top/data/0", ok4)])
write_zip("bad_offset.ckpt", [("top/data.pkl", tensor_pickle(good + [("c.weight", "0", "FloatStorage", 4, 2, (2, 2), (2, 1))])),
                              ("top/data/0", ok4)])
write_zip("bad_shape.ckpt", [("top/data.pkl", tensor_pickle([("huge.weight", "0", "FloatStorage", 4, 0, (2**40,), (1,))])),
                             ("top/data/0", ok4)])
write_zip("bad_bcast.ckpt", [("top/data.pkl", tensor_pickle([("huge.bias", "0", "FloatStorage", 4, 0, (2**20, 2**20), (0, 0))])),
                             ("top/data/0", ok4)])
write_zip("bad_storage_size.ckpt", [("top/data.pkl", tensor_pickle(good)), ("top/data/0", ok4[:12])])
write_zip("bad_dtype.ckpt", [("top/data.pkl", tensor_pickle([("z.weight", "0", "ComplexFloatStorage", 2, 0, (2,), (1,))])),
                             ("top/data/0", ok4)])
write_zip("bad_two_pkl.ckpt", [("a/data.pkl", tensor_pickle(good)), ("b/data.pkl", tensor_pickle(good)), ("a/data/0", ok4)])
deep = b"\x80\x02" + b"]" * 5000 + b"a" * 4999 + b"."
write_zip("bad_deep.ckpt", [("top/data.pkl", deep)])
write_zip("bad_bigendian.ckpt", [("top/data.pkl", tensor_pickle(good)), ("top/byteorder", b"big"), ("top/data/0", ok4)])
write_zip("good_handmade.ckpt", [("weird-name.v2/data.pkl", tensor_pickle(good)), ("weird-name.v2/data/0", ok4),
                                 ("weird-name.v2/byteorder", b"little")])

# --- safetensors, by hand ---
# reference Dtype enum order (increasing alignment): the writer sorts by it descending, then by name
ST_RANK = {"BOOL": 0, "U8": 1, "I8": 2, "I16": 5, "F16": 7, "BF16": 8, "I32": 9, "F32": 11, "F64": 12, "I64": 13}
st_tensors = {
    "f32": torch.randn(2, 3),
    "f16": f16_special[:6].clone(),
    "bf16": torch.randn(3).bfloat16(),
    "f64": torch.randn(2, 2, dtype=torch.float64),
    "i64": torch.tensor([-5, 2**40, 7]),
    "i32": torch.tensor([[1, -2], [3, 4]], dtype=torch.int32),
    "i16": torch.tensor([-300, 300], dtype=torch.int16),
    "i8": torch.tensor([-128, 127, 0], dtype=torch.int8),
    "u8": torch.tensor([0, 255, 17, 4], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "a.scalar": torch.tensor(2.0),
    "z.empty": torch.zeros(0, 2),
}
ST_NAME = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64", torch.int64: "I64",
           torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


def raw_bytes(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: the top halves of the float32 bits
        return (t.float().numpy().view(np.uint32) >> 16).astype("<u2").tobytes()
    return t.numpy().tobytes()


order = sorted(st_tensors, key=lambda k: (-ST_RANK[ST_NAME[st_tensors[k].dtype]], k.encode()))
header = {"__metadata__": {"effdm.format": "1", "effdm.note": "tab\there \"quoted\" ü", "format": "pt"}}
data = b""
for k in order:
    t = st_tensors[k]
    raw = raw_bytes(t)
    header[k] = {"dtype": ST_NAME[t.dtype], "shape": list(t.shape), "data_offsets": [len(data), len(data) + len(raw)]}
    data += raw
hjson = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
hjson += b" " * ((8 - len(hjson) % 8) % 8)
with open(out("ref.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(hjson)) + hjson + data)
for k, t in st_tensors.items():
    np.save(out(f"ref__{k.replace('.', '_')}.npy"), t.to(torch.float64).numpy().astype(np.float32))

total = sum(os.path.getsize(out(f)) for f in os.listdir(HERE))
print(f"wrote {len(os.listdir(HERE))} files, {total} bytes")
