"""Reference features for sadm's Inception-v3 (FID variant), computed by pytorch-fid itself.

The weights are not the real ones (those are 95 MB and not ours to ship) but a deterministic function of each
tensor's name and element index that the Rust test (`inception::tests`) regenerates bit for bit: splitmix64 of
(FNV-1a-64(name) + index), mapped to a per-kind range. pytorch-fid's own `InceptionV3` is built with them (its
weight download is replaced by this state dict), fed the same deterministic images, and its 2048-d pool features
are written to inception_fid_reference.safetensors next to this file.

    python3 -m venv /tmp/fidref && /tmp/fidref/bin/pip install torch torchvision pytorch-fid safetensors numpy
    /tmp/fidref/bin/python crates/sadm-core/testdata/inception_fid_reference.py
"""
import math
import os

import numpy as np
import torch
import pytorch_fid.inception as fid
from safetensors.torch import save_file

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def fnv1a64(name: str) -> np.uint64:
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return np.uint64(h)


def uniform(name: str, n: int) -> np.ndarray:
    """n floats in [0, 1) in float64: splitmix64(fnv(name) + i) >> 11, scaled by 2^-53."""
    with np.errstate(over="ignore"):
        z = (fnv1a64(name) + np.arange(n, dtype=np.uint64)) & M64
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def synthetic(name: str, shape) -> torch.Tensor:
    n = int(np.prod(shape))
    u = uniform(name, n)
    if name.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    if name.endswith("bn.weight") or name.endswith("running_var"):
        v = 0.5 + u
    elif name.endswith("bn.bias") or name.endswith("running_mean") or name == "fc.bias":
        v = 0.2 * (2 * u - 1)
    else:  # conv and fc weights: He-uniform over the fan-in
        fan_in = n // shape[0]
        v = (2 * u - 1) * math.sqrt(6.0 / fan_in)
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def images(name: str, shape) -> torch.Tensor:
    """Images in [-1, 1], sadm's range."""
    return torch.from_numpy((2 * uniform(name, int(np.prod(shape))) - 1).astype(np.float32).reshape(shape))


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    # Build pytorch-fid's network with our weights in place of its download.
    state = {}

    def fake_download(url, progress=True):
        return state

    fid.load_state_dict_from_url = fake_download
    probe = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    probe.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
    probe.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
    probe.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
    probe.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
    probe.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
    probe.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
    probe.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
    probe.Mixed_7b = fid.FIDInceptionE_1(1280)
    probe.Mixed_7c = fid.FIDInceptionE_2(2048)
    for k, v in probe.state_dict().items():
        state[k] = synthetic(k, tuple(v.shape))
    model = fid.InceptionV3([fid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()

    out = {}
    with torch.no_grad():
        for key, shape in [("grey", (2, 1, 28, 28)), ("rgb", (1, 3, 320, 360))]:
            x = images(f"input_{key}", shape)
            # pytorch-fid takes RGB in [0, 1]; sadm takes [-1, 1] and repeats grey channels itself.
            rgb = x.repeat(1, 3, 1, 1) if shape[1] == 1 else x
            feats = model((rgb + 1) / 2)[0].flatten(1)
            out[f"{key}_features"] = feats.contiguous()
            print(key, tuple(feats.shape), "mean", feats.mean().item(), "std", feats.std().item())
    here = os.path.dirname(os.path.abspath(__file__))
    save_file(out, os.path.join(here, "inception_fid_reference.safetensors"))


if __name__ == "__main__":
    main()
