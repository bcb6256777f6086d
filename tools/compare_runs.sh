#!/usr/bin/env bash
# Byte-identity check for refactors: runs one matrix of `wgsl-diff sample` (and `filter`)
# invocations with a given binary into a folder, so that two binaries' folders can be compared
# with `diff -r`. The matrix covers the shipped model with DDIM + uncertainty + report + maps +
# noise dumps, two DDPM shards into one folder then `filter`, dpmpp2m, DDIM eta 1 trailing
# unclipped, both guidance rules, and an ADM fixture (renoised and MC-Dropout uncertainty, DDPM
# with the learned-range variance).
#
#   tools/compare_runs.sh BINARY OUT_DIR
#   diff -r OUT_A OUT_B        # empty when the two binaries agree byte for byte
set -euo pipefail
bin=$(realpath "$1")
dest=$2
root=$(cd "$(dirname "$0")/.." && pwd)
adm="$root/tests/fixtures/adm_cond.safetensors"
# Every binary writes to the same path (filtered sets record the folder they came from), then
# the matrix moves to OUT_DIR.
out=${TMPDIR:-/tmp}/wgsl-diff-compare-runs
rm -rf "$out" "$dest"
mkdir -p "$out"
cd "$root"
s() { "$bin" sample --quiet "$@"; }

s --out "$out/ddim_uc" --num 6 --batch 4 --steps 6 --seed 3 --uncertainty -M 3 \
    --keep-fraction 0.5 --report --save-maps "$out/ddim_uc/maps" \
    --dump-noise "$out/ddim_uc/noise" --save-raw
s --out "$out/ddpm_shards" --num 4 --steps 8 --sampler ddpm --seed 5 --uncertainty \
    --uc-mode variance --uc-start 2 --uc-steps 3 --shard 0/2
s --out "$out/ddpm_shards" --num 4 --steps 8 --sampler ddpm --seed 5 --uncertainty \
    --uc-mode variance --uc-start 2 --uc-steps 3 --shard 1/2
"$bin" filter "$out/ddpm_shards" --keep-fraction 0.5 >/dev/null
s --out "$out/dpmpp2m" --num 4 --steps 5 --sampler dpmpp2m --seed 1
s --out "$out/ddim_eta1" --num 3 --steps 5 --eta 1 --spacing trailing --no-clip \
    --dump-noise "$out/ddim_eta1/noise" --seed 2
s --out "$out/rule_g" --num 3 --steps 4 --seed 4 --guidance gradient -M 3 \
    --guidance-steps 2 --uncertainty
s --out "$out/rule_p" --num 3 --steps 4 --seed 4 --guidance posterior -M 3 \
    --guidance-steps 3 --dump-noise "$out/rule_p/noise"
s --out "$out/adm_renoise" --model "$adm" --class 7 --uncertainty --steps 3 --num 2
s --out "$out/adm_mc_dropout" --model "$adm" --class cycle --uncertainty \
    --uc-method mc-dropout -M 3 --steps 2 --num 3
s --out "$out/adm_ddpm" --model "$adm" --class 2 --sampler ddpm --steps 4 --seed 3 --num 2
# The lock files hold no result; everything else must match byte for byte.
find "$out" -name .wgsl-diff.lock -delete
mv "$out" "$dest"
echo "matrix written to $dest"
