#!/usr/bin/env python3
"""Which uncertainty modes and steps track sample quality? Filtering study of a run folder.

Reads a run folder: a tools/twin/sample_torch.py --uncertainty run (sample_*.png +
step_scores_MODE.npy, every mode's per-step scores) or a `wgsl-diff sample --uncertainty` run
(sample_*.png + scores.csv with its score_step_i columns; samples.json names the mode). For every mode and window of steps (all,
first and second half, each step alone) a sample's score is the sum of its per-step scores over the
window (typicality: of their absolute values |Δ_t|), and with the Fashion-MNIST classifier of
tools/train/train_classifier.py as the feature extractor (the metric of `wgsl-diff eval`):

  kept FD     Fréchet distance to the test set of the (keep)·N lowest-scored samples
  random FD   the same for --trials random subsets of that size: mean ± sd
  z           (random mean − kept) / sd: > 0 means filtering by this score beats chance
  z(class)    the same with the score standardised within each predicted class (keeps the class mix)
  ρ(area)     Spearman correlation of the score with the garment area (pixels > 40 of 255)
  ρ(conf)     Spearman correlation with the classifier's confidence (max softmax): < 0 means
              high-uncertainty samples are the ones the classifier is unsure about
  ρ(realism)  Spearman correlation with each sample's k-NN realism score in classifier features
              (Kynkäänniemi et al. 2019, k = 3, against 5000 test images, the half with the largest
              k-NN radii pruned): a per-sample measure that does not depend on the class mix;
              < 0 means high-uncertainty samples are the unrealistic ones
  real ρ(area), real ρ(conf)
              the same correlations for real test images noised to each window step's timestep
              and scored there (--real: a tools/twin/sample_torch.py --real-images folder); a score
              that is not confounded by simplicity should not track area there
  AUSE, AURG  per mode, from tools/studies/ause.py --out (--ause)

--choose-on RUN_A --report-on RUN_B picks the (mode, window) with the highest z on RUN_A and reports
every row on RUN_B (other seeds), marking the chosen one, so the choice is not tuned on the reported
set. Writes a markdown table (--markdown) and JSON (--json); prints the table.

Usage:
    .venv/bin/python -m tools.studies.uncertainty_study /tmp/uc_run [--keep 0.85]
    .venv/bin/python -m tools.studies.uncertainty_study --choose-on /tmp/run_a --report-on /tmp/run_b \
        --real /tmp/real_test --ause /tmp/ause.json --markdown study.md --json study.json
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.spatial.distance import cdist
from safetensors import safe_open
from safetensors.torch import load_file

from tools.common.classifier import FashionClassifier
from tools.common.fashion_mnist import DEFAULT_DATA_DIR, load_split
from tools.common.paths import WEIGHTS

DEFAULT_CLASSIFIER = WEIGHTS / "fashion_classifier.safetensors"


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


def load_run(run):
    """(PNG files, {mode: per-step scores (N, steps), NaN where a step was not scored})."""
    score_files = sorted(run.glob("step_scores_*.npy"))
    if score_files:
        scores = {f.stem.removeprefix("step_scores_"): np.load(f).astype(np.float64) for f in score_files}
        n = len(next(iter(scores.values())))
        for mode, v in scores.items():
            v[:, ~v.any(axis=0)] = np.nan  # steps outside the run's window
        files = sorted(run.glob("sample_*.png"))[:n]
    else:
        manifest = json.loads((run / "samples.json").read_text())
        mode = manifest["parameters"]["uncertainty"]["mode"]
        steps = len(manifest["parameters"]["timesteps"])
        lines = (run / "scores.csv").read_text().splitlines()
        header = lines[0].split(",")
        columns = {int(h.removeprefix("score_step_")): k for k, h in enumerate(header) if h.startswith("score_step_")}
        rows = [line.split(",") for line in lines[1:]]
        v = np.full((len(rows), steps), np.nan)
        for i, k in columns.items():
            v[:, i] = [float(r[k]) if r[k] else np.nan for r in rows]
        scores, n = {mode: v}, len(rows)
        files = [run / r[1] for r in rows]
    if len(files) != n:
        raise SystemExit(f"{run}: {len(files)} PNGs for {n} rows of step scores")
    return files, scores


def window_score(mode, step_scores, window):
    part = step_scores[:, list(window)]
    return np.abs(part).sum(axis=1) if mode == "typicality" else part.sum(axis=1)


def windows_of(steps):
    half = steps // 2
    windows = {"all": range(steps), f"0-{half - 1}": range(half), f"{half}-{steps - 1}": range(half, steps)}
    windows.update({f"step {i}": range(i, i + 1) for i in range(steps)})
    return windows


def read_pixels(files):
    return torch.from_numpy(np.stack([np.asarray(Image.open(f), dtype=np.float32) for f in files]))


def realism(fake, real, k=3):
    """Kynkäänniemi et al.'s realism score of each fake feature vector against real ones:
    max over real r of NND_k(r) / |fake − r|, real samples with NND_k above the median pruned."""
    radii = np.sort(cdist(real, real), axis=1)[:, k]  # column 0 is the sample itself
    keep = radii <= np.median(radii)
    return (radii[keep][None, :] / np.maximum(cdist(fake, real[keep]), 1e-12)).max(axis=1)


def study(run, args, classifier, real_stats, real_run=None, ause=None):
    """One row per (mode, window) with every statistic of the module docstring."""
    files, scores = load_run(run)
    pixels = read_pixels(files)
    features, probs = classify(classifier, (pixels / 127.5 - 1.0).unsqueeze(1))
    confidence, label = probs.max(axis=1), probs.argmax(axis=1)
    area = image_traits(pixels.double().numpy())["garment area (> 40)"]
    realism_score = realism(features, args.real_features)
    n = len(files)
    kept = int(round(args.keep * n))
    rng = np.random.default_rng(0)
    random_fd = np.array([frechet(gaussian(features[rng.permutation(n)[:kept]]), real_stats)
                          for _ in range(args.trials)])
    summary = {"run": str(run), "samples": n, "kept": kept, "fd_all": frechet(gaussian(features), real_stats),
               "random_fd_mean": float(random_fd.mean()), "random_fd_sd": float(random_fd.std()),
               "mean_confidence": float(confidence.mean()), "mean_realism": float(realism_score.mean())}
    real = None
    if real_run is not None:
        real_files, real_scores = load_run(real_run)
        real_pixels = read_pixels(real_files)
        _, real_probs = classify(classifier, (real_pixels / 127.5 - 1.0).unsqueeze(1))
        real = (real_scores, image_traits(real_pixels.double().numpy())["garment area (> 40)"],
                real_probs.max(axis=1))
    rows = []
    for mode, step_scores in scores.items():
        for name, window in windows_of(step_scores.shape[1]).items():
            if np.isnan(step_scores[:, list(window)]).any():
                continue  # outside the run's uncertainty window
            score = window_score(mode, step_scores, window)
            order = np.argsort(score, kind="stable")
            kept_fd = frechet(gaussian(features[order[:kept]]), real_stats)
            class_order = np.argsort(within_class(score, label), kind="stable")
            class_fd = frechet(gaussian(features[class_order[:kept]]), real_stats)
            row = {"mode": mode, "window": name, "kept_fd": kept_fd,
                   "z": (random_fd.mean() - kept_fd) / random_fd.std(),
                   "z_class": (random_fd.mean() - class_fd) / random_fd.std(),
                   "rho_area": spearman(score, area), "rho_conf": spearman(score, confidence),
                   "rho_realism": spearman(score, realism_score)}
            if real is not None and mode in real[0]:
                rs = window_score(mode, real[0][mode], window)
                row.update(real_rho_area=spearman(rs, real[1]), real_rho_conf=spearman(rs, real[2]))
            if ause is not None and mode in ause["modes"]:
                row.update(ause=ause["modes"][mode]["ause"], aurg=ause["modes"][mode]["aurg"])
            rows.append(row)
    return summary, rows


COLUMNS = [("mode", "mode", "{}"), ("window", "window", "{}"), ("kept FD", "kept_fd", "{:.2f}"),
           ("z", "z", "{:+.2f}"), ("z(class)", "z_class", "{:+.2f}"), ("ρ(area)", "rho_area", "{:+.3f}"),
           ("ρ(conf)", "rho_conf", "{:+.3f}"), ("ρ(realism)", "rho_realism", "{:+.3f}"), ("real ρ(area)", "real_rho_area", "{:+.3f}"),
           ("real ρ(conf)", "real_rho_conf", "{:+.3f}"), ("AUSE", "ause", "{:.4f}"), ("AURG", "aurg", "{:+.4f}")]


def markdown(summary, rows, chosen=None):
    lines = [f"{summary['samples']} samples of {summary['run']}: FD of all {summary['fd_all']:.2f}; "
             f"random {summary['kept']}: {summary['random_fd_mean']:.2f} ± {summary['random_fd_sd']:.2f}",
             ""]
    columns = [c for c in COLUMNS if any(c[1] in r for r in rows)]
    lines.append("| " + " | ".join(c[0] for c in columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for r in rows:
        cells = [fmt.format(r[key]) if key in r else "" for _, key, fmt in columns]
        if chosen and (r["mode"], r["window"]) == chosen:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", type=Path, nargs="?", help="run folder (sample_torch.py or wgsl-diff)")
    p.add_argument("--choose-on", type=Path, metavar="RUN_A", help="choose the mode and window here")
    p.add_argument("--report-on", type=Path, metavar="RUN_B", help="report on this run (other seeds)")
    p.add_argument("--real", type=Path, help="tools/twin/sample_torch.py --real-images folder of test images")
    p.add_argument("--ause", type=Path, help="tools/studies/ause.py --out JSON")
    p.add_argument("--keep", type=float, default=0.85, help="fraction kept (lowest scores)")
    p.add_argument("--trials", type=int, default=200, help="random subsets per comparison")
    p.add_argument("--data", type=Path, default=Path(DEFAULT_DATA_DIR))
    p.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER)
    p.add_argument("--markdown", type=Path, help="write the table here")
    p.add_argument("--json", type=Path, help="write every row here")
    p.add_argument("--extremes", type=Path, metavar="PNG",
                   help="also write the 10 lowest (top row) and 10 highest (bottom row) scores of the "
                        "first --extremes-of samples of the reported run as one image, for the chosen "
                        "(mode, window), else --extremes-mode over all steps")
    p.add_argument("--extremes-mode", default="centred")
    p.add_argument("--extremes-of", type=int, metavar="N", help="[default: all samples]")
    args = p.parse_args()
    if (args.choose_on is None) != (args.report_on is None) or (args.run is None) == (args.report_on is None):
        p.error("give either RUN or both --choose-on and --report-on")
    torch.set_num_threads(2)

    real, _ = load_split(args.data, "t10k")  # scaled and padded as in training
    classifier = load_classifier(args.classifier)
    real_features = classify(classifier, real)[0]
    real_stats = gaussian(real_features)
    args.real_features = real_features[:5000]
    ause = json.loads(args.ause.read_text()) if args.ause else None
    out, chosen = {}, None
    if args.choose_on:
        summary_a, rows_a = study(args.choose_on, args, classifier, real_stats)
        best = max(rows_a, key=lambda r: r["z"])
        chosen = (best["mode"], best["window"])
        out["choose_on"] = {"summary": summary_a, "rows": rows_a, "chosen": list(chosen)}
        print(markdown(summary_a, rows_a, chosen))
        print(f"chosen on {args.choose_on}: mode {chosen[0]}, window {chosen[1]} (z {best['z']:+.2f})\n")
    run = args.report_on or args.run
    summary, rows = study(run, args, classifier, real_stats, args.real, ause)
    out["report"] = {"summary": summary, "rows": rows}
    if chosen:
        out["report"]["chosen"] = next((r for r in rows if (r["mode"], r["window"]) == chosen), None)
    table = markdown(summary, rows, chosen)
    print(table)
    if chosen:
        r = out["report"]["chosen"]
        print(f"chosen ({chosen[0]}, {chosen[1]}) on {run}: " + ("not in this run" if r is None else
              f"kept FD {r['kept_fd']:.2f} vs random {summary['random_fd_mean']:.2f} ± "
              f"{summary['random_fd_sd']:.2f}, z {r['z']:+.2f}"))
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    if args.extremes:
        files, scores = load_run(run)
        mode, window = chosen or (args.extremes_mode, "all")
        if mode not in scores:
            raise SystemExit(f"--extremes: {run} has no scores of mode {mode}")
        window = windows_of(scores[mode].shape[1])[window]
        count = args.extremes_of or len(files)
        write_extremes(files[:count], window_score(mode, scores[mode], window)[:count], args.extremes)


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


def write_extremes(files, score, out, count=10, zoom=3):
    """Two rows of `count` samples, lowest scores on top, each zoomed `zoom`× with a 2-pixel gap."""
    scores = {f.name: s for f, s in zip(files, score)}
    ranked = sorted(files, key=lambda f: scores[f.name])
    rows = [ranked[:count], ranked[-count:]]
    side = Image.open(files[0]).size[0] * zoom
    sheet = Image.new("L", (count * (side + 2) + 2, 2 * (side + 2) + 2), 255)
    for r, row in enumerate(rows):
        for c, f in enumerate(row):
            tile = Image.open(f).convert("L").resize((side, side), Image.NEAREST)
            sheet.paste(tile, (2 + c * (side + 2), 2 + r * (side + 2)))
    sheet.save(out)
    low = ", ".join(f"{scores[f.name]:.4g}" for f in rows[0])
    high = ", ".join(f"{scores[f.name]:.4g}" for f in rows[1])
    print(f"{out}: lowest of {len(files)}: {low}\n{' ' * len(str(out))}  highest: {high}")


if __name__ == "__main__":
    main()
