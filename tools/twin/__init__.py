"""The PyTorch twin of ``wgsl-diff sample``: ``python -m tools.twin.sample_torch``."""
