#!/usr/bin/env python3
"""check_compvis_export.py: a CompVis export of effdm (effdm export --format compvis-fp32 |
compvis-fp16) in PyTorch, with CompVis's own LatentDiffusion and DDIMSampler.

    /usr/bin/python3 scripts/check_compvis_export.py --compvis X.safetensors [--export E.safetensors]
        [--effdm build/effdm] [--ldm /tmp/ldm] [--n 100] [--seed 0] [--work DIR]

1. Strict loading: LatentDiffusion(**config.model.params).load_state_dict(sd, strict=True), the
   config being the YAML the file carries (metadata effdm.ldm_config), sd the file's tensors.
2. UNet forward: model.apply_model(x, t, c) on fixed inputs (x ~ N(0, 1) from numpy seed 0,
   t = 1, 251, 501, 999, class labels 0, 3, 7 and the unconditional one) against
   `effdm forward --ckpt X.safetensors` on the same .npy inputs: max |diff| and relative L2.
3. Sampling, CompVis DDIMSampler, 20 steps, eta 0, guidance 3, --n images class-balanced (image i
   of class i mod (n_classes - 1)) from effdm's own initial noise (image i: PCG32 stream (seed, i),
   Box-Muller, as util/rng.c and sample/generate.c draw it, reproduced below), decoded and
   stored as effdm stores PNGs (round(255 clamp((x + 1) / 2))). Against
      - `effdm sample --ldm-config <yaml> --ckpt X.safetensors` (the same dequantized weights in
        effdm: a control of the whole pipeline and of the noise; expected ~0), and
      - with --export, `effdm sample --model E.safetensors`: the effdm-format export of the same
        run (integer kernels, activation fake-quant, the fitted guidance / eps gains), which is
        what the CompVis file cannot express;
      - with --teacher T.ckpt, `effdm sample --ckpt T.ckpt`: the FP teacher, for scale (and the
        export against it too);
   the pixel RMSE over all images (in 0..255 levels and on a [0, 1] scale).
One JSON line with every number on stdout, the readable report on stderr.

Needs Debian's python3-torch, -numpy, -yaml, -pil, and a CompVis latent-diffusion checkout at
--ldm (its ldm/ folder; compvis_stubs.py beside this file stands in for the packages it imports
that Debian lacks).
"""
import argparse, json, math, os, struct, subprocess, sys, tempfile

import numpy as np
import torch
import yaml
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compvis_stubs

