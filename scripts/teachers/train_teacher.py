#!/usr/bin/env python3
"""train_teacher.py: train a test teacher - a Fashion-MNIST LDM UNet of another shape - with the
CompVis latent-diffusion modules, and save it as a CompVis checkpoint (.ckpt + config.yaml).

    python3 scripts/teachers/train_teacher.py NAME OUT_DIR [--steps N] [--threads T]

NAME is one of SHAPES below. The first stage (AutoencoderKL), its scale_factor and the noise
schedule are the shipped teacher's (models/zoo/fmnist-ldm), so every test teacher lives in the
same latent space and is judged by the same judge network; only the UNet (and, for
class-conditional shapes, the class embedding) is new. The recipe is the shipped teacher's
(TRAINING.txt): AdamW 5e-4, batch 64, 10% of the labels replaced by the unconditional label,
eps-prediction MSE, gradient clip 1.0, EMA (decay min(0.999, (1+n)/(10+n))); the EMA weights
are saved, in the CompVis layout (model.diffusion_model.*, first_stage_model.*,
cond_stage_model.embedding.weight, the schedule buffers, scale_factor) with the Lightning
extras (global_step, epoch, optimizer_states) a real training checkpoint carries.

Needs Debian's python3-torch and python3-yaml, and a checkout of CompVis/latent-diffusion at
$LDM (default /tmp/ldm; its ldm/ folder is all that is used). einops.py beside this file
stands in for the einops package, which Debian 12 lacks. Resumable: OUT_DIR/train_state.pt is
written every 500 steps and picked up on a rerun; the finished checkpoint is written last
(under a temporary name, then renamed).
"""
import argparse, copy, gzip, os, struct, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.environ.get('LDM', '/tmp/ldm'))
import numpy as np
import torch, torch.nn as nn, yaml
from ldm.modules.diffusionmodules.model import Encoder
from ldm.modules.diffusionmodules.openaimodel import UNetModel

ZOO = os.path.join(ROOT, 'models', 'zoo', 'fmnist-ldm')
FMNIST = '/usr/share/datasets/fashion-mnist'

# UNet shapes (CompVis UNetModel params). Each differs from the shipped teacher
# (model_channels 32, channel_mult [1, 2], 2 res blocks, SpatialTransformer at ds 2, num_heads 1).
SHAPES = {
    # 3 levels, one res block per level, scale-shift norm, ResBlock up/down-sampling,
    # num_head_channels: the shape the unseen teacher has
    'ssud3': dict(model_channels=32, channel_mult=[1, 2, 2], num_res_blocks=1,
                  attention_resolutions=[2, 4], use_scale_shift_norm=True, resblock_updown=True,
                  num_head_channels=16, use_spatial_transformer=True, transformer_depth=1,
                  context_dim=64, cond=True),
    # 4 levels down to 1x1, wider top, 2 res blocks, 4 heads, a 2-deep transformer, 48-d context
    # (every width a multiple of 32: CompVis' GroupNorm32 has 32 groups)
    'deep4': dict(model_channels=32, channel_mult=[1, 2, 2, 4], num_res_blocks=2,
                  attention_resolutions=[2, 4], num_heads=4, use_spatial_transformer=True,
                  transformer_depth=2, context_dim=48, cond=True),
    # unconditional (LSUN-style): self-attention AttentionBlock (Conv1d qkv), scale-shift norm,
    # resblock up/down, 2 heads
    'uncond': dict(model_channels=32, channel_mult=[1, 2, 2], num_res_blocks=2,
                   attention_resolutions=[2, 4], num_heads=2, use_scale_shift_norm=True,
                   resblock_updown=True, cond=False),
}


def read_idx(path):
    with gzip.open(path, 'rb') as f:
        data = f.read()
    magic, = struct.unpack('>I', data[:4])
    nd = magic & 0xff
    dims = struct.unpack('>' + 'I' * nd, data[4:4 + 4 * nd])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * nd).reshape(dims)


def fmnist_train():
    x = read_idx(os.path.join(FMNIST, 'train-images-idx3-ubyte.gz')).astype(np.float32) / 127.5 - 1
    y = read_idx(os.path.join(FMNIST, 'train-labels-idx1-ubyte.gz')).astype(np.int64)
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)), constant_values=-1.0)[:, None]
    return torch.from_numpy(x), torch.from_numpy(y)


