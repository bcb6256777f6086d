#!/usr/bin/env python3
"""AUSE and AURG of every uncertainty mode, as the paper measures them (Table 2; docs/method.md §5).

Real test images x0 are noised half-way (to the timestep of sampling step S//2, with wgsl-diff's
reference noise stream, purpose 6, row = image index), then DDIM runs the remaining steps from there
in the PyTorch twin (tools/twin/sample_torch.py) with uncertainty estimation at each of them. Each
mode's map is summed over those steps, per pixel (typicality: its signed per-pixel contributions); the
error of a pixel is (x0 - x̂0)^2 in [0, 1] units (x/2 + 0.5), x̂0 the final image clamped to [-1, 1].

Sparsification (the protocol of scripts/compute_ause.py and diffusion_uncertainty/metrics/ause.py in
the official repository, re-implemented here): all pixels of all images are pooled; for q = 0, 2, …,
98 % (50 intervals) the q % most uncertain pixels are removed (kept: -u >= the q-th percentile of -u)
and the RMSE of the rest is the curve's value, with 0 appended at 100 %. The oracle curve does the
same ranking by the error itself; the random curve is the RMSE of all pixels at every point.
    AUSE = ∫ method curve - ∫ oracle curve      (trapezoid over [0, 1]; 0 for a perfect ranking)
    AURG = RMSE(all) - ∫ method curve            (> 0: better than random)

Usage:
    .venv/bin/python -m tools.studies.ause --self-test
    .venv/bin/python -m tools.studies.ause --num 500 --steps 10 -M 5 --uc-reference REF.npz \
        --out ause.json
"""

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from diffusers import DDIMScheduler
from safetensors import safe_open

from tools.common import wgsl_noise
from tools.common.fashion_mnist import DEFAULT_DATA_DIR, read_idx_images
from tools.common.weights import load_unet
from tools.twin.sample_torch import DEFAULT_MODEL, load_reference, pad_images, sample_batch


def sparsification(error, uncertainty, intervals):
    """RMSE of the pixels left after removing the q % most uncertain, q = 100·k/intervals for
    k = 0 .. intervals-1, then 0: intervals + 1 points."""
    error, neg = error.ravel().astype(np.float64), -uncertainty.ravel().astype(np.float64)
    curve = []
    for k in range(intervals):
        kept = neg >= np.percentile(neg, 100.0 * k / intervals)
        curve.append(np.sqrt(error[kept].mean()))
    return np.array(curve + [0.0])


def ause_aurg(error, uncertainty, intervals=50):
    """(AUSE, AURG, curves) of a per-pixel uncertainty against the per-pixel squared error."""
    x = np.linspace(0.0, 1.0, intervals + 1)
    method = sparsification(error, uncertainty, intervals)
    oracle = sparsification(error, error, intervals)
    rmse_all = np.sqrt(error.astype(np.float64).mean())
    ause = np.trapezoid(method, x) - np.trapezoid(oracle, x)
    aurg = rmse_all - np.trapezoid(method, x)
    return float(ause), float(aurg), {"method": method.tolist(), "oracle": oracle.tolist()}


