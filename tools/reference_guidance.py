#!/usr/bin/env python3
"""Float64 PyTorch references of uncertainty-guided sampling (Algorithm 2) for the Rust tests.

Uses tools/guidance_torch.py (Rule G with torch.autograd, Rule P in closed form, both written from
ALGORITHM.md §3) on the tiny UNet fixtures, in float64, with seeded float32-exact noise that the
Rust tests replay through the NoisePlan. Writes tests/fixtures/guidance.safetensors:

  step/<model>/x, step/<model>/labels (class model), step/<model>/noise   one guided step's inputs
  step/<model>/<rule>/percentile        the guided eps with thr = the image's 0.9-quantile of U
  step/<model>/<rule>/threshold         a (C, H, W) calibrated threshold (0.8 x the batch max of U)
  step/<model>/<rule>/calibrated        the guided eps with that threshold
  step/<model>/<rule>/uncertainty       the rule's map U (diagnostic)
  run/init_noise, run/noise/<i>          a whole guided DDIM run's noise (guided steps i = 0, 1)
  run/<rule>/final                       its final x_0

Settings (timestep, M, p, strength, steps) are in the file's metadata. All tensors float32 copies of
the float64 results.

Usage:
    .venv/bin/python tools/reference_guidance.py
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from guidance_torch import guide
from make_fixtures import randn_f32_exact
from reference_uncertainty import FIXTURES, NUM_TRAIN_TIMESTEPS, leading_timesteps, linear_alphas_cumprod, load_unet

SETTINGS = dict(t=600, M=3, percentile=0.9, strength=0.7, batch=2, seed=11,
                run_steps=4, run_guided_steps=2, run_strength=0.5, labels=[3, 7])
RULES = ("gradient", "posterior")


def one_step(name, unet, labels, gen, out):
    """One guided step of each rule, with a percentile and a calibrated threshold."""
    s = SETTINGS
    size, channels = unet.config.sample_size, unet.config.in_channels
    x = randn_f32_exact((s["batch"], channels, size, size), gen)
    noise = randn_f32_exact((s["M"] * s["batch"], channels, size, size), gen)
    abar = linear_alphas_cumprod()[s["t"]]
    eps = unet(x, torch.full((s["batch"],), float(s["t"]), dtype=x.dtype), class_labels=labels).sample.detach()
    out.update({f"step/{name}/x": x, f"step/{name}/noise": noise})
    if labels is not None:
        out[f"step/{name}/labels"] = labels.to(torch.float64)
    for rule in RULES:
        key = f"step/{name}/{rule}"
        guided, u = guide(unet, x, s["t"], labels, eps, abar, noise, rule, s["strength"],
                          ("percentile", s["percentile"]))
        threshold = 0.8 * u.max(dim=0).values
        calibrated, _ = guide(unet, x, s["t"], labels, eps, abar, noise, rule, s["strength"],
                              ("calibrated", threshold))
        out.update({f"{key}/percentile": guided, f"{key}/uncertainty": u,
                    f"{key}/threshold": threshold, f"{key}/calibrated": calibrated})
        changed = (guided != eps).double().mean().item()
        print(f"{key}: {changed:.0%} of eps guided (percentile), "
              f"{(calibrated != eps).double().mean().item():.0%} (calibrated)")


def guided_run(unet, gen, out):
    """DDIM (eta 0, clip, leading) with guidance at the first steps, every rule from the same noise."""
    s = SETTINGS
    size, channels = unet.config.sample_size, unet.config.in_channels
    shape = (s["batch"], channels, size, size)
    alphas_cumprod = linear_alphas_cumprod()
    stride = NUM_TRAIN_TIMESTEPS // s["run_steps"]
    init = randn_f32_exact(shape, gen)
    noise = [randn_f32_exact((s["M"] * s["batch"], *shape[1:]), gen) for _ in range(s["run_guided_steps"])]
    out["run/init_noise"] = init
    for i, n in enumerate(noise):
        out[f"run/noise/{i}"] = n
    for rule in RULES:
        x = init
        for i, t in enumerate(leading_timesteps(s["run_steps"])):
            abar = alphas_cumprod[t]
            abar_prev = alphas_cumprod[t - stride] if t >= stride else torch.tensor(1.0, dtype=torch.float64)
            eps = unet(x, torch.full((shape[0],), float(t), dtype=x.dtype)).sample.detach()
            if i < s["run_guided_steps"]:
                eps, _ = guide(unet, x, t, None, eps, abar, noise[i], rule, s["run_strength"],
                               ("percentile", s["percentile"]))
            x0 = ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
            x = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps
        out[f"run/{rule}/final"] = x
        print(f"run/{rule}: final in [{x.min():.3f}, {x.max():.3f}]")


def main():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    gen = torch.Generator().manual_seed(SETTINGS["seed"])
    out = {}
    gray = load_unet(FIXTURES / "unet_tiny_gray.safetensors").double()
    one_step("gray", gray, None, gen, out)
    labels = torch.tensor(SETTINGS["labels"])
    one_step("class", load_unet(FIXTURES / "unet_tiny_class.safetensors").double(), labels, gen, out)
    guided_run(gray, gen, out)
    path = FIXTURES / "guidance.safetensors"
    save_file({k: v.to(torch.float32).contiguous() for k, v in out.items()}, str(path),
              metadata={"settings": json.dumps(SETTINGS, sort_keys=True)})
    print(f"{path}: {len(out)} tensors, {path.stat().st_size / 1e3:.1f} KB")


if __name__ == "__main__":
    main()
