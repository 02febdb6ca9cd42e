"""Reference outputs for sadm's VAE (`model::vae`), computed by diffusers' own `AutoencoderKL`.

The weights are not real ones (Stable Diffusion's are 335 MB and not ours to ship) but a deterministic function of
each tensor's diffusers name and element index that the Rust test (`model::vae::tests`) regenerates bit for bit:
splitmix64 of (FNV-1a-64(name) + index), whose top bits are scaled by powers of two, so every value is exact in f32
and no libm function is involved. Two small architectures are run on fixed inputs:

- "tiny": block_out_channels (32, 64), one resnet per block, 8 groups, mid-block attention, quant convs; encode
  (mean, clamped log-variance) of 2×3×32×48 images and decode of 2×4×16×24 latents, plain and tiled (diffusers'
  `enable_tiling` with 32-pixel tiles, so both inputs span several overlapping tiles).
- "plain": three blocks (16, 32, 32), two resnets per block, one input and two output channels, three latent
  channels, no mid-block attention, no quant convs, a scaling and a shift factor.

The model runs in float64 and its outputs are stored as float32, so the comparison measures sadm's f32 error alone.
Written next to this file: vae_reference.safetensors (inputs and outputs), vae_reference_configs.json (each
architecture's config.json as diffusers' `save_config` writes it), and vae_sd_names.json: every tensor of the
full Stable Diffusion VAE (`AutoencoderKL` with sd-vae-ft-ema's config) with its shape, its name in the older
diffusers attention names (`query`, `key`, `value`, `proj_attn`) and in the original LDM/CompVis checkpoints, each
mapping checked here against diffusers' own conversions (`_fix_state_dict_keys_on_load`, `convert_ldm_vae_checkpoint`).

    ~/.cache/sadm-torch-venv/bin/python crates/sadm-core/testdata/vae_reference.py   # diffusers 0.42.1, torch 2.15
"""
import json
import os

import numpy as np
import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import save_file

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)

TINY = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=32,
)
PLAIN = dict(
    in_channels=1, out_channels=2, down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 32), layers_per_block=2, latent_channels=3, norm_num_groups=4, sample_size=16,
    scaling_factor=0.5, shift_factor=0.25, mid_block_add_attention=False, use_quant_conv=False, use_post_quant_conv=False,
)
# sd-vae-ft-ema / sd-vae-ft-mse (the other arguments are AutoencoderKL's defaults: scaling 0.18215, silu).
SD = dict(
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=256,
)


def fnv1a64(name: str) -> np.uint64:
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return np.uint64(h)


def mix(name: str, n: int) -> np.ndarray:
    """n uint64: splitmix64(fnv(name) + i)."""
    with np.errstate(over="ignore"):
        z = (fnv1a64(name) + np.arange(n, dtype=np.uint64)) & M64
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def signed(name: str, n: int, bits: int) -> np.ndarray:
    """Integers in [-2^(bits-1), 2^(bits-1)) from the top `bits` bits, as float64 (exact)."""
    return (mix(name, n) >> np.uint64(64 - bits)).astype(np.float64) - 2.0 ** (bits - 1)


def synthetic(name: str, shape) -> torch.Tensor:
    n = int(np.prod(shape))
    if len(shape) == 1 and name.endswith(".weight"):  # GroupNorm gains: [7/8, 9/8)
        v = 1.0 + signed(name, n, 21) * 2.0**-23
    elif name.endswith(".bias"):  # [-1/16, 1/16)
        v = signed(name, n, 24) * 2.0**-27
        if name == "quant_conv.bias":
            # Push two log-variance channels past diffusers' clamp to [-30, 20], so the test sees it applied.
            half = shape[0] // 2
            v[half + 1] += 24.0
            v[half + 2] -= 36.0
    else:  # conv and linear weights: [-2^-s, 2^-s) with 2^-s near sqrt(3 / fan_in)
        fan_in = n // shape[0]
        s = 0
        while 3 * 4**s < fan_in:
            s += 1
        v = signed(name, n, 24) * 2.0 ** -(23 + s)
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def inputs(name: str, shape, scale_log2: int) -> torch.Tensor:
    """Values in [-2^scale_log2, 2^scale_log2)."""
    v = signed(name, int(np.prod(shape)), 24) * 2.0 ** (scale_log2 - 23)
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def build(config: dict) -> AutoencoderKL:
    model = AutoencoderKL(**config).eval()
    state = {k: synthetic(k, tuple(v.shape)) for k, v in model.state_dict().items()}
    model.load_state_dict(state, strict=True)
    return model.double()


def run(tag: str, config: dict, image_shape, latent_shape, tiled: bool, out: dict) -> None:
    model = build(config)
    x = inputs(f"{tag}.image", image_shape, 0)
    z = inputs(f"{tag}.latent", latent_shape, 2)
    out[f"{tag}.image"], out[f"{tag}.latent"] = x, z
    with torch.no_grad():
        modes = [False, True] if tiled else [False]
        for tiling in modes:
            if tiling:
                model.enable_tiling()
            post = model.encode(x.double()).latent_dist
            dec = model.decode(z.double()).sample
            prefix = f"{tag}.tiled" if tiling else tag
            out[f"{prefix}.mean"] = post.mean.float().contiguous()
            out[f"{prefix}.logvar"] = post.logvar.float().contiguous()
            out[f"{prefix}.decoded"] = dec.float().contiguous()
            print(prefix, "mean", tuple(post.mean.shape), "decoded", tuple(dec.shape),
                  "logvar range", post.logvar.min().item(), post.logvar.max().item(), "|dec| max", dec.abs().max().item())


