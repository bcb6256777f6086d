"""Where the tools read and write: every default path is relative to the repository root."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
WEIGHTS = REPO_ROOT / "weights"
# The shipped Fashion-MNIST DDPM (tools/train/train_demo.py, converted by tools/convert.py).
SHIPPED_MODEL = WEIGHTS / "fashion_mnist_ddpm.safetensors"
