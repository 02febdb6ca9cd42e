"""Reference decodes for sadm's image decoders (`data::decode`, `data::composite`), computed by Pillow itself.

- alpha: `Image.alpha_composite(Image.new("RGBA", size, ALPHA_BACKGROUND), src).convert("RGB")` of a 256×256 RGBA
  table whose pixel (x, y) is (x, 255 - x, (37x + 11y) mod 256, alpha y): every colour with every alpha over 255
  (red) and over 0 (green), all alphas over 100 (blue). The Rust test rebuilds the table from this formula.
- file.NAME: small PNG and JPEG files written here by Pillow (PNG: every mode Pillow writes, palettes with and
  without tRNS, transparency keys, 1-bit, 4-bit palette, 16-bit grey, gAMA/cHRM/sRGB chunks, EXIF, ICC; JPEG:
  4:4:4, 4:2:2, 4:2:0, baseline, progressive, optimised tables, restart markers, grey, odd sizes, EXIF, ICC, CMYK),
  and rgb.NAME: what `Image.open` + `convert("RGBA")` + the composite above + `convert("RGB")` gives, HWC, for
  opaque files; rgb.white.NAME and rgb.mixed.NAME for files with transparency, on the two BACKGROUNDS. Files
  sadm must leave to the general decoder (sharp) have no rgb.* and are listed in the metadata's `unhandled`.

16-bit grey is the exception: Pillow opens it as I;16 and `convert("RGB")` clips it at 255, where libvips (sadm's
general decoder) keeps the high byte of each sample; the reference is that high byte.

    ~/.cache/sadm-pillow-venv/bin/python crates/sadm-core/testdata/pillow_decode_reference.py
    (the venv: see pillow_preprocess_reference.py)
"""
import io
import os

import numpy as np
import PIL
from PIL import Image, ImageCms, PngImagePlugin, features
from safetensors.numpy import save_file

BACKGROUNDS = {"white": (255, 255, 255), "mixed": (0, 100, 201)}
ALPHA_BACKGROUND = (255, 0, 100)


def composite(im, bg):
    return Image.alpha_composite(Image.new("RGBA", im.size, bg + (255,)), im.convert("RGBA")).convert("RGB")


def alpha_table():
    y, x = np.mgrid[0:256, 0:256]
    return np.stack([x, 255 - x, (37 * x + 11 * y) % 256, y], -1).astype(np.uint8)


def photo(w, h, seed, noise=12):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), 128 + 90 * np.sin((x + 2 * y) / 5)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, noise, (h, w, 3)), 0, 255).astype(np.uint8), "RGB")


def saved(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def srgb_profile():
    """lcms's sRGB profile, its creation time and MD5 id zeroed so that the files do not change from run to run."""
    p = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    p[24:36] = bytes(12)
    p[84:100] = bytes(16)
    return bytes(p)


def exif(orientation):
    e = Image.Exif()
    e[0x0112] = orientation
    return e


def png_files():
    rgb = photo(37, 23, 1, noise=40)
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 37).round().astype(np.uint8), (23, 1)), "L")
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    la = rgb.convert("L")
    la.putalpha(alpha)
    pal = rgb.quantize(64)
    pal16 = rgb.quantize(16)
    grey16 = Image.fromarray((np.arange(37 * 23, dtype=np.uint16).reshape(23, 37) * 71).astype(np.uint16))
    chunks = PngImagePlugin.PngInfo()
    chunks.add(b"gAMA", (45455).to_bytes(4, "big"))
    white_red_green_blue = (0.3127, 0.329, 0.64, 0.33, 0.3, 0.6, 0.15, 0.06)
    chunks.add(b"cHRM", b"".join(round(v * 100000).to_bytes(4, "big") for v in white_red_green_blue))
    chunks.add(b"sRGB", b"\x00")
    srgb = srgb_profile()
    return {
        "rgb.png": saved(rgb, "PNG"),
        "rgba.png": saved(rgba, "PNG"),
        "l.png": saved(rgb.convert("L"), "PNG"),
        "la.png": saved(la, "PNG"),
        "p.png": saved(pal, "PNG"),
        "p-trns.png": saved(pal, "PNG", transparency=bytes((i * 4) % 256 for i in range(64))),
        "p4.png": saved(pal16, "PNG", bits=4),
        "1bit.png": saved(rgb.convert("1"), "PNG"),
        "l-trns.png": saved(rgb.convert("L"), "PNG", transparency=int(np.asarray(rgb.convert("L"))[5, 5])),
        "rgb-trns.png": saved(rgb, "PNG", transparency=tuple(int(v) for v in np.asarray(rgb)[3, 7])),
        "grey16.png": saved(grey16, "PNG"),
        "chunks.png": saved(rgb, "PNG", pnginfo=chunks),
        "exif1.png": saved(rgb, "PNG", exif=exif(1)),
        "exif6.png": saved(rgb, "PNG", exif=exif(6)),
        "icc.png": saved(rgb, "PNG", icc_profile=srgb),
    }, {"grey16.png": np.repeat((np.asarray(grey16) >> 8).astype(np.uint8)[..., None], 3, -1)}


