#!/usr/bin/env bash
# sadm's Stable Diffusion VAE against diffusers' AutoencoderKL on PyTorch, on this machine's CPU, same thread
# count: encode and decode images/s at 256×256, GFLOP/s, and the time and peak RSS of one 512×512 decode, whole
# and in diffusers' 256-pixel tiles. Each mode runs in a process of its own on each side, sadm and PyTorch back to
# back; REPEAT pairs per mode, medians per figure. Needs the venv of benches/peer.sh with diffusers in it
# (`$VENV/bin/pip install diffusers`). Prints a Markdown table and writes benches/results/vae.json.
#   bash benches/vae.sh
#   THREADS=1 REPEAT=3 bash benches/vae.sh
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-$(nproc)}"
REPEAT="${REPEAT:-2}"
VENV="${SADM_TORCH_VENV:-$HOME/.cache/sadm-torch-venv}"
if ! "$VENV/bin/python" -c "import torch, diffusers" 2>/dev/null; then
  echo "benches/vae.sh needs PyTorch and diffusers in $VENV: $VENV/bin/pip install torch diffusers" >&2
  exit 1
fi
export RAYON_NUM_THREADS="$THREADS"
mkdir -p benches/results
cargo bench -p sadm-core --bench vae --no-run >&2
OUT=benches/results/vae.jsonl
: > "$OUT"
for r in $(seq "$REPEAT"); do
  for mode in throughput decode512 decode512-tiled; do
    echo "== $mode ($r/$REPEAT)" >&2
    cargo bench -q -p sadm-core --bench vae -- "$mode" >> "$OUT"
    "$VENV/bin/python" benches/torch_vae.py "$THREADS" "$mode" 2>/dev/null >> "$OUT"
  done
done
"$VENV/bin/python" - "$OUT" "$THREADS" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" "$REPEAT" <<'PY'
import json, statistics, sys, datetime
path, threads, cores, cpu, repeat = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()]
def med(side, mode, *keys):
    vals = []
    for r in rows:
        if r["side"] == side and r["mode"] == mode:
            v = r
            for k in keys:
                v = v[k]
            vals.append(v)
    return statistics.median(vals)
flops = {k: med("torch", "throughput", k, "flops") for k in ("encode256", "decode256")}
out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "cpu": cpu, "cores": int(cores), "threads": int(threads),
       "repeat": int(repeat), "torch": next(r["torch"] for r in rows if r["side"] == "torch"), "throughput": {}, "decode512": {}}
print(f"\n{cpu}, {threads} threads (of {cores} cores), PyTorch {out['torch']}, medians of {repeat} process(es) per mode, "
      "each timing the median of 3 runs. Ratios are sadm / PyTorch (images/s: higher is better; seconds, RSS: lower is better).\n")
print("| 256×256, batch 1 | sadm images/s | PyTorch images/s | ratio | GFLOP/s sadm / PyTorch | GFLOP per image |")
print("|---|---|---|---|---|---|")
for k, label in (("encode256", "encode"), ("decode256", "decode")):
    s, p = med("sadm", "throughput", k, "imagesPerSec"), med("torch", "throughput", k, "imagesPerSec")
    out["throughput"][k] = {"sadmImagesPerSec": s, "torchImagesPerSec": p, "ratio": s / p, "gflopPerImage": flops[k] / 1e9,
                            "sadmGflops": s * flops[k] / 1e9, "torchGflops": p * flops[k] / 1e9}
    print(f"| {label} | {s:.3f} | {p:.3f} | {s / p:.2f}× | {s * flops[k] / 1e9:.0f} / {p * flops[k] / 1e9:.0f} | {flops[k] / 1e9:.0f} |")
print("\n| one 512×512 decode | sadm s | PyTorch s | ratio | peak RSS MiB sadm / PyTorch | ratio | above the loaded model, sadm / PyTorch |")
print("|---|---|---|---|---|---|---|")
for mode in ("decode512", "decode512-tiled"):
    s, p = med("sadm", mode, "seconds"), med("torch", mode, "seconds")
    rs, rp = med("sadm", mode, "peakRssMiB"), med("torch", mode, "peakRssMiB")
    # What the decode adds to the process once the model is loaded (PyTorch's own libraries take ~600 MiB).
    ws, wp = med("sadm", mode, "loadedRssMiB"), med("torch", mode, "loadedRssMiB")
    out["decode512"][mode] = {"sadmSeconds": s, "torchSeconds": p, "sadmPeakRssMiB": rs, "torchPeakRssMiB": rp,
                              "sadmLoadedRssMiB": ws, "torchLoadedRssMiB": wp}
    print(f"| {'tiled (256-pixel tiles)' if mode.endswith('tiled') else 'whole'} | {s:.2f} | {p:.2f} | {s / p:.2f}× | {rs:.0f} / {rp:.0f} | {rs / rp:.2f}× | {rs - ws:.0f} / {rp - wp:.0f} |")
with open("benches/results/vae.json", "w") as f:
    json.dump(out, f, indent=2)
    f.write("\n")
PY
