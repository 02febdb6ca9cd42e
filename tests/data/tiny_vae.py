"""Writes tests/data/tiny-vae/: a diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors,
and the same weights as diffusion_pytorch_model.bin in tiny-vae-bin/)
with SD-VAE's layout (4 down/up blocks, so 8× downsampling, 4 latent channels, attention in the mid block) at a
tiny width, seeded random weights. The TypeScript tests encode, train on and decode through it end to end; its
numerics are proved against diffusers in the Rust tests (crates/sadm-core/testdata/vae_reference.py).

    ~/.cache/sadm-torch-venv/bin/python tests/data/tiny_vae.py
"""
import os

import torch
from diffusers import AutoencoderKL

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny-vae")

torch.manual_seed(0)
vae = AutoencoderKL(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=64,
    scaling_factor=0.18215,
)
vae.save_pretrained(OUT, safe_serialization=True)
print(OUT, sum(p.numel() for p in vae.parameters()), "parameters")
# The same VAE as the PyTorch pickle (diffusion_pytorch_model.bin) that older diffusers uploads hold.
vae.save_pretrained(OUT + "-bin", safe_serialization=False)

# A reference through diffusers for the tests: a 64×64 RGB test image (written as PNG into a class folder, so the
# whole sadm encode path reads it), its posterior (mean, log-variance) and its mirror image's, and the decode of the
# scaled mean, as DiT computes them.
import numpy as np
from PIL import Image
from safetensors.torch import save_file

yy, xx = np.mgrid[0:64, 0:64]
rgb = np.stack([(xx * 4) % 256, (yy * 4) % 256, ((xx + yy) * 2) % 256], axis=-1).astype(np.uint8)
img_dir = os.path.join(os.path.dirname(OUT), "tiny-vae-images", "pattern")
os.makedirs(img_dir, exist_ok=True)
Image.fromarray(rgb).save(os.path.join(img_dir, "pattern.png"))
x = torch.from_numpy(rgb).permute(2, 0, 1).float().unsqueeze(0) / 127.5 - 1
with torch.no_grad():
    post = vae.encode(torch.cat([x, x.flip(3)])).latent_dist
    latents = post.mean * vae.config.scaling_factor
    decoded = vae.decode(latents[:1] / vae.config.scaling_factor).sample
save_file(
    {"mean": post.mean[:1].contiguous(), "logvar": post.logvar[:1].contiguous(), "mean_flip": post.mean[1:].contiguous(),
     "logvar_flip": post.logvar[1:].contiguous(), "latents": latents[:1].contiguous(), "decoded": decoded.contiguous()},
    os.path.join(os.path.dirname(OUT), "tiny-vae-reference.safetensors"),
)
