#!/usr/bin/env python3
"""Reference input gradients (vector-Jacobian products) of the UNet fixtures, for the Rust tests
of `UNet2DModel::vjp`.

For every UNet fixture NAME of tools/make_fixtures.py (weights NAME.safetensors, inputs
NAME_io.safetensors, both already in tests/fixtures) and for the shipped model
weights/fashion_mnist_ddpm.safetensors, writes NAME_vjp.safetensors with
    cotangent  v, shaped like the model output, N(0, 1) (float32-exact)
    grad       d<model(sample, timestep, class_labels).sample, v> / d sample  (torch.autograd.grad)
computed with the model and its inputs in float64 and stored as float32. The tiny models reuse
their NAME_io inputs; the shipped model's file also holds its own `sample`, `timestep`.
tests/fixtures/README.md documents the tensors.

Usage:
    .venv/bin/python tools/make_vjp_fixtures.py
"""

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from make_fixtures import DEFAULT_OUT, MODELS, NUM_TRAIN_TIMESTEPS, REPO_ROOT, randn_f32_exact
from reference_uncertainty import load_unet

SHIPPED = REPO_ROOT / "weights" / "fashion_mnist_ddpm.safetensors"
# Seeds of the cotangents (and of the shipped model's inputs), apart from make_fixtures' seeds.
COTANGENT_SEED = 100
SHIPPED_BATCH = 2


def input_gradient(model, sample, timestep, class_labels, gen):
    """(v, d<eps, v>/d sample) in float64 with a random cotangent v."""
    model = model.double()
    x = sample.to(torch.float64).clone().requires_grad_(True)
    labels = None if class_labels is None else class_labels.long()
    out = model(x, timestep.long(), labels).sample
    v = randn_f32_exact(out.shape, gen)
    (grad,) = torch.autograd.grad(out, x, grad_outputs=v)
    return v, grad


def save(path, tensors, meta):
    save_file({k: v.to(torch.float32).contiguous() for k, v in tensors.items()}, str(path),
              metadata=meta)
    grad = tensors["grad"]
    print(f"{path.name}: grad {tuple(grad.shape)}, std {grad.std():.3e}, "
          f"max |grad| {grad.abs().max():.3e}, {path.stat().st_size / 1e3:.0f} KB")


def write_fixture_vjp(out_dir, name, seed):
    io = load_file(str(out_dir / f"{name}_io.safetensors"))
    model = load_unet(out_dir / f"{name}.safetensors")
    gen = torch.Generator().manual_seed(COTANGENT_SEED + seed)
    v, grad = input_gradient(model, io["sample"], io["timestep"], io.get("class_labels"), gen)
    save(out_dir / f"{name}_vjp.safetensors", {"cotangent": v, "grad": grad},
         {"model": name, "inputs": f"{name}_io.safetensors",
          "reference": "float64 torch.autograd.grad, stored as float32"})


def write_shipped_vjp(out_dir):
    model = load_unet(SHIPPED)
    gen = torch.Generator().manual_seed(COTANGENT_SEED)
    cfg = model.config
    sample = randn_f32_exact((SHIPPED_BATCH, cfg.in_channels, cfg.sample_size, cfg.sample_size), gen)
    timestep = torch.randperm(NUM_TRAIN_TIMESTEPS, generator=gen)[:SHIPPED_BATCH]
    v, grad = input_gradient(model, sample, timestep, None, gen)
    save(out_dir / "shipped_vjp.safetensors",
         {"sample": sample, "timestep": timestep, "cotangent": v, "grad": grad},
         {"model": "weights/fashion_mnist_ddpm.safetensors",
          "reference": "float64 torch.autograd.grad, stored as float32"})


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixtures folder")
    args = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    for name, (_, _, seed) in MODELS.items():
        write_fixture_vjp(args.out, name, seed)
    write_shipped_vjp(args.out)


if __name__ == "__main__":
    main()
