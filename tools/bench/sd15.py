#!/usr/bin/env python3
"""Stable Diffusion 1.5's full architecture at random weights, for timing wgsl-diff beside diffusers
on the same GPU (no real weights needed: the cost does not depend on them).

    write FOLDER [--tiny]   a diffusers Stable Diffusion folder (model_index.json, unet/, vae/,
                            text_encoder/, tokenizer/, scheduler/; safetensors, float32) with SD 1.5's
                            configs — UNet 320·[1,2,4,4], 8 heads, cross-attention 768; VAE
                            128·[1,2,4,4]; CLIP ViT-L/14's text tower — random weights, the real
                            49,408-token CLIP vocabulary (tests/fixtures' open_clip file) and SD 1.5's
                            PNDM scheduler. --tiny: the same layout at toy widths, to check the
                            script on a CPU.
    bench FOLDER            the diffusers side of tools/device_check.sh's sd15 section, batch 1, CFG
                            7.5, 20 PNDM steps (21 UNet calls) at --height × --width:
                              plain          StableDiffusionPipeline (float32; and float16 with --fp16)
                              uncertainty    every call followed by the official M = 5 re-noised
                                             copies (tools/common/sd_guidance_torch.py: M CFG calls
                                             one after another, the unbiased variance)
                              rule_g         Rule G on the first 2 calls (the official script's
                                             default: M = 5, p = 0.95, lr 0.99, autograd through
                                             both CFG halves)
                            Each: wall seconds (CUDA synchronised), seconds per call, and the peak
                            of torch.cuda.max_memory_allocated. --json writes them.

Usage:
    python -m tools.bench.sd15 write /tmp/sd15
    python -m tools.bench.sd15 bench /tmp/sd15 --device cuda --json /tmp/sd15_torch.json
"""

import argparse
import json
import time
from pathlib import Path

import torch

from tools.common.sd_guidance_torch import cfg_eps, official_step
from tools.fixtures.clip_tokenizer import clip_vocab

PROMPT = "a photograph of an astronaut riding a horse"
CFG_SCALE = 7.5
STEPS = 20
UNCERTAINTY = dict(M=5, cfg_scale=CFG_SCALE, percentile=0.95, strength=0.99)
GUIDED_CALLS = 2


def configs(tiny):
    """(unet, vae, text) configs: SD 1.5's, or the same layout at toy widths."""
    unet = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                attention_head_dim=8,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
               block_out_channels=(128, 256, 512, 512), sample_size=512,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                projection_dim=768)
    if tiny:
        unet.update(sample_size=8, block_out_channels=(32, 64, 64, 64), layers_per_block=1,
                    cross_attention_dim=32, norm_num_groups=8, attention_head_dim=4)
        vae.update(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4,
                   sample_size=64)
        text.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    projection_dim=32)
    return unet, vae, text


def write(folder, tiny):
    from diffusers import (AutoencoderKL, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet_config, vae_config, text_config = configs(tiny)
    vocab, merges = clip_vocab()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              model_max_length=77)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**vae_config), text_encoder=CLIPTextModel(CLIPTextConfig(**text_config)),
        tokenizer=tokenizer, unet=UNet2DConditionModel(**unet_config), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    # transformers 5 saves tokenizer.json alone; SD 1.5's folder (and wgsl-diff) has the pair.
    for f in ("vocab.json", "merges.txt"):
        (folder / f).replace(folder / "tokenizer" / f)
    params = sum(p.numel() for p in pipe.unet.parameters())
    print(f"{folder}: random-weight {'toy' if tiny else 'SD 1.5'} folder, UNet {params:,} parameters")


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Timer:
    """Wall time (synchronised) and the allocator's peak over a block."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        synchronize(self.device)
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.t0
        self.peak_gib = (torch.cuda.max_memory_allocated() / 2**30
                         if self.device.startswith("cuda") else None)


def sample(pipe, height, width, device, mode):
    """One batch-1 run of 20 PNDM steps with CFG, by the official loop: `mode` plain, uncertainty
    (M copies after every call) or rule_g (guided first calls)."""
    gen = torch.Generator(device).manual_seed(0)
    dtype = pipe.unet.dtype
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(PROMPT, device, 1, True, "")
    states = torch.cat([uncond, cond])
    latents = torch.randn((1, 4, height // 8, width // 8), generator=gen, device=device, dtype=dtype)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(STEPS, device=device)
    for i, t in enumerate(scheduler.timesteps):
        with torch.no_grad():
            eps = cfg_eps(pipe.unet, latents, t, states, CFG_SCALE)
        guided = mode == "rule_g" and i < GUIDED_CALLS
        if mode == "uncertainty" or guided:
            abar = scheduler.alphas_cumprod[int(t)].to(device=device, dtype=dtype)
            noise = [torch.randn(latents.shape, generator=gen, device=device, dtype=dtype)
                     for _ in range(UNCERTAINTY["M"])]
            rule = "gradient" if guided else "posterior"
            guided_eps, _ = official_step(pipe.unet, latents, t, states, eps, abar, noise, rule,
                                          UNCERTAINTY)
            if guided:
                eps = guided_eps
        with torch.no_grad():
            latents = scheduler.step(eps, t, latents).prev_sample
    with torch.no_grad():
        return pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample


def bench(folder, device, height, width, fp16, json_path):
    from diffusers import StableDiffusionPipeline

    results = {}
    dtypes = [torch.float32] + ([torch.float16] if fp16 else [])
    for dtype in dtypes:
        pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, safety_checker=None)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        # Rule G needs the input gradient only. The official code leaves the weights' gradients
        # on (its backward also fills them); turned off here, the torch side is the faster one.
        pipe.unet.requires_grad_(False)
        modes = ["plain", "uncertainty", "rule_g"] if dtype == torch.float32 else ["plain"]
        for mode in modes:
            sample(pipe, height, width, device, mode)  # warm-up
            with Timer(device) as timer:
                sample(pipe, height, width, device, mode)
            name = f"{mode}_{'f32' if dtype == torch.float32 else 'f16'}"
            calls = STEPS + 1
            results[name] = dict(seconds=timer.seconds, per_call=timer.seconds / calls,
                                 peak_gib=timer.peak_gib)
            print(f"diffusers {name}: {timer.seconds:.2f} s ({timer.seconds / calls * 1e3:.0f} ms "
                  f"per call), peak {timer.peak_gib if timer.peak_gib is None else round(timer.peak_gib, 2)} GiB",
                  flush=True)
        del pipe
    if json_path:
        device_name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
        Path(json_path).write_text(json.dumps(dict(device=device_name, height=height, width=width,
                                                   steps=STEPS, results=results), indent=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write")
    w.add_argument("folder")
    w.add_argument("--tiny", action="store_true")
    b = sub.add_parser("bench")
    b.add_argument("folder")
    b.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    b.add_argument("--height", type=int, default=512)
    b.add_argument("--width", type=int, default=512)
    b.add_argument("--fp16", action="store_true")
    b.add_argument("--json")
    args = parser.parse_args()
    if args.command == "write":
        write(args.folder, args.tiny)
    else:
        bench(args.folder, args.device, args.height, args.width, args.fp16, args.json)


if __name__ == "__main__":
    main()
