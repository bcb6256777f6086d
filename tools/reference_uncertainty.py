#!/usr/bin/env python3
"""Reference run of Algorithm 1 (pixel-wise uncertainty during DDIM sampling) for the Rust tests.

An independent float64 PyTorch implementation written from /work/shared/ALGORITHM.md §1 (not taken
from the official code). It samples with DDIM from a tiny UNet2DModel fixture and, at every step,
estimates the uncertainty map from M re-noised copies of the predicted x̂0:

    eps    = unet(x_t, t)
    x0_hat = clip((x_t - sqrt(1 - abar_t) * eps) / sqrt(abar_t), -1, 1)
    x~_m   = sqrt(abar_t) * x0_hat + sqrt(1 - abar_t) * n_m       n_m ~ N(0, I), m = 0..M-1
    eps_m  = unet(x~_m, t)                                         (one forward over M*B rows)
    centred          = mean_m (eps_m - eps)^2
    variance         = sum_m (eps_m - mean eps)^2 / (M - 1)
    variance_biased  = sum_m (eps_m - mean eps)^2 / M
  and the Stein modes, from the draws n_m too (J_i = sum_m n_m,i (eps_m,i - mean eps_i) / (M - 1),
  rho = (1 - abar) / abar, D = C*H*W), each as (raw - shift) * scale:
    typicality          raw = mean_m eps_m^2 - J, shift 0, scale 1/sqrt(2D)  (sums to Delta_t)
    posterior_variance  raw = rho * max(0, 1 - J), z-scored per (step, element) against a reference
    residual            raw = mean_m (eps_m - n_m)^2, shift mean_t / D, scale 1 / sd_t
                        (sums to the z-score of R_t against the reference)
  The reference here is synthetic (drawn from its own generator, some spreads 0 to exercise the
  floor of SD_FLOOR x the step's mean spread). Per-step scores are each map's sum; the score is
  their sum over steps (typicality: the sum of their absolute values).
    x_prev = sqrt(abar_prev) * x0_hat + sqrt(1 - abar_prev) * eps  (eta = 0; eps not recomputed)

Schedule: linear betas 1e-4 .. 0.02 over T = 1000 and their cumulative product, both in float64;
"leading" timesteps (t = k * T // steps), previous timestep t - T // steps, abar = 1 below t = 0
(set_alpha_to_one). The score of a sample is the sum of its map over steps, channels and pixels.
As a cross-check, every DDIM step is compared with diffusers' DDIMScheduler.step on the same eps
(which differs only by its float32 abar).

It also builds a real-image reference (`wgsl-diff reference`) in float64 from a few random 8-bit
images: x_t = sqrt(abar) x0 + sqrt(1 - abar) z with wgsl-diff's own Philox noise (tools/wgsl_noise.py,
purpose 6 = reference, and 3 = uncertainty for the n_m), and stores the images and statistics under
reference_build/.

Writes tests/fixtures/uncertainty_ddim.safetensors (float32 copies of the float64 results; the noise
is drawn in float32, so the stored noise is exactly what the reference used); its tensors are
documented in tests/fixtures/README.md.

Usage:
    .venv/bin/python tools/reference_uncertainty.py
    .venv/bin/python tools/reference_uncertainty.py --check-run RUN   # a run made with --dump-noise RUN/noise
    .venv/bin/python tools/reference_uncertainty.py --model tests/fixtures/unet_tiny_rgb.safetensors \\
        --out /tmp/uncertainty_rgb.safetensors
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import wgsl_noise
from make_fixtures import randn_f32_exact

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"
NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02
MODES = ("centred", "variance", "variance_biased")
STEIN_MODES = ("typicality", "posterior_variance", "residual")
# src/uncertainty/reference.rs SD_FLOOR: spreads below this fraction of the step's mean spread are
# floored there when z-scoring the posterior variance.
SD_FLOOR = 0.01
REFERENCE_STATS = ("posterior_variance_mean", "posterior_variance_sd", "residual_mean", "residual_sd",
                   "typicality_mean", "typicality_sd")


def load_unet(path):
    """The float32 UNet2DModel stored in a wgsl-diff weights file (metadata "config" + state_dict)."""
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    model = UNet2DModel.from_config(config)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def linear_alphas_cumprod():
    """abar_t for t = 0 .. T-1 of the linear beta schedule, entirely in float64."""
    betas = torch.linspace(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def leading_timesteps(num_steps):
    """DDIM "leading" spacing: (steps-1)*r, ..., r, 0 with r = T // steps (steps_offset 0)."""
    stride = NUM_TRAIN_TIMESTEPS // num_steps
    return [k * stride for k in reversed(range(num_steps))]


