#!/usr/bin/env python3
"""torch.quantile's own output on float32 rows, for the Rust tests of ops::quantile_per_sample.

The uncertainty guidance thresholds each image's map at torch.quantile(U_b.flatten(), p) (linear
interpolation). wgsl-diff reproduces torch's arithmetic rather than an idealised quantile, and this
fixture is the proof that the arithmetic is torch's. torch 2.15 (aten/src/ATen/native/Sorting.cpp,
quantile_compute, and Lerp.h) computes, for a float32 row of n values:

    q      = float32(p)                          # at::scalar_tensor(p, self.options())
    rank   = float64(q) * (n - 1)                # ranks in float64 (pytorch#187574)
    below  = floor(rank), above = ceil(rank), w = float32(rank - below)
    value  = lerp(sorted[below], sorted[above], w)
    lerp(s, e, w) = s + w * (e - s)        if |w| < 0.5
                    e - (e - s) * (1 - w)  otherwise
                    (each a single fused multiply-add on the CPU, vectorised or scalar, and CUDA)

A row holding a NaN yields NaN. The script emulates that formula independently in numpy (float32
subtraction, then the exact value s + w * d rounded once to float32 from rational arithmetic)
and asserts that
  - the emulation equals torch.quantile on every entry (both zeros counting as equal);
  - the fixture discriminates: on some entries a separately rounded product (no FMA), and on
    some entries float32 ranks (q * float32(n - 1) rounded to float32, as torch computed them
    before float64 ranks), would give other bits.

Cases (CASE/x (B, n), CASE/p (P,), CASE/q (P, B) = torch.quantile(CASE/x, p_j, dim=1)):
    random       rows of normals at scales 1e-3 .. 1e3, many levels
    ties         four distinct values: runs of equal statistics
    special      ±Inf, subnormals, mixed ±0, an all-Inf row, a NaN row
    fused        rows where torch's fused lerp and a two-rounding lerp disagree
    uncertainty  positive map-like values (exp of normals) of a 3x32x32 image, p near 0.95

p is stored as float32: torch rounds it to float32 first, so passing the stored value back as a
double gives torch's q exactly.

Usage:
    .venv/bin/python tools/reference_quantile.py   # writes tests/fixtures/quantile_torch.safetensors
"""

import argparse
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "quantile_torch.safetensors"
F32 = np.float32


def round_to_f32(exact):
    """The float32 nearest to a finite Fraction, ties to even (no double rounding via float64)."""
    guess = F32(float(exact))
    if not np.isfinite(guess):
        return guess  # beyond float32's range: only the guarded special rows get here
    candidates = [np.nextafter(guess, F32(-np.inf)), guess, np.nextafter(guess, F32(np.inf))]
    candidates = [c for c in candidates if np.isfinite(c)]

    def key(c):
        return (abs(Fraction(float(c)) - exact), int(c.view(np.uint32)) & 1)

    return min(candidates, key=key)


def lerp(start, end, w, fused):
    """torch's lerp branches in float32; fused: one rounding per branch, else two."""
    start, end, w = F32(start), F32(end), F32(w)
    with np.errstate(invalid="ignore", over="ignore"):
        d = F32(end - start)
        small = abs(w) < F32(0.5)
        if not fused:
            return F32(start + F32(w * d)) if small else F32(end - F32(d * F32(F32(1) - w)))
        if not (np.isfinite(start) and np.isfinite(end) and np.isfinite(d)):
            # Infinities and NaN: a fused and an unfused evaluation agree, in float64 as well.
            a, b, c = (float(w), float(d), float(start)) if small else (float(w) - 1, float(d), float(end))
            return F32(a * b + c)
        if small:
            return round_to_f32(Fraction(float(start)) + Fraction(float(w)) * Fraction(float(d)))
        return round_to_f32(Fraction(float(end)) + (Fraction(float(w)) - 1) * Fraction(float(d)))


def emulate(row, p, fused=True, rank32=False):
    """torch.quantile(row, p) for a float32 row as the module docstring describes it; rank32:
    the float32 ranks of older torch releases instead."""
    if np.isnan(row).any():
        return F32(np.nan)
    s = np.sort(row)
    n = len(row)
    if rank32:
        rank = F32(F32(p) * F32(n - 1))
        below = int(np.floor(rank))
        w = F32(rank - F32(below))
    else:
        rank = float(F32(p)) * (n - 1)
        below = int(np.floor(rank))
        w = F32(rank - below)
    above = below + 1 if rank > below else below
    return lerp(s[below], s[above], w, fused)


