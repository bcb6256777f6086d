#!/usr/bin/env python3
"""Generate the reference fixtures in tests/fixtures/ that the Rust tests compare against.

UNet fixtures: small UNet2DModels with seeded random weights (not diffusers' init, which zeroes
conv_out and other layers and would make a comparison vacuous). For each model NAME:
    NAME.safetensors     weights in the tools/convert.py format (same writer)
    NAME_io.safetensors  sample, timestep, [class_labels], output = model(sample, timestep).sample
                         evaluated in float64 and stored as float32
Scheduler fixtures: tests/fixtures/schedulers.safetensors, whole sampling trajectories of diffusers'
DDIM, DDPM and DPM-Solver++(2M) driven by a fixed synthetic noise predictor.
tests/fixtures/README.md documents every tensor.

Usage:
    python tools/make_fixtures.py                # small committed fixtures (~6 MB)
    python tools/make_fixtures.py --models NAME  # only these UNet fixtures, nothing else
    python tools/make_fixtures.py --full-cifar   # tests/fixtures/large/ddpm_cifar10_arch*.safetensors
                                                 # (~143 MB, git-ignored, for #[ignore]d tests)
The output is deterministic for a given torch/diffusers version.
"""

import argparse
import json
import math
from pathlib import Path
from unittest import mock

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.schedulers import scheduling_ddpm
from safetensors.torch import save_file

from convert import public_config, write_weights

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures"
NUM_TRAIN_TIMESTEPS = 1000

# name -> (UNet2DModel config, batch size, seed). Between them the models cover: several attention
# heads and one head (attention_head_dim None), attention in the first and in the last level,
# both timestep-embedding layouts, both downsample paddings (0 pads right/bottom only), two norm
# epsilons, class conditioning and both resnet_time_scale_shift modes.
TINY_GRAY = dict(
    sample_size=8, in_channels=1, out_channels=1,
    block_out_channels=(16, 32), layers_per_block=1,
    down_block_types=("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D"),
    attention_head_dim=None, norm_num_groups=4, norm_eps=1e-6,
    flip_sin_to_cos=False, freq_shift=1, downsample_padding=0,
)
MODELS = {
    "unet_tiny_rgb": (dict(
        sample_size=16, in_channels=3, out_channels=3,
        block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8, norm_num_groups=8,
    ), 2, 1),
    "unet_tiny_gray": (TINY_GRAY, 3, 2),
    "unet_tiny_class": (dict(TINY_GRAY, num_class_embeds=10), 2, 3),
    # scale_shift time conditioning; diffusers then also drops the mid-block attention's GroupNorm.
    "unet_tiny_scale_shift": (dict(
        TINY_GRAY, resnet_time_scale_shift="scale_shift", attention_head_dim=8,
        norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
    ), 2, 6),
    # Odd everything: channels (9, 15, 21) in 3 groups, 2 input and 3 output channels, three levels
    # down to 3x3 through padding 0, 5-wide heads (4 heads of the mid block's 21 channels use only
    # 20: inner width != channels) and a mid-block output scale != 1.
    "unet_tiny_odd": (dict(
        sample_size=12, in_channels=2, out_channels=3,
        block_out_channels=(9, 15, 21), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=5, norm_num_groups=3, norm_eps=1e-5,
        flip_sin_to_cos=True, freq_shift=0, downsample_padding=0, mid_block_scale_factor=1.5,
    ), 2, 7),
}
# google/ddpm-cifar10-32's config.json (dropout 0.1 only matters in training).
FULL_CIFAR = ("ddpm_cifar10_arch", dict(
    sample_size=32, in_channels=3, out_channels=3,
    block_out_channels=(128, 256, 256, 256), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6,
    flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, dropout=0.1,
), 1, 4)

# Scheduler trajectories: B=2, C=1, 4x4 images, 10 steps.
SCHED_SHAPE = (2, 1, 4, 4)
SCHED_STEPS = 10
SCHED_SEED = 5
LINEAR_SCHEDULE = dict(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="linear",
                       beta_start=1e-4, beta_end=0.02, prediction_type="epsilon")


def randn_f32_exact(shape, gen):
    """float64 normal samples that are exactly representable in float32, so the float32 copy
    stored in a fixture is the very input the float64 reference used."""
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(torch.float64)


