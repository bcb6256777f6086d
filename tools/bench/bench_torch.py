#!/usr/bin/env python3
"""Run the work of wgsl-diff's criterion benchmarks in PyTorch and compare the two side by side.

Every benchmark in benches/kernels.rs and benches/pipeline.rs is mirrored here with the same
shapes, float32 and the same semantics:

    kernels/conv2d_3x3_b8_128to128_32x32 (FLOP)   F.conv2d, x (8,128,32,32), w (128,128,3,3), bias, pad 1
    kernels/matmul_1024 (FLOP)                     (1,1024,1024) @ (1024,1024)
    kernels/group_norm_b8_256ch_32x32_g32 (bytes)  F.group_norm(x (8,256,32,32), 32, eps 1e-5) + SiLU
    kernels/quantile_b8_3x32x32_p95 (elements)     torch.quantile(x (8, 3072), 0.95, dim=1)
    kernels/quantile_b1_2p20_p95 (elements)        torch.quantile(x (1, 2^20), 0.95, dim=1)
    unet_forward/cifar10_b1, cifar10_b8            UNet2DModel of google/ddpm-cifar10-32's
                                                   architecture, random weights, t = 500
    unet_forward/cifar10_b1_f16act, …_b8_f16act   the same torch work, beside wgsl-diff's forward
                                                   with f16 activations
    unet_forward/adm64_b1, adm64_b8                openai/guided-diffusion's UNetModel of the released
                                                   64x64 model (random weights, class 207, t = 500),
                                                   imported from --guided-diffusion CHECKOUT (skipped
                                                   without it; wgsl-diff's side: WGSL_DIFF_BENCH_ADM64=1)
    unet_forward/uvit256_b1, …_b8, uvit512_b1, …_b8
                                                   U-ViT-H/2 (256) and U-ViT-H/4 (512): the authors'
                                                   libs/uvit.py from --uvit CHECKOUT (random weights,
                                                   class 207, t = 500; skipped without it;
                                                   wgsl-diff's side: WGSL_DIFF_BENCH_UVIT=1)
    sampling_step_b8/plain                         Fashion-MNIST-size UNet forward (B = 8) + one DDIM
                                                   update (50 leading steps, step 10, clipped x̂0)
    sampling_step_b8/uncertainty_m5                the same plus Algorithm 1 with M = 5: x̂0, 5
                                                   re-noised copies, ONE forward over all 40 rows,
                                                   the centred map mean_m (ε_m − ε)²
    sampling_step_b8/uncertainty_m5_sequential     torch only: as above, but 5 forwards of batch 8
                                                   (the way the authors' code does it)
    sampling_step_b8/guided_posterior_m5           a plain step whose ε is first guided by Rule P
                                                   (tools/common/guidance_torch.py: M = 5, p = 0.95)
    sampling_step_b8/guided_gradient_m5            the same with Rule G: one forward over 40 rows and
                                                   its input gradient by torch.autograd

Each torch benchmark is warmed up, then timed --repeat times (time.perf_counter, with
torch.cuda.synchronize on a GPU) and the median is reported, in float32 and (with --fp16, on by
default on a GPU) again under torch.autocast(dtype=float16), the mixed precision the official
code samples with. On CUDA the float32 figure is taken twice: with PyTorch's defaults (cuDNN
convolutions in TF32, the official code's setting) and with TF32 off
(torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False: float32
throughout, as wgsl-diff computes); each ratio column says which it is against. wgsl-diff's figure is the mean point
estimate from <criterion-dir>/<group>/<bench>/new/estimates.json (criterion writes it during
`cargo bench`); a benchmark missing there is shown as "not run". The last column is
torch time / wgsl-diff time, so a value above 1 means wgsl-diff is faster.

On a CPU that other processes keep busy, give torch fewer threads than there are idle cores
(--threads): its OpenMP threads wait for descheduled peers at every op and can run many times
slower than one thread would.

Usage (from the repository root):
    cargo bench                                   # writes target/criterion/...
    .venv/bin/python -m tools.bench.bench_torch         # torch on the CPU, default thread count
    .venv/bin/python -m tools.bench.bench_torch --device cuda --json /tmp/bench.json
    .venv/bin/python -m tools.bench.bench_torch --only kernels/ --threads 4
    .venv/bin/python -m tools.bench.bench_torch --criterion-dir /other/target/criterion
    .venv/bin/python -m tools.bench.bench_torch --only none --memory 64   # activation peak only

--memory B measures PyTorch's activation peak of one CIFAR-10 forward at batch B: every tensor an
aten op returns is counted from its creation until its storage is freed (a TorchDispatchMode and
weakref finalizers on the storages, views counted once), under torch.inference_mode; the weights
and the input, made before, are not counted, nor are buffers an op allocates and frees inside
itself (oneDNN's scratch space). wgsl-diff's figure for the same forward comes from the pool's
statistics (tests/profile.rs, cifar10_forward_peak_is_its_largest_live_set).
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tools.common.guidance_torch import guide
from tools.common.paths import REPO_ROOT

# The UNet configs of benches/pipeline.rs (CIFAR10 and FASHION); other fields take diffusers'
# defaults there as here.
CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, freq_shift=1,
    flip_sin_to_cos=False, downsample_padding=0,
)
FASHION = dict(
    sample_size=32, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
    layers_per_block=1, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
    norm_num_groups=8, add_attention=False,
)

# The sampling step of benches/pipeline.rs: DDIM, 50 "leading" steps over T = 1000 with the default
# linear schedule (1e-4 .. 0.02), step index 10, eta 0, x̂0 clipped to [-1, 1]; M = 5 copies, B = 8.
NUM_TRAIN_TIMESTEPS, DDIM_STEPS, STEP_INDEX = 1000, 50, 10
COPIES, STEP_BATCH = 5, 8
MODEL_TIMESTEP = 500.0  # the timestep fed to every network call in the benchmarks

SEQUENTIAL = "sampling_step_b8/uncertainty_m5_sequential"


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_criterion_dir():
    target = os.environ.get("CARGO_TARGET_DIR")
    return (Path(target) if target else REPO_ROOT / "target") / "criterion"


# ---------------------------------------------------------------------------------------------
# Reading criterion's results


def make_filename_safe(name):
    """criterion 0.5's directory name for a benchmark id component (report.rs, non-Windows)."""
    for ch in '?"/\\*<>:|^':
        name = name.replace(ch, "_")
    return name


