#!/usr/bin/env python3
"""The official Stable Diffusion uncertainty step in PyTorch, written from Michedev/diffusion-uncertainty
(`get_uncertainty_guided_score_with_percentile` with model_type 'stable-diffusion', called from the SD
guided pipeline's loop), independent of wgsl-diff: for the SD guidance fixture and the SD 1.5 bench.

For one latent x_t (the official code runs batch 1 only):
    eps      = eps_u + w (eps_c - eps_u)          from one call on [x_t; x_t] with [uncond; cond]
    x0       = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    x~_m     = sqrt(abar_t) x0 + sqrt(1 - abar_t) n_m, the same n_m for both CFG halves
    eps_m    = CFG-combined eps at x~_m (one call on [x~_m; x~_m]; the M calls one after another)
    Rule G:  U = var_m(eps_m) unbiased; g = d(sum U)/d eps (autograd, eps the leaf);
             eps <- eps + lr * mask * g
    Rule P (official): U' = var({eps_m} + {eps}); eps_post = eps / (M + U' / abar_t)  (it sums eps
             over the batch axis where the method sums the M copies); eps <- mask eps_post + (1-mask) eps
    Rule P (the method's, what wgsl-diff runs): eps_post = (sum_m eps_m / U') / (M / U' + 1 / abar_t)
    mask = U > torch.quantile(U.flatten(), p)
"""

import torch


def cfg_eps(unet, latents, t, states, w):
    """The official predict_model_stable_diffusion: one call on the doubled batch, then combined."""
    out = unet(torch.cat([latents] * 2), t, encoder_hidden_states=states).sample
    uncond, text = out.chunk(2)
    return uncond + w * (text - uncond)


def official_step(unet, x, t, states, eps, abar, noise, rule, s):
    """The official guided ε for one latent (batch 1) and its map U. `noise` holds the M draws,
    `s` the settings M, cfg_scale, percentile and strength; `rule` is gradient, posterior (the
    method's) or posterior_official."""
    m = s["M"]
    use_posterior = rule != "gradient"
    leaf = eps.detach().clone().requires_grad_(not use_posterior)
    with torch.set_grad_enabled(not use_posterior):
        x0 = (x - (1 - abar).sqrt() * leaf) / abar.sqrt()
        copies = [cfg_eps(unet, abar.sqrt() * x0 + (1 - abar).sqrt() * n, t, states, s["cfg_scale"])
                  for n in noise]
        if use_posterior:
            copies.append(leaf)
        uncertainty = torch.stack(copies).var(dim=0)
        if not use_posterior:
            uncertainty.mean(dim=0).sum().backward()
    u = uncertainty.detach()
    threshold = torch.quantile(u.flatten(1).float(), s["percentile"], dim=1).to(u.dtype).view(-1, 1, 1, 1)
    mask = (u > threshold).to(u.dtype)
    eps = eps.detach()
    if rule == "gradient":
        guided = eps + s["strength"] * leaf.grad * mask
    elif rule == "posterior_official":
        post = (1 / (m / u + 1 / abar)) * ((1 / u) * eps.sum(dim=0))
        guided = eps * (1 - mask) + mask * post
    else:
        total = torch.stack(copies[:m]).detach().sum(dim=0)
        post = (total / u) / (m / u + 1 / abar)
        guided = eps * (1 - mask) + mask * post
    return guided.detach(), u
