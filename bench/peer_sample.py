"""The PyTorch peer of build/bench/sample: the shipped teacher in the CompVis modules, same work.

    /usr/bin/python3 bench/peer_sample.py [--threads 2]

Times (torch.inference_mode, CPU) the UNet forward at batch 1, 16 and 64 (class labels, the
context embedding(y)[:, None, :] as CompVis's ClassEmbedder), and a 50-step DDIM run with
guidance 3 over 64 images at batch 64 and 16, decode included (CompVis DDIMSampler through
the peer's LDMShim; the guided eps as CompVis: the model on [x, x] with [uncond, c]). Medians
of a few repetitions after a warm-up. Needs $PEER (default /work/shared/peer: teacher.py,
its einops stand-in) and a CompVis latent-diffusion checkout at $LDM (default /tmp/ldm).
One JSON line on stdout: every time, torch version, threads, BLAS.
"""
import os, sys, time, json, argparse, statistics, contextlib
sys.path.insert(0, os.environ.get('PEER', '/work/shared/peer'))
# omegaconf stand-in (Debian 12 has none; CompVis's UNetModel imports it)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'scripts', 'teachers'))
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
import torch
import teacher as T
import ldm.models.diffusion.ddim as _ddim
_ddim.tqdm = lambda it, **kw: it  # no progress bar in a timing

ap = argparse.ArgumentParser()
ap.add_argument('--threads', type=int, default=2)
ap.add_argument('--reps', type=int, default=5)
a = ap.parse_args()
torch.set_num_threads(a.threads)
tch = T.Teacher()
C, H, W = tch.latent
out = {'torch': torch.__version__, 'threads': a.threads,
       'blas': [l.strip() for l in torch.__config__.show().splitlines() if 'BLAS' in l][:1]}

def unet(x, t, y):
    return tch.unet(x, t, context=tch.embedding(y)[:, None, :])

def median_time(fn, reps):
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts)

g = torch.Generator().manual_seed(0)
with torch.inference_mode():
    for b in (1, 16, 64):
        x = torch.randn(b, C, H, W, generator=g)
        t = torch.full((b,), 500, dtype=torch.long)
        y = torch.arange(b) % tch.uncond
        s = median_time(lambda: unet(x, t, y), a.reps)
        out['unet_b%d_ms' % b] = 1e3 * s
        print('unet forward  batch %-3d %8.2f ms  %6.2f ms/image' % (b, 1e3 * s, 1e3 * s / b), file=sys.stderr)

    sampler = T.DDIMSampler(T.LDMShim(tch, lambda x, t, c: tch.unet(x, t, context=c)))
    def ddim(n, batch):
        for i in range(0, n, batch):
            y = torch.arange(i, i + batch) % tch.uncond
            c = tch.embedding(y)[:, None, :]
            uc = tch.embedding(torch.full((batch,), tch.uncond))[:, None, :]
            with contextlib.redirect_stdout(sys.stderr):  # CompVis prints its shapes; stdout is the JSON
                z, _ = sampler.sample(S=50, conditioning=c, batch_size=batch, shape=[C, H, W], verbose=False,
                                      unconditional_guidance_scale=3.0, unconditional_conditioning=uc, eta=0.0)
            tch.ae.decode(z / tch.scale_factor)
    for batch in (64, 16):
        s = median_time(lambda: ddim(64, batch), max(1, a.reps // 2))
        out['ddim50_64img_b%d_s' % batch] = s
        print('ddim 50 steps guidance 3  64 images  batch %-3d %7.2f s  %6.2f images/s' % (batch, s, 64 / s),
              file=sys.stderr)
print(json.dumps(out))
