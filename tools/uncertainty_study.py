#!/usr/bin/env python3
"""Which uncertainty steps track sample quality? Filtering experiments on a tools/sample_torch.py run.

Reads a run folder made with `tools/sample_torch.py --uncertainty` (sample_*.png +
step_scores_MODE.npy, the summed map of every step in each mode) and, per mode, for several windows of steps (all, each step alone, first and
second half), scores each sample by the sum over the window and measures, with the Fashion-MNIST
classifier of tools/train_classifier.py as the feature extractor (the metric of `wgsl-diff eval`):

  kept FD     Fréchet distance to the test set of the (keep)·N lowest-scored samples
  random FD   the same for random subsets of that size: mean ± sd over --trials seeded draws
  z           (random mean − kept) / sd: > 0 means filtering by this score beats chance
  ρ(conf)     Spearman correlation of the score with the classifier's confidence (max softmax):
              < 0 means high-uncertainty samples are the ones the classifier is unsure about
  dropped     the classes (argmax) most over-represented among the dropped samples

Also the Spearman correlation of each mode's total score with simple image traits (brightness,
garment area, high-frequency texture). Each is given for the raw score and for the score standardised within each predicted class (which
keeps the class mix of the kept set): filtering can change the FD by changing the class mix alone.

Usage:
    .venv/bin/python tools/uncertainty_study.py /tmp/uc_run [--keep 0.85]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from train_classifier import CONFIG, FashionClassifier, load_split
from train_demo import DEFAULT_DATA_DIR
from reference_uncertainty import REPO_ROOT

DEFAULT_CLASSIFIER = REPO_ROOT / "weights" / "fashion_classifier.safetensors"


def load_classifier(path):
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    model = FashionClassifier(**config)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


@torch.no_grad()
def classify(model, images, batch=500):
    """images: float tensor (N, 1, 32, 32) in [-1, 1] -> (features float64, probabilities)."""
    feats, probs = [], []
    for k in range(0, len(images), batch):
        f, logits = model(images[k:k + batch])
        feats.append(f.double())
        probs.append(logits.softmax(dim=1))
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def gaussian(features):
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet(a, b):
    (mu1, s1), (mu2, s2) = a, b
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


def spearman(x, y):
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", type=Path, help="folder written by tools/sample_torch.py --uncertainty")
    p.add_argument("--keep", type=float, default=0.85, help="fraction kept (lowest scores)")
    p.add_argument("--trials", type=int, default=200, help="random subsets per comparison")
    p.add_argument("--data", type=Path, default=Path(DEFAULT_DATA_DIR))
    p.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER)
    p.add_argument("--extremes", type=Path, metavar="PNG",
                   help="also write the 10 lowest (top row) and 10 highest (bottom row) total scores "
                        "(scores.csv) of the first --extremes-of samples as one image")
    p.add_argument("--extremes-of", type=int, metavar="N", help="[default: all samples]")
    args = p.parse_args()
    torch.set_num_threads(2)

    score_files = sorted(args.run.glob("step_scores_*.npy")) or [args.run / "step_scores.npy"]
    n, steps = np.load(score_files[0]).shape
    files = sorted(args.run.glob("sample_*.png"))[:n]
    if len(files) != n:
        raise SystemExit(f"{args.run}: {len(files)} PNGs for {n} rows of step_scores.npy")
    fake = torch.from_numpy(np.stack([np.asarray(Image.open(f), dtype=np.float32) for f in files]))
    real, _ = load_split(args.data, "t10k")  # scaled and padded as in training

    if args.extremes:
        write_extremes(args.run, files[:args.extremes_of or n], args.extremes)

    classifier = load_classifier(args.classifier)
    real_stats = gaussian(classify(classifier, real)[0])
    features, probs = classify(classifier, (fake / 127.5 - 1.0).unsqueeze(1))
    confidence, label = probs.max(axis=1), probs.argmax(axis=1)
    kept = int(round(args.keep * n))
    rng = np.random.default_rng(0)
    random_fd = np.array([frechet(gaussian(features[rng.permutation(n)[:kept]]), real_stats)
                          for _ in range(args.trials)])
    print(f"{n} samples, {steps} steps; FD all {frechet(gaussian(features), real_stats):.2f}; "
          f"random {kept}: {random_fd.mean():.2f} ± {random_fd.std():.2f}; mean confidence {confidence.mean():.3f}")

    half = steps // 2
    windows = {"all": range(steps), f"0-{half - 1}": range(half), f"{half}-{steps - 1}": range(half, steps)}
    windows.update({f"step {i}": [i] for i in range(steps)})
    traits = image_traits(fake.double().numpy())
    for score_file in score_files:
        step_scores = np.load(score_file).astype(np.float64)
        print(f"\n{score_file.name}")
        print("ρ of the total score with " + ", ".join(
            f"{name} {spearman(step_scores.sum(axis=1), value):.3f}" for name, value in traits.items()))
        print(f"{'':>8} {'raw score':^23}  | {'standardised within class':^23}  | raw: most over-dropped")
        print(f"{'window':>8} {'kept FD':>8} {'z':>6} {'ρ(conf)':>7}  | {'kept FD':>8} {'z':>6} {'ρ(conf)':>7}  | "
              "classes (dropped vs expected)")
        report_windows(step_scores, windows, features, real_stats, random_fd, confidence, label, kept)


def image_traits(pixels):
    """Simple per-image statistics of 8-bit grayscale images (N, H, W) that a score may follow."""
    laplacian = (4 * pixels[:, 1:-1, 1:-1] - pixels[:, :-2, 1:-1] - pixels[:, 2:, 1:-1]
                 - pixels[:, 1:-1, :-2] - pixels[:, 1:-1, 2:])
    return {"brightness": pixels.mean(axis=(1, 2)),
            "garment area (> 40)": (pixels > 40).mean(axis=(1, 2)),
            "texture (mean |Laplacian|)": np.abs(laplacian).mean(axis=(1, 2))}


def within_class(score, label):
    """The score standardised within each predicted class, so ranking by it keeps class proportions."""
    out = np.empty_like(score)
    for c in np.unique(label):
        group = label == c
        out[group] = (score[group] - score[group].mean()) / (score[group].std() + 1e-12)
    return out


def write_extremes(run, files, out, count=10, zoom=3):
    """Two rows of `count` samples, lowest scores on top, each zoomed `zoom`× with a 2-pixel gap."""
    scores = {line.split(",")[1]: float(line.split(",")[2])
              for line in (run / "scores.csv").read_text().splitlines()[1:]}
    ranked = sorted(files, key=lambda f: scores[f.name])
    rows = [ranked[:count], ranked[-count:]]
    side = Image.open(files[0]).size[0] * zoom
    sheet = Image.new("L", (count * (side + 2) + 2, 2 * (side + 2) + 2), 255)
    for r, row in enumerate(rows):
        for c, f in enumerate(row):
            tile = Image.open(f).convert("L").resize((side, side), Image.NEAREST)
            sheet.paste(tile, (2 + c * (side + 2), 2 + r * (side + 2)))
    sheet.save(out)
    low = ", ".join(f"{scores[f.name]:.0f}" for f in rows[0])
    high = ", ".join(f"{scores[f.name]:.0f}" for f in rows[1])
    print(f"{out}: lowest of {len(files)}: {low}\n{' ' * len(str(out))}  highest: {high}")


def report_windows(step_scores, windows, features, real_stats, random_fd, confidence, label, kept):
    names = CONFIG["class_names"]
    n = len(step_scores)
    for name, window in windows.items():
        raw = step_scores[:, list(window)].sum(axis=1)
        if not raw.any():
            continue  # outside the run's uncertainty window
        cells = []
        for score in (raw, within_class(raw, label)):
            order = np.argsort(score, kind="stable")
            kept_fd = frechet(gaussian(features[order[:kept]]), real_stats)
            z = (random_fd.mean() - kept_fd) / random_fd.std()
            cells.append(f"{kept_fd:8.2f} {z:6.2f} {spearman(score, confidence):7.3f}")
        order = np.argsort(raw, kind="stable")
        dropped = np.bincount(label[order[kept:]], minlength=len(names))
        expected = np.bincount(label, minlength=len(names)) * (n - kept) / n
        over = np.argsort(expected - dropped)[:2]
        drop_text = ", ".join(f"{names[c]} {dropped[c]} vs {expected[c]:.0f}" for c in over)
        print(f"{name:>8} {cells[0]}  | {cells[1]}  | {drop_text}")


if __name__ == "__main__":
    main()
