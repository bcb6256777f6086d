"""Writes the FID fixtures under tests/fixtures (tests/fid.rs reads them; see the README there):

  fid_inception.safetensors  pytorch-fid's InceptionV3 module (its FIDInceptionA/C/E classes on
                             torchvision, no download) with FidInception::random(SEED)'s weights,
                             in float64: pool3 features of 75×75 inputs (no resize) and of small
                             inputs resized to 299×299; F.interpolate bilinear cases; the pooling
                             variants.
  fid_stats_*.npz            mu/sigma pairs written as pytorch-fid's --save-stats writes them
                             (np.savez_compressed), and fid_frechet.json: pytorch-fid's
                             calculate_frechet_distance (scipy sqrtm) between them.

Run: .venv/bin/python tools/fid_fixtures.py  (needs pytorch-fid, torchvision, scipy)."""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_fid.fid_score import calculate_frechet_distance
from safetensors.torch import save_file

import fid_torch

SEED = 16
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def uniform01(gen, shape):
    """float32 values in [0, 1], the form images reach pytorch-fid."""
    return torch.rand(shape, generator=gen, dtype=torch.float32)


def network_cases(gen):
    model = fid_torch.pytorch_fid_model(fid_torch.random_state_dict(SEED), torch.float64)
    tensors = {}
    # 75×75 is the smallest input every block runs on; pytorch-fid's resize is bypassed.
    x = uniform01(gen, (2, 3, 75, 75))
    model.resize_input = False
    tensors["net75.input"] = x
    tensors["net75.features"] = fid_torch.features(model, x.double()).float()
    # The whole input path: resize 32×29 → 299×299, scale to [−1, 1], the network.
    x = uniform01(gen, (1, 3, 32, 29))
    model.resize_input = True
    tensors["net299.input"] = x
    tensors["net299.features"] = fid_torch.features(model, x.double()).float()
    return tensors


def resize_cases(gen):
    tensors = {}
    # Up, down, mixed, and a single-row input.
    for i, (shape, size) in enumerate([((2, 3, 5, 7), (13, 4)), ((1, 1, 28, 28), (97, 101)),
                                       ((1, 2, 9, 9), (4, 6)), ((1, 1, 1, 3), (2, 5))]):
        x = uniform01(gen, shape)
        y = F.interpolate(x.double(), size=size, mode="bilinear", align_corners=False)
        tensors[f"resize.{i}.input"] = x
        tensors[f"resize.{i}.output"] = y.float()
    return tensors


def pool_cases(gen):
    x = uniform01(gen, (2, 3, 9, 8)) * 2 - 1
    xd = x.double()
    return {
        "pool.input": x,
        "pool.max_k3_s2": F.max_pool2d(xd, 3, stride=2).float(),
        "pool.max_k3_s1_p1": F.max_pool2d(xd, 3, stride=1, padding=1).float(),
        "pool.avg_k3_s1_p1": F.avg_pool2d(xd, 3, stride=1, padding=1).float(),
        "pool.avg_valid_k3_s1_p1": F.avg_pool2d(xd, 3, stride=1, padding=1,
                                                count_include_pad=False).float(),
        "pool.global_avg": F.adaptive_avg_pool2d(xd, 1).flatten(1).float(),
    }


def frechet_cases(rng):
    """Two pairs of statistics: full-rank covariances (more samples than dimensions) and
    singular ones (fewer), the case FID on small sets always meets."""
    expected = {}
    dim = 64
    for case, (n1, n2) in {"full": (300, 200), "singular": (40, 30)}.items():
        stats = []
        for which, n in (("a", n1), ("b", n2)):
            mixing = rng.standard_normal((dim, dim)) / np.sqrt(dim)
            acts = rng.standard_normal((n, dim)) @ mixing + rng.standard_normal(dim) * 0.3
            mu, sigma = np.mean(acts, axis=0), np.cov(acts, rowvar=False)
            np.savez_compressed(OUT / f"fid_stats_{case}_{which}.npz", mu=mu, sigma=sigma)
            stats.append((mu, sigma))
        expected[case] = float(calculate_frechet_distance(*stats[0], *stats[1]))
    (OUT / "fid_frechet.json").write_text(json.dumps(expected, indent=2) + "\n")


def main():
    gen = torch.Generator().manual_seed(SEED)
    tensors = {**network_cases(gen), **resize_cases(gen), **pool_cases(gen)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / "fid_inception.safetensors",
              metadata={"seed": str(SEED)})
    frechet_cases(np.random.default_rng(SEED))


if __name__ == "__main__":
    main()
