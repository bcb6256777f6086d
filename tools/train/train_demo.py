#!/usr/bin/env python3
"""Train a small unconditional DDPM on Fashion-MNIST, on CPU, for the wgsl-diff demo.

The model is a diffusers ``UNet2DModel`` without attention (DownBlock2D/UpBlock2D, no mid-block
attention), ~1M parameters, trained with epsilon prediction on a linear beta schedule
(1e-4 .. 0.02, T = 1000) — the same recipe as google/ddpm-cifar10-32, scaled down so that it
trains in hours on 2 CPU cores. Images are 28x28 padded to 32x32 with background (-1).

Training is resumable: a checkpoint (model, EMA, optimizer, step, RNG state) is written
atomically every --ckpt-every steps into --ckpt-dir, and a restarted run continues from the
newest one. Losses are appended to <ckpt-dir>/train_log.csv.

When --steps is reached the EMA weights are exported as a diffusers pipeline folder
(<ckpt-dir>/ddpm-fashion-mnist/{unet,scheduler}), which tools/convert.py turns into the
.safetensors file that wgsl-diff loads. --export DIR exports the newest checkpoint at any time.

Usage:
    # train (or resume) in the background at low priority
    nohup nice -n 19 .venv/bin/python -m tools.train.train_demo > checkpoints/train.out 2>&1 &
    # time a few steps without touching any checkpoint
    .venv/bin/python -m tools.train.train_demo --benchmark 10
    # export the newest checkpoint's EMA weights, then convert them
    .venv/bin/python -m tools.train.train_demo --export checkpoints/fmnist
    .venv/bin/python tools/convert.py checkpoints/fmnist weights/fashion_mnist_ddpm.safetensors
"""

import argparse
import copy
import csv
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

from tools.common.fashion_mnist import DEFAULT_DATA_DIR, IMAGE_SIZE, read_idx_images
from tools.common.paths import REPO_ROOT

DEFAULT_CKPT_DIR = str(REPO_ROOT / "checkpoints")  # git-ignored
EXPORT_SUBDIR = "ddpm-fashion-mnist"
CKPT_PATTERN = re.compile(r"^ckpt_(\d{8})\.pt$")
CHECKPOINTS_KEPT = 2

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02

# Chosen by timing one AdamW step at batch 64 with 2 threads: ~0.6 s under a concurrent build.
MODEL_CONFIG = dict(
    sample_size=IMAGE_SIZE,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2D",
    add_attention=False,  # mid block without attention: the demo exercises the conv paths only
    norm_num_groups=8,
    act_fn="silu",
    time_embedding_type="positional",
    flip_sin_to_cos=True,
    freq_shift=0,
)


