"""Seconds per distillation step of the upstream EfficientDM reference code on the LDM-4 ImageNet UNet (cin256-v2).

    /usr/bin/python3 bench/peer_cin256.py [--threads 2] [--batch 2] [--steps 4] [--calib 4] [--w 4] [--a 4]

The PyTorch peer of `build/bench/finetune --model cin256`: the CompVis cin256-v2 UNet
(tests/data/compvis_configs/cin256-v2.yaml) with RANDOM weights (torch.manual_seed; no checkpoint is needed
for a timing, and the first stage is not part of a distillation step), W4A4, batch --batch classes with
classifier-free guidance (2x that many UNet rows), 3x64x64 latents, on the CPU.

It imports /work/shared/peer/peer_edm.py ($PEER overrides the folder) and runs its build_student / distill
(the upstream EfficientDM classes, with peer_edm's documented CPU adaptations) unchanged, except:
  - Teacher: a stand-in with random weights exposing what peer_edm needs (unet, embedding, uncond, latent, cfg
    with the linear beta schedule). CompVis zero-initialises some convs/linears (zero_module: out layers,
    proj_out); those are re-initialised with their module's default init so the weight quantizers do not see
    all-zero tensors. Class embedder: 1001 classes (uncond = 1000), embed_dim 512 -> context [B, 1, 512].
  - calibration: peer_edm.calib_inputs is replaced by --calib random inputs (latents ~ N(0,1), timesteps
    uniform in [0, 1000), random class contexts) instead of teacher trajectories: only the activation ranges
    need initialising for a timing (naive PTQ init on all of them, TALSQ init on the first 4, as peer_edm).
  - DDIM steps per epoch: peer_edm.DDIM_STEPS = --steps (default 4) before build_student, so the TALSQ tables,
    the optimizer schedule and the sampler agree; one distillation step computes the same thing as with 100.
    It must divide 1000: otherwise CompVis's uniform DDIM schedule gets an extra timestep (3 -> 0, 333, 666,
    999, then +1 -> index 1000, out of range).
  - 1 epoch. Each step's seconds are printed to stderr as it completes; the first step is warm-up.
One JSON line on stdout at the end: the per-step seconds, the median of the steps after the first, peak RSS
(ru_maxrss), torch version, threads, BLAS, batch.
"""
import os, sys, time, json, argparse, resource, statistics
sys.path.insert(0, os.environ.get('PEER', '/work/shared/peer'))
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
import torch, torch.nn as nn, yaml
import peer_edm
from ldm.modules.diffusionmodules.openaimodel import UNetModel

CFG = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'data', 'compvis_configs', 'cin256-v2.yaml')

class RandomTeacher(nn.Module):
    """What peer_edm (LDMShim, DDIMSampler, build_student, distill) uses of teacher.Teacher, with random weights."""
    def __init__(self, cfg_path=CFG, seed=0):
        super().__init__()
        cfg = yaml.safe_load(open(cfg_path))['model']['params']
        self.cfg = cfg
        torch.manual_seed(seed)
        self.unet = UNetModel(**cfg['unet_config']['params'])
        for m in self.unet.modules():  # undo zero_module so no quantizer sees an all-zero weight
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not m.weight.detach().abs().sum():
                m.reset_parameters()
        cp = cfg['cond_stage_config']['params']
        self.embedding = nn.Embedding(cp['n_classes'], cp['embed_dim'])
        self.uncond = cp['n_classes'] - 1
        self.latent = [cfg['channels'], cfg['image_size'], cfg['image_size']]
        self.eval()

def random_calib_inputs(n):
    """Replaces peer_edm.calib_inputs: n random UNet inputs (only activation ranges need initialising)."""
    def calib(T, *a, **k):
        g = torch.Generator().manual_seed(7)
        xs = torch.randn([n] + T.latent, generator=g)
        ts = torch.randint(0, T.cfg['timesteps'], (n,), generator=g)
        y = torch.randint(0, T.uncond + 1, (n,), generator=g)
        with torch.no_grad(): cs = T.embedding(y)[:, None, :]
        return xs, ts, cs
    return calib

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--threads', type=int, default=2); ap.add_argument('--batch', type=int, default=2)
    ap.add_argument('--steps', type=int, default=4); ap.add_argument('--calib', type=int, default=4)
    ap.add_argument('--w', type=int, default=4); ap.add_argument('--a', type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    peer_edm.DDIM_STEPS, peer_edm.N_PER_CLASS = a.steps, a.batch
    peer_edm.calib_inputs = random_calib_inputs(a.calib)
    orig = peer_edm.Trainer.p_sample_ddim
    def timed(self, *args, **kw):  # peer_edm's Trainer records STEP_T; also print each step as it completes
        out = orig(self, *args, **kw)
        print(f'step {len(peer_edm.STEP_T)} {peer_edm.STEP_T[-1]:.2f}s loss {peer_edm.LOSSES[-1] if peer_edm.LOSSES else float("nan"):.4g} '
              f'rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB', file=sys.stderr, flush=True)
        return out
    peer_edm.Trainer.p_sample_ddim = timed
    t0 = time.time(); T = RandomTeacher()
    print(f'teacher built {time.time() - t0:.1f}s, {sum(p.numel() for p in T.unet.parameters()) / 1e6:.1f}M UNet params',
          file=sys.stderr, flush=True)
    t0 = time.time(); qnn = peer_edm.build_student(T, a.w, a.a); setup = time.time() - t0
    print(f'student built {setup:.1f}s, rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB',
          file=sys.stderr, flush=True)
    t0 = time.time(); peer_edm.distill(T, qnn, 1); ft = time.time() - t0
    st = peer_edm.STEP_T
    print(json.dumps(dict(peer='EfficientDM reference (PyTorch)', model='cin256-v2 (random init)', w_bits=a.w, a_bits=a.a,
                          batch=a.batch, unet_rows=2 * a.batch, ddim_steps=a.steps, step_seconds=st,
                          sec_per_step_median=statistics.median(st[1:]) if len(st) > 1 else None,
                          setup_seconds=setup, finetune_seconds=ft, torch=torch.__version__,
                          threads=torch.get_num_threads(), blas=os.path.realpath('/usr/lib/x86_64-linux-gnu/libblas.so.3'),
                          peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)), flush=True)

if __name__ == '__main__':
    main()
