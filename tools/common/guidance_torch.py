#!/usr/bin/env python3
"""Uncertainty-guided ε (Algorithm 2) in PyTorch, written from docs/method.md §3 with
torch.autograd for Rule G — independent of wgsl-diff's kernels, for its tests and its twin.

    x0   = (x_t - sqrt(1 - abar) * eps) / sqrt(abar)            (never clipped)
    x~_m = sqrt(abar) * x0 + sqrt(1 - abar) * n_m               m = 0 .. M-1, one forward over M*B
    eps_m = unet(x~_m, t, y)
    Rule G: U = var({eps_m}, unbiased); g = d(sum_b sum U_b)/d eps (autograd, eps the leaf);
            eps <- eps + strength * mask * g
    Rule P: U' = var({eps_1..eps_M, eps}, unbiased); eps_post = (sum_m eps_m / U') / (M / U' + 1/abar),
            taken as sum_m eps_m / M where U' = 0; eps <- mask * eps_post + (1 - mask) * eps
    mask = U > thr, thr = torch.quantile(U_b.flatten(), p) per image b, or a calibrated (C, H, W) map.

Usable as a module (`guide`) and by tools/fixtures/guidance.py, tools/twin/sample_torch.py and
tools/bench/bench_torch.py.
"""

import torch


def percentile_threshold(uncertainty, p):
    """torch.quantile of each image's flattened map at level p, shaped to broadcast: (B, 1, 1, 1)."""
    flat = uncertainty.flatten(1).float()  # torch.quantile takes no float16 (autocast's maps)
    q = torch.quantile(flat, p, dim=1).to(uncertainty.dtype)
    return q.view(-1, *([1] * (uncertainty.dim() - 1)))


def renoised(unet, x, t, y, eps, abar, noise):
    """(x~ (M*B, ...), eps_m (M, B, ...)) for noise (M*B, ...) stacked copy-major."""
    copies = noise.shape[0] // x.shape[0]
    x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
    x_tilde = abar.sqrt() * x0.repeat(copies, 1, 1, 1) + (1 - abar).sqrt() * noise
    t_rep = torch.full((x_tilde.shape[0],), float(t), dtype=x.dtype, device=x.device)
    y_rep = None if y is None else y.repeat(copies)
    eps_copies = unet(x_tilde, t_rep, class_labels=y_rep).sample
    return x_tilde, eps_copies.view(copies, *x.shape)


def guide(unet, x, t, y, eps, abar, noise, rule, strength, threshold):
    """The guided eps for x_t (B, C, H, W) at timestep t.

    threshold: ("percentile", p) or ("calibrated", tensor (C, H, W)). Returns (eps, U), U the map the
    mask was taken from.
    """
    abar = torch.as_tensor(abar, dtype=x.dtype)
    if rule == "gradient":
        leaf = eps.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            _, eps_copies = renoised(unet, x, t, y, leaf, abar, noise)
            uncertainty = eps_copies.var(dim=0, unbiased=True)
            (grad,) = torch.autograd.grad(uncertainty.sum(), leaf)
        uncertainty = uncertainty.detach()
        update = lambda mask: eps + strength * mask * grad
    elif rule == "posterior":
        with torch.no_grad():
            _, eps_copies = renoised(unet, x, t, y, eps, abar, noise)
        copies = eps_copies.shape[0]
        uncertainty = torch.cat([eps_copies, eps[None]]).var(dim=0, unbiased=True)
        total = eps_copies.sum(dim=0)
        safe = torch.where(uncertainty > 0, uncertainty, torch.ones_like(uncertainty))
        post = (total / safe) / (copies / safe + 1 / abar)
        post = torch.where(uncertainty > 0, post, total / copies)
        update = lambda mask: torch.where(mask, post, eps)
    else:
        raise ValueError(f"unknown rule {rule!r}")
    kind, value = threshold
    thr = percentile_threshold(uncertainty, value) if kind == "percentile" else value
    mask = uncertainty > thr
    return update(mask).detach(), uncertainty