def ldm_names(config: dict) -> list:
    """(name, shape) of the original LDM `AutoencoderKL` (ldm/modules/diffusionmodules/model.py), independently
    of diffusers: Encoder/Decoder with `down.{i}.block.{j}`, `nin_shortcut`, `mid.block_1/attn_1/block_2`, 1×1-conv
    attention projections, `norm_out`; the decoder's `up` levels in the encoder's order."""
    ch = list(config["block_out_channels"])
    nrb, zc = config["layers_per_block"], config["latent_channels"]
    out = []

    def conv(p, cout, cin, k):
        out.extend([(f"{p}.weight", (cout, cin, k, k)), (f"{p}.bias", (cout,))])

    def norm(p, c):
        out.extend([(f"{p}.weight", (c,)), (f"{p}.bias", (c,))])

    def resnet(p, cin, cout):
        norm(f"{p}.norm1", cin)
        conv(f"{p}.conv1", cout, cin, 3)
        norm(f"{p}.norm2", cout)
        conv(f"{p}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{p}.nin_shortcut", cout, cin, 1)

    def mid(p, c):
        resnet(f"{p}.mid.block_1", c, c)
        norm(f"{p}.mid.attn_1.norm", c)
        for q in ("q", "k", "v", "proj_out"):
            conv(f"{p}.mid.attn_1.{q}", c, c, 1)
        resnet(f"{p}.mid.block_2", c, c)

    conv("encoder.conv_in", ch[0], config.get("in_channels", 3), 3)
    cin = ch[0]
    for i, c in enumerate(ch):
        for j in range(nrb):
            resnet(f"encoder.down.{i}.block.{j}", cin, c)
            cin = c
        if i != len(ch) - 1:
            conv(f"encoder.down.{i}.downsample.conv", c, c, 3)
    mid("encoder", ch[-1])
    norm("encoder.norm_out", ch[-1])
    conv("encoder.conv_out", 2 * zc, ch[-1], 3)
    conv("quant_conv", 2 * zc, 2 * zc, 1)
    conv("post_quant_conv", zc, zc, 1)
    conv("decoder.conv_in", ch[-1], zc, 3)
    mid("decoder", ch[-1])
    cin = ch[-1]
    for i in reversed(range(len(ch))):
        for j in range(nrb + 1):
            resnet(f"decoder.up.{i}.block.{j}", cin, ch[i])
            cin = ch[i]
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", ch[i], ch[i], 3)
    norm("decoder.norm_out", ch[0])
    conv("decoder.conv_out", config.get("out_channels", 3), ch[0], 3)
    return out


LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def legacy_name(name: str) -> str:
    for new, old in LEGACY.items():
        name = name.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
    return name


def sd_names() -> list:
    model = AutoencoderKL(**SD)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # Older diffusers names, through diffusers' own load-time renaming.
    legacy = {legacy_name(k): k for k in state}
    renamed = model._fix_state_dict_keys_on_load({old: torch.tensor(float(i)) for i, old in enumerate(legacy)})
    back = {int(v.item()): k for k, v in renamed.items()}
    assert [back[i] for i in range(len(legacy))] == list(legacy.values()), "legacy names do not map back"
    # LDM names, through diffusers' single-file conversion: each tensor tagged with its index.
    ldm = ldm_names(SD)
    tagged = {n: torch.full(s, float(i)) for i, (n, s) in enumerate(ldm)}
    converted = convert_ldm_vae_checkpoint(tagged, dict(model.config))
    assert set(converted) == set(state), set(converted) ^ set(state)
    to_ldm = {}
    for k, v in converted.items():
        assert tuple(v.shape) == state[k], (k, v.shape, state[k])
        to_ldm[k] = ldm[int(v.flatten()[0].item())]
    assert len(to_ldm) == len(ldm)
    return [
        {"name": k, "shape": list(s), "legacy": legacy_name(k), "ldm": to_ldm[k][0], "ldmShape": list(to_ldm[k][1])}
        for k, s in state.items()
    ]


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    here = os.path.dirname(os.path.abspath(__file__))
    out = {}
    run("tiny", TINY, (2, 3, 32, 48), (2, 4, 16, 24), True, out)
    run("plain", PLAIN, (1, 1, 16, 20), (1, 3, 4, 5), False, out)
    save_file(out, os.path.join(here, "vae_reference.safetensors"))
    configs = {tag: AutoencoderKL(**c).to_json_string() for tag, c in [("tiny", TINY), ("plain", PLAIN)]}
    with open(os.path.join(here, "vae_reference_configs.json"), "w") as f:
        json.dump(configs, f, indent=1)
        f.write("\n")
    names = sd_names()
    with open(os.path.join(here, "vae_sd_names.json"), "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(r) for r in names) + "\n]\n")
    print(len(names), "SD-VAE tensors,", sum(int(np.prod(r["shape"])) for r in names), "parameters")


if __name__ == "__main__":
    main()
