#!/usr/bin/env python3
"""The PyTorch twin of `wgsl-diff sample` (DDIM, optional Algorithm 1 uncertainty and Algorithm 2
guidance), for large runs on CPU.

diffusers' UNet2DModel and DDIMScheduler (configured from the weights file's metadata, like
wgsl-diff) driven by wgsl-diff's own noise streams (tools/common/wgsl_noise.py), so sample i of a run
here is sample i of `wgsl-diff sample` with the same model, --seed, --steps, --eta and uncertainty
window, up to float32 rounding. Uncertainty is Algorithm 1 written from docs/method.md §1: the M
re-noised copies of the clipped x̂0 at the same t go through one forward over M·B rows, and the map is
one of centred / variance / variance-biased. Guidance (--guidance gradient|posterior, the same window,
strength, percentile and threshold-file options as wgsl-diff) is tools/common/guidance_torch.py:
Rule G by torch.autograd, Rule P in closed form, with wgsl-diff's guidance noise stream; the estimator
then sees the guided ε, as in wgsl-diff. Everything runs in float32.

The Stein modes (typicality, posterior-variance, residual; tools/common/uncertainty.py and README.md
"Uncertainty modes") use the same re-noise draws n_m; the z-scored two need --uc-reference, a
reference file of `wgsl-diff reference` or of this script's --make-reference (the same .npz).

Writes sample_NNNNNN.png (grayscale or RGB, diffusers' quantisation), and with --uncertainty
scores.csv (index,file,score, then score_step_i for each window step, like wgsl-diff) and
step_scores.npy (N, steps) with each step's score of --uc-mode (the sum of its map; for typicality
Δ_t; zero outside the window); step_scores_MODE.npy hold the same for every mode the run can compute
(all six with --uc-reference, else the four that need none). --save-total-maps also writes
total_maps_MODE.npy (N, C, H, W), each mode's map summed over the window.

Runs resume: each finished batch leaves parts/*.pt (its scores) after its PNGs, and a rerun of the
same command skips the batches that have one (delete parts/ when changing any setting).

Real images instead of samples (--real-images IDX): image k (padded like training) is noised to each
step's timestep with wgsl-diff's reference noise (purpose 6) and scored at that step alone;
step_scores_MODE.npy (K, steps) and the images as sample_NNNNNN.png go to --out (a "run" that
tools/studies/uncertainty_study.py reads like a sampled one), and --make-reference FILE writes the
statistics file that `wgsl-diff reference` writes for the same images, seed and M.

Usage:
    .venv/bin/python -m tools.twin.sample_torch --num 1000 --steps 10 --out /tmp/torch_run
    .venv/bin/python -m tools.twin.sample_torch --num 256 --steps 10 --uncertainty -M 5 --out /tmp/uc
    .venv/bin/python -m tools.twin.sample_torch --steps 10 -M 5 --real-images TRAIN_IDX --num 500 \
        --seed 1 --make-reference /tmp/ref.npz --out /tmp/real_train
    .venv/bin/python -m tools.twin.sample_torch --num 1000 --steps 10 --uncertainty -M 5 \
        --uc-reference /tmp/ref.npz --out /tmp/uc
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

from tools.common import wgsl_noise
from tools.common.fashion_mnist import read_idx_images
from tools.common.guidance_torch import guide
from tools.common.paths import SHIPPED_MODEL as DEFAULT_MODEL
from tools.common.uncertainty import REFERENCE_STATS, stein_maps, uncertainty_maps
from tools.common.weights import load_unet


# The modes as wgsl-diff's --uc-mode spells them, and as tools/common/uncertainty.py names its maps.
MODES = {"centred": "centred", "variance": "variance", "variance-biased": "variance_biased",
         "typicality": "typicality", "posterior-variance": "posterior_variance", "residual": "residual"}
Z_SCORED = ("posterior-variance", "residual")


def run_modes(reference):
    """The modes a run computes: the z-scored ones only against a reference."""
    return [m for m in MODES if reference is not None or m not in Z_SCORED]


def load_reference(path, timesteps, sample_shape, copies):
    """A reference .npz (`wgsl-diff reference`, --make-reference) as float64 tensors, checked
    against the run's timesteps, sample shape and M like src/uncertainty/reference.rs."""
    data = np.load(path)
    if [int(t) for t in data["timesteps"]] != [int(t) for t in timesteps] \
            or tuple(int(v) for v in data["sample_shape"]) != tuple(sample_shape) \
            or int(data["copies"][0]) != copies:
        raise SystemExit(f"{path}: made for timesteps {data['timesteps'].tolist()}, samples "
                         f"{data['sample_shape'].tolist()} and M = {int(data['copies'][0])}; the run has "
                         f"{list(timesteps)}, {sample_shape} and M = {copies}")
    if (data["residual_sd"] <= 0).any():
        raise SystemExit(f"{path}: a step's residual spread is 0")
    return {k: torch.from_numpy(data[k]) for k in REFERENCE_STATS}