def jpeg_files():
    small, large = photo(61, 47, 2), photo(96, 72, 3)
    srgb = srgb_profile()
    return {
        "444.jpg": saved(small, "JPEG", quality=90, subsampling=0),
        "422.jpg": saved(small, "JPEG", quality=90, subsampling=1),
        "420.jpg": saved(large, "JPEG", quality=90, subsampling=2),
        "420-progressive.jpg": saved(large, "JPEG", quality=75, subsampling=2, progressive=True),
        "444-progressive.jpg": saved(small, "JPEG", quality=95, subsampling=0, progressive=True),
        "422-optimised.jpg": saved(small, "JPEG", quality=80, subsampling=1, optimize=True),
        "420-restarts.jpg": saved(large, "JPEG", quality=85, subsampling=2, restart_marker_blocks=3),
        "grey.jpg": saved(large.convert("L"), "JPEG", quality=90),
        "grey-progressive.jpg": saved(small.convert("L"), "JPEG", quality=90, progressive=True),
        "17x9.jpg": saved(photo(17, 9, 4), "JPEG", quality=90, subsampling=2),
        "1x1.jpg": saved(photo(1, 1, 5), "JPEG", quality=90),
        "exif1.jpg": saved(small, "JPEG", quality=90, exif=exif(1)),
        "exif6.jpg": saved(small, "JPEG", quality=90, exif=exif(6)),
        "icc.jpg": saved(small, "JPEG", quality=90, icc_profile=srgb),
        "cmyk.jpg": saved(small.convert("CMYK"), "JPEG", quality=90),
    }


UNHANDLED = ["exif6.png", "icc.png", "exif6.jpg", "icc.jpg", "cmyk.jpg"]


def main():
    tensors = {}
    table = Image.fromarray(alpha_table(), "RGBA")
    tensors["alpha"] = np.asarray(composite(table, ALPHA_BACKGROUND))
    pngs, overrides = png_files()
    for name, data in {**pngs, **jpeg_files()}.items():
        tensors[f"file.{name}"] = np.frombuffer(data, np.uint8).copy()
        if name in UNHANDLED:
            continue
        if name in overrides:
            tensors[f"rgb.{name}"] = overrides[name]
            continue
        im = Image.open(io.BytesIO(data))
        if im.convert("RGBA").getextrema()[3] == (255, 255):
            tensors[f"rgb.{name}"] = np.asarray(im.convert("RGB"))
            continue
        for bg_name, bg in BACKGROUNDS.items():
            tensors[f"rgb.{bg_name}.{name}"] = np.asarray(composite(im, bg))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pillow_decode_reference.safetensors")
    metadata = {
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo") or "",
        "unhandled": ",".join(UNHANDLED),
        "backgrounds": ";".join(f"{k}={','.join(map(str, v))}" for k, v in BACKGROUNDS.items()),
        "alpha_background": ",".join(map(str, ALPHA_BACKGROUND)),
    }
    save_file(tensors, path, metadata=metadata)
    size = os.path.getsize(path)
    print(f"{len(tensors)} tensors, {size} bytes, Pillow {PIL.__version__} -> {path}")


if __name__ == "__main__":
    main()
