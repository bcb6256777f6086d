#!/usr/bin/env python3
"""Convert a checkpoint into the .safetensors file that wgsl-diff loads (the front door).

    python tools/convert.py MODEL_OR_PIPELINE_DIR OUT.safetensors [--half]
        a diffusers UNet2DModel: tools/converters/unet2d.py (its docstring documents the format)
    python tools/convert.py --adm CHECKPOINT.pt OUT.safetensors [--preset NAME] [FLAGS]
        a guided-diffusion (ADM) checkpoint: tools/converters/adm.py
    python tools/convert.py --uvit CHECKPOINT.pth OUT.safetensors --preset NAME [--autoencoder AE.pth]
        a U-ViT checkpoint (and its autoencoder): tools/converters/uvit.py

Unlike the rest of tools/ (run as ``python -m tools.GROUP.SCRIPT`` from the repository root), this
script is run by its path, from any folder; `python -m tools.convert` works too.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run by path: put the repository root where `python -m` would, instead of tools/ itself.
    _TOOLS = Path(__file__).resolve().parent
    sys.path = [str(_TOOLS.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _TOOLS]


def main():
    if "--adm" in sys.argv[1:]:
        # guided-diffusion checkpoints: tools/converters/adm.py.
        from tools.converters.adm import main as convert_adm
        convert_adm([a for a in sys.argv[1:] if a != "--adm"])
        return
    if "--uvit" in sys.argv[1:]:
        from tools.converters.uvit import main as convert_uvit
        convert_uvit([a for a in sys.argv[1:] if a != "--uvit"])
        return
    from tools.converters.unet2d import main as convert_unet2d
    convert_unet2d()


if __name__ == "__main__":
    main()
