"""Read a wgsl-diff run folder from Python (numpy only; pandas optional for `scores_frame`).

A run folder (`wgsl-diff sample --out DIR`) holds:

    sample_NNNNNN.png        one 8-bit PNG per sample; its tEXt chunks carry `parameters` (the run's
                             JSON identity), `index`, `class` (class-conditional models),
                             `uncertainty_score`, `uncertainty_step_scores` ("step:score,..."),
                             `non_finite_step`
    sample_NNNNNN.npy        with --save-raw: the float32 image in [-1, 1] before quantisation (C, H, W)
    uncertainty_NNNNNN.npy   with --uncertainty: the sample's map summed over the window's steps,
                             float32 (C, H, W) in the model's space (the latents of a latent model)
    heatmap_NNNNNN.png       that map summed over channels, coloured (inferno) over the image in grey
                             (--heatmap-style overlay) or alone (map), with a labelled colour bar;
                             tEXt `colour_scale` ("lo,hi") and `heatmap_style`
    uncertainty_steps_NNNNNN.npy  for the run's first 4 samples, with --uncertainty: each window
                             step's map, float32 (steps, C, H, W), for the report
    guidance_masks_NNNNNN.npy     for the run's first 4 samples of a guided run: each guided step's
                             mask, float32 (steps, C, H, W), 1 where the element was guided
    samples.json             the manifest: {"parameters": {...}, "samples": [{"index", "file", "score",
                             "class", "step_scores", "non_finite_step", "heatmap"}, ...]}
    scores.csv               index,file,score,score_step_i...
    run.json                 the run's parameters, claimed by the first worker
    grid.png, uncertainty_grid.png, extremes.png
    report.html              with --report: one self-contained page (images embedded)
    filtered/kept, filtered/random   with --keep-fraction: subsets, each with its own samples.json
    MAPS/map_stepSSS_tTTTT_sampleNNNNNN.npy   with --save-maps MAPS: every step's map of each sample
                                              (1, C, H, W)
    MAPS/heatmap_stepSSS_tTTTT_sampleNNNNNN.png   with --step-heatmaps too: that map drawn as
                                              heatmap_NNNNNN.png is (style, colour bar, tEXt)
    NOISE/noise_*_sampleNNNNNN.npy             with --dump-noise NOISE: each sample's row of every
                             noise tensor drawn, one file per copy (see tools/common/wgsl_noise.py,
                             which regenerates them)

Usage:
    from tools.common.run_folder import RunFolder
    run = RunFolder("samples/")
    run.parameters["sampler"], len(run), run.scores()[:5]
    image = run.image(0)            # uint8 (H, W) or (H, W, 3)
    total = run.uncertainty(0)      # float32 (C, H, W), or None
"""

import json
import struct
import zlib
from pathlib import Path

import numpy as np


def read_png(path):
    """(pixels as uint8 (H, W) or (H, W, 3), tEXt chunks as a dict) of an 8-bit grey or RGB PNG,
    non-interlaced, as wgsl-diff writes them."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    pos, chunks, text = 8, [], {}
    width = height = colour = None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or colour not in (0, 2) or interlace:
                raise ValueError(f"{path}: only 8-bit grey or RGB, non-interlaced PNGs are read")
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            text[key.decode("latin-1")] = value.decode("latin-1")
    channels = 1 if colour == 0 else 3
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    rows = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).astype(np.int32)
        out = np.zeros(stride, dtype=np.int32)
        for x in range(stride):
            a = out[x - channels] if x >= channels else 0
            b = prev[x]
            c = prev[x - channels] if x >= channels else 0
            if f == 0:
                p = 0
            elif f == 1:
                p = a
            elif f == 2:
                p = b
            elif f == 3:
                p = (a + b) // 2
            else:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out[x] = (line[x] + p) & 0xFF
        rows[y] = out
        prev = out
    pixels = rows.reshape(height, width, channels)
    return (pixels[:, :, 0] if channels == 1 else pixels), text


class RunFolder:
    """One run folder: its manifest, samples, scores and maps."""

    def __init__(self, path):
        self.path = Path(path)
        manifest = json.loads((self.path / "samples.json").read_text())
        self.parameters = manifest["parameters"]
        self.samples = sorted(manifest["samples"], key=lambda s: s["index"])

    def __len__(self):
        return len(self.samples)

    def indices(self):
        return [s["index"] for s in self.samples]

    def scores(self):
        """(index, score) pairs, most certain first (None scores last)."""
        scored = [(s["index"], s.get("score")) for s in self.samples]
        return sorted(scored, key=lambda p: (p[1] is None, p[1] if p[1] is not None else 0.0))

    def step_scores(self, index):
        """{step: score} of one sample's window steps."""
        record = next(s for s in self.samples if s["index"] == index)
        return {int(k): v for k, v in (record.get("step_scores") or {}).items()}

    def image(self, index):
        return read_png(self.path / f"sample_{index:06d}.png")[0]

    def raw(self, index):
        """The float32 image before quantisation (--save-raw), or None."""
        path = self.path / f"sample_{index:06d}.npy"
        return np.load(path) if path.exists() else None

    def uncertainty(self, index):
        """The map summed over the window (C, H, W) in the model's space, or None."""
        path = self.path / f"uncertainty_{index:06d}.npy"
        return np.load(path) if path.exists() else None

    def kept_step_maps(self, index):
        """Each window step's map (steps, C, H, W) of one of the run's first 4 samples, or None."""
        path = self.path / f"uncertainty_steps_{index:06d}.npy"
        return np.load(path) if path.exists() else None

    def guidance_masks(self, index):
        """Each guided step's mask (steps, C, H, W) of one of a guided run's first 4 samples, or None."""
        path = self.path / f"guidance_masks_{index:06d}.npy"
        return np.load(path) if path.exists() else None

    def step_maps(self, maps_dir):
        """{(step, timestep): {index: array (C, H, W)}} of a --save-maps folder."""
        out = {}
        for path in sorted(Path(maps_dir).glob("map_step*_t*_sample*.npy")):
            step, t, sample = path.stem[len("map_step"):].split("_", 2)
            out.setdefault((int(step), int(t[1:])), {})[int(sample[len("sample"):])] = np.load(path)[0]
        return out

    def scores_frame(self):
        """The manifest as a pandas DataFrame (index, file, score, class, non_finite_step, score_step_i)."""
        import pandas as pd
        rows = []
        for s in self.samples:
            row = {k: s.get(k) for k in ("index", "file", "score", "class", "non_finite_step")}
            for step, value in (s.get("step_scores") or {}).items():
                row[f"score_step_{step}"] = value
            rows.append(row)
        return pd.DataFrame(rows).set_index("index")


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="Summarise a wgsl-diff run folder.")
    parser.add_argument("folder")
    args = parser.parse_args()
    run = RunFolder(args.folder)
    print(json.dumps(run.parameters, indent=1))
    print(f"{len(run)} samples; most certain: {run.scores()[:3]}")
