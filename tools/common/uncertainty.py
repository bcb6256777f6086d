"""Algorithm 1's per-element uncertainty maps and the Stein modes, in PyTorch (docs/method.md §1).

Shared by the float64 fixture (tools/fixtures/uncertainty.py, whose docstring spells out every
formula) and the float32 twin (tools/twin/sample_torch.py).
"""

import math

import torch

MODES = ("centred", "variance", "variance_biased")
STEIN_MODES = ("typicality", "posterior_variance", "residual")
# src/uncertainty/reference.rs SD_FLOOR: spreads below this fraction of the step's mean spread are
# floored there when z-scoring the posterior variance.
SD_FLOOR = 0.01
REFERENCE_STATS = ("posterior_variance_mean", "posterior_variance_sd", "residual_mean", "residual_sd",
                   "typicality_mean", "typicality_sd")


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
