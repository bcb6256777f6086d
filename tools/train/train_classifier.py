#!/usr/bin/env python3
"""Train the small Fashion-MNIST classifier that `wgsl-diff eval` uses as a feature extractor.

Its 128-d penultimate activation plays the role Inception's pool features play in FID: `wgsl-diff
eval` fits a Gaussian to the features of real and of generated images and reports the Fréchet
distance between them, plus the classifier's mean confidence on each set.

The network uses only layers wgsl-diff's GPU ops implement (3x3 convolutions with padding 1 and
bias, SiLU, 2x2 average pooling, linear layers), so src/models/evaluation/classifier.rs can mirror it:

    [conv 3x3 -> SiLU -> avgpool 2x2] per entry of CHANNELS -> flatten (NCHW order)
    -> Linear -> SiLU (= the features) -> Linear (= the logits)

Input is exactly what the generator sees (tools/train/train_demo.py, tools/common/fashion_mnist.py):
8-bit pixels scaled to [-1, 1] by x / 127.5 - 1, 28x28 padded to 32x32 with the background value -1.

Training is seeded and single-threaded on the first 55,000 training images; the
other 5,000 are a validation split, and the test set is scored once at the end. Writes:
    weights/fashion_classifier.safetensors   float32, tensor names = the module names (convs.N,
                                             hidden, head); metadata format, format_version, arch,
                                             config (JSON), test_accuracy, training (JSON)
    tests/fixtures/classifier_io.safetensors features and logits of 4 test images, evaluated in
                                             float64 from the saved float32 weights

Usage:
    .venv/bin/python -m tools.train.train_classifier                 # ~12 min on one core
    .venv/bin/python -m tools.train.train_classifier --fixture-only  # rewrite the fixture from the
                                                                     # saved weights
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tools.common.classifier import ARCH, CONFIG, FashionClassifier
from tools.common.fashion_mnist import DEFAULT_DATA_DIR, load_split
from tools.common.paths import FIXTURES, WEIGHTS

DEFAULT_OUT = WEIGHTS / "fashion_classifier.safetensors"
DEFAULT_FIXTURE = FIXTURES / "classifier_io.safetensors"

FORMAT_NAME, FORMAT_VERSION = "wgsl-diff", "1"
VALIDATION_SIZE = 5000
FIXTURE_IMAGES = [0, 1, 2, 3]  # t10k indices: four different classes


def parse_args():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default=DEFAULT_DATA_DIR,
                   help="folder with the Fashion-MNIST idx .gz files")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-3, help="Adam peak learning rate (one cycle: warm-up, then cosine decay)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fixture-only", action="store_true",
                   help="only rewrite --fixture from the weights already in --out")
    return p.parse_args()


@torch.no_grad()
def accuracy(model, images, labels, batch=1000):
    model.eval()
    correct = sum((model(images[i:i + batch])[1].argmax(1) == labels[i:i + batch]).sum().item()
                  for i in range(0, len(images), batch))
    return correct / len(images)


def train(model, images, labels, val_images, val_labels, args):
    gen = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = len(images) // args.batch_size
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.15)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        total_loss = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            x = images[idx]
            # Garments are left-right symmetric in meaning: flips are free extra data.
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(model(x)[1], labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total_loss / steps_per_epoch:.4f}, "
              f"validation accuracy {accuracy(model, val_images, val_labels):.4f}, "
              f"{time.time() - start:.0f} s", flush=True)
    return time.time() - start


def save_weights(model, path, test_accuracy, training):
    """training: a JSON-ready record of how the weights were made, stored as metadata."""
    tensors = {name: t.detach().float().contiguous() for name, t in model.state_dict().items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": ARCH,
        "config": json.dumps(CONFIG, separators=(",", ":"), sort_keys=True),
        "test_accuracy": f"{test_accuracy:.4f}",
        "training": json.dumps(training, separators=(",", ":"), sort_keys=True),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def write_fixture(weights_path, fixture_path, test_images):
    """Features and logits of FIXTURE_IMAGES from the saved float32 weights, computed in float64."""
    model = FashionClassifier(**CONFIG).double()
    model.load_state_dict({k: v.double() for k, v in load_file(str(weights_path)).items()})
    images = test_images[FIXTURE_IMAGES]
    with torch.no_grad():
        features, logits = model(images.double())
    save_file({"images": images.contiguous(), "features": features.float(),
               "logits": logits.float()}, str(fixture_path),
              metadata={"weights": weights_path.name,
                        "t10k_indices": json.dumps(FIXTURE_IMAGES)})
    print(f"wrote {fixture_path} (t10k images {FIXTURE_IMAGES})")


def main():
    args = parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    test_images, test_labels = load_split(args.data, "t10k")
    if not args.fixture_only:
        images, labels = load_split(args.data, "train")
        split = len(images) - VALIDATION_SIZE
        model = FashionClassifier(**CONFIG)
        print(f"{sum(p.numel() for p in model.parameters())} parameters, "
              f"{split} training / {VALIDATION_SIZE} validation images", flush=True)
        seconds = train(model, images[:split], labels[:split], images[split:], labels[split:], args)
        test_accuracy = accuracy(model, test_images, test_labels)
        print(f"test accuracy {test_accuracy:.4f} after {seconds / 60:.1f} min of training")
        save_weights(model, args.out, test_accuracy, {
            "epochs": args.epochs, "cpu_threads": 1, "seconds": round(seconds),
            "train_images": split})
        print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    write_fixture(args.out, args.fixture, test_images)


if __name__ == "__main__":
    main()
