#!/usr/bin/env bash
# One prepared run for a lent GPU (the session's `device` tool): kernel and pipeline benches beside
# PyTorch on the same GPU (float32 and float16 autocast; plain, uncertainty and guided steps, also
# on the CIFAR-10 architecture), Stable Diffusion 1.5's architecture at random weights at 512²
# (plain, f16, M = 5 uncertainty, Rule G on the first two calls; peak GPU memory) beside diffusers
# (tools/bench/sd15.py), U-ViT-H/2 and H/4 forwards beside the authors' module (with UVIT=CHECKOUT
# at prepare; peak GPU memory), profiles (one CIFAR-10 forward and one step per architecture from
# the benches, a `sample --profile` run of the shipped model), PyTorch's activation peak of a
# CIFAR-10 forward at B = 64, and the shipped model at scale: plain, with uncertainty and guided,
# each against the PyTorch twin.
#
# Here, once per change (builds the release binary and the bench binaries, gathers the Vulkan
# loader packages, the diffusers wheels and the Fashion-MNIST test set into git-ignored folders):
#     tools/device_check.sh prepare
# There, as one call of the device tool (everything lands in $OUT/results.tar.gz and $OUT/log.txt):
#     run(command="tools/device_check.sh run", carry=[".device", ".gl", ".whl"], timeout_s=560)
# A dry run here, on lavapipe, with tiny sizes (checks the script, not the GPU):
#     OUT=/tmp/device_out QUICK=1 tools/device_check.sh run
# The tiled GEMM sweep alone (every tile shape, split-K factor and checked/unchecked build on
# SGEMM 1024³/4096³, the bench conv and the CIFAR-10 UNet's convolutions at B1 and B8; the
# winners land in $OUT/sweep/sweep.md, every timing in sweep.tsv; a few minutes on a GPU):
#     run(command="SECTIONS=sweep tools/device_check.sh run", carry=[".device", ".gl"], timeout_s=420)
# its dry run here (tiny shapes, ~1 min on lavapipe):
#     OUT=/tmp/device_out QUICK=1 SECTIONS=sweep tools/device_check.sh run
# The Stable Diffusion section alone (a few minutes on a GPU; its dry run here took 8 min):
#     run(command="SECTIONS=sd15 tools/device_check.sh run", carry=[".device", ".gl", ".whl"], ...)
set -euo pipefail
cd "$(dirname "$0")/.."

