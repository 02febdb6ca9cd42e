#!/usr/bin/env bash
# sadm against the PyTorch peer on this machine, same thread count, every config of benches/step_time.rs: training
# step (λ = 0 and SADM), guided sampling (DDPM 250, DDIM 50, DPM-Solver++ 2M 25 against diffusers' scheduler), achieved GFLOP/s against the measured GEMM peak, and
# peak RSS. Each config runs in a process of its own on each side, sadm and PyTorch back to back, so the ratios
# compare runs minutes apart, not hours. Installs PyTorch (CPU) from PyPI into a private virtual environment on
# first use (from PyPI only: about 5 GB, a few minutes). Prints a Markdown table and writes benches/results/peer.json.
#   bash benches/peer.sh                      # all configs (about 15 min on 2 cores)
#   bash benches/peer.sh mnist-tiny DiT-S/2   # some
#   THREADS=1 bash benches/peer.sh
#   REPEAT=3 bash benches/peer.sh             # each pair 3 times, medians per figure (this machine is shared)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-$(nproc)}"
REPEAT="${REPEAT:-1}"
# The network evaluations at which sadm's default sampler (UniPC) reached DDPM 250's FD in the README's sampler
# tables: the time-to-quality column costs that many multistep-solver steps, timed as DPM-Solver++ 2M's (UniPC's
# step is the same network evaluation; its corrector adds a few elementwise ops).
QUALITY_NFE="${QUALITY_NFE:-10}"
VENV="${SADM_TORCH_VENV:-$HOME/.cache/sadm-torch-venv}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, diffusers" 2>/dev/null; then
  echo "installing PyTorch and diffusers into $VENV (first run only)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet torch numpy diffusers==0.42.1
