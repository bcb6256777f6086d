"""Fashion-MNIST as the tools read it: gzip-compressed IDX files, 8-bit pixels scaled to [-1, 1] by
x / 127.5 - 1 and 28x28 padded to 32x32 with the background value -1 (the generator's and the
classifier's input, tools/train/)."""

import gzip
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_SIZE = 32  # 28x28 padded by 2 on every side: three resolutions (32, 16, 8)
PADDING_VALUE = -1.0


def read_idx_images(path):
    """Reads an IDX3 (unsigned byte, N x rows x cols) file, gzip-compressed, into a uint8 array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, count, rows, cols = np.frombuffer(raw, dtype=">u4", count=4)
    if magic != 0x0803:
        raise ValueError(f"{path}: not an IDX3 ubyte image file (magic {magic:#x}, expected 0x803)")
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16)
    if pixels.size != count * rows * cols:
        raise ValueError(f"{path}: expected {count}x{rows}x{cols} pixels, found {pixels.size}")
    return pixels.reshape(count, rows, cols)


def read_idx_labels(path):
    """Reads an IDX1 (unsigned byte, N) label file, gzip-compressed."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, count = np.frombuffer(raw, dtype=">u4", count=2)
    if magic != 0x0801:
        raise ValueError(f"{path}: not an IDX1 ubyte label file (magic {magic:#x}, expected 0x801)")
    labels = np.frombuffer(raw, dtype=np.uint8, offset=8)
    if labels.size != count:
        raise ValueError(f"{path}: expected {count} labels, found {labels.size}")
    return labels


def load_split(data_dir, prefix):
    """(images float32 (N, 1, 32, 32) in [-1, 1] padded with -1, labels int64 (N,)) of `prefix`
    ("train" or "t10k"), scaled and padded exactly as tools/train/train_demo.py does."""
    paths = [Path(data_dir) / f"{prefix}-{kind}-idx{dim}-ubyte.gz"
             for kind, dim in (("images", 3), ("labels", 1))]
    for path in paths:
        if not path.is_file():
            sys.exit(f"error: {path} not found (pass the Fashion-MNIST folder with --data)")
    images = torch.from_numpy(read_idx_images(paths[0]).astype(np.float32) / 127.5 - 1.0)
    pad = (IMAGE_SIZE - images.shape[-1]) // 2
    images = F.pad(images, (pad, pad, pad, pad), value=PADDING_VALUE).unsqueeze(1).contiguous()
    labels = torch.from_numpy(read_idx_labels(paths[1]).astype(np.int64))
    return images, labels