def encode_latents(sd, ae_params, out_path):
    """Latents of the training set: a sample of the first stage's posterior, times scale_factor."""
    if os.path.exists(out_path):
        return torch.load(out_path)
    dd = ae_params['ddconfig']
    enc = Encoder(**dd)
    quant_conv = nn.Conv2d(2 * dd['z_channels'], 2 * ae_params['embed_dim'], 1)
    sub = lambda p: {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    enc.load_state_dict(sub('first_stage_model.encoder.'))
    quant_conv.load_state_dict(sub('first_stage_model.quant_conv.'))
    x, y = fmnist_train()
    g = torch.Generator().manual_seed(0)
    zs = []
    with torch.no_grad():
        for i in range(0, len(x), 500):
            m = quant_conv(enc(x[i:i + 500]))
            mean, logvar = m.chunk(2, 1)
            std = torch.exp(0.5 * logvar.clamp(-30, 20))
            zs.append(mean + std * torch.randn(mean.shape, generator=g))
    z = torch.cat(zs) * float(sd['scale_factor'])
    torch.save((z, y), out_path + '.tmp')
    os.replace(out_path + '.tmp', out_path)
    return z, y


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('name', choices=sorted(SHAPES))
    ap.add_argument('out')
    ap.add_argument('--steps', type=int, default=5000)
    ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    shape = dict(SHAPES[a.name])
    cond = shape.pop('cond')

    zoo_cfg = yaml.safe_load(open(os.path.join(ZOO, 'config.yaml')))
    ck = torch.load(os.path.join(ZOO, 'model.ckpt'), map_location='cpu')
    sd = ck['state_dict']
    p = zoo_cfg['model']['params']
    z, y = encode_latents(sd, p['first_stage_config']['params'], os.path.join(a.out, 'latents.pt'))

    unet_params = dict(image_size=8, in_channels=4, out_channels=4, **shape)
    torch.manual_seed(a.seed)
    unet = UNetModel(**unet_params)
    n_classes = 11
    emb = nn.Embedding(n_classes, shape['context_dim']) if cond else None
    params = list(unet.parameters()) + (list(emb.parameters()) if cond else [])
    opt = torch.optim.AdamW(params, lr=5e-4)
    ema_unet, ema_emb = copy.deepcopy(unet), copy.deepcopy(emb) if cond else None
    ac = sd['alphas_cumprod'].float()
    T = ac.shape[0]
    step = 0
    st_path = os.path.join(a.out, 'train_state.pt')
    if os.path.exists(st_path):
        st = torch.load(st_path)
        unet.load_state_dict(st['unet']); ema_unet.load_state_dict(st['ema_unet'])
        if cond:
            emb.load_state_dict(st['emb']); ema_emb.load_state_dict(st['ema_emb'])
        opt.load_state_dict(st['opt']); step = st['step']
        torch.set_rng_state(st['rng'])
        print(f'resumed at step {step}', flush=True)
    n_par = sum(q.numel() for q in unet.parameters())
    print(f'{a.name}: UNet {n_par} parameters, {a.steps} steps of batch {a.batch}', flush=True)
    t0, loss_acc = time.time(), 0.0
    while step < a.steps:
        idx = torch.randint(0, len(z), (a.batch,))
        x0 = z[idx]
        t = torch.randint(0, T, (a.batch,))
        noise = torch.randn_like(x0)
        abar = ac[t].view(-1, 1, 1, 1)
        xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        if cond:
            lab = y[idx].clone()
            lab[torch.rand(a.batch) < 0.1] = n_classes - 1
            eps = unet(xt, t, context=emb(lab)[:, None, :])
        else:
            eps = unet(xt, t)
        loss = ((eps - noise) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            pairs = [(ema_unet, unet)] + ([(ema_emb, emb)] if cond else [])
            for em, m in pairs:
                for pe, pm in zip(em.parameters(), m.parameters()):
                    pe.mul_(decay).add_(pm, alpha=1 - decay)
        loss_acc += loss.item()
        if step % 100 == 0:
            el = time.time() - t0
            print(f'step {step}/{a.steps} loss {loss_acc / 100:.4f} {el:.0f} s', flush=True)
            loss_acc = 0.0
        if step % 500 == 0 or step == a.steps:
            st = dict(unet=unet.state_dict(), ema_unet=ema_unet.state_dict(), opt=opt.state_dict(),
                      step=step, rng=torch.get_rng_state())
            if cond:
                st.update(emb=emb.state_dict(), ema_emb=ema_emb.state_dict())
            torch.save(st, st_path + '.tmp')
            os.replace(st_path + '.tmp', st_path)

    out_sd = {}
    for k, v in ema_unet.state_dict().items():
        out_sd['model.diffusion_model.' + k] = v.clone()
    for k, v in sd.items():
        if k.startswith('first_stage_model.') or not k.startswith(('model.', 'cond_stage_model.')):
            out_sd[k] = v
    if cond:
        out_sd['cond_stage_model.embedding.weight'] = ema_emb.weight.detach().clone()
    ckpt = {'state_dict': out_sd, 'global_step': step, 'epoch': 0,
            'pytorch-lightning_version': ck.get('pytorch-lightning_version', '1.4.2'),
            'optimizer_states': [{'state': {}, 'param_groups': [{'lr': 5e-4}]}], 'lr_schedulers': []}
    cfg = copy.deepcopy(zoo_cfg)
    mp = cfg['model']['params']
    mp['unet_config']['params'] = unet_params
    if cond:
        mp['cond_stage_config']['params']['embed_dim'] = shape['context_dim']
    else:
        mp['cond_stage_config'] = '__is_unconditional__'
        mp['cond_stage_trainable'] = False
        mp.pop('conditioning_key', None)
        mp['cond_stage_key'] = 'image'
    with open(os.path.join(a.out, 'config.yaml.tmp'), 'w') as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    torch.save(ckpt, os.path.join(a.out, 'model.ckpt.tmp'))
    os.replace(os.path.join(a.out, 'config.yaml.tmp'), os.path.join(a.out, 'config.yaml'))
    os.replace(os.path.join(a.out, 'model.ckpt.tmp'), os.path.join(a.out, 'model.ckpt'))
    print(f'wrote {a.out}/model.ckpt and config.yaml after {step} steps, {time.time() - t0:.0f} s', flush=True)


if __name__ == '__main__':
    main()