fi
export RAYON_NUM_THREADS="$THREADS"
CONFIGS=("$@")
[ ${#CONFIGS[@]} -gt 0 ] || CONFIGS=(mnist-tiny mnist-small DiT-S/2 DiT-B/2)
mkdir -p benches/results
cargo bench -p sadm-core --bench step_time --no-run >&2
: > benches/results/sadm.jsonl
: > benches/results/torch_peer.jsonl
for r in $(seq "$REPEAT"); do
  for c in "${CONFIGS[@]}"; do
    echo "== $c ($r/$REPEAT)" >&2
    cargo bench -q -p sadm-core --bench step_time -- "$c" >> benches/results/sadm.jsonl
    "$VENV/bin/python" benches/torch_peer.py "$THREADS" "$c" 2>/dev/null >> benches/results/torch_peer.jsonl
  done
done
node - "$THREADS" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" "$REPEAT" "$QUALITY_NFE" <<'JS'
const fs = require("fs");
const lines = (f) => fs.readFileSync(f, "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l));
// With REPEAT > 1, every figure is the median over the repetitions of its config.
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const mergeBy = (rows) => {
  const out = [];
  for (const r of rows) if (!out.some((o) => o.config === r.config)) out.push(r);
  const merge = (group) => {
    const first = group[0];
    if (typeof first === "number") return median(group);
    if (first && typeof first === "object") return Object.fromEntries(Object.keys(first).map((k) => [k, merge(group.map((g) => g[k]))]));
    return first;
  };
  return out.map((o) => merge(rows.filter((r) => r.config === o.config)));
};
const ours = mergeBy(lines("benches/results/sadm.jsonl"));
const peer = mergeBy(lines("benches/results/torch_peer.jsonl"));
const [threads, cores, cpu] = process.argv.slice(2);
const QUALITY_NFE = Number(process.argv[6]);
const rows = ours.map((s) => {
  const p = peer.find((x) => x.config === s.config);
  return {
    config: s.config, batch: s.batch, ditParams: s.ditParams,
    sadm: { train: s.plain.imagesPerSec, trainSadm: s.sadm.imagesPerSec, ddpm250: s.sampling.ddpm250ImagesPerSec, ddim50: s.sampling.ddim50ImagesPerSec, dpm25: s.sampling.dpm25ImagesPerSec, peakRssMiB: s.peakRssMiB, gflops: s.plain.gflops, gemmPeakGflops: s.gemmPeakGflops },
    torch: { train: p.imagesPerSec, ddpm250: p.ddpm250ImagesPerSec, ddim50: p.ddim50ImagesPerSec, dpm25: p.dpm25ImagesPerSec, peakRssMiB: p.peakRssMiB, version: p.torch },
    ratio: { train: s.plain.imagesPerSec / p.imagesPerSec, ddpm250: s.sampling.ddpm250ImagesPerSec / p.ddpm250ImagesPerSec, ddim50: s.sampling.ddim50ImagesPerSec / p.ddim50ImagesPerSec, dpm25: s.sampling.dpm25ImagesPerSec / p.dpm25ImagesPerSec, peakRss: s.peakRssMiB / p.peakRssMiB },
    sadmOverhead: s.sadmOverhead, sadmFlopOverhead: s.sadmFlopOverhead,
    // Seconds per guided image at DDPM 250's quality: a multistep solver at the NFE where sadm's default reaches
    // DDPM 250's FD (README, Samplers), from the timed DPM-Solver++ steps (a step costs the same at any count),
    // against PyTorch + diffusers with the same solver and PyTorch with DDPM 250.
    timeToQuality: {
      nfe: QUALITY_NFE,
      sadm: QUALITY_NFE / 25 / s.sampling.dpm25ImagesPerSec,
      torchSameSolver: QUALITY_NFE / 25 / p.dpm25ImagesPerSec,
      torchDdpm250: 1 / p.ddpm250ImagesPerSec,
    },
  };
});
const f = (v, d = 1) => v.toFixed(d);
const g = (v) => (v >= 100 ? v.toFixed(0) : v.toPrecision(3));
console.log(`\n${cpu}, ${threads} threads (of ${cores} cores), PyTorch ${peer[0]?.torch}, medians of ${process.argv[5]} run(s) per config. Throughput in images/s; ratios are sadm / PyTorch (training, sampling: higher is better; RSS: lower is better).\n`);
console.log(`| config | batch | train sadm | train PyTorch | ratio | SADM overhead (in FLOPs) | GFLOP/s (% of GEMM peak) | DDPM 250 + CFG sadm / PyTorch | ratio | DDIM 50 + CFG sadm / PyTorch | ratio | DPM++ 2M 25 + CFG sadm / PyTorch + diffusers | ratio | s/image at DDPM 250's FD: sadm NFE ${QUALITY_NFE} / PyTorch same solver / PyTorch DDPM 250 | ratios | peak RSS MiB sadm / PyTorch | ratio |`);
console.log("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
for (const r of rows)
  console.log(`| ${r.config} | ${r.batch} | ${g(r.sadm.train)} | ${g(r.torch.train)} | ${f(r.ratio.train, 2)}× | ${r.sadmOverhead >= 0 ? "+" : ""}${f(100 * r.sadmOverhead, 0)}% (+${f(100 * r.sadmFlopOverhead, 0)}%) | ${f(r.sadm.gflops)} (${f(100 * r.sadm.gflops / r.sadm.gemmPeakGflops, 0)}%) | ${g(r.sadm.ddpm250)} / ${g(r.torch.ddpm250)} | ${f(r.ratio.ddpm250, 2)}× | ${g(r.sadm.ddim50)} / ${g(r.torch.ddim50)} | ${f(r.ratio.ddim50, 2)}× | ${g(r.sadm.dpm25)} / ${g(r.torch.dpm25)} | ${f(r.ratio.dpm25, 2)}× | ${g(r.timeToQuality.sadm)} / ${g(r.timeToQuality.torchSameSolver)} / ${g(r.timeToQuality.torchDdpm250)} | ${f(r.timeToQuality.torchSameSolver / r.timeToQuality.sadm, 2)}× / ${f(r.timeToQuality.torchDdpm250 / r.timeToQuality.sadm, 1)}× | ${f(r.sadm.peakRssMiB, 0)} / ${f(r.torch.peakRssMiB, 0)} | ${f(r.ratio.peakRss, 2)}× |`);
// A run of some configs replaces those configs' rows and keeps the others, each row dated by the run that made it.
const file = "benches/results/peer.json";
const date = new Date().toISOString();
const repeat = Number(process.argv[5]);
const old = fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, "utf8")) : { rows: [] };
const fresh = rows.map((r) => ({ date, repeat, threads: Number(threads), ...r }));
// Rows written before rows were dated take the file's date.
const all = old.rows.map((o) => fresh.find((r) => r.config === o.config) ?? { date: old.date, repeat: old.repeat, ...o });
all.push(...fresh.filter((r) => !old.rows.some((o) => o.config === r.config)));
fs.writeFileSync(file + ".tmp", JSON.stringify({ date, cpu, threads: Number(threads), rows: all }, null, 2) + "\n");
fs.renameSync(file + ".tmp", file);
JS