def uncertainty_maps(eps, eps_copies):
    """Per-element uncertainty of every mode; eps: (B, C, H, W), eps_copies: (M, B, C, H, W)."""
    copies = eps_copies.shape[0]
    sum_sq_dev = ((eps_copies - eps_copies.mean(dim=0)) ** 2).sum(dim=0)
    return {
        "centred": ((eps_copies - eps) ** 2).mean(dim=0),
        "variance": sum_sq_dev / (copies - 1),
        "variance_biased": sum_sq_dev / copies,
    }


def stein_raw(eps_copies, perturbation, rho):
    """Raw per-element values of the Stein modes; eps_copies, perturbation: (M, B, C, H, W)."""
    copies = eps_copies.shape[0]
    jac = (perturbation * (eps_copies - eps_copies.mean(dim=0))).sum(dim=0) / (copies - 1)
    return {
        "typicality": (eps_copies ** 2).mean(dim=0) - jac,
        "posterior_variance": rho * (1 - jac).clamp(min=0),
        "residual": ((eps_copies - perturbation) ** 2).mean(dim=0),
    }


def standardisation(mode, reference, step, sample_shape):
    """(shift, scale) of `mode` at `step`, each of sample_shape (as src/uncertainty/reference.rs);
    `reference` None gives the raw values (what a reference is built from)."""
    d = math.prod(sample_shape)
    ones = torch.ones(sample_shape, dtype=torch.float64)
    if mode == "typicality":
        return 0 * ones, ones / math.sqrt(2 * d)
    if reference is None:
        return 0 * ones, ones
    if mode == "residual":
        return ones * reference["residual_mean"][step] / d, ones / reference["residual_sd"][step]
    mean = reference["posterior_variance_mean"][step].double()
    sd = reference["posterior_variance_sd"][step].double()
    return mean, 1 / sd.clamp(min=SD_FLOOR * sd.mean().item())


def stein_maps(eps_copies, perturbation, rho, reference, step):
    """Every Stein mode's map: raw values shifted and scaled per element."""
    out = {}
    for mode, raw in stein_raw(eps_copies, perturbation, rho).items():
        shift, scale = standardisation(mode, reference, step, raw.shape[1:])
        out[mode] = (raw - shift.to(raw.device)) * scale.to(raw.device)
    return out


def synthetic_reference(steps, sample_shape, gen):
    """Made-up reference statistics (float32-exact float64) with a few zero spreads."""
    pv_mean = torch.rand((steps, *sample_shape), generator=gen, dtype=torch.float64) * 20
    pv_sd = 0.5 + torch.rand((steps, *sample_shape), generator=gen, dtype=torch.float64) * 5
    pv_sd.view(steps, -1)[:, ::5] = 0  # pixels that never varied: floored
    reference = {
        "posterior_variance_mean": pv_mean, "posterior_variance_sd": pv_sd,
        "residual_mean": 10 + torch.rand(steps, generator=gen, dtype=torch.float64) * 50,
        "residual_sd": 1 + torch.rand(steps, generator=gen, dtype=torch.float64) * 5,
        "typicality_mean": torch.randn(steps, generator=gen, dtype=torch.float64),
        "typicality_sd": 0.5 + torch.rand(steps, generator=gen, dtype=torch.float64),
    }
    return {k: v.float().double() for k, v in reference.items()}