def step_maps(unet, eps, x0_hat, t, abar, perturbation, copies, reference, step):
    """Every mode's map at one step (B, C, H, W), keyed by wgsl-diff's mode names."""
    shape = x0_hat.shape
    renoised = abar.sqrt() * x0_hat.repeat(copies, 1, 1, 1) + (1 - abar).sqrt() * perturbation
    eps_copies = unet(renoised, t).sample.view(copies, *shape)
    maps = uncertainty_maps(eps, eps_copies)
    maps.update(stein_maps(eps_copies.double(), perturbation.view(copies, *shape).double(),
                           float((1 - abar) / abar), reference, step))
    return {mode: maps[name] for mode, name in MODES.items() if mode in run_modes(reference)}


@torch.no_grad()
def sample_batch(unet, scheduler, args, first, count, window, x=None, start=0):
    """Samples first .. first + count (from x at step `start` when given, for AUSE's half-way
    start); returns (images in [-1, 1], {mode: per-step scores}, {mode: map summed over window})."""
    c, size = unet.config.in_channels, unet.config.sample_size
    shape = (count, c, size, size)
    device = next(unet.parameters()).device
    noise = lambda n: torch.from_numpy(n).to(device)
    if x is None:
        x = noise(wgsl_noise.normal(args.seed, wgsl_noise.INITIAL, 0, shape, first))
    modes = run_modes(args.reference)
    step_scores = {mode: torch.zeros(count, len(scheduler.timesteps), dtype=torch.float64) for mode in modes}
    totals = {mode: torch.zeros(shape, dtype=torch.float64) for mode in modes}
    for i, t in enumerate(scheduler.timesteps):
        if i < start:
            continue
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
            maps = step_maps(unet, eps, out.pred_original_sample, t, abar, perturbation,
                             args.mc_samples, args.reference, i)
            for mode, value in maps.items():
                step_scores[mode][:, i] = value.sum(dim=(1, 2, 3)).cpu().double()
                totals[mode] += value.cpu().double()
        x = out.prev_sample
    return x, step_scores, totals


def image_score(mode, step_scores):
    """The image score from per-step scores (N, steps): their sum (typicality: of |Δ_t|)."""
    return np.abs(step_scores).sum(axis=1) if mode == "typicality" else step_scores.sum(axis=1)


def pad_images(pixels, shape):
    """uint8 (K, H0, W0) images centred on the model's (C, H, W) canvas in [-1, 1], background -1
    (as tools/train/train_demo.py pads and src/uncertainty/reference.rs reads real images)."""
    c, h, w = shape
    out = -torch.ones((len(pixels), c, h, w))
    dy, dx = (h - pixels.shape[1]) // 2, (w - pixels.shape[2]) // 2
    out[:, :, dy:dy + pixels.shape[1], dx:dx + pixels.shape[2]] = \
        torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)
    return out


