#!/usr/bin/env python3
"""Convert a U-ViT checkpoint (baofff/U-ViT's released `imagenet256_uvit_huge.pth` and the like, a
state dict of its `UViT`) into the .safetensors file wgsl-diff loads.

Input: the `.pth` state dict (read with torch.load(weights_only=True): tensors only, no code runs)
and `--preset NAME`, the released model's `config.nnet` (configs/NAME.py of baofff/U-ViT), or
`--config JSON` with UViT's keyword arguments for your own.

Output: one .safetensors file with U-ViT's state-dict names, float32 (or float16 with --half), and
string metadata:

    format, format_version  "wgsl-diff", "1"
    arch                    "UViT"
    config                  UViT's keyword arguments as JSON (less `name` and the training-only
                            `use_checkpoint`)
    scheduler               the latent models' discrete schedule (U-ViT's
                            stable_diffusion_beta_schedule: scaled_linear 0.00085..0.012, 1000 steps;
                            steps_offset 1, set_alpha_to_one false as the official code sets them)

Checks before writing (exit status 2, every problem listed): the checkpoint has exactly the tensor
names and shapes UViT builds for the config, no missing and no extra ones.

With `--autoencoder autoencoder_kl.pth` (U-ViT's `assets/stable-diffusion/autoencoder_kl*.pth`, the
CompVis LDM KL-f8 autoencoder) it also writes OUT's sibling `OUT_vae.safetensors`: the decoder as a
diffusers AutoencoderKL (renamed by diffusers' own `convert_ldm_vae_checkpoint`), scaling 0.18215.

Usage:
    python tools/convert.py --uvit imagenet256_uvit_huge.pth uvit256.safetensors --preset imagenet256_uvit_huge
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from tools.common.weights import FORMAT_NAME, FORMAT_VERSION, compact_json

ARCH = "UViT"

# config.nnet of baofff/U-ViT's configs/NAME.py for the released latent ImageNet models.
_IMAGENET = dict(in_chans=4, num_heads=16, mlp_ratio=4, qkv_bias=False, mlp_time_embed=False,
                 num_classes=1001)
PRESETS = {
    "imagenet256_uvit_large": dict(_IMAGENET, img_size=32, patch_size=2, embed_dim=1024, depth=20),
    "imagenet256_uvit_huge": dict(_IMAGENET, img_size=32, patch_size=2, embed_dim=1152, depth=28,
                                  conv=False),
    "imagenet512_uvit_large": dict(_IMAGENET, img_size=64, patch_size=4, embed_dim=1024, depth=20),
    "imagenet512_uvit_huge": dict(_IMAGENET, img_size=64, patch_size=4, embed_dim=1152, depth=28,
                                  conv=False),
}
# UViT's defaults (libs/uvit.py).
DEFAULTS = dict(img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                mlp_ratio=4.0, qkv_bias=False, qk_scale=None, mlp_time_embed=False, num_classes=-1,
                conv=True, skip=True)
# U-ViT's latent models' schedule (eval_ldm_discrete.py's stable_diffusion_beta_schedule).
# The official uncertainty code's scheduler config for them (uvit/load_pretrained_models.py) adds
# steps_offset 1 and set_alpha_to_one False, which DDIM reads (DPM-Solver++ ignores both).
SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                 beta_end=0.012, clip_sample=False, prediction_type="epsilon", steps_offset=1,
                 set_alpha_to_one=False)
# The KL-f8 autoencoder as diffusers configures Stable Diffusion's (U-ViT's libs/autoencoder.py).
VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                  block_out_channels=[128, 256, 512, 512], sample_size=256, scaling_factor=0.18215,
                  down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)


class ConversionError(Exception):
    """Invalid or unsupported input; the message is meant for the user."""


def expected_shapes(cfg):
    """{name: shape} of UViT's state dict for `cfg` (the module tree of libs/uvit.py)."""
    d, p, c = cfg["embed_dim"], cfg["patch_size"], cfg["in_chans"]
    hidden = int(d * cfg["mlp_ratio"])
    tokens = (2 if cfg["num_classes"] > 0 else 1) + (cfg["img_size"] // p) ** 2
    shapes = {"patch_embed.proj.weight": (d, c, p, p), "patch_embed.proj.bias": (d,),
              "pos_embed": (1, tokens, d), "norm.weight": (d,), "norm.bias": (d,),
              "decoder_pred.weight": (p * p * c, d), "decoder_pred.bias": (p * p * c,)}
    if cfg["mlp_time_embed"]:
        shapes.update({"time_embed.0.weight": (4 * d, d), "time_embed.0.bias": (4 * d,),
                       "time_embed.2.weight": (d, 4 * d), "time_embed.2.bias": (d,)})
    if cfg["num_classes"] > 0:
        shapes["label_emb.weight"] = (cfg["num_classes"], d)
    if cfg["conv"]:
        shapes.update({"final_layer.weight": (c, c, 3, 3), "final_layer.bias": (c,)})
    blocks = [f"in_blocks.{i}" for i in range(cfg["depth"] // 2)] + ["mid_block"]
    blocks += [f"out_blocks.{i}" for i in range(cfg["depth"] // 2)]
    for block in blocks:
        shapes.update({f"{block}.norm1.weight": (d,), f"{block}.norm1.bias": (d,),
                       f"{block}.norm2.weight": (d,), f"{block}.norm2.bias": (d,),
                       f"{block}.attn.qkv.weight": (3 * d, d), f"{block}.attn.proj.weight": (d, d),
                       f"{block}.attn.proj.bias": (d,), f"{block}.mlp.fc1.weight": (hidden, d),
                       f"{block}.mlp.fc1.bias": (hidden,), f"{block}.mlp.fc2.weight": (d, hidden),
                       f"{block}.mlp.fc2.bias": (d,)})
        if cfg["qkv_bias"]:
            shapes[f"{block}.attn.qkv.bias"] = (3 * d,)
        if block.startswith("out_blocks") and cfg["skip"]:
            shapes.update({f"{block}.skip_linear.weight": (d, 2 * d), f"{block}.skip_linear.bias": (d,)})
    return shapes


def check(state_dict, cfg):
    """Every problem with the checkpoint's names and shapes for `cfg`, as messages."""
    want = expected_shapes(cfg)
    problems = [f"missing {name} {shape}" for name, shape in want.items() if name not in state_dict]
    problems += [f"unexpected {name}" for name in state_dict if name not in want]
    problems += [f"{name}: shape {tuple(t.shape)}, the config needs {want[name]}"
                 for name, t in state_dict.items() if name in want and tuple(t.shape) != want[name]]
    return problems


def config_from(args):
    if args.preset and args.config:
        raise ConversionError("give --preset or --config, not both")
    if args.preset:
        if args.preset not in PRESETS:
            raise ConversionError(f"unknown preset {args.preset!r}; known: {', '.join(PRESETS)}")
        given = PRESETS[args.preset]
    elif args.config:
        given = json.loads(args.config)
    else:
        raise ConversionError("name the model: --preset NAME or --config JSON")
    given = {k: v for k, v in given.items() if k not in ("name", "use_checkpoint")}
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ConversionError(f"UViT takes no {', '.join(sorted(unknown))}")
    return {**DEFAULTS, **given}


def convert_autoencoder(path, out, config=VAE_CONFIG):
    """The LDM KL autoencoder renamed to diffusers' AutoencoderKL by diffusers' converter (`config`:
    its diffusers config; the released KL-f8 one by default)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    renamed = convert_ldm_vae_checkpoint(state, config)
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "arch": "AutoencoderKL",
                "config": compact_json(config)}
    save_file({k: v.float().contiguous() for k, v in renamed.items()}, str(out), metadata=metadata)
    return len(renamed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset")
    parser.add_argument("--config", help="UViT keyword arguments as JSON")
    parser.add_argument("--half", action="store_true", help="store float16")
    parser.add_argument("--autoencoder", type=Path, help="U-ViT's autoencoder_kl*.pth")
    args = parser.parse_args(argv)
    try:
        cfg = config_from(args)
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        problems = check(state, cfg)
        if problems:
            raise ConversionError(f"{args.checkpoint} does not fit the config:\n  " + "\n  ".join(problems))
    except (ConversionError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    dtype = torch.float16 if args.half else torch.float32
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "arch": ARCH,
                "config": compact_json({k: v for k, v in cfg.items() if v is not None}),
                "scheduler": compact_json(SCHEDULER)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(args.out), metadata=metadata)
    print(f"{args.out}: U-ViT, {sum(t.numel() for t in state.values()):,} parameters")
    if args.autoencoder:
        vae_out = args.out.with_name(args.out.stem + "_vae.safetensors")
        print(f"{vae_out}: {convert_autoencoder(args.autoencoder, vae_out)} autoencoder tensors")


if __name__ == "__main__":
    main()