ST_DTYPES = {'F32': np.float32, 'F16': np.float16, 'F64': np.float64, 'I64': np.int64, 'I32': np.int32,
             'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_}


def read_safetensors(path):
    """(tensors {name: torch.Tensor}, metadata {key: value}) of a .safetensors file (no BF16)."""
    with open(path, 'rb') as f:
        data = f.read()
    n, = struct.unpack('<Q', data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop('__metadata__', {})
    base, out = 8 + n, {}
    for name, t in header.items():
        b, e = t['data_offsets']
        a = np.frombuffer(data, ST_DTYPES[t['dtype']], offset=base + b, count=(e - b) // np.dtype(ST_DTYPES[t['dtype']]).itemsize)
        out[name] = torch.from_numpy(a.reshape(t['shape']).copy())
    return out, meta


# ---- effdm's initial noise: util/rng.c (PCG32 XSH RR) and sample_initial_noise ------------------
M64 = (1 << 64) - 1


class Pcg32:
    def __init__(self, seed, stream):
        self.state, self.inc = 0, ((stream << 1) | 1) & M64
        self.u32()
        self.state = (self.state + seed) & M64
        self.u32()

    def u32(self):
        old = self.state
        self.state = (old * 6364136223846793005 + self.inc) & M64
        xs = (((old >> 18) ^ old) >> 27) & 0xffffffff
        rot = old >> 59
        return ((xs >> rot) | (xs << ((-rot) & 31))) & 0xffffffff

    def open01(self):
        hi, lo = self.u32() >> 5, self.u32() >> 6
        return ((hi * 67108864 + lo) + 0.5) / 9007199254740992.0


def initial_noise(seed, index, n):
    r, x = Pcg32(seed, index), np.empty(n, np.float32)
    for i in range(0, n, 2):
        u1, u2 = r.open01(), r.open01()
        rad, th = math.sqrt(-2.0 * math.log(u1)), 6.283185307179586 * u2
        x[i] = rad * math.cos(th)
        if i + 1 < n:
            x[i + 1] = rad * math.sin(th)
    return x


def effdm(cmd, args):
    r = subprocess.run([args.effdm] + cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit('effdm %s failed (%d): %s' % (cmd[0], r.returncode, r.stderr.strip()))
    return r


def read_pngs(d, n, n_cls):
    return np.stack([np.asarray(Image.open(os.path.join(d, str(i % n_cls), '%05d.png' % i)), np.float64)
                     for i in range(n)]).reshape(n, -1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--compvis', required=True, help='effdm export --format compvis-* output')
    ap.add_argument('--export', action='append', default=[],
                    help='an effdm-format export of the same run (sampling comparison; repeatable)')
    ap.add_argument('--teacher', help='the FP teacher checkpoint (sampling comparison, for scale)')
    ap.add_argument('--effdm', default=os.path.join(HERE, '..', 'build', 'effdm'))
    ap.add_argument('--ldm', default=os.environ.get('LDM', '/tmp/ldm'))
    ap.add_argument('--n', type=int, default=100)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--scale', type=float, default=3.0)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--work', help='folder for the .npy inputs and samples (default: a temporary one)')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    work = a.work or tempfile.mkdtemp(prefix='compvis_check_')
    os.makedirs(work, exist_ok=True)
    out = {'file': a.compvis}
    LatentDiffusion, DDIMSampler = compvis_stubs.load(a.ldm)

    sd, meta = read_safetensors(a.compvis)
    out['kind'] = meta.get('effdm.kind')
    cfg_path = os.path.join(work, 'config.yaml')
    with open(cfg_path, 'w') as f:
        f.write(meta['effdm.ldm_config'])
    params = yaml.safe_load(meta['effdm.ldm_config'])['model']['params']
    model = LatentDiffusion(**params).eval()
    res = model.load_state_dict(sd, strict=True)  # raises on a missing or unexpected key, or a shape
    out['strict_load'] = 'ok' if not res.missing_keys and not res.unexpected_keys else str(res)
    out['tensors'] = len(sd)
    out['dtypes'] = sorted({str(v.dtype).replace('torch.', '') for v in sd.values()})
    print('strict load: %s (%d tensors, %s) into LatentDiffusion of %s' % (out['strict_load'], len(sd),
          '/'.join(out['dtypes']), meta.get('effdm.source_config')), file=sys.stderr)

    C, H = params['channels'], params['image_size']
    key = model.cond_stage_model.key
    n_cls = model.cond_stage_model.embedding.num_embeddings
    uncond = n_cls - 1

    # 2. the UNet forward on fixed inputs
    rs = np.random.RandomState(0)
    x = rs.standard_normal((4, C, H, H)).astype(np.float32)
    t = np.array([1, 251, 501, 999], np.float32)
    y = np.array([0, 3, 7, uncond], np.float32)
    for nm, v in (('x', x), ('t', t), ('y', y)):
        np.save(os.path.join(work, nm + '.npy'), v)
    with torch.no_grad():
        c = model.get_learned_conditioning({key: torch.from_numpy(y).long()})
        eps_pt = model.apply_model(torch.from_numpy(x), torch.from_numpy(t).long(), c).numpy()
    effdm(['forward', '--ldm-config', cfg_path, '--ckpt', a.compvis, '--x', os.path.join(work, 'x.npy'), '--t',
           os.path.join(work, 't.npy'), '--y', os.path.join(work, 'y.npy'), '--out', os.path.join(work, 'eps.npy'),
           '--threads', str(a.threads)], a)
    eps_e = np.load(os.path.join(work, 'eps.npy'))
    d = eps_e.astype(np.float64) - eps_pt
    out['forward_max_abs'] = float(np.abs(d).max())
    out['forward_rel_l2'] = float(np.linalg.norm(d) / np.linalg.norm(eps_pt))
    print('UNet forward (t = 1, 251, 501, 999): effdm forward vs PyTorch max |diff| %.3g, rel L2 %.3g'
          % (out['forward_max_abs'], out['forward_rel_l2']), file=sys.stderr)

    # 3. DDIM samples from effdm's initial noise
    n, per = a.n, C * H * H
    xT = torch.from_numpy(np.stack([initial_noise(a.seed, i, per) for i in range(n)]).reshape(n, C, H, H))
    labels = torch.arange(n) % uncond
    sampler = DDIMSampler(model)
    with torch.no_grad():
        cc = model.get_learned_conditioning({key: labels})
        uc = model.get_learned_conditioning({key: torch.full((n,), uncond)})
        z, _ = sampler.sample(S=a.steps, batch_size=n, shape=[C, H, H], conditioning=cc, verbose=False, eta=0.0,
                              unconditional_guidance_scale=a.scale, unconditional_conditioning=uc, x_T=xT)
        img = model.decode_first_stage(z)
    pt = torch.round(255 * torch.clamp((img + 1) / 2, 0, 1)).numpy().astype(np.float64).reshape(n, -1)
    common = ['--n', str(n), '--steps', str(a.steps), '--scale', str(a.scale), '--seed', str(a.seed), '--threads',
              str(a.threads)]
    d_same = os.path.join(work, 'effdm_compvis')
    effdm(['sample', '--ldm-config', cfg_path, '--ckpt', a.compvis, '--out', d_same] + common, a)
    rmse = float(np.sqrt(np.mean((read_pngs(d_same, n, uncond) - pt) ** 2)))
    out['rmse_vs_effdm_same_weights'] = rmse
    print('DDIM %d steps, eta 0, guidance %g, %d images (seed %d): pixel RMSE PyTorch vs effdm sample --ckpt '
          '(same weights) %.4f levels (%.2e on [0, 1])' % (a.steps, a.scale, n, a.seed, rmse, rmse / 255), file=sys.stderr)
    exp_imgs = []
    for k, ex in enumerate(a.export):
        d_exp = os.path.join(work, 'effdm_export%d' % k)
        effdm(['sample', '--model', ex, '--out', d_exp] + common, a)
        exp_imgs.append(read_pngs(d_exp, n, uncond))
        rmse = float(np.sqrt(np.mean((exp_imgs[-1] - pt) ** 2)))
        out.setdefault('rmse_vs_effdm_export', {})[ex] = rmse
        print('  pixel RMSE PyTorch vs effdm sample --model %s (an effdm-format export) %.3f levels (%.4f on [0, 1])'
              % (ex, rmse, rmse / 255), file=sys.stderr)
    if a.teacher:
        d_t = os.path.join(work, 'effdm_teacher')
        effdm(['sample', '--ldm-config', cfg_path, '--ckpt', a.teacher, '--out', d_t] + common, a)
        ti = read_pngs(d_t, n, uncond)
        out['rmse_teacher_vs_pytorch'] = float(np.sqrt(np.mean((ti - pt) ** 2)))
        print('  pixel RMSE effdm sample --ckpt %s (the FP teacher) vs PyTorch %.3f levels (%.4f on [0, 1])'
              % (a.teacher, out['rmse_teacher_vs_pytorch'], out['rmse_teacher_vs_pytorch'] / 255), file=sys.stderr)
        for ex, im in zip(a.export, exp_imgs):
            r = float(np.sqrt(np.mean((ti - im) ** 2)))
            out.setdefault('rmse_teacher_vs_export', {})[ex] = r
            print('  pixel RMSE the FP teacher vs %s %.3f levels (%.4f on [0, 1])' % (ex, r, r / 255), file=sys.stderr)
    print(json.dumps(out))


if __name__ == '__main__':
    main()
