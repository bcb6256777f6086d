#!/usr/bin/env python3
"""wgsl-diff's noise in NumPy: the same Philox4x32-10 streams and Box-Muller as shaders/rng.wgsl.

Lets a PyTorch run reproduce a `wgsl-diff sample` run exactly (same starting, ancestral and
perturbation noise) without `--dump-noise`. Values differ from the GPU's only by the rounding of
float32 log/sqrt/cos/sin (~1e-6); the bits that pick them are identical.

Layout (see shaders/rng.wgsl and src/sampling/noise.rs `NoisePlan::key`): element j of sample i of a
tensor with row length C*H*W comes from block j // 4 of
    philox4x32_10(counter = (j // 4, i, tag_lo, tag_hi + copy), key = (seed_lo, seed_hi))
with tag = purpose << 48 | step, purpose 1 = initial, 2 = ancestral, 3 = uncertainty,
4 = guidance, 5 = dropout, 6 = reference (real images noised to a step's timestep by
`wgsl-diff reference`). A block's four words (x, y, z, w) give (r0 cos t0, r0 sin t0, r1 cos t1,
r1 sin t1), r = sqrt(-2 ln u(x or z)),
t = 2 pi u(y or w), u(b) = ((b >> 8) + 0.5) / 2^24.

Usage:
    # check against the noise a wgsl-diff run dumped
    .venv/bin/python -m tools.common.wgsl_noise --check DIR --seed 0
"""

import argparse
import re
from pathlib import Path

import numpy as np

INITIAL, ANCESTRAL, UNCERTAINTY, GUIDANCE, DROPOUT, REFERENCE = 1, 2, 3, 4, 5, 6
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on uint32 counter arrays (broadcastable) with a scalar 64-bit key."""
    c = [np.asarray(v, dtype=np.uint64) & _MASK32 for v in np.broadcast_arrays(c0, c1, c2, c3)]
    for _ in range(10):
        p0 = _M0 * c[0]
        p1 = _M1 * c[2]
        c = [(p1 >> _SHIFT32) ^ c[1] ^ np.uint64(k0), p1 & _MASK32,
             (p0 >> _SHIFT32) ^ c[3] ^ np.uint64(k1), p0 & _MASK32]
        k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
    return c


def _unit(bits):
    return ((bits >> np.uint64(8)).astype(np.float64) + 0.5) / 16777216.0


def normal(seed, purpose, step, shape, first_index=0, copy=0):
    """float32 N(0, 1) noise of `shape` = (num, ...) for samples first_index .. first_index + num."""
    num, row_len = shape[0], int(np.prod(shape[1:]))
    tag = (purpose << 48) | ((copy & 0xFFFF) << 32) | step
    blocks = (row_len + 3) // 4
    rows = np.arange(first_index, first_index + num, dtype=np.uint64)[:, None]
    cols = np.arange(blocks, dtype=np.uint64)[None, :]
    x, y, z, w = philox4x32_10(cols, rows, tag & 0xFFFFFFFF, tag >> 32,
                               seed & 0xFFFFFFFF, seed >> 32)
    r0, r1 = np.sqrt(-2.0 * np.log(_unit(x))), np.sqrt(-2.0 * np.log(_unit(z)))
    t0, t1 = 2.0 * np.pi * _unit(y), 2.0 * np.pi * _unit(w)
    out = np.stack([r0 * np.cos(t0), r0 * np.sin(t0), r1 * np.cos(t1), r1 * np.sin(t1)], axis=-1)
    return out.reshape(num, blocks * 4)[:, :row_len].reshape(shape).astype(np.float32)


def copies(seed, purpose, step, m, shape, first_index=0):
    """M draws of `normal`, stacked copy-major: row m*B + b is copy m of sample b."""
    return np.concatenate([normal(seed, purpose, step, shape, first_index, copy) for copy in range(m)])


def check_dump(folder, seed):
    """Compares every .npy a `wgsl-diff sample --dump-noise` run wrote with this generator."""
    names = {
        "init": re.compile(r"noise_init_sample(\d+)\.npy$"),
        "ancestral": re.compile(r"noise_ancestral_step(\d+)_t\d+_sample(\d+)\.npy$"),
        "uncertainty": re.compile(r"noise_uncertainty_step(\d+)_t\d+_m(\d+)_sample(\d+)\.npy$"),
        "guidance": re.compile(r"noise_guidance_step(\d+)_t\d+_m(\d+)_sample(\d+)\.npy$"),
    }
    worst, checked = 0.0, 0
    for path in sorted(Path(folder).glob("noise_*.npy")):
        dumped = np.load(path)  # one sample's row: (1, C, H, W)
        if m := names["init"].match(path.name):
            ours = normal(seed, INITIAL, 0, dumped.shape, int(m[1]))
        elif m := names["ancestral"].match(path.name):
            ours = normal(seed, ANCESTRAL, int(m[1]), dumped.shape, int(m[2]))
        elif m := names["uncertainty"].match(path.name):
            ours = normal(seed, UNCERTAINTY, int(m[1]), dumped.shape, int(m[3]), int(m[2]))
        elif m := names["guidance"].match(path.name):
            ours = normal(seed, GUIDANCE, int(m[1]), dumped.shape, int(m[3]), int(m[2]))
        else:
            raise SystemExit(f"{path}: not a wgsl-diff noise file name")
        err = float(np.abs(ours - dumped).max())
        worst, checked = max(worst, err), checked + 1
        print(f"{path.name}: max abs {err:.2e}")
    if checked == 0:
        raise SystemExit(f"no noise_*.npy files in {folder}")
    print(f"{checked} files, worst max abs {worst:.2e}")
    if worst > 1e-4:
        raise SystemExit("noise differs from wgsl-diff's")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", type=Path, required=True, metavar="DIR",
                   help="folder written by wgsl-diff sample --dump-noise")
    p.add_argument("--seed", type=int, default=0, help="the run's --seed")
    args = p.parse_args()
    check_dump(args.check, args.seed)


if __name__ == "__main__":
    main()
