#!/usr/bin/env bash
# Reading a published DiT checkpoint without Python: a synthetic DiT-XL/2 256×256 state dict (the release's 675M
# parameters in its shapes and names, fp32, the fixed sin-cos pos_embed; 2.7 GB) written once by torch.save, then
# loaded by sadm (NativeModel.fromWeights: the zip archive, the pickle as data, every tensor checked against the
# architecture it infers) and by torch.load, each in a process of its own, REPEAT times, warm page cache (the file
# is read once before). Prints seconds and peak RSS, median per side, and writes benches/results/pth.json.
#   bash benches/pth.sh                 # the file goes to $TMPDIR (default /tmp) and is kept for the next run
#   REPEAT=5 bash benches/pth.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT="${REPEAT:-3}"
VENV="${SADM_TORCH_VENV:-$HOME/.cache/sadm-torch-venv}"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "benches/pth.sh needs PyTorch in $VENV (bash benches/peer.sh installs it)" >&2
  exit 1
fi
FILE="${TMPDIR:-/tmp}/sadm-bench-DiT-XL-2-256x256.pt"
if [ ! -f "$FILE" ]; then
  echo "writing $FILE (first run only)" >&2
  "$VENV/bin/python" - "$FILE" <<'PY'
import json, sys
import numpy as np
import torch

def sincos_1d(dim, pos):
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

def sincos_2d(dim, grid):
    g = np.stack(np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)), axis=0).reshape(2, 1, grid, grid)
    return np.concatenate([sincos_1d(dim // 2, g[0]), sincos_1d(dim // 2, g[1])], axis=1)

shapes = json.load(open("crates/sadm-core/testdata/dit_xl2_state_dict_shapes.json"))["DiT-XL-2-256x256"]
g = torch.Generator().manual_seed(0)
sd = {}
for name, shape in shapes:
    sd[name] = torch.from_numpy(sincos_2d(1152, 16)).float().unsqueeze(0) if name == "pos_embed" else torch.randn(shape, generator=g) * 0.02
torch.save(sd, sys.argv[1])
PY
fi
cat "$FILE" > /dev/null
mkdir -p benches/results
OUT=benches/results/pth.jsonl
: > "$OUT"
for r in $(seq "$REPEAT"); do
  node -e '
    const t0 = process.hrtime.bigint();
    const m = require("./dist/native.js").loadNative("cpu").NativeModel.fromWeights(process.argv[1], "cpu");
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    const rss = Number(require("fs").readFileSync("/proc/self/status", "utf8").match(/VmHWM:\s+(\d+)/)[1]) / 1024;
    console.log(JSON.stringify({ side: "sadm", seconds: s, peakRssMiB: rss, depth: JSON.parse(m.configJson()).model.depth }));
  ' "$FILE" >> "$OUT"
  "$VENV/bin/python" -c '
import json, resource, sys, time, torch
t0 = time.perf_counter(); sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True); s = time.perf_counter() - t0
print(json.dumps({"side": "torch", "seconds": s, "peakRssMiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "tensors": len(sd)}))
' "$FILE" >> "$OUT"
done
node - "$OUT" "$(stat -c %s "$FILE")" <<'JS'
const fs = require("fs");
const rows = fs.readFileSync(process.argv[2], "utf8").trim().split("\n").map((l) => JSON.parse(l));
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };
const side = (n) => ({ seconds: median(rows.filter((r) => r.side === n).map((r) => r.seconds)), peakRssMiB: median(rows.filter((r) => r.side === n).map((r) => r.peakRssMiB)) });
const [s, t] = [side("sadm"), side("torch")];
const gb = Number(process.argv[3]) / 1e9;
console.log(`\nDiT-XL/2 .pt (${gb.toFixed(2)} GB), medians of ${rows.length / 2}:\n`);
console.log("| | load | peak RSS |\n|---|---|---|");
console.log(`| sadm (NativeModel.fromWeights, checked) | ${s.seconds.toFixed(2)} s | ${(s.peakRssMiB / 1024).toFixed(2)} GiB |`);
console.log(`| torch.load(weights_only=True) | ${t.seconds.toFixed(2)} s | ${(t.peakRssMiB / 1024).toFixed(2)} GiB |`);
console.log(`| sadm / torch.load | ${(s.seconds / t.seconds).toFixed(2)}× the time | ${(s.peakRssMiB / t.peakRssMiB).toFixed(2)}× the memory |`);
fs.writeFileSync("benches/results/pth.json", JSON.stringify({ date: new Date().toISOString(), bytes: Number(process.argv[3]), sadm: s, torch: t, runs: rows }, null, 2) + "\n");
JS
