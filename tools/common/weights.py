"""The wgsl-diff weight-file format of a UNet2DModel: one .safetensors file, tensors named like the
diffusers state_dict, metadata format / format_version / arch / config / scheduler (documented in
tools/converters/unet2d.py, the converter run as tools/convert.py). The writer is shared by the
converter and the fixture makers; load_unet reads such a file back into diffusers."""

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

FORMAT_NAME = "wgsl-diff"
FORMAT_VERSION = "1"
ARCH = "UNet2DModel"

DEFAULT_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "clip_sample": True,
    "prediction_type": "epsilon",
}


def public_config(config):
    """A JSON-ready copy of a diffusers config: private '_...' keys dropped, tuples as lists."""
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dict(config).items() if not k.startswith("_")}


def compact_json(obj):
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def write_weights(path, state_dict, model_config, scheduler_config=None, half=False):
    """Writes state_dict in the wgsl-diff format (see tools/converters/unet2d.py's docstring).

    model_config: the UNet2DModel config (a dict or the model's FrozenDict).
    scheduler_config: scheduler config dict, or None for the default linear DDPM schedule.
    """
    dtype = torch.float16 if half else torch.float32
    tensors = {name: t.detach().to(dtype).contiguous() for name, t in state_dict.items()}
    scheduler = dict(DEFAULT_SCHEDULER)
    scheduler.update(public_config(scheduler_config or {}))
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": ARCH,
        "config": compact_json(public_config(model_config)),
        "scheduler": compact_json(scheduler),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def load_unet(path):
    """The float32 UNet2DModel stored in a wgsl-diff weights file (metadata "config" + state_dict)."""
    from diffusers import UNet2DModel  # slow import, not needed by write_weights users

    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    model = UNet2DModel.from_config(config)
    model.load_state_dict(load_file(str(path)))
    return model.eval()