@torch.no_grad()
def real_batch(unet, scheduler, args, x0, first):
    """Real images x0 (B, C, H, W) noised to every step's timestep and scored at that step alone:
    ({mode: (B, steps) step scores}, {raw statistic: (steps, B, ...)}) as `wgsl-diff reference`."""
    device = next(unet.parameters()).device
    shape = tuple(x0.shape)
    modes = run_modes(args.reference)
    steps = len(scheduler.timesteps)
    scores = {mode: torch.zeros(shape[0], steps, dtype=torch.float64) for mode in modes}
    raw = {"posterior_variance": [], "residual": [], "typicality": []}
    for i, t in enumerate(scheduler.timesteps):
        abar = scheduler.alphas_cumprod[t]
        z = torch.from_numpy(wgsl_noise.normal(args.seed, wgsl_noise.REFERENCE, i, shape, first)).to(device)
        x = abar.sqrt() * x0 + (1 - abar).sqrt() * z
        eps = unet(x, t).sample
        x0_hat = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
        if scheduler.config.clip_sample:
            x0_hat = x0_hat.clamp(-scheduler.config.clip_sample_range, scheduler.config.clip_sample_range)
        n = torch.from_numpy(
            wgsl_noise.copies(args.seed, wgsl_noise.UNCERTAINTY, i, args.mc_samples, shape, first)).to(device)
        renoised = abar.sqrt() * x0_hat.repeat(args.mc_samples, 1, 1, 1) + (1 - abar).sqrt() * n
        eps_copies = unet(renoised, t).sample.view(args.mc_samples, *shape)
        n = n.view(args.mc_samples, *shape).double()
        rho = float((1 - abar) / abar)
        unscaled = stein_maps(eps_copies.double(), n, rho, None, i)
        raw["posterior_variance"].append(unscaled["posterior_variance"].cpu())
        raw["residual"].append(unscaled["residual"].sum(dim=(1, 2, 3)).cpu())
        raw["typicality"].append(unscaled["typicality"].sum(dim=(1, 2, 3)).cpu())
        maps = uncertainty_maps(eps, eps_copies)
        maps.update(stein_maps(eps_copies.double(), n, rho, args.reference, i))
        for mode in modes:
            scores[mode][:, i] = maps[MODES[mode]].sum(dim=(1, 2, 3)).cpu().double()
    return scores, {k: torch.stack(v) for k, v in raw.items()}


def real_run(unet, scheduler, args):
    """--real-images: step scores of real images, and with --make-reference the statistics file."""
    pixels = read_idx_images(args.real_images)[args.start_index:args.start_index + args.num]
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    images = pad_images(pixels, shape)
    device = next(unet.parameters()).device
    all_scores, all_raw = [], []
    start = time.time()
    for first in range(0, len(images), args.batch):
        x0 = images[first:first + args.batch]
        # Noise rows are image indices in the file, as `wgsl-diff reference` draws them.
        part = args.out / "parts" / f"real_{args.start_index + first:06}_{len(x0)}.pt"
        if part.exists():
            scores, raw = torch.load(part)
        else:
            scores, raw = real_batch(unet, scheduler, args, x0.to(device), args.start_index + first)
            for k, image in enumerate(x0):
                save_png(image, args.out / f"sample_{args.start_index + first + k:06}.png")
            save_part((scores, raw), part)
        all_scores.append(scores)
        all_raw.append(raw)
        print(f"real images {first}..{first + len(x0)} done, {time.time() - start:.0f} s", flush=True)
    for mode in all_scores[0]:
        np.save(args.out / f"step_scores_{mode}.npy", torch.cat([s[mode] for s in all_scores]).numpy())
    if args.make_reference:
        if args.start_index != 0:
            raise SystemExit("--make-reference: wgsl-diff reference starts at image 0; drop --start-index")
        raw = {k: torch.cat([r[k] for r in all_raw], dim=1) for k in all_raw[0]}  # (steps, K, ...)
        stats = {}
        for name, v in raw.items():
            stats[f"{name}_mean"] = v.mean(dim=1).numpy()
            stats[f"{name}_sd"] = v.std(dim=1, unbiased=True).numpy()
        np.savez(args.make_reference, timesteps=scheduler.timesteps.numpy().astype(np.float64),
                 sample_shape=np.array(shape, dtype=np.float64), copies=np.array([args.mc_samples], dtype=np.float64),
                 images=np.array([len(images)], dtype=np.float64), seed=np.array([args.seed], dtype=np.float64),
                 **stats)
        print(f"reference of {len(images)} images in {args.make_reference}")