def read_criterion(criterion_dir):
    """{full_id: mean point estimate in ns} of every benchmark under criterion_dir."""
    found = {}
    if not criterion_dir.is_dir():
        return found
    for meta in criterion_dir.glob("**/new/benchmark.json"):
        estimates = meta.parent / "estimates.json"
        try:
            full_id = json.loads(meta.read_text())["full_id"]
            found[full_id] = float(json.loads(estimates.read_text())["mean"]["point_estimate"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def criterion_mean_ns(criterion_dir, found, full_id):
    """The mean of benchmark full_id ("group/function"), or None when it has not been run."""
    if full_id in found:
        return found[full_id]
    # Fallback for trees without benchmark.json: the path criterion would have used.
    group, _, function = full_id.partition("/")
    path = criterion_dir / make_filename_safe(group) / make_filename_safe(function)
    try:
        return float(json.loads((path / "new" / "estimates.json").read_text())
                     ["mean"]["point_estimate"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------------------------------
# The torch work


def filled(shape, device):
    """benches/kernels.rs's deterministic fill: ((i * 7919) % 1000) / 1000 - 0.5."""
    n = 1
    for s in shape:
        n *= s
    i = torch.arange(n, dtype=torch.int64)
    return (((i * 7919) % 1000).to(torch.float32) / 1000.0 - 0.5).reshape(shape).to(device)


def unet(config, device):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(**config).to(device).eval()  # float32 by default


def ddim_coefficients():
    """(√ᾱ_t, √(1−ᾱ_t), √ᾱ_prev, √(1−ᾱ_prev)) at the benchmarked step, from an f64 schedule."""
    betas = torch.linspace(1e-4, 0.02, NUM_TRAIN_TIMESTEPS, dtype=torch.float64)
    abar = torch.cumprod(1.0 - betas, dim=0)
    stride = NUM_TRAIN_TIMESTEPS // DDIM_STEPS
    t = (DDIM_STEPS - 1 - STEP_INDEX) * stride  # leading spacing, steps_offset 0: 780
    a_t = float(abar[t])
    a_prev = float(abar[t - stride]) if t >= stride else 1.0
    return a_t ** 0.5, (1 - a_t) ** 0.5, a_prev ** 0.5, (1 - a_prev) ** 0.5


def kernel_benches(device):
    b, ch, hw = 8, 128, 32
    x = filled((b, ch, hw, hw), device)
    w = filled((ch, ch, 3, 3), device)
    bias = filled((ch,), device)
    a = filled((1, 1024, 1024), device)
    m = filled((1024, 1024), device)
    xg = filled((8, 256, 32, 32), device)
    gamma = filled((256,), device)
    xq_small = filled((8, 3 * 32 * 32), device)
    xq_long = filled((1, 1 << 20), device)
    return {
        "kernels/conv2d_3x3_b8_128to128_32x32 (FLOP)":
            lambda: F.conv2d(x, w, bias, padding=1),
        "kernels/matmul_1024 (FLOP)": lambda: a @ m,
        "kernels/group_norm_b8_256ch_32x32_g32 (bytes)":
            lambda: F.silu(F.group_norm(xg, 32, gamma, gamma, eps=1e-5)),
        "kernels/quantile_b8_3x32x32_p95 (elements)":
            lambda: torch.quantile(xq_small, 0.95, dim=1),
        "kernels/quantile_b1_2p20_p95 (elements)":
            lambda: torch.quantile(xq_long, 0.95, dim=1),
    }


def forward_benches(device):
    model = unet(CIFAR10, device)
    gen = torch.Generator(device=device).manual_seed(1)
    benches = {}
    for b in (1, 8):
        x = torch.randn((b, 3, 32, 32), generator=gen, device=device)
        t = torch.full((b,), MODEL_TIMESTEP, device=device)
        benches[f"unet_forward/cifar10_b{b}"] = (lambda x=x, t=t: model(x, t).sample)
        # wgsl-diff's f16-activation forward beside the same torch work (its fp16 column is
        # the like-for-like one).
        benches[f"unet_forward/cifar10_b{b}_f16act"] = benches[f"unet_forward/cifar10_b{b}"]
    return benches


GUIDED_DIFFUSION = None  # a checkout of openai/guided-diffusion, from --guided-diffusion


def adm_benches(device):
    import sys
    sys.path.insert(0, str(Path(GUIDED_DIFFUSION).resolve()))
    from guided_diffusion import unet as gd_unet
    from tools.converters import adm as convert_adm
    cfg = convert_adm.model_config(dict(convert_adm.DEFAULTS, **convert_adm.PRESETS["64x64_diffusion"]))
    cfg = dict(cfg, channel_mult=tuple(int(m) for m in cfg["channel_mult"]), use_fp16=False)
    model = gd_unet.UNetModel(**cfg).to(device).eval()
    gen = torch.Generator(device=device).manual_seed(1)
    benches = {}
    for b in (1, 8):
        x = torch.randn((b, 3, 64, 64), generator=gen, device=device)
        t = torch.full((b,), MODEL_TIMESTEP, device=device)
        y = torch.full((b,), 207, dtype=torch.long, device=device)
        benches[f"unet_forward/adm64_b{b}"] = (lambda x=x, t=t, y=y: model(x, t, y))
    return benches


UVIT = None  # a checkout of baofff/U-ViT, from --uvit


def uvit_benches(device):
    import sys
    sys.path.insert(0, str(Path(UVIT).resolve()))
    from libs.uvit import UViT
    from tools.converters.uvit import DEFAULTS, PRESETS
    benches = {}
    for name, preset in (("uvit256", "imagenet256_uvit_huge"), ("uvit512", "imagenet512_uvit_huge")):
        cfg = {**DEFAULTS, **PRESETS[preset]}
        model = UViT(**cfg).to(device).eval()
        gen = torch.Generator(device=device).manual_seed(1)
        side = cfg["img_size"]
        for b in (1, 8):
            x = torch.randn((b, 4, side, side), generator=gen, device=device)
            t = torch.full((b,), MODEL_TIMESTEP, device=device)
            y = torch.full((b,), 207, dtype=torch.long, device=device)
            benches[f"unet_forward/{name}_b{b}"] = (lambda m=model, x=x, t=t, y=y: m(x, t, y))
    return benches


def step_benches(device):
    model = unet(FASHION, device)
    a, s, a_prev, s_prev = ddim_coefficients()
    b = STEP_BATCH
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn((b, 1, 32, 32), generator=gen, device=device)
    t = torch.full((b,), MODEL_TIMESTEP, device=device)
    t_copies = torch.full((COPIES * b,), MODEL_TIMESTEP, device=device)
    noise_gen = torch.Generator(device=device).manual_seed(2)

    def x0_hat(eps):
        return ((x - s * eps) / a).clamp(-1.0, 1.0)

    def plain():
        eps = model(x, t).sample
        return a_prev * x0_hat(eps) + s_prev * eps

    def uncertainty_batched():
        eps = model(x, t).sample
        x0 = x0_hat(eps)
        # Row m*B + b is copy m of sample b, as in wgsl-diff.
        n = torch.randn((COPIES * b, *x.shape[1:]), generator=noise_gen, device=device)
        noisy = a * x0.repeat(COPIES, 1, 1, 1) + s * n
        eps_copies = model(noisy, t_copies).sample.view(COPIES, *x.shape)
        u = ((eps_copies - eps) ** 2).mean(dim=0)
        return a_prev * x0 + s_prev * eps, u

    def uncertainty_sequential():
        eps = model(x, t).sample
        x0 = x0_hat(eps)
        u = torch.zeros_like(x)
        for _ in range(COPIES):
            n = torch.randn(x.shape, generator=noise_gen, device=device)
            eps_m = model(a * x0 + s * n, t).sample
            u += (eps_m - eps) ** 2
        return a_prev * x0 + s_prev * eps, u / COPIES

    def guided(rule):
        def step():
            # Autograd needs a normal (not inference-mode) graph for Rule G.
            with torch.inference_mode(False), torch.no_grad():
                eps = model(x, t).sample
                n = torch.randn((COPIES * b, *x.shape[1:]), generator=noise_gen, device=device)
                eps, _ = guide(model, x, MODEL_TIMESTEP, None, eps, a * a, n, rule, 1.0,
                               ("percentile", 0.95))
                return a_prev * x0_hat(eps) + s_prev * eps
        return step

    return {
        "sampling_step_b8/plain": plain,
        "sampling_step_b8/uncertainty_m5": uncertainty_batched,
        SEQUENTIAL: uncertainty_sequential,
        "sampling_step_b8/guided_posterior_m5": guided("posterior"),
        "sampling_step_b8/guided_gradient_m5": guided("gradient"),
    }


# Benchmark ids in table order, with the builder that makes their closures.
BENCHES = [
    ("kernels/conv2d_3x3_b8_128to128_32x32 (FLOP)", kernel_benches),
    ("kernels/matmul_1024 (FLOP)", kernel_benches),
    ("kernels/group_norm_b8_256ch_32x32_g32 (bytes)", kernel_benches),
    ("kernels/quantile_b8_3x32x32_p95 (elements)", kernel_benches),
    ("kernels/quantile_b1_2p20_p95 (elements)", kernel_benches),
    ("unet_forward/cifar10_b1", forward_benches),
    ("unet_forward/cifar10_b8", forward_benches),
    ("unet_forward/cifar10_b1_f16act", forward_benches),
    ("unet_forward/cifar10_b8_f16act", forward_benches),
    ("unet_forward/adm64_b1", adm_benches),
    ("unet_forward/adm64_b8", adm_benches),
    ("unet_forward/uvit256_b1", uvit_benches),
    ("unet_forward/uvit256_b8", uvit_benches),
    ("unet_forward/uvit512_b1", uvit_benches),
    ("unet_forward/uvit512_b8", uvit_benches),
    ("sampling_step_b8/plain", step_benches),
    ("sampling_step_b8/uncertainty_m5", step_benches),
    (SEQUENTIAL, step_benches),
    ("sampling_step_b8/guided_posterior_m5", step_benches),
    ("sampling_step_b8/guided_gradient_m5", step_benches),
]


def precision(device, fp16):
    """float32, or float16 autocast (the official code's mixed precision)."""
    if not fp16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16)


@contextlib.contextmanager
def tf32_off():
    """float32 as float32 on CUDA: cuDNN convolutions and cuBLAS matmuls without TF32 (PyTorch's
    defaults run convolutions in TF32, a 10-bit mantissa), restoring the defaults after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def time_it(fn, device, warmup, repeat, fp16=False):
    """Per-run wall times in ns of fn() after `warmup` untimed runs."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode(), precision(device, fp16):
        for _ in range(warmup):
            fn()
        sync()
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - start) * 1e9)
    return times


class LiveTensors(TorchDispatchMode):
    """Bytes of tensors made by aten ops and not yet freed, and their peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.storages = set()

    def _freed(self, key, nbytes):
        self.live -= nbytes
        self.storages.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in tree_flatten(out)[0]:
            if not isinstance(o, torch.Tensor):
                continue
            storage = o.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or key in self.storages:
                continue  # a view of a counted storage
            self.storages.add(key)
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, key, storage.nbytes())
        return out


def activation_peak(batch, device, fp16):
    """PyTorch's activation peak in bytes of one CIFAR-10 forward at `batch` (see --memory)."""
    model = unet(CIFAR10, device)
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn((batch, 3, 32, 32), generator=gen, device=device)
    t = torch.full((batch,), MODEL_TIMESTEP, device=device)
    with torch.inference_mode(), precision(device, fp16):
        model(x[:1], t[:1])  # warm-up: lazily made state is not an activation
        mode = LiveTensors()
        with mode:
            y = model(x, t).sample
        del y
    return mode.peak


# ---------------------------------------------------------------------------------------------
# Output


def fmt_time(ns):
    if ns is None:
        return "not run"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}" if ns / scale < 100 else f"{ns / scale:.0f} {unit}"
    return f"{ns:.0f} ns"