def same(a, b):
    """Equal bits, or both NaN, or both zeros (torch may pick either zero of a tie)."""
    a, b = F32(a), F32(b)
    return (np.isnan(a) and np.isnan(b)) or a.view(np.uint32) == b.view(np.uint32) or (a == 0 and b == 0)


def fused_rows(rng, levels, count, n=13):
    """Rows on which some level's fused and unfused lerps differ (found by random search; n
    makes every level's weight a fraction other than 0 and 0.5, where both agree)."""
    rows = []
    for _ in range(100 * count):
        if len(rows) == count:
            break
        row = (rng.standard_normal(n) * 10.0 ** rng.uniform(-2, 2)).astype(F32)
        if any(not same(emulate(row, p), emulate(row, p, fused=False)) for p in levels):
            rows.append(row)
    assert len(rows) == count, "the search found too few rows"
    return np.stack(rows)


def special_rows():
    inf, tiny = np.inf, np.finfo(F32).smallest_subnormal
    return np.array([
        [1.0, -inf, 3.0, inf, 0.5, -2.0, 7.0, inf, 0.0],
        [tiny, -tiny, 3 * tiny, 0.0, -0.0, 2 * tiny, -5 * tiny, 1e-38, -1e-39],
        [0.0, -0.0, -0.0, 0.0, 1.0, -1.0, -0.0, 0.0, 2.0],
        [inf] * 9,
        [1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        [-inf, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, inf],
    ], dtype=F32)


def cases(seed):
    rng = np.random.default_rng(seed)
    random_levels = [0.0, 0.1, 0.25, 1 / 3, 0.5, 0.7, 0.95, 0.999, 1.0]
    fused_levels = [0.1, 0.3, 0.45, 0.6, 0.95]
    scales = 10.0 ** rng.uniform(-3, 3, size=(6, 1))
    return {
        "random": ((rng.standard_normal((6, 37)) * scales).astype(F32), random_levels),
        "ties": (rng.choice(np.array([-1.0, 0.0, 0.5, 2.0], dtype=F32), size=(4, 50)),
                 [0.0, 0.3, 0.5, 0.95, 1.0]),
        "special": (special_rows(), [0.0, 0.3, 0.5, 0.6, 0.95, 1.0]),
        "fused": (fused_rows(rng, fused_levels, 12), fused_levels),
        "uncertainty": (np.exp(rng.standard_normal((2, 3 * 32 * 32)) - 3).astype(F32),
                        [0.9, 0.95, 0.99]),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    tensors, summary = {}, {}
    unfused_differs = rank32_differs = 0
    for name, (x, levels) in cases(args.seed).items():
        levels = np.array(levels, dtype=F32)
        xt = torch.from_numpy(x)
        q = np.stack([torch.quantile(xt, float(p), dim=1).numpy() for p in levels])
        for j, p in enumerate(levels):
            for b, row in enumerate(x):
                want = emulate(row, float(p))
                assert same(q[j, b], want), f"{name} p={p} row {b}: torch {q[j, b]!r}, emulation {want!r}"
                unfused_differs += not same(q[j, b], emulate(row, float(p), fused=False))
                rank32_differs += not same(q[j, b], emulate(row, float(p), rank32=True))
        tensors[f"{name}/x"] = xt.contiguous()
        tensors[f"{name}/p"] = torch.from_numpy(levels)
        tensors[f"{name}/q"] = torch.from_numpy(q).contiguous()
        summary[name] = {"rows": x.shape[0], "len": x.shape[1], "levels": [float(p) for p in levels]}
    assert unfused_differs >= 12, f"only {unfused_differs} entries tell fused from unfused lerp"
    assert rank32_differs >= 8, f"only {rank32_differs} entries tell float64 from float32 ranks"
    print(f"entries where a two-rounding lerp differs: {unfused_differs}; "
          f"where float32 ranks differ: {rank32_differs}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata={
        "torch": torch.__version__,
        "seed": str(args.seed),
        "cases": json.dumps(summary),
    })
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
