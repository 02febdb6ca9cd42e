"""Reference outputs for sadm's image preprocessing (`data::preprocess`), computed by Pillow itself.

Deterministic synthetic images (seeded noise, smooth gradients, hard edges; grey and RGB; odd, prime, very wide
and tall, 1×N, exactly and just under twice a target, smaller than a target) go through ADM's `center_crop_arr`
(what DiT trains on), the `pad` and `stretch` alternatives and `convert("L")`, at several resolutions. The inputs
(HWC) and outputs (CHW) are written to pillow_preprocess_reference.safetensors next to this file, with the Pillow
version in its metadata; the Rust test requires sadm's bytes to equal these.

    python3 -m venv ~/.cache/sadm-pillow-venv
    ~/.cache/sadm-pillow-venv/bin/pip install pillow numpy safetensors
    ~/.cache/sadm-pillow-venv/bin/python crates/sadm-core/testdata/pillow_preprocess_reference.py
"""
import os

import numpy as np
import PIL
from PIL import Image
from safetensors.numpy import save_file

from adm import center_crop_arr

PAD_BACKGROUND = (12, 200, 77)


def pad_arr(pil_image, image_size, background):
    """The long side to image_size by the same steps (no side below 1 pixel), centred on a square of background."""
    while max(*pil_image.size) >= 2 * image_size and min(*pil_image.size) >= 2:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / max(*pil_image.size)
    pil_image = pil_image.resize(tuple(max(1, round(x * scale)) for x in pil_image.size), resample=Image.BICUBIC)
    if pil_image.mode == "L":
        background = Image.new("RGB", (1, 1), background).convert("L").getpixel((0, 0))
    canvas = Image.new(pil_image.mode, (image_size, image_size), background)
    w, h = pil_image.size
    canvas.paste(pil_image, ((image_size - w) // 2, (image_size - h) // 2))
    return canvas


def stretch_arr(pil_image, image_size):
    return pil_image.resize((image_size, image_size), resample=Image.BICUBIC)


def synthetic(kind, w, h, c, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = (x + 0.5) / w, (y + 0.5) / h
    if kind == "noise":
        return rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    if kind == "gradient":
        planes = [255 * u, 255 * (1 - v), 127.5 + 127.5 * np.sin(6.0 * u + 4.0 * v)]
    elif kind == "edges":
        # Blocks, a diagonal and a thin line: full-range steps where bicubic overshoots and has to clip.
        blocks = ((x // 5 + y // 3) % 2) * 255
        diag = np.where(x * h > y * w, 230.0, 20.0)
        line = np.where((x.astype(int) % 7 == 3) | (y.astype(int) % 9 == 4), 255.0, 0.0)
        planes = [blocks, diag, line]
    else:  # photo: smooth shading with grain, like a camera image
        base = 128 + 90 * np.sin(3.0 * u) * np.cos(2.0 * v) + 30 * np.cos(11.0 * u * v)
        planes = [base + rng.normal(0, 6, (h, w)) + d for d in (0.0, -25.0, 25.0)]
    arr = np.stack(planes[:c] if c == 3 else [0.299 * planes[0] + 0.587 * planes[1] + 0.114 * planes[2]], -1)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


# name: (kind, width, height, channels, resolutions)
INPUTS = {
    "noise_rgb_37x29": ("noise", 37, 29, 3, [8, 28, 32]),
    "noise_rgb_64x64": ("noise", 64, 64, 3, [8, 28, 32, 64]),  # exactly 2× 32, 8× 8
    "noise_rgb_80x63": ("noise", 80, 63, 3, [8, 28, 32]),  # just under 2× 32
    "noise_rgb_40x200": ("noise", 40, 200, 3, [8, 28, 32]),  # vertical pass first
    "noise_l_31x23": ("noise", 31, 23, 1, [8, 28, 32]),
    "grad_rgb_97x61": ("gradient", 97, 61, 3, [8, 28, 32, 64]),
    "grad_rgb_128x56": ("gradient", 128, 56, 3, [8, 28, 32]),  # exactly 2× 28
    "grad_l_53x89": ("gradient", 53, 89, 1, [8, 28, 32, 64]),
    "edges_rgb_45x45": ("edges", 45, 45, 3, [8, 28, 32]),
    "edges_l_17x101": ("edges", 17, 101, 1, [8, 28, 32]),
    "photo_rgb_250x187": ("photo", 250, 187, 3, [8, 28, 32, 64]),
    "photo_l_150x211": ("photo", 150, 211, 1, [8, 28, 32, 64]),
    "wide_rgb_211x7": ("gradient", 211, 7, 3, [8, 28, 32]),
    "tall_l_5x173": ("edges", 5, 173, 1, [8, 28, 32]),
    "tall_l_10x1100": ("photo", 10, 1100, 1, [8]),  # crop 8×880: vertical first; pad halves to 1×137
    "line_rgb_1x40": ("gradient", 1, 40, 3, [8, 28, 32]),
    "line_l_50x1": ("noise", 50, 1, 1, [8, 28, 32]),
    "tiny_rgb_5x7": ("noise", 5, 7, 3, [8, 28, 32]),  # upscaling
    "tiny_l_3x3": ("edges", 3, 3, 1, [8, 28, 32]),
    "pixel_l_1x1": ("noise", 1, 1, 1, [8, 28]),
    "half_rgb_38x32": ("photo", 38, 32, 3, [8, 24, 28]),  # 24: 38 · 0.75 = 28.5 → 28 (halves to even)
    "half_l_11x8": ("gradient", 11, 8, 1, [8, 12]),  # 12: 11 · 1.5 = 16.5 → 16
}


def main():
    tensors = {}
    for seed, (name, (kind, w, h, c, sizes)) in enumerate(INPUTS.items()):
        arr = synthetic(kind, w, h, c, seed)
        tensors[f"in.{name}"] = arr
        image = Image.fromarray(arr[:, :, 0] if c == 1 else arr)
        assert image.mode == ("L" if c == 1 else "RGB") and image.size == (w, h)
        if c == 3:
            tensors[f"luma.{name}"] = np.array(image.convert("L"))
        other = image.convert("RGB" if c == 1 else "L")
        for t in sizes:
            runs = [
                ("crop", image, center_crop_arr(image, t)),
                ("pad", image, pad_arr(image, t, PAD_BACKGROUND)),
                ("stretch", image, stretch_arr(image, t)),
                ("crop", other, center_crop_arr(other, t)),
                ("pad", other, pad_arr(other, t, PAD_BACKGROUND)),
            ]
            for mode, src, out in runs:
                out = np.array(out)
                out = out[None] if out.ndim == 2 else out.transpose(2, 0, 1)
                assert out.shape == (len(src.getbands()), t, t), (name, mode, t, out.shape)
                tensors[f"out.{name}.{mode}.{t}.{out.shape[0]}"] = np.ascontiguousarray(out)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pillow_preprocess_reference.safetensors")
    metadata = {
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "pad_background": ",".join(map(str, PAD_BACKGROUND)),
        "generator": "crates/sadm-core/testdata/pillow_preprocess_reference.py",
    }
    save_file(tensors, path, metadata=metadata)
    outputs = sum(k.startswith("out.") for k in tensors)
    print(f"Pillow {PIL.__version__}: {len(INPUTS)} inputs, {outputs} outputs, {os.path.getsize(path)} bytes -> {path}")


if __name__ == "__main__":
    main()
