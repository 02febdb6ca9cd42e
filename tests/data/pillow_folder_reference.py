"""Reference outputs for sadm's whole image-folder path (file → decode → ADM centre crop), computed by Pillow as
DiT's data pipeline does: `Image.open(f).convert("RGB")` (or `"L"`) then `center_crop_arr`. Transparent emoji
are composited onto white first (`Image.alpha_composite`), as sadm's default background does.

Inputs: lossless PNGs written here (seeded noise over smooth gradients, awkward sizes: downscaled with box steps,
downscaled once, upscaled), JPEGs written here by Pillow (4:2:0 baseline, 4:4:4 progressive, grey), and real RGBA
emoji from the emoji-datasource-google npm package (read from node_modules, not copied). Outputs: raw CHW bytes per
case, listed in reference.json; tests/folder.test.ts requires sadm's bytes to equal them.

    ~/.cache/sadm-pillow-venv/bin/python tests/data/pillow_folder_reference.py   (venv: see crates/sadm-core/testdata/pillow_preprocess_reference.py)
"""
import json
import os
import sys

import numpy as np
import PIL
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "pillow-folder")
ROOT = os.path.dirname(os.path.dirname(HERE))
# ADM's center_crop_arr, kept once, next to the core's reference.
sys.path.insert(0, os.path.join(ROOT, "crates", "sadm-core", "testdata"))
from adm import center_crop_arr  # noqa: E402
EMOJI = os.path.join(ROOT, "node_modules", "emoji-datasource-google", "img", "google", "64")


def synthetic(w, h, seed, noise=40):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(w + h - 2, 1)], -1)
    noisy = base + rng.normal(0, noise, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def on_white(im):
    im = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)


def main():
    os.makedirs(OUT, exist_ok=True)
    cases = []
    inputs = {}
    for name, (w, h, seed) in {"noise-300x200": (300, 200, 1), "noise-97x131": (97, 131, 2), "noise-45x45": (45, 45, 3)}.items():
        path = os.path.join(OUT, name + ".png")
        synthetic(w, h, seed).save(path)
        inputs[name] = (path, "png")
    jpegs = {
        "photo-300x200.jpg": ((300, 200, 4, 10), {"quality": 90, "subsampling": 2}),
        "photo-97x131-progressive.jpg": ((97, 131, 5, 10), {"quality": 95, "subsampling": 0, "progressive": True}),
        "grey-45x45.jpg": ((45, 45, 6, 10), {"quality": 90}),
    }
    for name, ((w, h, seed, noise), options) in jpegs.items():
        path = os.path.join(OUT, name)
        im = synthetic(w, h, seed, noise)
        (im.convert("L") if name.startswith("grey") else im).save(path, **options)
        inputs[name[:-4]] = (path, "jpeg")
    for image in ["1f600.png", "1f408.png", "1f355.png", "1f1ef-1f1f5.png"]:
        inputs["emoji-" + image[:-4]] = (os.path.join(EMOJI, image), "emoji")
    for name, (path, kind) in inputs.items():
        for size in (16, 32, 64):
            for channels in (3, 1):
                im = Image.open(path)
                im = on_white(im) if kind == "emoji" else im
                im = im.convert("RGB" if channels == 3 else "L")
                arr = np.array(center_crop_arr(im, size))
                chw = arr.reshape(size, size, channels).transpose(2, 0, 1)
                out = f"{name}-{size}-{channels}.u8"
                chw.astype(np.uint8).tofile(os.path.join(OUT, out))
                rel = os.path.relpath(path, ROOT)
                cases.append({"input": rel, "resolution": size, "channels": channels, "output": out})
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"pillow": PIL.__version__, "cases": cases}, f, indent=1)
    print(f"{len(cases)} cases, Pillow {PIL.__version__} -> {OUT}")


if __name__ == "__main__":
    main()
