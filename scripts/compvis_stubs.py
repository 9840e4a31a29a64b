"""compvis_stubs.py: import CompVis latent-diffusion's LatentDiffusion and DDIMSampler on a machine
with only Debian's python3-torch, python3-numpy, python3-yaml and python3-pil (no
pytorch_lightning, torchvision, taming, clip, kornia, einops, omegaconf).

    import compvis_stubs
    LatentDiffusion, DDIMSampler = compvis_stubs.load('/tmp/ldm')

Stand-ins, only as much as building, loading and sampling a LatentDiffusion touches:
pytorch_lightning.LightningModule is an nn.Module with a `device` property; rank_zero_only is
the identity; torchvision's make_grid, taming's VectorQuantizer2, clip, kornia and ldm's
x_transformer (text encoders) are placeholders that fail if called. einops and omegaconf come
from scripts/teachers/ (small stand-ins of their own). DDIMSampler.register_buffer moves every
schedule tensor to CUDA in CompVis's code; the returned subclass keeps it on the model's device
(the CPU here), and computes the same values.
"""
import os, sys, types

HERE = os.path.dirname(os.path.abspath(__file__))


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def _unavailable(what):
    class Unavailable:
        def __init__(self, *a, **k):
            raise RuntimeError('%s is a stand-in here (compvis_stubs.py)' % what)
    return Unavailable


def load(ldm_dir):
    import torch
    sys.path.insert(0, os.path.join(HERE, 'teachers'))  # einops, omegaconf stand-ins
    sys.path.insert(0, ldm_dir)

    class LightningModule(torch.nn.Module):
        @property
        def device(self):
            return next(self.parameters()).device

    pl = _module('pytorch_lightning', LightningModule=LightningModule)
    pl.utilities = _module('pytorch_lightning.utilities')
    pl.utilities.distributed = _module('pytorch_lightning.utilities.distributed', rank_zero_only=lambda f: f)
    tv = _module('torchvision')
    tv.utils = _module('torchvision.utils', make_grid=_unavailable('torchvision.utils.make_grid'))
    _module('taming')
    _module('taming.modules')
    _module('taming.modules.vqvae')
    _module('taming.modules.vqvae.quantize', VectorQuantizer2=_unavailable('taming VectorQuantizer2'))
    _module('clip')
    _module('kornia')
    _module('ldm.modules.x_transformer', Encoder=_unavailable('x_transformer.Encoder'),
            TransformerWrapper=_unavailable('x_transformer.TransformerWrapper'))
    import ldm.models.diffusion.ddim as ddim
    from ldm.models.diffusion.ddpm import LatentDiffusion
    ddim.tqdm = lambda it, **kw: it  # no progress bars

    class DDIMSampler(ddim.DDIMSampler):
        def register_buffer(self, name, attr):
            setattr(self, name, attr)

    return LatentDiffusion, DDIMSampler
