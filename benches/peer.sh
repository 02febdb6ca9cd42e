#!/usr/bin/env bash
# sadm against the PyTorch peer on this machine, same thread count: training step of the MNIST presets.
# Installs PyTorch from PyPI into a private virtual environment on first use (about 5 GB, a few minutes), runs
# `cargo bench --bench step_time` and benches/torch_peer.py, prints the ratios and writes benches/results/peer.json.
#   bash benches/peer.sh            # threads = all cores
#   THREADS=1 bash benches/peer.sh
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-$(nproc)}"
VENV="${SADM_TORCH_VENV:-$HOME/.cache/sadm-torch-venv}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "installing PyTorch into $VENV (first run only)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet torch numpy
fi
export RAYON_NUM_THREADS="$THREADS"
cargo bench -p sadm-core --bench step_time >&2
"$VENV/bin/python" benches/torch_peer.py "$THREADS" 2>/dev/null > benches/results/torch_peer.jsonl
node - "$THREADS" <<'JS'
const fs = require("fs");
const ours = JSON.parse(fs.readFileSync("benches/results/step_time.json", "utf8"));
const peer = fs.readFileSync("benches/results/torch_peer.jsonl", "utf8").trim().split("\n").map((l) => JSON.parse(l));
const rows = ours.rows.map((r) => {
  const p = peer.find((x) => x.preset === r.preset);
  return { preset: r.preset, sadmMs: r.plain.msPerStep, torchMs: p.msPerStep, speedup: p.msPerStep / r.plain.msPerStep };
});
console.log(`\n| preset (λ = 0, batch 64, ${process.argv[2]} threads) | sadm ms/step | PyTorch ${peer[0].torch} ms/step | sadm/PyTorch throughput |`);
console.log("|---|---|---|---|");
for (const r of rows) console.log(`| ${r.preset} | ${r.sadmMs.toFixed(0)} | ${r.torchMs.toFixed(0)} | ${r.speedup.toFixed(2)}× |`);
fs.writeFileSync("benches/results/peer.json", JSON.stringify({ threads: Number(process.argv[2]), rows }, null, 2) + "\n");
JS
