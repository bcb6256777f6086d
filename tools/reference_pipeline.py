#!/usr/bin/env python3
"""End-to-end reference: diffusers' own DDIMPipeline on the tiny UNet fixtures, for the Rust tests.

Runs the unmodified diffusers DDIMPipeline (float32, eta = 0, DDIMScheduler with the linear schedule,
clip_sample, set_alpha_to_one, leading spacing, steps_offset 0) from a fixed starting noise and
records the images it returns with output_type="np" (clamp(x / 2 + 0.5, 0, 1), shape B, H, W, C),
transposed to B, C, H, W. The pipeline draws its starting noise with randn_tensor; that call is
patched to return noise drawn beforehand from a seeded generator, so the noise is known exactly.

Cases (NAME: model, batch, steps):
    gray: unet_tiny_gray (1 x 8 x 8),  batch 3, 5 steps
    rgb:  unet_tiny_rgb  (3 x 16 x 16), batch 2, 4 steps
Writes tests/fixtures/pipeline_ddim.safetensors (all float32) with NAME/init_noise, NAME/images and
NAME/timesteps per case, and a JSON "settings" metadata entry; tests/fixtures/README.md documents it.

Usage:
    .venv/bin/python tools/reference_pipeline.py [--out FILE]
"""

import argparse
import json
from pathlib import Path
from unittest import mock

import torch
from diffusers import DDIMPipeline, DDIMScheduler
from diffusers.pipelines.ddim import pipeline_ddim
from safetensors.torch import save_file

from convert import public_config
from reference_uncertainty import FIXTURES, load_unet

ETA = 0.0
# name -> (weights file in tests/fixtures, batch size, inference steps, noise seed)
CASES = {
    "gray": ("unet_tiny_gray.safetensors", 3, 5, 11),
    "rgb": ("unet_tiny_rgb.safetensors", 2, 4, 12),
}


def make_scheduler():
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                         beta_end=0.02, clip_sample=True, set_alpha_to_one=True, steps_offset=0,
                         timestep_spacing="leading")


@torch.no_grad()
def run_pipeline(model_file, batch, steps, seed):
    """Runs DDIMPipeline from seeded noise; returns (tensors, settings) of one case."""
    unet = load_unet(FIXTURES / model_file)
    size = unet.config.sample_size
    shape = (batch, unet.config.in_channels, size, size)
    init_noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)

    pipe = DDIMPipeline(unet=unet, scheduler=make_scheduler())
    pipe.set_progress_bar_config(disable=True)
    # Hand the pipeline a copy, so that init_noise is what it started from even if it wrote in place.
    with mock.patch.object(pipeline_ddim, "randn_tensor", return_value=init_noise.clone()) as draw:
        images = pipe(batch_size=batch, num_inference_steps=steps, eta=ETA, output_type="np").images
    draw.assert_called_once()
    assert tuple(draw.call_args.args[0]) == shape, draw.call_args
    assert draw.call_args.kwargs["dtype"] == torch.float32, draw.call_args

    images = torch.from_numpy(images).permute(0, 3, 1, 2)
    assert images.shape == shape and images.dtype == torch.float32, (images.shape, images.dtype)
    tensors = {
        "init_noise": init_noise,
        "images": images,
        "timesteps": pipe.scheduler.timesteps.to(torch.float32),
    }
    settings = {
        "model": Path(model_file).name, "batch": batch, "steps": steps, "eta": ETA, "seed": seed,
        "noise": "torch.randn(shape, generator=torch.Generator().manual_seed(seed), float32)",
        "output_type": "np", "scheduler": public_config(pipe.scheduler.config),
    }
    saturated = ((images == 0) | (images == 1)).float().mean()
    print(f"{model_file}: timesteps {pipe.scheduler.timesteps.tolist()}, images in "
          f"[{images.min():.3f}, {images.max():.3f}], {saturated:.0%} at 0 or 1")
    return tensors, settings


# The shipped model (weights/), checked by its own fixture: regenerate it with --shipped whenever
# the shipped weights change.
SHIPPED = {"shipped": (FIXTURES.parent.parent / "weights" / "fashion_mnist_ddpm.safetensors", 2, 10, 13)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, help="fixture file to write [default: tests/fixtures/"
                   "pipeline_ddim.safetensors, or shipped_ddim.safetensors with --shipped]")
    p.add_argument("--shipped", action="store_true",
                   help="only the shipped weights/fashion_mnist_ddpm.safetensors, 2 samples, 10 steps")
    args = p.parse_args()
    args.out = args.out or FIXTURES / ("shipped_ddim.safetensors" if args.shipped else "pipeline_ddim.safetensors")
    torch.set_num_threads(min(2, torch.get_num_threads()))

    tensors, settings = {}, {}
    for name, (model_file, batch, steps, seed) in (SHIPPED if args.shipped else CASES).items():
        case_tensors, settings[name] = run_pipeline(model_file, batch, steps, seed)
        tensors.update({f"{name}/{key}": value for key, value in case_tensors.items()})

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(args.out),
              metadata={"settings": json.dumps(settings, separators=(",", ":"), sort_keys=True)})
    print(f"{args.out}: {len(tensors)} tensors, {args.out.stat().st_size / 1e3:.1f} KB")


if __name__ == "__main__":
    main()
