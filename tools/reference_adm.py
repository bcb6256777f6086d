#!/usr/bin/env python3
"""ADM fixtures from openai/guided-diffusion's own code, in float64.

Runs guided-diffusion's `unet.py` (UNetModel) and `gaussian_diffusion.py` / `respace.py` (its DDPM
learned-range and DDIM steps) imported from a checkout given on the command line -- nothing of it
is copied here -- on small random configs covering every option wgsl-diff implements, and writes:

  tests/fixtures/adm_NAME.safetensors     weights in the tools/convert_adm.py format (float16, so the
                                          mixed-precision load path is what the tests exercise)
  tests/fixtures/adm_NAME_io.safetensors  x, timesteps, y -> output (all out_channels), and for
                                          adm_cond also the sampler steps and MC-Dropout maps

Three changes make guided-diffusion's model run in float64 (it rounds to float32 in places by
design): GroupNorm32 normalises in the input's dtype instead of float32, `model.dtype` is float64,
and the float32 sinusoidal timestep embedding is widened to float64 (it stays computed in float32,
as wgsl-diff does). QKVAttentionLegacy's float32 softmax is left as it is (~1e-7 relative).

Usage:
    git clone https://github.com/openai/guided-diffusion /tmp/guided-diffusion
    .venv/bin/python tools/reference_adm.py --guided-diffusion /tmp/guided-diffusion
    .venv/bin/python tools/reference_adm.py --guided-diffusion /tmp/guided-diffusion --large
        # tests/fixtures/large/adm64_random*.safetensors: the 64x64 architecture (296 M parameters)
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch as th
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convert_adm  # noqa: E402
import wgsl_noise  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
DROPOUT_PURPOSE, DROPOUT_LAYER_SHIFT = 5, 16  # src/sampling/noise.rs

# Small configs (UNetModel arguments); together they cover every flag.
CONFIGS = {
    # class-conditional, learn_sigma, scale-shift norm, res-block up/down, new qkv order,
    # num_head_channels, dropout (for MC-Dropout), float16 blocks.
    "cond": dict(image_size=16, in_channels=3, model_channels=32, out_channels=6,
                 num_res_blocks=1, attention_resolutions=[2], dropout=0.1,
                 channel_mult=[1.0, 1.0], conv_resample=True, dims=2, num_classes=10,
                 use_fp16=True, num_heads=1, num_head_channels=16, num_heads_upsample=-1,
                 use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=True),
    # unconditional ε-only, plain norm, conv resampling, legacy qkv order, num_heads with a
    # different num_heads_upsample.
    "uncond": dict(image_size=8, in_channels=3, model_channels=32, out_channels=3,
                   num_res_blocks=1, attention_resolutions=[1, 2], dropout=0.0,
                   channel_mult=[1.0, 1.0], conv_resample=True, dims=2, num_classes=None,
                   use_fp16=False, num_heads=2, num_head_channels=-1, num_heads_upsample=4,
                   use_scale_shift_norm=False, resblock_updown=False,
                   use_new_attention_order=False),
    # legacy order with num_head_channels, pooling/nearest resampling without convolutions,
    # scale-shift without updown, learn_sigma, attention at full resolution.
    "legacy": dict(image_size=8, in_channels=3, model_channels=32, out_channels=6,
                   num_res_blocks=1, attention_resolutions=[1, 2], dropout=0.0,
                   channel_mult=[1.0, 1.0], conv_resample=False, dims=2, num_classes=None,
                   use_fp16=False, num_heads=1, num_head_channels=8, num_heads_upsample=-1,
                   use_scale_shift_norm=True, resblock_updown=False,
                   use_new_attention_order=False),
}
# The released 64x64 model's architecture, for the large fixture.
LARGE = convert_adm.model_config(dict(convert_adm.DEFAULTS, **convert_adm.PRESETS["64x64_diffusion"]))


def import_guided_diffusion(root):
    sys.path.insert(0, str(Path(root).resolve()))
    from guided_diffusion import gaussian_diffusion, nn, respace, unet

    # Float64 throughout (see the module docstring).
    nn.GroupNorm32.forward = lambda self, x: th.nn.GroupNorm.forward(self, x)
    embed = unet.timestep_embedding
    unet.timestep_embedding = lambda *a, **k: embed(*a, **k).double()
    return gaussian_diffusion, respace, unet


def build(unet, cfg, seed, dtype=th.float16):
    """UNetModel(**cfg) with random weights rounded to `dtype`, in float64; and the state dict."""
    args = dict(cfg, channel_mult=tuple(int(m) if m == int(m) else m for m in cfg["channel_mult"]),
                use_fp16=False)
    model = unet.UNetModel(**args).double().eval()
    model.dtype = th.float64
    g = th.Generator().manual_seed(seed)
    stored = {}
    for name, p in model.state_dict().items():
        if name.endswith("bias"):
            v = 0.1 * th.randn(p.shape, generator=g, dtype=th.float64)
        elif p.dim() == 1:  # GroupNorm weight
            v = 1 + 0.2 * th.randn(p.shape, generator=g, dtype=th.float64)
        elif name == "label_emb.weight":
            v = th.randn(p.shape, generator=g, dtype=th.float64)
        else:
            v = th.randn(p.shape, generator=g, dtype=th.float64) / np.sqrt(p[0].numel())
        stored[name] = v.to(dtype)
    model.load_state_dict({k: v.double() for k, v in stored.items()})
    want = convert_adm.expected_shapes(cfg)
    got = {k: tuple(v.shape) for k, v in stored.items()}
    assert want == got, f"convert_adm.expected_shapes disagrees: {set(want) ^ set(got)}"
    return model, stored


def inputs(cfg, batch, seed):
    g = th.Generator().manual_seed(seed)
    s = cfg["image_size"]
    x = th.randn(batch, cfg["in_channels"], s, s, generator=g).double()
    t = th.randperm(1000, generator=g)[:batch].double()
    y = None if cfg["num_classes"] is None else th.randint(cfg["num_classes"], (batch,), generator=g)
    return x, t, y


def f32(t):
    return t.detach().float().contiguous()


def spaced(gd, respace, schedule, timesteps, learn_sigma):
    betas = gd.get_named_beta_schedule(schedule, 1000)
    return respace.SpacedDiffusion(
        use_timesteps=set(timesteps), betas=betas, model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=gd.ModelVarType.LEARNED_RANGE if learn_sigma else gd.ModelVarType.FIXED_LARGE,
        loss_type=gd.LossType.MSE, rescale_timesteps=False)


def sampler_steps(gd, respace, model, x, y, steps, seed):
    """guided-diffusion's p_sample (learned range) and ddim_sample (eta 0), step by step from
    the same x_T, with given noise; timesteps are diffusers' leading spacing of `steps`."""
    timesteps = [i * (1000 // steps) for i in range(steps)]
    diffusion = spaced(gd, respace, "cosine", timesteps, learn_sigma=True)
    g = th.Generator().manual_seed(seed)
    noise = th.randn(steps, *x.shape, generator=g).double()
    out = {"sampler/timesteps": th.tensor(timesteps[::-1], dtype=th.float32),
           "sampler/noise": f32(noise)}
    randn_like = th.randn_like
    for name, step in [("ddpm", diffusion.p_sample), ("ddim", diffusion.ddim_sample)]:
        xs = [x]
        for i, index in enumerate(reversed(range(steps))):
            th.randn_like = lambda _, z=noise[i]: z
            t = th.full((x.shape[0],), index, dtype=th.long)
            xs.append(step(model, xs[-1], t, clip_denoised=True, model_kwargs={"y": y})["sample"])
        th.randn_like = randn_like
        out[f"sampler/{name}"] = f32(th.stack(xs))
    return out


def mc_dropout(model, cfg, x, t, y, copies, seed, step, first_index):
    """The unbiased variance over `copies` dropout passes of ε, with masks from wgsl-diff's noise
    streams: element kept (times 1/(1-p)) where its N(0,1) draw reaches the f32 Φ⁻¹(p)."""
    p = cfg["dropout"]
    threshold = np.float32(th.special.ndtri(th.tensor(p, dtype=th.float64)).item())
    layers = [m for m in model.modules() if isinstance(m, th.nn.Dropout)]
    eps = []
    for m in range(copies):
        for layer, module in enumerate(layers):
            def forward(h, layer=layer, m=m):
                z = wgsl_noise.normal(seed, DROPOUT_PURPOSE, layer << DROPOUT_LAYER_SHIFT | step,
                                      tuple(h.shape), first_index, copy=m)
                return h * th.from_numpy(z >= threshold).double() / (1 - p)
            module.forward = forward
        with th.no_grad():
            eps.append(model(x, t, y)[:, : cfg["in_channels"]])
    for module in layers:
        del module.forward
    return th.stack(eps).var(dim=0, unbiased=True)


def write_case(gd, respace, unet, name, cfg, seed, out_dir, batch=2):
    model, stored = build(unet, cfg, seed)
    x, t, y = inputs(cfg, batch, seed + 1)
    with th.no_grad():
        output = model(x, t, y)
    io = {"x": f32(x), "timesteps": f32(t), "output": f32(output)}
    if y is not None:
        io["y"] = y.float()
    if name == "cond":
        with th.no_grad():
            io.update(sampler_steps(gd, respace, model, x, y, steps=5, seed=seed + 2))
        mc = dict(copies=3, seed=11, step=4, first_index=5)
        io["mc_dropout/map"] = f32(mc_dropout(model, cfg, x, t, y, **mc))
        io["mc_dropout/settings"] = th.tensor([float(v) for v in mc.values()])
    flags = dict(learn_sigma=cfg["out_channels"] == 6, diffusion_steps=1000, noise_schedule="cosine",
                 predict_xstart=False, rescale_timesteps=False, use_kl=False)
    convert_adm.write(out_dir / f"adm_{name}.safetensors", stored, cfg,
                      convert_adm.scheduler_config(flags))
    save_file(io, str(out_dir / f"adm_{name}_io.safetensors"))
    print(f"adm_{name}: {sum(v.numel() for v in stored.values()):,} parameters, "
          f"|output| max {output.abs().max():.3f}")


def write_large(unet, out_dir):
    """The 64x64 architecture with random float32 weights and one float64 forward."""
    model, stored = build(unet, LARGE, seed=64, dtype=th.float32)
    x, t, y = inputs(LARGE, 1, seed=65)
    with th.no_grad():
        output = model(x, t, y)
    flags = dict(convert_adm.DEFAULTS, **convert_adm.PRESETS["64x64_diffusion"])
    convert_adm.write(out_dir / "adm64_random.safetensors", stored, LARGE,
                      convert_adm.scheduler_config(flags))
    save_file({"x": f32(x), "timesteps": f32(t), "y": y.float(), "output": f32(output)},
              str(out_dir / "adm64_random_io.safetensors"))
    print(f"adm64_random: {sum(v.numel() for v in stored.values()):,} parameters")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--guided-diffusion", required=True,
                   help="a checkout of github.com/openai/guided-diffusion (holding guided_diffusion/)")
    p.add_argument("--out", type=Path, default=FIXTURES)
    p.add_argument("--large", action="store_true", help="write only the large 64x64 fixture")
    args = p.parse_args()
    gd, respace, unet = import_guided_diffusion(args.guided_diffusion)
    if args.large:
        (args.out / "large").mkdir(parents=True, exist_ok=True)
        write_large(unet, args.out / "large")
        return
    for seed, (name, cfg) in enumerate(CONFIGS.items()):
        write_case(gd, respace, unet, name, cfg, 100 * seed, args.out)


if __name__ == "__main__":
    main()
