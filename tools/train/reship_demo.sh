#!/usr/bin/env bash
# Re-ship the demo model after training (tools/train/train_demo.py): export the newest checkpoint's EMA
# weights, convert them into weights/, regenerate the fixtures that pin the shipped weights, and
# measure the quality table of weights/README.md (1000 twin samples at DDIM 50 and 10 steps,
# `wgsl-diff eval` against t10k 0..5000) and the example grid. Each stage skips what is done, so
# a cut run resumes. Prints what to paste into weights/README.md.
#
#   tools/train/reship_demo.sh            # after `cargo build --release`
#   OUT=/tmp/reship CKPT=checkpoints tools/train/reship_demo.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
WD=${WD:-${CARGO_TARGET_DIR:-target}/release/wgsl-diff}
CKPT=${CKPT:-checkpoints}
OUT=${OUT:-/tmp/reship}
REAL=${REAL:-/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz}
mkdir -p "$OUT"

step=$($PY -m tools.train.train_demo --ckpt-dir "$CKPT" --export "$OUT/export" | sed -n 's/^checkpoint step //p')
echo "exported the EMA weights of step $step"
$PY tools/convert.py "$OUT/export" weights/fashion_mnist_ddpm.safetensors
$PY -m tools.fixtures.pipeline --shipped
$PY -m tools.fixtures.vjp
for steps in 50 10; do
  dir=$OUT/ddim$steps
  if [ ! -f "$dir/done" ]; then
    rm -rf "$dir"
    $PY -m tools.twin.sample_torch --num 1000 --steps "$steps" --batch 100 --seed 0 --out "$dir" \
      > "$OUT/ddim$steps.log" 2>&1
    touch "$dir/done"
  fi
  [ -f "$dir/eval.json" ] || $WD eval --real "$REAL" --real-range 0..5000 --fake "$dir" \
      --json "$dir/eval.json" > "$dir/eval.txt"
  $PY -c "import json; e=json.load(open('$dir/eval.json')); \
print(f\"| shipped model (step $step), DDIM $steps steps | {e['frechet_distance']:.1f} | {e['fake']['mean_confidence']:.3f} |\")"
done
[ -f "weights/examples/grid64_step$step.png" ] || {
  $WD sample --num 64 --steps 10 --out "$OUT/grid64" > /dev/null
  cp "$OUT/grid64/grid.png" "weights/examples/grid64_step$step.png"
}
echo "weights/examples/grid64_step$step.png written; now run the fixture tests:"
echo "  WGPU_BACKEND=vulkan cargo test --release --test pipeline --test vjp"