def parse_args():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default=DEFAULT_DATA_DIR,
                   help="folder with Fashion-MNIST train-images-idx3-ubyte.gz")
    p.add_argument("--ckpt-dir", default=DEFAULT_CKPT_DIR,
                   help="where checkpoints, train_log.csv and the final export go")
    p.add_argument("--steps", type=int, default=20000, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate after warmup")
    p.add_argument("--warmup", type=int, default=500, help="linear learning-rate warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max global gradient norm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--ckpt-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, default=50, help="steps between log lines")
    p.add_argument("--export", metavar="DIR",
                   help="export the newest checkpoint's EMA weights as a diffusers pipeline "
                        "folder into DIR, then exit (no training)")
    p.add_argument("--init-from", metavar="SAFETENSORS",
                   help="when --ckpt-dir holds no checkpoint, start from these weights (a "
                        "wgsl-diff file of this architecture, e.g. the shipped EMA weights) "
                        "instead of a random init: model and EMA both take them, the "
                        "optimizer starts fresh with its own warmup, and the step counter "
                        "starts at --init-step")
    p.add_argument("--init-step", type=int, default=0,
                   help="the step count the --init-from weights were trained for")
    p.add_argument("--benchmark", type=int, metavar="N",
                   help="time N training steps on a fresh model, print step time and "
                        "parameter count, then exit (no checkpoints)")
    return p.parse_args()


def load_dataset(data_dir):
    """Returns all training images as float32 (N, 1, 32, 32) in [-1, 1], background -1."""
    path = Path(data_dir) / "train-images-idx3-ubyte.gz"
    if not path.is_file():
        sys.exit(f"error: {path} not found (pass the Fashion-MNIST folder with --data)")
    images = torch.from_numpy(read_idx_images(path).astype(np.float32) / 127.5 - 1.0)
    pad = (IMAGE_SIZE - images.shape[-1]) // 2
    images = F.pad(images, (pad, pad, pad, pad), value=-1.0)
    return images.unsqueeze(1).contiguous()


def make_scheduler():
    return DDPMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_schedule="linear",
        beta_start=BETA_START,
        beta_end=BETA_END,
        clip_sample=True,
        prediction_type="epsilon",
    )


class Trainer:
    def __init__(self, args):
        self.args = args
        torch.manual_seed(args.seed)
        self.model = UNet2DModel(**MODEL_CONFIG)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        # One generator drives batches, flips, timesteps and noise, so a resumed run replays
        # exactly the batches an uninterrupted run would have drawn.
        self.gen = torch.Generator().manual_seed(args.seed)
        self.step = 0
        self.warmup_from = 0  # a fresh optimizer (new run or --init-from) warms up from here
        alphas_cumprod = make_scheduler().alphas_cumprod
        self.sqrt_ac = alphas_cumprod.sqrt()
        self.sqrt_one_minus_ac = (1.0 - alphas_cumprod).sqrt()

    def init_from(self, path, step):
        """Starts from exported weights: Adam's moments are not in them, so the optimizer
        warms up again from `step`, and the batch generator is reseeded with the step so
        the continuation does not replay the first run's batches."""
        from safetensors.torch import load_file
        weights = load_file(path)
        self.model.load_state_dict(weights)  # strict: the architecture must match exactly
        self.ema.load_state_dict(weights)
        self.step = self.warmup_from = step
        self.gen.manual_seed(self.args.seed + step)

    def num_params(self):
        return sum(p.numel() for p in self.model.parameters())

    def train_step(self, images):
        b = self.args.batch_size
        idx = torch.randint(len(images), (b,), generator=self.gen)
        x0 = images[idx]
        flip = torch.rand(b, generator=self.gen) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        t = torch.randint(NUM_TRAIN_TIMESTEPS, (b,), generator=self.gen)
        noise = torch.randn(x0.shape, generator=self.gen)
        xt = self.sqrt_ac[t].view(-1, 1, 1, 1) * x0 + self.sqrt_one_minus_ac[t].view(-1, 1, 1, 1) * noise

        warm_steps = self.step - self.warmup_from + 1
        lr = self.args.lr * min(1.0, warm_steps / max(1, self.args.warmup))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = F.mse_loss(self.model(xt, t).sample, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
        self.optimizer.step()
        self.update_ema()
        self.step += 1
        return loss.item(), lr

    @torch.no_grad()
    def update_ema(self):
        # Short EMA warmup: early on the average would otherwise be dominated by the random init.
        decay = min(self.args.ema_decay, (1 + self.step) / (10 + self.step))
        for ema_p, p in zip(self.ema.parameters(), self.model.parameters()):
            ema_p.lerp_(p, 1.0 - decay)

    def state_dict(self):
        return {
            "model_config": MODEL_CONFIG,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "warmup_from": self.warmup_from,
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state):
        if state["model_config"] != MODEL_CONFIG:
            sys.exit("error: checkpoint was trained with a different MODEL_CONFIG; "
                     "use another --ckpt-dir")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.warmup_from = state.get("warmup_from", 0)
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])


def list_checkpoints(ckpt_dir):
    """Checkpoint paths in ckpt_dir, oldest first."""
    found = []
    for path in Path(ckpt_dir).glob("ckpt_*.pt"):
        m = CKPT_PATTERN.match(path.name)
        if m:
            found.append((int(m.group(1)), path))
    return [path for _, path in sorted(found)]