def self_test():
    """Closed-form and limiting cases of ause_aurg."""
    rng = np.random.default_rng(0)
    error = rng.random(4000) ** 3
    ause, aurg, _ = ause_aurg(error, error)
    assert ause == 0.0, ause                      # the oracle ranking is the oracle curve
    assert aurg > 0, aurg
    ause_rev, aurg_rev, _ = ause_aurg(error, -error)
    assert ause_rev > ause and aurg_rev < 0, (ause_rev, aurg_rev)  # the worst ranking loses to random
    _, aurg_rand, _ = ause_aurg(error, rng.random(4000))
    assert abs(aurg_rand) < 0.02, aurg_rand       # an unrelated score is about as good as random
    # Four pixels with squared errors 1, 4, 9, 16 and two intervals: points at 0 %, 50 %, 100 %.
    e = np.array([1.0, 4.0, 9.0, 16.0])
    good, _, curves = ause_aurg(e, e, intervals=2)
    assert np.allclose(curves["method"], [np.sqrt(7.5), np.sqrt(2.5), 0.0]), curves
    bad, aurg_bad, curves = ause_aurg(e, -e, intervals=2)
    assert np.allclose(curves["method"], [np.sqrt(7.5), np.sqrt(12.5), 0.0]), curves
    # trapezoid on x = 0, .5, 1: (c0 + 2 c1 + c2) / 4
    assert np.isclose(bad, (2 * np.sqrt(12.5) - 2 * np.sqrt(2.5)) / 4), bad
    assert np.isclose(aurg_bad, np.sqrt(7.5) - (np.sqrt(7.5) + 2 * np.sqrt(12.5)) / 4), aurg_bad
    print("ause.py self-test passed")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--self-test", action="store_true", help="check the metric and exit")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--data", type=Path, default=Path(DEFAULT_DATA_DIR) / "t10k-images-idx3-ubyte.gz",
                   help="idx file of the real (test) images")
    p.add_argument("--num", type=int, default=200, help="real images")
    p.add_argument("--start-index", type=int, default=0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("-M", "--mc-samples", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--uc-reference", type=Path, help="reference .npz: adds the z-scored modes")
    p.add_argument("--intervals", type=int, default=50)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="JSON file of the results")
    args = p.parse_args()
    if args.self_test:
        self_test()
        return
    torch.set_num_threads(args.threads)

    unet = load_unet(args.model)
    with safe_open(str(args.model), framework="pt") as f:
        scheduler = DDIMScheduler.from_config(json.loads(f.metadata()["scheduler"]))
    scheduler.set_timesteps(args.steps)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    reference = None
    if args.uc_reference:
        reference = load_reference(args.uc_reference, scheduler.timesteps.tolist(), shape,
                                   args.mc_samples)
    half = args.steps // 2
    window = range(half, args.steps)
    run = SimpleNamespace(seed=args.seed, guidance=None, eta=0.0, uncertainty=True,
                          mc_samples=args.mc_samples, reference=reference)
    pixels = read_idx_images(args.data)[args.start_index:args.start_index + args.num]
    images = pad_images(pixels, shape)
    abar = scheduler.alphas_cumprod[scheduler.timesteps[half]]
    errors, totals = [], []
    start = time.time()
    for first in range(0, len(images), args.batch):
        x0 = images[first:first + args.batch]
        index = args.start_index + first
        z = torch.from_numpy(wgsl_noise.normal(args.seed, wgsl_noise.REFERENCE, half, tuple(x0.shape), index))
        x = abar.sqrt() * x0 + (1 - abar).sqrt() * z
        final, _, total = sample_batch(unet, scheduler, run, index, len(x0), window, x=x, start=half)
        errors.append((((x0 - final.clamp(-1, 1)) / 2) ** 2).numpy())
        totals.append(total)
        print(f"images {first}..{first + len(x0)} done, {time.time() - start:.0f} s", flush=True)
    error = np.concatenate(errors)
    results = {"images": len(images), "steps": args.steps, "from_step": half,
               "timestep": int(scheduler.timesteps[half]), "M": args.mc_samples, "seed": args.seed,
               "intervals": args.intervals, "rmse_all": float(np.sqrt(error.mean())), "modes": {}}
    print(f"{len(images)} images from step {half} (t = {results['timestep']}); RMSE {results['rmse_all']:.4f}")
    print(f"{'mode':>20} {'AUSE':>8} {'AURG':>8}")
    for mode in totals[0]:
        u = torch.cat([t[mode] for t in totals]).numpy()
        ause, aurg, curves = ause_aurg(error, u, args.intervals)
        results["modes"][mode] = {"ause": ause, "aurg": aurg, **curves}
        print(f"{mode:>20} {ause:8.4f} {aurg:8.4f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"results in {args.out}")


if __name__ == "__main__":
    main()