@torch.no_grad()
def build_reference(unet, images, timesteps, copies, seed, clip=True):
    """The real-image reference (`wgsl-diff reference`) in float64: images (K, C, H, W) in [-1, 1]
    noised to each timestep with wgsl-diff's Philox noise; mean and sd (divisor K - 1) per step."""
    alphas_cumprod = linear_alphas_cumprod()
    shape, stats = images.shape, {name: [] for name in REFERENCE_STATS}
    for i, t in enumerate(timesteps):
        abar = alphas_cumprod[t]
        z = torch.from_numpy(wgsl_noise.normal(seed, wgsl_noise.REFERENCE, i, shape)).double()
        x = abar.sqrt() * images + (1 - abar).sqrt() * z
        eps = unet(x, t).sample
        x0_hat = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
        if clip:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        n = torch.from_numpy(wgsl_noise.copies(seed, wgsl_noise.UNCERTAINTY, i, copies, shape)).double()
        renoised = abar.sqrt() * x0_hat.repeat(copies, 1, 1, 1) + (1 - abar).sqrt() * n
        eps_copies = unet(renoised, t).sample.view(copies, *shape)
        maps = stein_maps(eps_copies, n.view(copies, *shape), (1 - abar) / abar, None, i)
        values = {"posterior_variance": maps["posterior_variance"],
                  "residual": maps["residual"].sum(dim=(1, 2, 3)),
                  "typicality": maps["typicality"].sum(dim=(1, 2, 3))}
        for name, v in values.items():
            stats[f"{name}_mean"].append(v.mean(dim=0))
            stats[f"{name}_sd"].append(v.std(dim=0, unbiased=True))
    return {k: torch.stack(v) for k, v in stats.items()}


@torch.no_grad()
def sample_with_uncertainty(unet, init_noise, num_steps, copies, gen, reference=None):
    """Runs DDIM (eta = 0, clip_sample) from init_noise, estimating uncertainty at every step;
    `gen` is a torch.Generator, or a function of the step giving its perturbation (M·B, C, H, W).

    Returns the fixture tensors (float64) keyed by their names in the output file.
    """
    alphas_cumprod = linear_alphas_cumprod()
    timesteps = leading_timesteps(num_steps)
    stride = NUM_TRAIN_TIMESTEPS // num_steps
    diffusers_ddim = DDIMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="linear",
                                   beta_start=BETA_START, beta_end=BETA_END, clip_sample=True,
                                   set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    diffusers_ddim.set_timesteps(num_steps)
    assert diffusers_ddim.timesteps.tolist() == timesteps, diffusers_ddim.timesteps

    batch = init_noise.shape[0]
    out = {"init_noise": init_noise, "timesteps": torch.tensor(timesteps, dtype=torch.float64)}
    # The z-scored modes only against a reference; typicality needs none.
    all_modes = MODES + (STEIN_MODES if reference is not None else ("typicality",))
    scores = {mode: torch.zeros(batch, dtype=torch.float64) for mode in all_modes}
    step_scores = {mode: [] for mode in all_modes}
    x = init_noise
    for i, t in enumerate(timesteps):
        abar = alphas_cumprod[t]
        prev_t = t - stride
        abar_prev = alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0, dtype=torch.float64)

        eps = unet(x, t).sample
        x0_hat = ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1.0, 1.0)

        # Row m*B + b of the perturbation is copy m of sample b (copy-major).
        perturbation = (gen(i) if callable(gen) else
                        randn_f32_exact((copies * batch, *x.shape[1:]), gen))
        renoised = abar.sqrt() * x0_hat.repeat(copies, 1, 1, 1) + (1 - abar).sqrt() * perturbation
        eps_copies = unet(renoised, t).sample.view(copies, *x.shape)
        out[f"perturbation/{i}"] = perturbation
        maps = uncertainty_maps(eps, eps_copies)
        # Mean of squared deviations from eps = biased variance + squared offset of the mean.
        offset = eps_copies.mean(dim=0) - eps
        torch.testing.assert_close(maps["centred"], maps["variance_biased"] + offset ** 2,
                                   rtol=1e-12, atol=1e-14)
        stein = stein_maps(eps_copies, perturbation.view(copies, *x.shape), (1 - abar) / abar,
                           reference, i)
        maps.update({mode: stein[mode] for mode in all_modes if mode in stein})
        for mode, value in maps.items():
            out[f"maps/{mode}/{i}"] = value
            step = value.sum(dim=(1, 2, 3))
            step_scores[mode].append(step)
            scores[mode] += step.abs() if mode == "typicality" else step

        x_prev = abar_prev.sqrt() * x0_hat + (1 - abar_prev).sqrt() * eps
        check = diffusers_ddim.step(eps, t, x, eta=0.0)
        torch.testing.assert_close(check.pred_original_sample, x0_hat, rtol=0, atol=1e-5)
        torch.testing.assert_close(check.prev_sample, x_prev, rtol=0, atol=1e-5)
        x = x_prev

    for mode in all_modes:
        out[f"scores/{mode}"] = scores[mode]
        out[f"step_scores/{mode}"] = torch.stack(step_scores[mode], dim=1)  # (B, steps)
    out["final"] = x
    return out


