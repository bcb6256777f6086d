#!/usr/bin/env python3
"""The PyTorch twin of `wgsl-diff sample` (DDIM, optional Algorithm 1 uncertainty and Algorithm 2
guidance), for large runs on CPU.

diffusers' UNet2DModel and DDIMScheduler (configured from the weights file's metadata, like
wgsl-diff) driven by wgsl-diff's own noise streams (tools/wgsl_noise.py), so sample i of a run here is
sample i of `wgsl-diff sample` with the same model, --seed, --steps, --eta and uncertainty window, up to
float32 rounding. Uncertainty is Algorithm 1 written from /work/shared/ALGORITHM.md §1: the M re-noised
copies of the clipped x̂0 at the same t go through one forward over M·B rows, and the map is one of
centred / variance / variance-biased. Guidance (--guidance gradient|posterior, the same window,
strength, percentile and threshold-file options as wgsl-diff) is tools/guidance_torch.py: Rule G by
torch.autograd, Rule P in closed form, with wgsl-diff's guidance noise stream; the estimator then sees
the guided ε, as in wgsl-diff. Everything runs in float32.

Writes sample_NNNNNN.png (grayscale or RGB, diffusers' quantisation), and with --uncertainty
scores.csv (index,file,score, like wgsl-diff) and step_scores.npy (N, steps) with each step's summed
map of --uc-mode (zero outside the window), for analysing which steps' uncertainty tracks sample
quality; step_scores_MODE.npy hold the same for every mode (one run computes all three).

Usage:
    .venv/bin/python tools/sample_torch.py --num 1000 --steps 10 --out /tmp/torch_run
    .venv/bin/python tools/sample_torch.py --num 256 --steps 10 --uncertainty -M 5 --out /tmp/uc
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image
from safetensors import safe_open

import wgsl_noise
from guidance_torch import guide
from reference_uncertainty import REPO_ROOT, load_unet, uncertainty_maps

DEFAULT_MODEL = REPO_ROOT / "weights" / "fashion_mnist_ddpm.safetensors"


# The modes as wgsl-diff's --uc-mode spells them, and as reference_uncertainty.py names its maps.
MODES = {"centred": "centred", "variance": "variance", "variance-biased": "variance_biased"}


@torch.no_grad()
def sample_batch(unet, scheduler, args, first, count, window):
    """Samples first .. first + count; returns (images in [-1, 1], {mode: per-step scores})."""
    c, size = unet.config.in_channels, unet.config.sample_size
    shape = (count, c, size, size)
    device = next(unet.parameters()).device
    noise = lambda n: torch.from_numpy(n).to(device)
    x = noise(wgsl_noise.normal(args.seed, wgsl_noise.INITIAL, 0, shape, first))
    step_scores = {mode: torch.zeros(count, len(scheduler.timesteps)) for mode in MODES}
    for i, t in enumerate(scheduler.timesteps):
        eps = unet(x, t).sample
        if args.guidance and i in args.guidance_window:
            perturbation = noise(
                wgsl_noise.copies(args.seed, wgsl_noise.GUIDANCE, i, args.mc_samples, shape, first))
            threshold = ("percentile", args.percentile)
            if args.threshold is not None:
                threshold = ("calibrated", args.threshold[i].to(device))
            eps, _ = guide(unet, x, t, None, eps, scheduler.alphas_cumprod[t], perturbation,
                           args.guidance, args.guidance_strength, threshold)
        ancestral = None
        if args.eta > 0:
            ancestral = noise(wgsl_noise.normal(args.seed, wgsl_noise.ANCESTRAL, i, shape, first))
        out = scheduler.step(eps, t, x, eta=args.eta, variance_noise=ancestral)
        if args.uncertainty and i in window:
            abar = scheduler.alphas_cumprod[t]
            perturbation = noise(
                wgsl_noise.copies(args.seed, wgsl_noise.UNCERTAINTY, i, args.mc_samples, shape, first))
            x0 = out.pred_original_sample.repeat(args.mc_samples, 1, 1, 1)
            renoised = abar.sqrt() * x0 + (1 - abar).sqrt() * perturbation
            eps_copies = unet(renoised, t).sample.view(args.mc_samples, *shape)
            maps = uncertainty_maps(eps, eps_copies)
            for mode, name in MODES.items():
                step_scores[mode][:, i] = maps[name].sum(dim=(1, 2, 3)).cpu()
        x = out.prev_sample
    return x, step_scores


def save_png(image, path):
    """diffusers' quantisation: round(clamp(x / 2 + 0.5, 0, 1) * 255)."""
    pixels = ((image / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="wgsl-diff weights file")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--start-index", type=int, default=0)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--uncertainty", action="store_true")
    p.add_argument("-M", "--mc-samples", type=int, default=5)
    p.add_argument("--uc-mode", choices=("centred", "variance", "variance-biased"), default="centred")
    p.add_argument("--uc-start", type=int, default=0)
    p.add_argument("--uc-steps", type=int, help="[default: all from --uc-start]")
    p.add_argument("--guidance", choices=("gradient", "posterior"))
    p.add_argument("--guidance-strength", type=float, default=1.0)
    p.add_argument("--percentile", type=float, default=0.95)
    p.add_argument("--guidance-start", type=int, default=0)
    p.add_argument("--guidance-steps", type=int, default=3)
    p.add_argument("--threshold-file", type=Path, help="(steps, C, H, W) .npy from wgsl-diff calibrate")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    args = p.parse_args()
    if args.uncertainty and args.mc_samples < 2:
        p.error("-M must be at least 2")
    torch.set_num_threads(args.threads)

    unet = load_unet(args.model).to(args.device)
    with safe_open(str(args.model), framework="pt") as f:
        scheduler = DDIMScheduler.from_config(json.loads(f.metadata()["scheduler"]))
    scheduler.set_timesteps(args.steps)
    last = args.steps if args.uc_steps is None else min(args.steps, args.uc_start + args.uc_steps)
    window = range(args.uc_start, last)
    args.guidance_window = range(args.guidance_start, args.guidance_start + args.guidance_steps)
    args.threshold = None
    if args.threshold_file is not None:
        args.threshold = torch.from_numpy(np.load(args.threshold_file))

    args.out.mkdir(parents=True, exist_ok=True)
    all_scores = []
    start = time.time()
    for first in range(args.start_index, args.start_index + args.num, args.batch):
        count = min(args.batch, args.start_index + args.num - first)
        images, step_scores = sample_batch(unet, scheduler, args, first, count, window)
        for k, image in enumerate(images.cpu()):
            save_png(image, args.out / f"sample_{first + k:06}.png")
        all_scores.append(step_scores)
        print(f"samples {first}..{first + count} done, {time.time() - start:.0f} s", flush=True)

    if args.uncertainty:
        for mode in MODES:
            scores = torch.cat([s[mode] for s in all_scores]).numpy()
            np.save(args.out / f"step_scores_{mode}.npy", scores)
        step_scores = np.load(args.out / f"step_scores_{args.uc_mode}.npy")
        np.save(args.out / "step_scores.npy", step_scores)
        totals = step_scores.astype(np.float64).sum(axis=1)
        lines = ["index,file,score"] + [
            f"{args.start_index + k},sample_{args.start_index + k:06}.png,{s:.9g}" for k, s in enumerate(totals)]
        (args.out / "scores.csv").write_text("\n".join(lines) + "\n")
    print(f"{args.num} samples in {args.out} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