def randomize_parameters(model, gen):
    """Re-initialises every parameter so that all of them influence the output.

    Weights ~ N(0, 1/fan_in) keeps activations O(1) through the residual stack; GroupNorm
    affine ~ 1 + N(0, 0.2) / N(0, 0.2); biases ~ N(0, 0.1); class embeddings ~ N(0, 1).
    """
    done = set()

    def fill(param, mean, std):
        with torch.no_grad():
            param.copy_(mean + std * torch.randn(param.shape, generator=gen, dtype=torch.float64))
        done.add(id(param))

    for module in model.modules():
        if isinstance(module, torch.nn.GroupNorm):
            fill(module.weight, 1.0, 0.2)
            fill(module.bias, 0.0, 0.2)
        elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            fill(module.weight, 0.0, 1.0 / math.sqrt(module.weight[0].numel()))
            if module.bias is not None:
                fill(module.bias, 0.0, 0.1)
        elif isinstance(module, torch.nn.Embedding):
            fill(module.weight, 0.0, 1.0)
    missed = [name for name, p in model.named_parameters() if id(p) not in done]
    if missed:
        raise RuntimeError(f"parameters with no random init rule: {missed}")


def write_unet_fixture(out_dir, name, config, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    model = UNet2DModel(**config).eval()
    randomize_parameters(model, gen)
    weights_path = out_dir / f"{name}.safetensors"
    write_weights(weights_path, model.state_dict(), model.config)

    size = config["sample_size"]
    sample = randn_f32_exact((batch, config["in_channels"], size, size), gen)
    # Distinct integer timesteps, so a per-batch-element embedding bug cannot hide.
    timestep = torch.randperm(NUM_TRAIN_TIMESTEPS, generator=gen)[:batch]
    io = {"sample": sample, "timestep": timestep}
    class_labels = None
    if config.get("num_class_embeds"):
        class_labels = torch.randperm(config["num_class_embeds"], generator=gen)[:batch]
        io["class_labels"] = class_labels

    with torch.no_grad():
        output = model.double()(sample, timestep, class_labels).sample
    io["output"] = output
    io_path = out_dir / f"{name}_io.safetensors"
    save_file({k: v.to(torch.float32).contiguous() for k, v in io.items()}, str(io_path),
              metadata={"model": name, "reference": "float64 forward, stored as float32"})
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{weights_path.name}: {n_params:,} params, {weights_path.stat().st_size / 1e6:.2f} MB; "
          f"timesteps {timestep.tolist()}; output std {output.std():.3f}, "
          f"max |output| {output.abs().max():.3f}")


def synthetic_eps(x, t, bias):
    """Stand-in noise predictor: deterministic, depends on both x_t and t."""
    return 0.5 * x + 0.1 * (t / NUM_TRAIN_TIMESTEPS) * bias


def run_trajectory(scheduler, x_T, bias, noise_gen=None, eta=None):
    """Runs scheduler over SCHED_STEPS in float64; returns the recorded tensors of one case.

    noise_gen: draws the per-step noise of stochastic samplers, recorded in "noise".
    eta: DDIM's eta (DDIM only).
    """
    scheduler.set_timesteps(SCHED_STEPS)
    timesteps, xs, pred_x0s, noises = [], [x_T], [], []
    x = x_T
    for t in scheduler.timesteps:
        eps = synthetic_eps(x, t.item(), bias)
        noise = randn_f32_exact(x.shape, noise_gen) if noise_gen is not None else None
        if isinstance(scheduler, DDIMScheduler):
            out = scheduler.step(eps, t, x, eta=eta, variance_noise=noise)
        elif isinstance(scheduler, DDPMScheduler):
            # DDPMScheduler.step has no variance_noise argument: hand it ours through randn_tensor.
            with mock.patch.object(scheduling_ddpm, "randn_tensor", return_value=noise):
                out = scheduler.step(eps, t, x)
            if t.item() == 0:
                noise = torch.zeros_like(noise)  # no noise is added at the last step
        else:
            out = scheduler.step(eps, t, x)
        x = out.prev_sample
        timesteps.append(t.item())
        xs.append(x)
        if getattr(out, "pred_original_sample", None) is not None:
            pred_x0s.append(out.pred_original_sample)
        if noise is not None:
            noises.append(noise)

    case = {"timesteps": torch.tensor(timesteps, dtype=torch.float64), "x": torch.stack(xs)}
    if pred_x0s:
        case["pred_x0"] = torch.stack(pred_x0s)
    if noises:
        case["noise"] = torch.stack(noises)
    return case


