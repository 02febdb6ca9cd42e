"""The PyTorch peer of benches/data.js: DiT's data pipeline (train.py) over an image folder, one process per figure.

    python benches/torch_data.py epoch  '{"folder": DIR, "resolution": 32, "workers": 2, "threads": 2}'
    python benches/torch_data.py stages '{"folder": DIR, "resolution": 64, "limit": 300}'

`epoch`: `torchvision.datasets.ImageFolder` with a transform doing ADM's `center_crop_arr` (imported from
crates/sadm-core/testdata/adm.py), `RandomHorizontalFlip`, `ToTensor` and
`Normalize([0.5] * 3, [0.5] * 3)`, through `DataLoader(batch_size=64, shuffle=True, num_workers=N, drop_last=True)`
for one epoch. Timed from building the ImageFolder (its scan of the folder) to the last batch, so worker start-up
counts, as it does for every epoch of a run. The loader composites transparent images onto white before
`convert("RGB")` (what sadm's default background does, so both sides compute the same pixels); `"loader": "dit"`
is DiT's own `convert("RGB")`, which drops alpha.

`stages`: the cost of each stage on one thread, image by image: open + decode + composite + convert, then
`center_crop_arr`, and DiT's bare open + convert.

Prints one JSON line.
"""
import json
import os
import resource
import sys
import time

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

# ADM's center_crop_arr, kept once next to the core's Pillow references.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "sadm-core", "testdata"))
from adm import center_crop_arr  # noqa: E402


def white_loader(path):
    """Transparent pixels onto white, then RGB: the pixels sadm's decoder makes with its default background."""
    with open(path, "rb") as f:
        im = Image.open(f)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
        return im.convert("RGB")


def dit_loader(path):
    """torchvision's pil_loader, what DiT's ImageFolder uses."""
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


def cpu_seconds():
    """CPU time of this process and of its finished children (the DataLoader's workers, joined at the epoch's end)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def epoch(o):
    torch.set_num_threads(o["threads"])
    size = o["resolution"]
    transform = transforms.Compose(
        [
            transforms.Lambda(lambda im: center_crop_arr(im, size)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], inplace=True),
        ]
    )
    loader = dit_loader if o.get("loader") == "dit" else white_loader
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    ds = datasets.ImageFolder(o["folder"], transform=transform, loader=loader)
    dl = DataLoader(ds, batch_size=64, shuffle=True, num_workers=o["workers"], drop_last=True)
    images = 0
    first = None
    for x, y in dl:
        if first is None:
            first = time.perf_counter() - t0
            assert x.shape[1:] == (3, size, size), x.shape
        images += x.shape[0]
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    return {
        "images": images,
        "files": len(ds),
        "seconds": seconds,
        "firstBatchSeconds": first,
        "imagesPerSec": images / seconds,
        "cpuSeconds": cpu,
        "imagesPerCpuSec": images / cpu,
    }


def stages(o):
    torch.set_num_threads(1)
    files = sorted(datasets.ImageFolder(o["folder"]).samples)[: o["limit"]]
    n = len(files)

    def timed(fn):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        return {"cpuMs": 1000 * (time.process_time() - c0) / n, "wallMs": 1000 * (time.perf_counter() - t0) / n}

    decoded = []
    decode = timed(lambda: decoded.extend(white_loader(path) for path, _ in files))
    preprocess = timed(lambda: [center_crop_arr(im, o["resolution"]) for im in decoded])
    bare = timed(lambda: [dit_loader(path) for path, _ in files])
    return {"images": n, "decode": decode, "preprocess": preprocess, "bareDecode": bare}


def main():
    mode, arg = sys.argv[1], json.loads(sys.argv[2])
    out = epoch(arg) if mode == "epoch" else stages(arg)
    out.update(torch=torch.__version__, torchvision=torchvision.__version__, pillow=PIL.__version__)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
