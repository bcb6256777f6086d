"""Float64 reference helpers shared by the fixture makers: float32-exact normal draws, the linear
β schedule, DDIM "leading" timesteps."""

import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02


def redraw_parameters(model, gen):
    """Redraws every parameter of `model` in place, by name, so that every layer shapes the output
    (diffusers zero-initialises conv_out and others, which would make a comparison vacuous):
    norm weights 1 + N(0, 0.3²) and biases N(0, 0.1²); matrices N(0, 1/fan_in); biases N(0, 0.1²)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                base, scale = (1.0, 0.3) if name.endswith("weight") else (0.0, 0.1)
            else:
                fan_in = param[0].numel() if param.dim() > 1 else 1
                base, scale = 0.0, (1.0 / fan_in ** 0.5 if param.dim() > 1 else 0.1)
            param.copy_(base + scale * torch.randn(param.shape, generator=gen))


def randn_f32_exact(shape, gen):
    """float64 normal samples that are exactly representable in float32, so the float32 copy
    stored in a fixture is the very input the float64 reference used."""
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(torch.float64)


def linear_alphas_cumprod():
    """abar_t for t = 0 .. T-1 of the linear beta schedule, entirely in float64."""
    betas = torch.linspace(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def leading_timesteps(num_steps):
    """DDIM "leading" spacing: (steps-1)*r, ..., r, 0 with r = T // steps (steps_offset 0)."""
    stride = NUM_TRAIN_TIMESTEPS // num_steps
    return [k * stride for k in reversed(range(num_steps))]
