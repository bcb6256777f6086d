#!/usr/bin/env python3
"""Convert an openai/guided-diffusion (ADM) checkpoint into the .safetensors file wgsl-diff loads.

Input: a guided-diffusion `.pt` state dict (the released 64x64_diffusion.pt, 128x128_diffusion.pt,
256x256_diffusion.pt, 256x256_diffusion_uncond.pt, or your own) plus its model flags, named as in
guided-diffusion's `model_and_diffusion_defaults()` (`--image_size 64 --num_channels 192 ...`; booleans
as True/False), or `--preset NAME` for a released checkpoint (its published flags; further flags
override them). Flags left out take guided-diffusion's defaults.

Output: one .safetensors file with the state dict's names and dtypes (float16 tensors of a
mixed-precision checkpoint stay float16 unless --float32) and string metadata:

    format, format_version  "wgsl-diff", "1"
    arch                    "ADMUNetModel"
    config                  UNetModel's constructor arguments as JSON, as create_model computes
                            them from the flags (attention_resolutions as downsampling rates)
    scheduler               the diffusion as a diffusers-style scheduler config: T, the beta
                            schedule (linear scaled to T, or squaredcos_cap_v2 for cosine),
                            clip_sample true, variance_type learned_range with learn_sigma (else
                            fixed_large, guided-diffusion's default), use_clipped_model_output
                            true (guided-diffusion's DDIM steps along the clipped x0's epsilon)

Checks before writing (exit status 2, every problem listed): the flags are consistent (heads divide
the widths, widths are multiples of 32), and the checkpoint has exactly the tensor names and shapes
those flags imply, no missing and no extra ones.

Usage:
    python tools/convert.py --adm 64x64_diffusion.pt adm64.safetensors --preset 64x64_diffusion
    python -m tools.converters.adm my.pt out.safetensors --image_size 32 --num_channels 64 ...
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

FORMAT_NAME, FORMAT_VERSION, ARCH = "wgsl-diff", "1", "ADMUNetModel"
NUM_CLASSES = 1000  # guided-diffusion's script_util.NUM_CLASSES
NORM_GROUPS = 32

# guided-diffusion's model_and_diffusion_defaults() (script_util.py).
DEFAULTS = dict(
    image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
    num_head_channels=-1, attention_resolutions="16,8", channel_mult="", dropout=0.0,
    class_cond=False, use_checkpoint=False, use_scale_shift_norm=True, resblock_updown=False,
    use_fp16=False, use_new_attention_order=False, learn_sigma=False, diffusion_steps=1000,
    noise_schedule="linear", timestep_respacing="", use_kl=False, predict_xstart=False,
    rescale_timesteps=False, rescale_learned_sigmas=False,
)

# The MODEL_FLAGS of guided-diffusion's README for each released checkpoint.
_COMMON = dict(attention_resolutions="32,16,8", diffusion_steps=1000, learn_sigma=True,
               resblock_updown=True, use_fp16=True, use_scale_shift_norm=True)
PRESETS = {
    "64x64_diffusion": dict(_COMMON, class_cond=True, dropout=0.1, image_size=64,
                            noise_schedule="cosine", num_channels=192, num_head_channels=64,
                            num_res_blocks=3, use_new_attention_order=True),
    "128x128_diffusion": dict(_COMMON, class_cond=True, image_size=128, noise_schedule="linear",
                              num_channels=256, num_heads=4, num_res_blocks=2),
    "256x256_diffusion": dict(_COMMON, class_cond=True, image_size=256, noise_schedule="linear",
                              num_channels=256, num_head_channels=64, num_res_blocks=2),
    "256x256_diffusion_uncond": dict(_COMMON, class_cond=False, image_size=256,
                                     noise_schedule="linear", num_channels=256,
                                     num_head_channels=64, num_res_blocks=2),
}
# Flags that change the diffusion at sampling time in ways wgsl-diff does not implement.
UNSUPPORTED = dict(predict_xstart=False, rescale_timesteps=False, use_kl=False)


class ConversionError(Exception):
    """Invalid or unsupported input; the message is meant for the user."""


def str2bool(v):
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {v!r}")


def model_config(flags):
    """UNetModel's constructor arguments, as guided-diffusion's create_model derives them."""
    size = flags["image_size"]
    if flags["channel_mult"] == "":
        defaults = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                    64: (1, 2, 3, 4)}
        if size not in defaults:
            raise ConversionError(f"image_size {size} has no default channel_mult: give --channel_mult")
        mult = defaults[size]
    else:
        mult = tuple(int(m) for m in str(flags["channel_mult"]).split(","))
    rates = [size // int(r) for r in str(flags["attention_resolutions"]).split(",") if r]
    return dict(
        image_size=size, in_channels=3, model_channels=flags["num_channels"],
        out_channels=6 if flags["learn_sigma"] else 3, num_res_blocks=flags["num_res_blocks"],
        attention_resolutions=rates, dropout=flags["dropout"], channel_mult=[float(m) for m in mult],
        conv_resample=True, dims=2, num_classes=NUM_CLASSES if flags["class_cond"] else None,
        use_fp16=flags["use_fp16"], num_heads=flags["num_heads"],
        num_head_channels=flags["num_head_channels"], num_heads_upsample=flags["num_heads_upsample"],
        use_scale_shift_norm=flags["use_scale_shift_norm"], resblock_updown=flags["resblock_updown"],
        use_new_attention_order=flags["use_new_attention_order"],
    )


def scheduler_config(flags):
    """The diffusion guided-diffusion's create_gaussian_diffusion builds, in diffusers' terms."""
    steps = flags["diffusion_steps"]
    for name, value in UNSUPPORTED.items():
        if flags[name] != value:
            raise ConversionError(f"--{name} {flags[name]} is not supported")
    schedule = flags["noise_schedule"]
    if schedule == "linear":
        scale = 1000 / steps  # get_named_beta_schedule scales the betas to the step count
        betas = dict(beta_schedule="linear", beta_start=scale * 0.0001, beta_end=scale * 0.02)
    elif schedule == "cosine":
        betas = dict(beta_schedule="squaredcos_cap_v2")
    else:
        raise ConversionError(f"--noise_schedule {schedule!r}: only linear and cosine")
    return dict(num_train_timesteps=steps, clip_sample=True, clip_sample_range=1.0,
                prediction_type="epsilon", use_clipped_model_output=True,
                variance_type="learned_range" if flags["learn_sigma"] else "fixed_large", **betas)


def heads(cfg, channels, upsample):
    if cfg["num_head_channels"] != -1:
        if channels % cfg["num_head_channels"]:
            raise ConversionError(f"{channels} channels are not divisible by num_head_channels "
                                  f"{cfg['num_head_channels']}")
        return channels // cfg["num_head_channels"]
    n = cfg["num_heads_upsample"] if upsample and cfg["num_heads_upsample"] != -1 else cfg["num_heads"]
    if n <= 0 or channels % n:
        raise ConversionError(f"{channels} channels cannot be split into {n} heads")
    return n


def expected_shapes(cfg):
    """Every parameter name of UNetModel(**cfg) with its shape (mirrors unet.py's __init__)."""
    shapes = {}
    ted = 4 * cfg["model_channels"]

    def param(name, weight, rows):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = tuple(weight), (rows,)

    def norm(name, c):
        if c % NORM_GROUPS:
            raise ConversionError(f"{name}: {c} channels are not a multiple of {NORM_GROUPS} groups")
        param(name, (c,), c)

    def res(p, ch, out):
        norm(f"{p}.in_layers.0", ch)
        param(f"{p}.in_layers.2", (out, ch, 3, 3), out)
        emb = 2 * out if cfg["use_scale_shift_norm"] else out
        param(f"{p}.emb_layers.1", (emb, ted), emb)
        norm(f"{p}.out_layers.0", out)
        param(f"{p}.out_layers.3", (out, out, 3, 3), out)
        if ch != out:
            param(f"{p}.skip_connection", (out, ch, 1, 1), out)
        return out

    def attn(p, ch, upsample):
        heads(cfg, ch, upsample)
        norm(f"{p}.norm", ch)
        param(f"{p}.qkv", (3 * ch, ch, 1), 3 * ch)
        param(f"{p}.proj_out", (ch, ch, 1), ch)

    mc, width = cfg["model_channels"], lambda m: int(m * cfg["model_channels"])
    param("time_embed.0", (ted, mc), ted)
    param("time_embed.2", (ted, ted), ted)
    if cfg["num_classes"] is not None:
        shapes["label_emb.weight"] = (cfg["num_classes"], ted)
    ch = input_ch = width(cfg["channel_mult"][0])
    param("input_blocks.0.0", (ch, cfg["in_channels"], 3, 3), ch)
    chans, ds, n = [ch], 1, 1
    for level, mult in enumerate(cfg["channel_mult"]):
        for _ in range(cfg["num_res_blocks"]):
            ch = res(f"input_blocks.{n}.0", ch, width(mult))
            if ds in cfg["attention_resolutions"]:
                attn(f"input_blocks.{n}.1", ch, False)
            chans.append(ch)
            n += 1
        if level != len(cfg["channel_mult"]) - 1:
            if cfg["resblock_updown"]:
                res(f"input_blocks.{n}.0", ch, ch)
            elif cfg["conv_resample"]:
                param(f"input_blocks.{n}.0.op", (ch, ch, 3, 3), ch)
            chans.append(ch)
            ds, n = ds * 2, n + 1
    res("middle_block.0", ch, ch)
    attn("middle_block.1", ch, False)
    res("middle_block.2", ch, ch)
    n = 0
    for level, mult in list(enumerate(cfg["channel_mult"]))[::-1]:
        for i in range(cfg["num_res_blocks"] + 1):
            ch = res(f"output_blocks.{n}.0", ch + chans.pop(), width(mult))
            j = 1
            if ds in cfg["attention_resolutions"]:
                attn(f"output_blocks.{n}.1", ch, True)
                j = 2
            if level and i == cfg["num_res_blocks"]:
                if cfg["resblock_updown"]:
                    res(f"output_blocks.{n}.{j}", ch, ch)
                elif cfg["conv_resample"]:
                    param(f"output_blocks.{n}.{j}.conv", (ch, ch, 3, 3), ch)
                ds //= 2
            n += 1
    norm("out.0", ch)
    param("out.2", (cfg["out_channels"], input_ch, 3, 3), cfg["out_channels"])
    return shapes


def check_tensors(state_dict, shapes):
    problems = []
    for name in sorted(shapes.keys() - state_dict.keys()):
        problems.append(f"missing from checkpoint: {name} {shapes[name]}")
    for name in sorted(state_dict.keys() - shapes.keys()):
        problems.append(f"not in the model: {name} {tuple(state_dict[name].shape)}")
    for name in sorted(state_dict.keys() & shapes.keys()):
        got = tuple(state_dict[name].shape)
        if got != shapes[name]:
            problems.append(f"shape of {name}: checkpoint {got}, flags imply {shapes[name]}")
        elif not state_dict[name].is_floating_point():
            problems.append(f"{name} has non-float dtype {state_dict[name].dtype}")
    if problems:
        raise ConversionError(f"checkpoint does not match the flags ({len(problems)} problems):\n  "
                              + "\n  ".join(problems))


def write(path, state_dict, cfg, scheduler, float32=False):
    tensors = {k: (v.float() if float32 else v).detach().contiguous() for k, v in state_dict.items()}
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "arch": ARCH,
                "config": json.dumps(cfg, separators=(",", ":"), sort_keys=True),
                "scheduler": json.dumps(scheduler, separators=(",", ":"), sort_keys=True)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def load_state_dict(path):
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise ConversionError(f"{path}: cannot read a PyTorch state dict ({e})") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConversionError(f"{path}: not a state dict of tensors")
    return sd


def flags_from(args):
    flags = dict(DEFAULTS)
    if args.preset:
        flags.update(PRESETS[args.preset])
    flags.update({k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None})
    return flags


def convert(checkpoint, output, flags, float32=False):
    cfg, scheduler = model_config(flags), scheduler_config(flags)
    state_dict = load_state_dict(checkpoint)
    check_tensors(state_dict, expected_shapes(cfg))
    write(output, state_dict, cfg, scheduler, float32)
    n = sum(t.numel() for t in state_dict.values())
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in state_dict.values()})
    print(f"wrote {output}: {len(state_dict)} tensors, {n:,} parameters "
          f"({'float32' if float32 else '/'.join(dtypes)}), {scheduler['beta_schedule']} schedule")


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Exit status: 0 ok, 2 invalid or unsupported input.")
    p.add_argument("checkpoint", help="guided-diffusion .pt state dict")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a released checkpoint's flags")
    p.add_argument("--float32", action="store_true", help="widen float16 tensors to float32")
    for name, default in DEFAULTS.items():
        kind = str2bool if isinstance(default, bool) else type(default)
        p.add_argument(f"--{name}", type=kind, default=None)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        convert(args.checkpoint, args.output, flags_from(args), args.float32)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
