"""Converters into wgsl-diff's weight files: ``unet2d`` (diffusers UNet2DModel; run it as
``python tools/convert.py``), ``adm`` (guided-diffusion; ``python tools/convert.py --adm``) and
``fid_weights`` (pytorch-fid's Inception)."""
