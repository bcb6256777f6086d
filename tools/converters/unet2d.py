#!/usr/bin/env python3
"""Convert a diffusers UNet2DModel into the single .safetensors file that wgsl-diff loads.

Input: a diffusers model folder (config.json + diffusion_pytorch_model.safetensors or .bin), or a
pipeline folder whose UNet sits in unet/ (with the scheduler in scheduler/), as written by
``save_pretrained`` or downloaded from the Hugging Face hub (e.g. google/ddpm-cifar10-32).

Output: one .safetensors file whose tensors are named exactly like the diffusers state_dict
(``down_blocks.0.resnets.0.conv1.weight`` ...), float32 (float16 with --half), with string
metadata:

    format          "wgsl-diff"
    format_version  "1"
    arch            "UNet2DModel"
    config          the model config as compact JSON, every UNet2DModel argument present
                    (defaults filled in), private "_..." keys dropped
    scheduler       the scheduler config as compact JSON: scheduler/scheduler_config.json or
                    scheduler_config.json next to or above the model folder; keys it lacks are
                    filled from the default linear DDPM schedule (T = 1000, beta 1e-4 .. 0.02,
                    clip_sample true, epsilon prediction), which is also used when none is found

Checks before writing (any failure exits with status 2 and lists every problem found):
  * down/up/mid block types are among the supported ones (SUPPORTED_* below), act_fn is silu,
    and the other structural options are the ones wgsl-diff implements;
  * a UNet2DModel built from the config has exactly the checkpoint's tensor names and shapes.
Attention weights saved by old diffusers versions (query/key/value/proj_attn) are renamed to the
current names (to_q/to_k/to_v/to_out.0), as diffusers itself does when loading them.

Usage:
    python tools/convert.py MODEL_OR_PIPELINE_DIR OUT.safetensors [--half]
    python tools/convert.py --adm CHECKPOINT.pt OUT.safetensors [--preset NAME] [FLAGS]
                                  (guided-diffusion ADM checkpoints: see tools/converters/adm.py)
    python tools/convert.py checkpoints/ddpm-fashion-mnist weights/fashion_mnist_ddpm.safetensors
"""

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from tools.common.weights import ARCH, write_weights

SUPPORTED_DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
SUPPORTED_UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")
SUPPORTED_MID_BLOCKS = ("UNetMidBlock2D",)
# Config options with values wgsl-diff does not implement: option -> accepted values. Mirrors
# UNet2DConfig::validate in src/models/diffusers/unet_2d.rs so that unsupported models fail at conversion.
SUPPORTED_OPTIONS = {
    "act_fn": ("silu",),
    "time_embedding_type": ("positional",),
    "time_embedding_dim": (None,),  # wgsl-diff always uses 4 * block_out_channels[0]
    "class_embed_type": (None,),  # class conditioning via num_class_embeds (nn.Embedding) only
    "center_input_sample": (False,),
    "resnet_time_scale_shift": ("default", "scale_shift"),
    "downsample_type": ("conv",),
    "upsample_type": ("conv",),
    "downsample_padding": (0, 1),
}

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# Old diffusers attention parameter names -> current ones (mirrors
# ModelMixin._fix_state_dict_keys_on_load, which only runs inside from_pretrained).
DEPRECATED_ATTENTION = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
ATTENTION_RENAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class ConversionError(Exception):
    """Invalid or unsupported input; the message is meant for the user."""


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: invalid JSON ({e})") from e


def locate(input_dir):
    """Returns (model_dir, scheduler_config_path or None) for a model or pipeline folder."""
    input_dir = Path(input_dir)
    if (input_dir / "config.json").is_file():
        model_dir = input_dir
    elif (input_dir / "unet" / "config.json").is_file():
        model_dir = input_dir / "unet"
    else:
        raise ConversionError(f"{input_dir}: neither config.json nor unet/config.json found")

    candidates = [
        model_dir / "scheduler_config.json",
        model_dir.parent / "scheduler" / "scheduler_config.json",
        model_dir.parent / "scheduler_config.json",
    ]
    scheduler_path = next((p for p in candidates if p.is_file()), None)
    return model_dir, scheduler_path