def save_part(value, path):
    """One finished batch's scores, written last (atomically) so a rerun resumes after it."""
    path.parent.mkdir(exist_ok=True)
    torch.save(value, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


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
    p.add_argument("--uc-mode", choices=tuple(MODES), default="centred")
    p.add_argument("--uc-reference", type=Path, help="reference .npz for the z-scored modes")
    p.add_argument("--save-total-maps", action="store_true",
                   help="also write total_maps_MODE.npy (N, C, H, W): each map summed over the window")
    p.add_argument("--real-images", type=Path, metavar="IDX",
                   help="score real images (--num of them from --start-index) instead of sampling")
    p.add_argument("--make-reference", type=Path, metavar="FILE",
                   help="with --real-images: write the reference .npz of `wgsl-diff reference`")
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
    if (args.uncertainty or args.real_images) and args.mc_samples < 2:
        p.error("-M must be at least 2")
    if args.make_reference and not args.real_images:
        p.error("--make-reference needs --real-images")
    torch.set_num_threads(args.threads)
    # The twin is a float32 reference: on CUDA, PyTorch runs cuDNN convolutions in TF32 (a 10-bit
    # mantissa) by default. With it, a 10-step run on an H200 put samples up to 95 levels away
    # from wgsl-diff's (which met the float64 fixtures there); not yet rerun without it.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False

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

    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    args.reference = None
    if args.uc_reference is not None:
        args.reference = load_reference(args.uc_reference, scheduler.timesteps.tolist(), shape,
                                        args.mc_samples)
    if args.uncertainty and args.uc_mode in Z_SCORED and args.reference is None:
        p.error(f"--uc-mode {args.uc_mode} is z-scored against real images: pass --uc-reference")

    args.out.mkdir(parents=True, exist_ok=True)
    if args.real_images:
        real_run(unet, scheduler, args)
        return
    all_scores, all_totals = [], []
    start = time.time()
    for first in range(args.start_index, args.start_index + args.num, args.batch):
        count = min(args.batch, args.start_index + args.num - first)
        part = args.out / "parts" / f"samples_{first:06}_{count}.pt"
        if part.exists():
            step_scores, totals = torch.load(part)
        else:
            images, step_scores, totals = sample_batch(unet, scheduler, args, first, count, window)
            for k, image in enumerate(images.cpu()):
                save_png(image, args.out / f"sample_{first + k:06}.png")
            save_part((step_scores, totals if args.save_total_maps else {}), part)
        all_scores.append(step_scores)
        all_totals.append(totals)
        print(f"samples {first}..{first + count} done, {time.time() - start:.0f} s", flush=True)

    if args.uncertainty:
        for mode in all_scores[0]:
            scores = torch.cat([s[mode] for s in all_scores]).numpy()
            np.save(args.out / f"step_scores_{mode}.npy", scores)
            if args.save_total_maps:
                np.save(args.out / f"total_maps_{mode}.npy", torch.cat([t[mode] for t in all_totals]).numpy())
        step_scores = np.load(args.out / f"step_scores_{args.uc_mode}.npy")
        np.save(args.out / "step_scores.npy", step_scores)
        totals = image_score(args.uc_mode, step_scores.astype(np.float64))
        header = ",".join(["index,file,score"] + [f"score_step_{i}" for i in window])
        lines = [header] + [
            ",".join([f"{args.start_index + k},sample_{args.start_index + k:06}.png,{s:.9g}"]
                     + [f"{step_scores[k, i]:.9g}" for i in window])
            for k, s in enumerate(totals)]
        (args.out / "scores.csv").write_text("\n".join(lines) + "\n")
    print(f"{args.num} samples in {args.out} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