def write_scheduler_fixtures(out_dir):
    gen = torch.Generator().manual_seed(SCHED_SEED)
    x_T = randn_f32_exact(SCHED_SHAPE, gen)
    bias = randn_f32_exact(SCHED_SHAPE, gen)
    tensors = {"x_T": x_T, "eps_bias": bias}
    cases = {}

    def add(name, scheduler, stochastic, **step_args):
        noise_gen = torch.Generator().manual_seed(SCHED_SEED + 1 + len(cases)) if stochastic else None
        for key, value in run_trajectory(scheduler, x_T, bias, noise_gen, **step_args).items():
            tensors[f"{name}/{key}"] = value
        cases[name] = {"class": type(scheduler).__name__,
                       "config": public_config(scheduler.config), **step_args}

    for spacing in ("leading", "trailing", "linspace"):
        for eta in (0.0, 1.0):
            for clip in (False, True):
                scheduler = DDIMScheduler(**LINEAR_SCHEDULE, timestep_spacing=spacing, clip_sample=clip,
                                          set_alpha_to_one=True, steps_offset=0)
                add(f"ddim_{spacing}_eta{eta:g}_clip{int(clip)}", scheduler, eta > 0, eta=eta)
    for clip in (False, True):
        scheduler = DDPMScheduler(**LINEAR_SCHEDULE, clip_sample=clip, variance_type="fixed_small")
        add(f"ddpm_leading_clip{int(clip)}", scheduler, True)
    for spacing in ("linspace", "leading", "trailing"):
        scheduler = DPMSolverMultistepScheduler(**LINEAR_SCHEDULE, algorithm_type="dpmsolver++",
                                                solver_order=2, timestep_spacing=spacing)
        add(f"dpmpp2m_{spacing}", scheduler, False)
    tensors["alphas_cumprod"] = DDIMScheduler(**LINEAR_SCHEDULE).alphas_cumprod

    path = out_dir / "schedulers.safetensors"
    save_file({k: v.to(torch.float32).contiguous() for k, v in tensors.items()}, str(path),
              metadata={"cases": json.dumps(cases, separators=(",", ":"), sort_keys=True),
                        "eps": "eps(x, t) = 0.5 * x + 0.1 * (t / 1000) * eps_bias"})
    print(f"{path.name}: {len(cases)} cases, {path.stat().st_size / 1e3:.0f} KB")


def write_schedule_fixture(out_dir):
    """β tables of diffusers' three schedules, the way DDPMScheduler builds them (float32)."""
    tables = {}
    for schedule, (start, end) in {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012),
                                   "squaredcos_cap_v2": (1e-4, 0.02)}.items():
        scheduler = DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule=schedule,
                                  beta_start=start, beta_end=end)
        tables[f"{schedule}/betas"] = scheduler.betas.to(torch.float32).contiguous()
        tables[f"{schedule}/alphas_cumprod"] = scheduler.alphas_cumprod.to(torch.float32).contiguous()
    path = out_dir / "schedules.safetensors"
    save_file(tables, str(path), metadata={"source": "diffusers DDPMScheduler, T=1000"})
    print(f"{path.name}: {len(tables)} tables")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixtures folder")
    p.add_argument("--full-cifar", action="store_true",
                   help="write only the full google/ddpm-cifar10-32 architecture fixture "
                        "(random weights, ~143 MB) into OUT/large/")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS),
                   help="write only these UNet fixtures (and no scheduler fixtures)")
    args = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    if args.full_cifar:
        out_dir = args.out / "large"
        out_dir.mkdir(parents=True, exist_ok=True)
        name, config, batch, seed = FULL_CIFAR
        write_unet_fixture(out_dir, name, config, batch, seed)
        return

    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models or MODELS:
        config, batch, seed = MODELS[name]
        write_unet_fixture(args.out, name, config, batch, seed)
    if args.models:
        return
    write_scheduler_fixtures(args.out)
    write_schedule_fixture(args.out)


if __name__ == "__main__":
    main()
