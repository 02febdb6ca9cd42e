"""The PyTorch peer of `cargo bench --bench vae`: diffusers' own AutoencoderKL with sd-vae-ft-ema's architecture
(random weights), the same inputs, modes and timing (medians of 3 runs after a warm-up), in inference mode.

    python benches/torch_vae.py THREADS [throughput | decode512 | decode512-tiled]

Run by benches/vae.sh, each mode in a process of its own (for its peak RSS). One JSON line. The throughput mode
also counts the FLOPs of one encode and one decode (torch's FlopCounterMode: convolutions and matmuls), which both
sides' GFLOP/s are computed from.
"""
import json
import resource
import statistics
import sys
import time

import torch
from diffusers import AutoencoderKL
from torch.utils.flop_counter import FlopCounterMode

SD = dict(
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=256,
)
RUNS = 3


def rss_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed(f) -> float:
    f()
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def flops(f) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        f()
    return counter.get_total_flops()


def main() -> None:
    threads = int(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "throughput"
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vae = AutoencoderKL(**SD).eval()
    loaded_rss = rss_mib("VmRSS:")
    row = {"side": "torch", "mode": mode, "threads": threads, "torch": torch.__version__}
    with torch.inference_mode():
        if mode == "throughput":
            x = torch.rand(1, 3, 256, 256) * 2 - 1
            z = torch.randn(1, 4, 32, 32)
            enc = timed(lambda: vae.encode(x).latent_dist.mean)
            dec = timed(lambda: vae.decode(z).sample)
            row |= {
                "encode256": {"seconds": enc, "imagesPerSec": 1 / enc, "flops": flops(lambda: vae.encode(x))},
                "decode256": {"seconds": dec, "imagesPerSec": 1 / dec, "flops": flops(lambda: vae.decode(z))},
            }
        elif mode in ("decode512", "decode512-tiled"):
            if mode.endswith("tiled"):
                vae.enable_tiling()
            z = torch.randn(1, 4, 64, 64)
            t0 = time.perf_counter()
            out = vae.decode(z).sample
            row["seconds"] = time.perf_counter() - t0
            assert tuple(out.shape) == (1, 3, 512, 512)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    row |= {"peakRssMiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "loadedRssMiB": loaded_rss}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
