#!/usr/bin/env bash
# Guided vs unguided sample quality on the shipped model (issue 11). The twin (tools/twin/sample_torch.py,
# wgsl-diff's own noise streams) makes N samples per setting from the same seeds, so every setting
# starts from the same x_T; `wgsl-diff eval` measures the classifier Fréchet distance and mean
# confidence against Fashion-MNIST test images 0..5000 (apt-get install dataset-fashion-mnist).
# Resumable: a finished setting keeps its folder. Prints a markdown table.
#
#   tools/studies/guidance_study.sh            # N=1000, 10 DDIM steps, guided steps 0-2, M=5, p=0.95
#   N=200 OUT=/tmp/quick tools/studies/guidance_study.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-1000}
OUT=${OUT:-/tmp/guidance_study}
PY=${PY:-.venv/bin/python}
WD=${WD:-target/release/wgsl-diff}
REAL=${REAL:-/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz}
COMMON="--num $N --steps 10 --batch 100 --seed 0 -M 5"
# In the order they are worth having: a run cut short still reports the first ones.
SETTINGS=(
  "unguided|"
  "gradient_1|--guidance gradient --guidance-strength 1"
  "posterior|--guidance posterior"
  "gradient_3|--guidance gradient --guidance-strength 3"
  "gradient_0.3|--guidance gradient --guidance-strength 0.3"
  "gradient_-1|--guidance gradient --guidance-strength -1"
  # Another unguided set (other seeds): how far FD moves by chance alone.
  "unguided_seed1|--seed 1"
)
for entry in "${SETTINGS[@]}"; do
  name=${entry%%|*}; flags=${entry#*|}
  dir=$OUT/$name
  if [ ! -f "$dir/done" ]; then
    rm -rf "$dir"
    start=$(date +%s)
    # shellcheck disable=SC2086
    $PY -m tools.twin.sample_torch $COMMON $flags --out "$dir" > "$OUT/$name.log" 2>&1
    echo $(( $(date +%s) - start )) > "$dir/done"
  fi
  [ -f "$dir/eval.json" ] || $WD eval --real "$REAL" --real-range 0..5000 --fake "$dir" \
      --json "$dir/eval.json" > "$dir/eval.txt" 2>/dev/null
done
echo "| setting | twin seconds | classifier FD | mean confidence |"
echo "|---|---|---|---|"
for entry in "${SETTINGS[@]}"; do
  name=${entry%%|*}
  [ -f "$OUT/$name/eval.json" ] || continue
  $PY -c "import json,sys; e=json.load(open('$OUT/$name/eval.json')); \
print(f\"| $name | $(cat $OUT/$name/done) | {e['frechet_distance']:.2f} | {e['fake']['mean_confidence']:.4f} |\")"
done
