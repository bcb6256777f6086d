#!/usr/bin/env python3
"""Two runs side by side: the first N samples of folder A (left) and of folder B (right) as square
grids with a gap between them, e.g. unguided vs guided samples from the same seeds.

Usage: .venv/bin/python -m tools.studies.grid_pair A B OUT.png [--num 64]
"""

import argparse
import math
from pathlib import Path

from PIL import Image


def grid(folder, num, gap=2):
    files = sorted(Path(folder).glob("sample_*.png"))[:num]
    if len(files) < num:
        raise SystemExit(f"{folder} holds {len(files)} samples, fewer than {num}")
    tiles = [Image.open(f).convert("L") for f in files]
    side, cols = tiles[0].width, math.ceil(math.sqrt(num))
    rows = math.ceil(num / cols)
    out = Image.new("L", (cols * (side + gap) - gap, rows * (side + gap) - gap), 255)
    for i, tile in enumerate(tiles):
        out.paste(tile, ((i % cols) * (side + gap), (i // cols) * (side + gap)))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("left", type=Path)
    p.add_argument("right", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--num", type=int, default=64)
    args = p.parse_args()
    left, right = grid(args.left, args.num), grid(args.right, args.num)
    out = Image.new("L", (left.width + right.width + 12, left.height), 255)
    out.paste(left, (0, 0))
    out.paste(right, (left.width + 12, 0))
    out.save(args.out)
    print(f"{args.out}: {args.left} (left) beside {args.right} (right), {args.num} samples each")


if __name__ == "__main__":
    main()