def check_run(folder, model):
    """Recomputes a `wgsl-diff sample --uncertainty --dump-noise DIR/noise` run (DDIM, eta 0, every
    step in the window) in float64 from its dumped noise; compares its summed maps
    (uncertainty_*.npy), per-step scores and scores (scores.csv). Fails above 1e-4 relative."""
    folder = Path(folder)
    params = json.loads((folder / "samples.json").read_text())["parameters"]
    uc = params["uncertainty"]
    steps, copies, mode = params["steps"], uc["M"], uc["mode"].replace("-", "_")
    if params["sampler"] != "ddim" or params["eta"] != 0 or uc["start"] != 0 or uc["steps"] not in (None, steps):
        raise SystemExit("--check-run needs a DDIM run with eta 0 and uncertainty at every step")
    model = model or params["model"]
    with safe_open(str(model), framework="pt") as f:
        scheduler = json.loads(f.metadata()["scheduler"])
    expected = {"beta_schedule": "linear", "beta_start": BETA_START, "beta_end": BETA_END,
                "num_train_timesteps": NUM_TRAIN_TIMESTEPS, "clip_sample": True}
    if any(scheduler.get(k) != v for k, v in expected.items()) or not params["clip_sample"] \
            or params["spacing"] != "leading" or params["steps_offset"] != 0:
        raise SystemExit(f"--check-run implements {expected} with leading spacing only: {scheduler}")
    unet = load_unet(model).double()
    reference = None
    if "reference" in uc:
        data = np.load(uc["reference"])
        reference = {k: torch.from_numpy(data[k]) for k in REFERENCE_STATS}
    rows = [line.split(",") for line in (folder / "scores.csv").read_text().splitlines()[1:]]
    noise_dir = folder / "noise"
    worst = 0.0
    for init_file in sorted(noise_dir.glob("noise_init_samples*.npy")):
        first, last = (int(v) for v in init_file.stem.removeprefix("noise_init_samples").split("-"))
        init = torch.from_numpy(np.load(init_file)).double()
        batch = len(init)
        tag = f"samples{first:06}-{last:06}"
        perturbation = lambda i: torch.cat([torch.from_numpy(np.load(next(noise_dir.glob(
            f"noise_uncertainty_step{i:03}_t*_m{m}_{tag}.npy")))).double() for m in range(copies)])
        out = sample_with_uncertainty(unet, init, steps, copies, perturbation, reference)
        maps = sum(out[f"maps/{mode}/{i}"] for i in range(steps))
        for k in range(batch):
            index = first + k
            ours = np.load(folder / f"uncertainty_{index:06}.npy").astype(np.float64)
            want = maps[k].numpy()
            row = next(r for r in rows if int(r[0]) == index)
            got_steps, want_steps = np.array(row[3:], dtype=np.float64), out[f"step_scores/{mode}"][k].numpy()
            errors = {
                "summed map": np.abs(ours - want).max() / np.abs(want).max(),
                "step scores": (np.abs(got_steps - want_steps) / np.abs(want_steps).max()).max(),
                "score": abs(float(row[2]) - out[f"scores/{mode}"][k].item()) / abs(out[f"scores/{mode}"][k].item()),
            }
            print(f"sample {index}: " + ", ".join(f"{name} {e:.2e}" for name, e in errors.items()))
            worst = max(worst, *errors.values())
    print(f"{mode}: worst relative error {worst:.2e} (relative to each quantity's largest magnitude)")
    if worst > 1e-4:
        raise SystemExit("the run differs from the float64 reference by more than 1e-4")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", type=Path, default=FIXTURES / "unet_tiny_gray.safetensors",
                   help="wgsl-diff weights file of the UNet")
    p.add_argument("--out", type=Path, default=FIXTURES / "uncertainty_ddim.safetensors",
                   help="fixture file to write")
    p.add_argument("--batch", type=int, default=2, help="B, images sampled together")
    p.add_argument("--copies", type=int, default=3, help="M, re-noised copies per step")
    p.add_argument("--steps", type=int, default=4, help="DDIM steps")
    p.add_argument("--seed", type=int, default=7, help="seed of the noise generator")
    p.add_argument("--reference-images", type=int, default=3, help="K, images of the built reference")
    p.add_argument("--reference-seed", type=int, default=5,
                   help="wgsl-diff --seed of the built reference's noise")
    p.add_argument("--check-run", type=Path, metavar="DIR",
                   help="instead: check a wgsl-diff --uncertainty --dump-noise DIR/noise run "
                        "(any mode) against this float64 implementation")
    args = p.parse_args()
    if args.check_run:
        check_run(args.check_run, None)
        return
    if args.copies < 2:
        p.error("--copies must be at least 2 (the unbiased variance divides by M - 1)")
    torch.set_num_threads(min(2, torch.get_num_threads()))

    unet = load_unet(args.model).double()
    size = unet.config.sample_size
    gen = torch.Generator().manual_seed(args.seed)
    init_noise = randn_f32_exact((args.batch, unet.config.in_channels, size, size), gen)
    # The synthetic reference comes from a generator of its own, so the draws above (and the
    # stored noise) are what they were before the Stein modes existed.
    shape = (unet.config.in_channels, size, size)
    reference = synthetic_reference(args.steps, shape, torch.Generator().manual_seed(args.seed + 1))
    tensors = sample_with_uncertainty(unet, init_noise, args.steps, args.copies, gen, reference)
    tensors.update({f"reference/{k}": v for k, v in reference.items()})

    # A reference built from K random 8-bit "real" images with wgsl-diff's noise streams.
    image_gen = torch.Generator().manual_seed(args.seed + 2)
    pixels = torch.randint(0, 256, (args.reference_images, *shape), generator=image_gen)
    timesteps = [int(t) for t in tensors["timesteps"]]
    built = build_reference(unet, pixels.double() / 127.5 - 1, timesteps, args.copies,
                            args.reference_seed)
    tensors["reference_build/images"] = pixels.double()
    tensors.update({f"reference_build/{k}": v for k, v in built.items()})

    for mode in MODES + STEIN_MODES:
        maps = torch.stack([tensors[f"maps/{mode}/{i}"] for i in range(args.steps)])
        per_step = ", ".join(f"[{m.min():.3g}, {m.max():.3g}]" for m in maps)
        print(f"maps/{mode} per step: {per_step}; scores {tensors[f'scores/{mode}'].tolist()}")
    final = tensors["final"]
    print(f"final in [{final.min():.3f}, {final.max():.3f}], "
          f"{(final.abs() == 1).double().mean():.0%} of it at ±1")

    settings = {
        "B": args.batch, "M": args.copies, "steps": args.steps, "spacing": "leading",
        "clip": True, "seed": args.seed, "eta": 0.0, "set_alpha_to_one": True,
        "num_train_timesteps": NUM_TRAIN_TIMESTEPS, "beta_schedule": "linear",
        "beta_start": BETA_START, "beta_end": BETA_END, "model": args.model.name,
        "noise": "torch.Generator(seed): init_noise, then perturbation/0, perturbation/1, ... "
                 "each drawn as float32 randn",
        "reference": "float64 computation, stored as float32",
        "synthetic_reference": f"reference/*: torch.Generator({args.seed + 1}), float32-exact",
        "reference_build": {"images": args.reference_images, "M": args.copies,
                            "seed": args.reference_seed, "image_generator": args.seed + 2,
                            "noise": "wgsl_noise purposes 6 (reference) and 3 (uncertainty)"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float32).contiguous() for k, v in tensors.items()}, str(args.out),
              metadata={"settings": json.dumps(settings, separators=(",", ":"), sort_keys=True)})
    print(f"{args.out}: {len(tensors)} tensors, {args.out.stat().st_size / 1e3:.1f} KB")


if __name__ == "__main__":
    main()
