"""pytorch-fid's FID Inception without its download, for the fixture, conversion and benchmark
scripts: the module classes of pytorch_fid.inception (FIDInceptionA/C/E on torchvision's
Inception-V3) with a state dict of our choosing, and the seeded random parameters that
wgsl-diff's `FidInception::random` draws (src/models/evaluation/inception.rs)."""

import numpy as np
import torch
from pytorch_fid import inception as I

BN_EPS = 1e-3  # torchvision's BasicConv2d batch norm


def skeleton():
    """fid_inception_v3() without loading weights: the module tree whose state-dict keys and
    BasicConv2d order the weights follow."""
    net = I._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = I.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = I.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = I.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = I.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = I.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = I.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = I.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = I.FIDInceptionE_1(1280)
    net.Mixed_7c = I.FIDInceptionE_2(2048)
    return net


def basic_convs(net):
    """(name, BasicConv2d) in module order — wgsl-diff's parameter order."""
    from torchvision.models.inception import BasicConv2d
    return [(n, m) for n, m in net.named_modules() if isinstance(m, BasicConv2d)]


def pytorch_fid_model(state_dict, dtype=torch.float32):
    """pytorch_fid.inception.InceptionV3 (pool3, resize and normalisation on) whose
    fid_inception_v3() loads `state_dict` instead of downloading pt_inception-2015-12-05."""
    original = I.load_state_dict_from_url
    I.load_state_dict_from_url = lambda *args, **kwargs: state_dict
    try:
        model = I.InceptionV3([3])
    finally:
        I.load_state_dict_from_url = original
    return model.eval().to(dtype)


def splitmix_symmetric(seed, start, n):
    """Draws start+1 … start+n of wgsl-diff's SplitMix64(seed).symmetric(): uniform in [−1, 1)."""
    with np.errstate(over="ignore"):
        k = np.arange(start + 1, start + n + 1, dtype=np.uint64)
        z = np.uint64(seed) + k * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) * 2.0 - 1.0


def random_state_dict(seed):
    """FidInception::random(seed): per BasicConv2d, He-uniform weights U(−1, 1)·√(6/fan-in) then
    biases U(−1, 1)·0.1 as float32, from one SplitMix64 stream. The batch norms are identities
    (mean 0, variance 1 − eps, scale 1) carrying the bias, so the folded network is exactly the
    drawn one."""
    net = skeleton()
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    drawn = 0
    for name, m in basic_convs(net):
        shape = tuple(m.conv.weight.shape)
        n_w, c_out = int(np.prod(shape)), shape[0]
        scale = np.sqrt(6.0 / int(np.prod(shape[1:])))
        w = (splitmix_symmetric(seed, drawn, n_w) * scale).astype(np.float32)
        b = (splitmix_symmetric(seed, drawn + n_w, c_out) * 0.1).astype(np.float32)
        drawn += n_w + c_out
        sd[f"{name}.conv.weight"] = torch.from_numpy(w.reshape(shape))
        sd[f"{name}.bn.weight"] = torch.ones(c_out)
        sd[f"{name}.bn.bias"] = torch.from_numpy(b)
        sd[f"{name}.bn.running_mean"] = torch.zeros(c_out)
        sd[f"{name}.bn.running_var"] = torch.full((c_out,), 1.0 - BN_EPS)
    sd["fc.weight"].zero_()
    sd["fc.bias"].zero_()
    return sd


def folded(state_dict):
    """wgsl-diff's tensors: each BasicConv2d's batch norm folded into its convolution,
    W' = W·γ/√(σ² + eps), b' = β − μ·γ/√(σ² + eps), in float64 then rounded to float32."""
    out = {}
    for name, _ in basic_convs(skeleton()):
        g = lambda k: state_dict[f"{name}.{k}"].double()
        scale = g("bn.weight") / torch.sqrt(g("bn.running_var") + BN_EPS)
        out[f"{name}.weight"] = (g("conv.weight") * scale[:, None, None, None]).float().contiguous()
        out[f"{name}.bias"] = (g("bn.bias") - g("bn.running_mean") * scale).float().contiguous()
    return out


def features(model, x):
    """pool3 features (N, 2048) of images x (N, 3, H, W) in [0, 1]."""
    with torch.no_grad():
        return model(x)[0].squeeze(3).squeeze(2)