def print_table(rows, header):
    fp16 = any(r.get("torch_fp16_ns") is not None for r in rows)
    strict = any(r.get("torch_tf32_off_ns") is not None for r in rows)
    # On CUDA each ratio says which PyTorch it is against: its defaults (TF32 convolutions) or
    # float32 throughout (TF32 off).
    cols = ("benchmark", "wgsl-diff", "torch defaults" if strict else "torch",
            "defaults/wgsl-diff" if strict else "torch/wgsl-diff")
    if strict:
        cols += ("torch TF32 off", "TF32-off/wgsl-diff")
    if fp16:
        cols += ("torch fp16", "fp16/wgsl-diff")
    cells = []
    for r in rows:
        if r["torch_only"]:
            wgsl, ratio = "n/a (torch only)", ""
        else:
            wgsl = fmt_time(r["wgsl_diff_ns"])
            ratio = f"{r['ratio']:.3g}x" if r["ratio"] is not None else "-"
        cell = (r["name"], wgsl, fmt_time(r["torch_ns"]), ratio)
        wgsl_ns = None if r["torch_only"] else r["wgsl_diff_ns"]
        if strict:
            off = r.get("torch_tf32_off_ns")
            cell += (fmt_time(off) if off is not None else "-",
                     f"{off / wgsl_ns:.3g}x" if off is not None and wgsl_ns else "-")
        if fp16:
            half = r.get("torch_fp16_ns")
            cell += (fmt_time(half) if half is not None else "-",
                     f"{half / wgsl_ns:.3g}x" if half is not None and wgsl_ns else "-")
        cells.append(cell)
    widths = [max(len(c[i]) for c in [cols, *cells]) for i in range(len(cols))]
    line = lambda c: "  ".join(  # noqa: E731
        [c[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(c[1:], widths[1:])])
    print(header)
    print(line(cols))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print(line(c))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's own choice)")
    p.add_argument("--criterion-dir", type=Path, default=default_criterion_dir(),
                   help="criterion's output folder holding wgsl-diff's results")
    p.add_argument("--only", metavar="PREFIX", default=None,
                   help="run only the benchmarks whose id starts with PREFIX "
                        "(e.g. kernels/, unet_forward/cifar10_b1)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    p.add_argument("--repeat", type=int, default=10, help="timed runs (the median is reported)")
    p.add_argument("--json", metavar="OUT", type=Path, default=None,
                   help="also write the results to this JSON file")
    p.add_argument("--guided-diffusion", metavar="CHECKOUT", type=Path, default=None,
                   help="openai/guided-diffusion checkout for the ADM-64 benchmarks")
    p.add_argument("--uvit", metavar="CHECKOUT", type=Path, default=None,
                   help="baofff/U-ViT checkout for the U-ViT-H benchmarks")
    p.add_argument("--fp16", choices=("auto", "on", "off"), default="auto",
                   help="also time every benchmark under float16 autocast (auto: on a GPU)")
    p.add_argument("--memory", metavar="B", type=int, default=None,
                   help="also measure the activation peak of one CIFAR-10 forward at batch B")
    args = p.parse_args()
    global GUIDED_DIFFUSION, UVIT
    GUIDED_DIFFUSION, UVIT = args.guided_diffusion, args.uvit
    if args.repeat < 1 or args.warmup < 0:
        p.error("--repeat must be at least 1 and --warmup at least 0")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch.cuda.is_available() is False")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    fp16 = args.fp16 == "on" or (args.fp16 == "auto" and device.type == "cuda")
    selected = [(name, build) for name, build in BENCHES
                if (args.only is None or name.startswith(args.only))
                and (build is not adm_benches or GUIDED_DIFFUSION is not None)
                and (build is not uvit_benches or UVIT is not None)]
    if not selected and args.memory is None:
        p.error(f"no benchmark id starts with {args.only!r}; ids: "
                + ", ".join(name for name, _ in BENCHES))

    found = read_criterion(args.criterion_dir)
    if device.type == "cuda":
        # PyTorch's defaults, as the official code runs: cuDNN convolutions in TF32; every
        # benchmark is timed again with TF32 off (float32 throughout, like wgsl-diff).
        where = (f"cuda ({torch.cuda.get_device_name(device)}; defaults: TF32 convolutions "
                 f"{torch.backends.cudnn.allow_tf32}, matmuls {torch.backends.cuda.matmul.allow_tf32}; "
                 f"also timed with TF32 off)")
    else:
        where = f"cpu ({cpu_name()})"
    header = (f"torch {torch.__version__} on {where}, {torch.get_num_threads()} threads; "
              f"median of {args.repeat} runs after {args.warmup} warm-up; "
              f"wgsl-diff: criterion mean from {args.criterion_dir}")

    rows, built = [], {}
    for name, build in selected:
        if build not in built:
            built[build] = build(device)
        times = time_it(built[build][name], device, args.warmup, args.repeat)
        torch_ns = statistics.median(times)
        torch_only = name == SEQUENTIAL
        wgsl_ns = None if torch_only else criterion_mean_ns(args.criterion_dir, found, name)
        strict = None
        if device.type == "cuda":
            with tf32_off():
                strict = time_it(built[build][name], device, args.warmup, args.repeat)
        strict_ns = statistics.median(strict) if strict else None
        half = time_it(built[build][name], device, args.warmup, args.repeat, True) if fp16 else None
        half_ns = statistics.median(half) if half else None
        rows.append(dict(name=name, torch_only=torch_only, wgsl_diff_ns=wgsl_ns, torch_ns=torch_ns,
                         ratio=torch_ns / wgsl_ns if wgsl_ns else None, torch_runs_ns=times,
                         torch_tf32_off_ns=strict_ns,
                         ratio_tf32_off=strict_ns / wgsl_ns if strict_ns and wgsl_ns else None,
                         torch_tf32_off_runs_ns=strict,
                         torch_fp16_ns=half_ns, torch_fp16_runs_ns=half))
        print(f"  {name}: torch {'defaults ' if strict else ''}{fmt_time(torch_ns)}"
              + (f", TF32 off {fmt_time(strict_ns)}" if strict else "")
              + (f", fp16 autocast {fmt_time(half_ns)}" if half else ""), flush=True)
    print()
    if rows:
        print_table(rows, header)
    memory = None
    if args.memory is not None:
        memory = {"batch": args.memory, "method": "live aten outputs (TorchDispatchMode)",
                  "float32_bytes": activation_peak(args.memory, device, False)}
        if fp16:
            memory["fp16_autocast_bytes"] = activation_peak(args.memory, device, True)
        print(f"\nactivation peak of one CIFAR-10 forward at B = {args.memory}: "
              + ", ".join(f"{k.removesuffix('_bytes')} {v / 1e6:.1f} MB"
                          for k, v in memory.items() if k.endswith("_bytes")))
    by_name = {r["name"]: r for r in rows}
    if SEQUENTIAL in by_name and "sampling_step_b8/uncertainty_m5" in by_name:
        factor = by_name[SEQUENTIAL]["torch_ns"] / by_name["sampling_step_b8/uncertainty_m5"]["torch_ns"]
        print(f"\n{SEQUENTIAL.split('/')[1]}: {COPIES} forwards of batch {STEP_BATCH} (the authors' "
              f"code) instead of one of {COPIES * STEP_BATCH}; {factor:.2f}x torch's batched time.")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "torch_version": torch.__version__,
            "device": where,
            "threads": torch.get_num_threads(),
            "warmup": args.warmup,
            "repeat": args.repeat,
            "criterion_dir": str(args.criterion_dir),
            "fp16_autocast": fp16,
            "results": rows,
            "activation_peak": memory,
        }, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
