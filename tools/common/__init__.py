"""Code shared by the tools: imported as ``tools.common.MODULE``, never run.

    paths          the repository root, tests/fixtures, the shipped model
    weights        the wgsl-diff weight-file format: writer (tools/convert.py's) and UNet loader
    reference      float64 reference helpers: float32-exact normals, the linear schedule, DDIM
                   "leading" timesteps
    uncertainty    Algorithm 1's maps and the Stein modes (docs/method.md §1)
    guidance_torch Algorithm 2's guided ε (docs/method.md §3)
    wgsl_noise     wgsl-diff's Philox noise streams in NumPy (also ``--check DIR``)
    fashion_mnist  Fashion-MNIST IDX files, scaled and padded as in training
    classifier     the Fashion-MNIST classifier of ``wgsl-diff eval``
    fid_torch      pytorch-fid's Inception without its download
"""