def save_checkpoint(trainer, ckpt_dir):
    path = Path(ckpt_dir) / f"ckpt_{trainer.step:08d}.pt"
    tmp = path.with_name(path.name + ".tmp")
    torch.save(trainer.state_dict(), tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a truncated checkpoint under the real name
    for old in list_checkpoints(ckpt_dir)[:-CHECKPOINTS_KEPT]:
        old.unlink()
    return path


def load_latest(trainer, ckpt_dir):
    checkpoints = list_checkpoints(ckpt_dir)
    if not checkpoints:
        return None
    trainer.load_state_dict(torch.load(checkpoints[-1], map_location="cpu", weights_only=False))
    return checkpoints[-1]


def export_pipeline(ema_model, out_dir):
    """Writes out_dir/unet (EMA weights) and out_dir/scheduler, the google/ddpm-* layout."""
    out_dir = Path(out_dir)
    ema_model.save_pretrained(out_dir / "unet", safe_serialization=True)
    make_scheduler().save_pretrained(out_dir / "scheduler")
    print(f"exported EMA weights to {out_dir}", flush=True)


def benchmark(trainer, images, steps):
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step(images)
        times.append(time.perf_counter() - start)
    steady = times[1:] if len(times) > 1 else times  # the first step pays allocator warm-up
    print(f"parameters: {trainer.num_params():,}")
    print(f"step time (batch {trainer.args.batch_size}, {torch.get_num_threads()} threads): "
          f"mean {np.mean(steady):.3f} s, min {np.min(steady):.3f} s over {len(steady)} steps")


def drop_log_rows_after(log_path, step):
    """Removes log rows past the resumed checkpoint: those steps are about to be trained again."""
    if not log_path.exists():
        return
    with open(log_path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [row for row in rows[1:] if int(row[0]) <= step]
    if len(kept) < len(rows):
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerows(kept)


def train(trainer, images, args):
    ckpt_dir = Path(args.ckpt_dir)
    resumed = load_latest(trainer, ckpt_dir)
    if resumed:
        start = f"resumed from {resumed} at step {trainer.step}"
    elif args.init_from:
        trainer.init_from(args.init_from, args.init_step)
        start = f"starting from {args.init_from} at step {trainer.step} (fresh optimizer)"
    else:
        start = "starting from scratch"
    print(f"parameters: {trainer.num_params():,}; {start}", flush=True)

    log_path = ckpt_dir / "train_log.csv"
    drop_log_rows_after(log_path, trainer.step)
    new_log = not log_path.exists()
    with open(log_path, "a", newline="") as log_file:
        log = csv.writer(log_file)
        if new_log:
            log.writerow(["step", "loss", "lr", "sec_per_step", "unix_time"])
        losses, interval_start = [], time.perf_counter()
        while trainer.step < args.steps:
            loss, lr = trainer.train_step(images)
            if not math.isfinite(loss):
                sys.exit(f"error: loss became {loss} at step {trainer.step}; not checkpointing")
            losses.append(loss)
            if trainer.step % args.log_every == 0 or trainer.step == args.steps:
                sec_per_step = (time.perf_counter() - interval_start) / len(losses)
                mean_loss = float(np.mean(losses))
                log.writerow([trainer.step, f"{mean_loss:.5f}", f"{lr:.3g}",
                              f"{sec_per_step:.3f}", int(time.time())])
                log_file.flush()
                print(f"step {trainer.step}/{args.steps} loss {mean_loss:.4f} "
                      f"lr {lr:.2e} {sec_per_step:.3f} s/step", flush=True)
                losses, interval_start = [], time.perf_counter()
            if trainer.step % args.ckpt_every == 0 or trainer.step == args.steps:
                print(f"saved {save_checkpoint(trainer, ckpt_dir)}", flush=True)

    export_pipeline(trainer.ema, ckpt_dir / EXPORT_SUBDIR)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    trainer = Trainer(args)

    if args.export:
        if load_latest(trainer, args.ckpt_dir) is None:
            sys.exit(f"error: no checkpoint (ckpt_*.pt) in {args.ckpt_dir}")
        print(f"checkpoint step {trainer.step}")
        export_pipeline(trainer.ema, args.export)
        return

    images = load_dataset(args.data)
    if args.benchmark:
        benchmark(trainer, images, args.benchmark)
        return

    Path(args.ckpt_dir).mkdir(parents=True, exist_ok=True)
    train(trainer, images, args)


if __name__ == "__main__":
    main()
