#!/usr/bin/env bash
# The uncertainty-score study of issue 12 on the PyTorch twin: every mode and window, chosen on one
# sample set and reported on another (other seeds), with real-image correlations and AUSE/AURG.
#
#   tools/studies/score_study.sh OUT [MODEL]
#
# Settings from the environment (defaults in brackets): STEPS [10] DDIM steps, M [5] copies,
# NUM [1000] samples per set, REF_IMAGES [1000] training images for the reference, REAL [1000] test
# images for the real-image correlations, AUSE_NUM [500] test images for AUSE, BATCH [100],
# PYTHON [.venv/bin/python]. Every stage resumes (tools/twin/sample_torch.py's parts/, and a stage
# whose output exists is skipped), so rerun the same command after an interruption. Uses 2 CPU
# threads at nice 10.
set -euo pipefail
OUT=${1:?usage: tools/studies/score_study.sh OUT [MODEL]}
MODEL=${2:-weights/fashion_mnist_ddpm.safetensors}
STEPS=${STEPS:-10} M=${M:-5} NUM=${NUM:-1000} REF_IMAGES=${REF_IMAGES:-1000} REAL=${REAL:-1000}
AUSE_NUM=${AUSE_NUM:-500} BATCH=${BATCH:-100} PYTHON=${PYTHON:-.venv/bin/python}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
# Paths given relative to the caller's folder; the tools run from the repository root.
OUT=$(realpath -m "$OUT")
[ -n "${2:-}" ] && MODEL=$(realpath "$MODEL")
cd "$(dirname "$0")/../.."
MODEL=$(realpath "$MODEL")
mkdir -p "$OUT"
twin() { nice -n 10 "$PYTHON" -m tools.twin.sample_torch --model "$MODEL" --steps "$STEPS" -M "$M" --batch "$BATCH" "$@"; }
REF=$OUT/reference.npz

# 1. The real-image reference from training images (seed 1), the file `wgsl-diff reference` writes.
[ -f "$REF" ] || twin --real-images "$DATA/train-images-idx3-ubyte.gz" --num "$REF_IMAGES" --seed 1 \
    --make-reference "$REF" --out "$OUT/real_train"
# 2. Test images noised to each step's timestep and scored there (seed 2).
[ -f "$OUT/real_test/step_scores_residual.npy" ] || twin --real-images "$DATA/t10k-images-idx3-ubyte.gz" \
    --num "$REAL" --seed 2 --uc-reference "$REF" --out "$OUT/real_test"
# 3. Two sample sets of different seeds, every mode's per-step scores (uncertainty at every step).
for set in a:0 b:1000; do
    name=${set%%:*} seed=${set##*:}
    [ -f "$OUT/run_$name/scores.csv" ] || twin --num "$NUM" --seed "$seed" --uncertainty \
        --uc-reference "$REF" --out "$OUT/run_$name"
done
# 4. AUSE/AURG of every mode on test images noised half-way (seed 3).
[ -f "$OUT/ause.json" ] || nice -n 10 "$PYTHON" -m tools.studies.ause --model "$MODEL" --steps "$STEPS" -M "$M" \
    --num "$AUSE_NUM" --start-index "$REAL" --seed 3 --uc-reference "$REF" --batch "$BATCH" \
    --data "$DATA/t10k-images-idx3-ubyte.gz" --out "$OUT/ause.json"
# 5. The study: choose the mode and window on set a, report on set b; extremes of the chosen mode and
#    of the paper's score (centred, all steps) on set b.
nice -n 10 "$PYTHON" -m tools.studies.uncertainty_study --choose-on "$OUT/run_a" --report-on "$OUT/run_b" \
    --real "$OUT/real_test" --ause "$OUT/ause.json" --data "$DATA" \
    --markdown "$OUT/study.md" --json "$OUT/study.json" --extremes "$OUT/extremes_chosen.png" \
    --extremes-of 1000
nice -n 10 "$PYTHON" -m tools.studies.uncertainty_study "$OUT/run_b" --data "$DATA" --extremes-mode centred \
    --extremes "$OUT/extremes_centred.png" --extremes-of 1000 --trials 2 > /dev/null
echo "study in $OUT/study.md and $OUT/study.json"