def load_state_dict(model_dir):
    for name in WEIGHT_FILES:
        path = model_dir / name
        if path.is_file():
            if path.suffix == ".safetensors":
                return load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True)
    if any(model_dir.glob("*.index.json")):
        raise ConversionError(f"{model_dir}: sharded checkpoints are not supported")
    raise ConversionError(f"{model_dir}: no weights file (looked for {', '.join(WEIGHT_FILES)})")


def rename_deprecated_attention(state_dict):
    renamed = {}
    for name, tensor in state_dict.items():
        m = DEPRECATED_ATTENTION.match(name)
        if m:
            name = f"{m.group(1)}.{ATTENTION_RENAMES[m.group(2)]}.{m.group(3)}"
        renamed[name] = tensor
    return renamed


def check_supported(config):
    """Raises ConversionError listing every unsupported block type or option in config."""
    problems = []
    if config.get("_class_name", ARCH) != ARCH:
        problems.append(f"model class {config['_class_name']!r} is not {ARCH}")

    def check_blocks(key, supported, default):
        values = config.get(key, default)
        for value in values if isinstance(values, list) else [values]:
            if value not in supported:
                problems.append(f"{key}: block type {value!r} is not supported "
                                f"(supported: {', '.join(supported)})")

    # Missing keys take UNet2DModel's defaults, which are themselves supported.
    check_blocks("down_block_types", SUPPORTED_DOWN_BLOCKS, [])
    check_blocks("up_block_types", SUPPORTED_UP_BLOCKS, [])
    check_blocks("mid_block_type", SUPPORTED_MID_BLOCKS, SUPPORTED_MID_BLOCKS[0])
    for key, supported in SUPPORTED_OPTIONS.items():
        if key in config and config[key] not in supported:
            problems.append(f"{key}: {config[key]!r} is not supported "
                            f"(supported: {', '.join(map(repr, supported))})")
    if problems:
        raise ConversionError("unsupported model:\n  " + "\n  ".join(problems))


def check_tensors(state_dict, expected):
    """Raises ConversionError listing every name/shape difference from the expected state_dict."""
    problems = []
    for name in sorted(expected.keys() - state_dict.keys()):
        problems.append(f"missing from checkpoint: {name} {tuple(expected[name].shape)}")
    for name in sorted(state_dict.keys() - expected.keys()):
        problems.append(f"not in the model: {name} {tuple(state_dict[name].shape)}")
    for name in sorted(state_dict.keys() & expected.keys()):
        got, want = tuple(state_dict[name].shape), tuple(expected[name].shape)
        if got != want:
            problems.append(f"shape of {name}: checkpoint {got}, model {want}")
        elif not state_dict[name].is_floating_point():
            problems.append(f"{name} has non-float dtype {state_dict[name].dtype}")
    if problems:
        raise ConversionError(f"checkpoint does not match the config ({len(problems)} problems):\n  "
                              + "\n  ".join(problems))


def convert(input_dir, output, half=False):
    from diffusers import UNet2DModel  # slow import, not needed by write_weights users

    model_dir, scheduler_path = locate(input_dir)
    config = read_json(model_dir / "config.json")
    check_supported(config)
    try:
        model = UNet2DModel.from_config(config)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{model_dir / 'config.json'}: UNet2DModel rejects the config: {e}") from e

    state_dict = rename_deprecated_attention(load_state_dict(model_dir))
    check_tensors(state_dict, model.state_dict())

    scheduler_config = read_json(scheduler_path) if scheduler_path else None
    write_weights(output, state_dict, model.config, scheduler_config, half=half)
    n_params = sum(t.numel() for t in state_dict.values())
    print(f"wrote {output}: {len(state_dict)} tensors, {n_params:,} parameters, "
          f"{'float16' if half else 'float32'}; scheduler: "
          f"{scheduler_path or 'default linear DDPM'}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Exit status: 0 ok, 2 invalid or unsupported input.")
    p.add_argument("input", help="diffusers UNet2DModel folder, or pipeline folder with unet/")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--half", action="store_true", help="store float16 instead of float32")
    args = p.parse_args()
    try:
        convert(args.input, args.output, half=args.half)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