prepare() {
    cargo build --release
    # The binary, the bench and the test executables, stripped and packed into one archive (the
    # working tree that travels is limited to 64 MiB). Cargo prints their paths as JSON lines.
    local staging=/tmp/device_bin
    rm -rf "$staging" .device && mkdir -p "$staging" .device
    executables() {
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["profile"]["test"] and m.get("executable"):
        kind = "bench" if "bench" in m["target"]["kind"] else "test"
        if kind == "bench" or "test" in m["target"]["kind"]:
            print(kind, m["target"]["name"], m["executable"])'
    }
    { cargo bench --no-run --message-format=json | executables
      cargo test --release --no-run --message-format=json | executables; } |
        while read -r kind name exe; do cp "$exe" "$staging/$kind-$name"; done
    cp "${CARGO_TARGET_DIR:-target}/release/wgsl-diff" "$staging/"
    strip "$staging"/*
    tar -cJf .device/bin.tar.xz -C "$staging" .
    # The tests find their fixtures and the CLI through paths compiled in: recreated there as links.
    echo "$PWD ${CARGO_TARGET_DIR:-$PWD/target}/release/wgsl-diff" >.device/compiled_paths
    # guided-diffusion's own code for the ADM-64 benches (the device cannot reach GitHub):
    # GUIDED_DIFFUSION=CHECKOUT tools/device_check.sh prepare
    if [ -n "${GUIDED_DIFFUSION:-}" ]; then
        rm -rf .device/guided-diffusion && mkdir -p .device/guided-diffusion
        cp -r "$GUIDED_DIFFUSION/guided_diffusion" .device/guided-diffusion/
    fi
    # U-ViT's own code for the U-ViT-H benches: UVIT=CHECKOUT (baofff/U-ViT) tools/device_check.sh prepare
    if [ -n "${UVIT:-}" ]; then
        rm -rf .device/uvit && mkdir -p .device/uvit
        cp -r "$UVIT/libs" .device/uvit/
    fi
    cp /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz .device/
    if [ ! -d .gl ]; then
        local o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
        mkdir -p .gl /tmp/amd64/partial
        apt-get $o update -qq
        # The NVIDIA Vulkan driver resolves through glvnd: without these it cannot make an instance.
        (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
    fi
    if [ ! -d .whl ]; then
        # Everything else diffusers and transformers need is in the device image (torch, numpy,
        # safetensors, huggingface_hub, ...; einops for U-ViT). A .whl from before transformers or
        # einops was added: delete it.
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux2014_x86_64 -d .whl diffusers importlib_metadata \
            transformers tokenizers regex einops
    fi
    du -sh .device .gl .whl
}

run() {
    : "${OUT:?set OUT to the folder results go to}"
    local results=/tmp/device_results
    rm -rf "$results" && mkdir -p "$results"
    exec > >(tee "$OUT/log.txt") 2>&1
    # A rerun can take only some sections (SECTIONS="tests torch"; all: sweep tests benches torch
    # sd15 uvit ab samples) and some test executables (TESTS="cli guidance").
    want() { [[ " ${SECTIONS:-sweep tests benches torch sd15 uvit ab samples} " == *" $1 "* ]]; }
    if [ -d .gl ]; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
        local icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
        [ -f "$icd" ] && export VK_DRIVER_FILES=$icd \
            __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
    fi
    # The wheels serve the Python sections only (diffusers and transformers beside torch).
    if [ -d .whl ] && { want torch || want sd15 || want uvit || want samples; }; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site
    fi
    export WGPU_BACKEND=vulkan CARGO_TARGET_DIR=/tmp/target
    local exes=/tmp/device_bin
    rm -rf "$exes" && mkdir -p "$exes" && tar -xJf .device/bin.tar.xz -C "$exes"
    local bin=$exes/wgsl-diff test_set=.device/t10k-images-idx3-ubyte.gz
    [ -f "$test_set" ] || test_set=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
    local num=1000 uc_num=256 batch=250 torch_device=cuda bench_filter="" memory_batch=64
    local tests=("$exes"/test-*) bench_time=(--warm-up-time 1 --measurement-time 3)
    if [ -n "${QUICK:-}" ]; then
        num=8 uc_num=4 batch=4 torch_device=cpu bench_filter=group_norm memory_batch=2
        tests=("$exes"/test-select) bench_time=()
        export WGSL_DIFF_BENCH_QUICK=1
    else
        export WGSL_DIFF_BENCH_CIFAR_STEPS=1 WGSL_DIFF_BENCH_ADM64=1
    fi
    if [ -n "${TESTS:-}" ]; then
        tests=() && for t in $TESTS; do tests+=("$exes/test-$t"); done
    fi
    local adm=()
    [ -d .device/guided-diffusion ] && adm=(--guided-diffusion .device/guided-diffusion)
    timed() { local t0=$SECONDS; "$@"; echo "[$(( SECONDS - t0 )) s] $*"; }
    # `timed` with the peak GPU memory of the command: nvidia-smi's used memory every 100 ms, less
    # what was in use before (where there is no nvidia-smi, just `timed`).
    peak_memory() {
        local what=$1 && shift
        command -v nvidia-smi >/dev/null || { timed "$@"; return; }
        local idle log=/tmp/mem_${what// /_}.txt
        idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$log" &
        local poll=$!
        timed "$@"
        kill "$poll" 2>/dev/null || true
        echo "$what: peak GPU memory $(( $(sort -n "$log" | tail -1) - idle )) MiB above idle"
    }
    # What is done so far comes back even if the call runs out of time.
    save() { tar -czf "$OUT/results.tar.gz" -C "$results" .; }
    compare_pngs() {
        python3 - "$1" "$2" <<'EOF'
import sys, numpy as np
from pathlib import Path
from PIL import Image
a, b = map(Path, sys.argv[1:])
diff = [np.abs(np.asarray(Image.open(f), int) - np.asarray(Image.open(b / f.name), int)).max()
        for f in sorted(a.glob("sample_*.png"))]
print(f"{len(diff)} PNGs: {sum(d == 0 for d in diff)} byte-identical, max level difference {max(diff)}")
EOF
    }

    echo "== device"; nvidia-smi -L 2>/dev/null || true; "$bin" info
    # The clocks and power through the whole call, a line a second (a GPU left idle between
    # small submits may never leave its lowest clock), straight into $OUT.
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi dmon -s pc -d 1 >"$OUT/dmon.txt" 2>&1 &
        trap "kill $! 2>/dev/null || true" EXIT
    fi

    if want sweep; then
        echo "== tiled GEMM sweep: every variant on every bench shape (winners in $OUT/sweep/sweep.md)"
        # Register and spill counts would need VK_KHR_pipeline_executable_properties, which wgpu 30
        # does not enable: whether the driver offers it is all this records.
        command -v vulkaninfo >/dev/null &&
            echo "VK_KHR_pipeline_executable_properties offered: $(vulkaninfo 2>/dev/null |
                grep -c VK_KHR_pipeline_executable_properties) (wgpu 30 does not use it)"
        mkdir -p "$OUT/sweep"
        # The table is printed (and written to sweep.md) at the end; sweep.tsv fills as it goes.
        WGSL_DIFF_SWEEP_OUT="$OUT/sweep" timed "$exes/bench-sweep" --bench ||
            echo "sweep: exit status $?"
    fi

    if want tests; then
        echo "== the test suite on this adapter (both kernel classes meet the f64 references)"
        local manifest compiled_bin
        read -r manifest compiled_bin <.device/compiled_paths
        if [ "$manifest" != "$PWD" ]; then mkdir -p "$(dirname "$manifest")" && ln -sfn "$PWD" "$manifest"; fi
        if [ ! -e "$compiled_bin" ]; then mkdir -p "$(dirname "$compiled_bin")" && ln -sf "$bin" "$compiled_bin"; fi
        mkdir -p "$results/tests"
        for t in "${tests[@]}"; do
            local log=$results/tests/${t##*/}.txt
            (cd "$manifest" && timeout 120 "$t" --test-threads 8 >"$log" 2>&1) || echo "${t##*/}: exit status $?"
            # Each failure whole (its message is on the lines after "panicked"), then the tally.
            grep -E -A6 'panicked' "$log" | cut -c1-600 || true
            grep -E '^test result' "$log" | sed "s|^|${t##*/}: |" || true
        done
        save
    fi

    if want benches; then
        echo "== criterion benches (wgsl-diff), each forward and plain step profiled first"
        for b in "$exes"/bench-*; do
            [ "${b##*/}" = bench-sweep ] && continue  # its own section
            WGSL_DIFF_PROFILE_DIR="$results/profiles" timed "$b" --bench $bench_filter "${bench_time[@]}"
        done
        save
    fi

    if want torch; then
        echo "== the same work in PyTorch (float32, float16 autocast), and its activation peak"
        # Without the benches of this call, the table has the PyTorch side only.
        timed python3 -m tools.bench.bench_torch --device "$torch_device" \
            --criterion-dir /tmp/target/criterion --json "$results/bench.json" \
            ${bench_filter:+--only kernels/$bench_filter} "${adm[@]}" --memory "$memory_batch"
        save
    fi
    if want sd15; then
        echo "== Stable Diffusion 1.5's architecture at random weights, batch 1, CFG 7.5, 20 PNDM steps (21 calls): wgsl-diff, then diffusers"
        local sd=/tmp/sd15 side=512 tiny=""
        [ -n "${QUICK:-}" ] && side=64 tiny=--tiny
        timed python3 -m tools.bench.sd15 write "$sd" $tiny
        for case in "plain" "plain_f16_weights --f16-weights" "plain_f16 --f16-weights --f16-activations" \
            "uncertainty --uncertainty -M 5" \
            "rule_g --guidance gradient -M 5 --guidance-steps 2 --guidance-strength 0.99 --percentile 0.95"; do
            local name=${case%% *} args=""
            [ "$case" != "$name" ] && args=${case#* }
            # Two samples one at a time: the summary's "made in" covers both, the first with the
            # pipelines' compilation.
            peak_memory "sd15 $name" "$bin" sample --model "$sd" \
                --prompt "a photograph of an astronaut riding a horse" \
                --num 2 --batch 1 --steps 20 --height "$side" --width "$side" --quiet \
                --out "$results/sd15_$name" $args
        done
        rm -f "$results"/sd15_*/sample_*.png
        timed python3 -m tools.bench.sd15 bench "$sd" --device "$torch_device" --height "$side" \
            --width "$side" --fp16 --json "$results/sd15_torch.json"
        save
    fi
    if want uvit && [ -d .device/uvit ] && [ -z "${QUICK:-}" ]; then
        echo "== U-ViT-H/2 (256) and U-ViT-H/4 (512) forwards at random weights, B 1 and 8: wgsl-diff, then the authors' module"
        WGSL_DIFF_BENCH_UVIT=1 peak_memory "uvit wgsl-diff" "$exes"/bench-pipeline \
            --bench 'unet_forward/uvit' "${bench_time[@]}"
        peak_memory "uvit torch" python3 -m tools.bench.bench_torch --device "$torch_device" \
            --criterion-dir /tmp/target/criterion --uvit .device/uvit --only unet_forward/uvit \
            --json "$results/uvit.json"
        save
    fi
    if want ab && [ -z "${QUICK:-}" ]; then
        echo "== A/B: the CIFAR-10 forward per kernel class, with fused attention, without loop bounding"
        # Criterion results of their own, so the table above keeps the default settings' figures.
        for setting in WGSL_DIFF_KERNELS=blocked WGSL_DIFF_KERNELS=tiled WGSL_DIFF_FUSED_ATTENTION=1 \
            WGSL_DIFF_LOOP_BOUNDING=0; do
            echo "-- $setting"
            env -u WGSL_DIFF_BENCH_ADM64 CARGO_TARGET_DIR=/tmp/target_ab "$setting" \
                "$exes/bench-pipeline" --bench unet_forward/cifar10 "${bench_time[@]}" 2>&1 |
                grep -E "time:|ceiling" || true
        done
    fi
    want samples || { ls -la "$OUT"; return; }

    echo "== profile: shipped model, $batch samples, 10 DDIM steps"
    timed "$bin" sample --num "$batch" --batch "$batch" --steps 10 --quiet --profile \
        --out "$results/profile"
    save

    echo "== shipped model, $num samples, 10 DDIM steps: wgsl-diff, then PyTorch/diffusers"
    timed "$bin" sample --num "$num" --batch "$batch" --steps 10 --quiet --out "$results/wgsl"
    timed python3 -m tools.twin.sample_torch --num "$num" --batch "$batch" --steps 10 \
        --device "$torch_device" --out /tmp/torch_samples
    compare_pngs "$results/wgsl" /tmp/torch_samples
    timed "$bin" eval --real "$test_set" --real-range 0..5000 --fake "$results/wgsl" \
        --json "$results/eval.json"

    echo "== uncertainty, all steps, M = 5, $uc_num samples: wgsl-diff, then PyTorch"
    timed "$bin" sample --num "$uc_num" --batch "$batch" --steps 10 --uncertainty -M 5 \
        --keep-fraction 0.85 --report --quiet --out "$results/uncertainty"
    timed python3 -m tools.twin.sample_torch --num "$uc_num" --batch "$batch" --steps 10 \
        --uncertainty -M 5 --device "$torch_device" --out /tmp/torch_uncertainty
    python3 - "$results/uncertainty" /tmp/torch_uncertainty <<'EOF'
import sys
from pathlib import Path
read = lambda d: {l.split(",")[0]: float(l.split(",")[2]) for l in (Path(d) / "scores.csv").read_text().splitlines()[1:]}
a, b = map(read, sys.argv[1:])
print(f"scores: max relative difference {max(abs(a[k] - b[k]) / abs(b[k]) for k in a):.2e} over {len(a)}")
EOF
    echo "== guidance: Rule G and Rule P at steps 0-2, M = 5, p = 0.95, $uc_num samples: wgsl-diff, then PyTorch"
    for rule in gradient posterior; do
        timed "$bin" sample --num "$uc_num" --batch "$batch" --steps 10 --guidance $rule -M 5 \
            --quiet --out "$results/guided_$rule"
        timed python3 -m tools.twin.sample_torch --num "$uc_num" --batch "$batch" --steps 10 \
            --guidance $rule -M 5 --device "$torch_device" --out /tmp/torch_guided_$rule
        compare_pngs "$results/guided_$rule" /tmp/torch_guided_$rule
    done
    rm -f "$results"/wgsl/sample_*.png "$results"/guided_*/sample_*.png "$results"/profile/sample_*.png  # the grid and the eval keep what matters; stay under 16 MiB
    tar -czf "$OUT/results.tar.gz" -C "$results" .
    ls -la "$OUT"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
