#!/usr/bin/env bash
# The data-pipeline benchmark (benches/data.js): sadm's image-folder path against DiT's PyTorch pipeline
# (torchvision ImageFolder + ADM center_crop_arr + flip + ToTensor + Normalize through a DataLoader) on the same
# folders and cores: cold decode + preprocess images/s (emoji PNGs to 32², photo-sized JPEGs to 64²), sadm's warm
# start from its cache, a concurrency sweep, and the step stall of training on a folder. About 10 min on 2 cores.
# Compiles dist/ first (the native addon must be built: npm run build:native). Installs PyTorch, torchvision and
# Pillow (from PyPI only, about 5 GB; run on the CPU) into the private venv benches/peer.sh uses, on first use. Prints
# Markdown tables and writes benches/results/data.json.
#   npm run bench:data
#   REPEAT=3 npm run bench:data            # medians of 3 (default 2; this machine is shared)
#   SWEEP=0 PRESET_STEPS=8 npm run bench:data
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SADM_TORCH_VENV:-$HOME/.cache/sadm-torch-venv}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, torchvision, PIL" 2>/dev/null; then
  echo "installing PyTorch + torchvision into $VENV (first run only)" >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet torch torchvision pillow numpy
fi
npx tsc -p tsconfig.json
uptime >&2
SADM_BENCH_PYTHON="$VENV/bin/python" node benches/data.js
