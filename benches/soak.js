#!/usr/bin/env node
// The soak benchmark of issue 5: thousands of training steps through the public API (the addon, the JS loop, the
// data loader, metrics, checkpoints every 500 steps, sample grids every 1,000), with the process's resident set
// recorded as it goes. A leak shows as RSS that keeps growing after the warm-up; a flat run does not.
//
//   npm run build && node benches/soak.js [STEPS]      # default 3000; prints a table and one JSON line
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { train } = require("../dist/index.js");

async function main() {
  const steps = Number(process.argv[2] ?? 3000);
  if (!Number.isInteger(steps) || steps < 1000) throw new Error(`STEPS must be an integer ≥ 1000 (got ${process.argv[2]})`);
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "sadm-soak-"));
  const samples = [];
  const t0 = Date.now();
  await train(
    {
      model: { hiddenSize: 64, depth: 2, numHeads: 4 },
      discriminator: { width: 32, depth: 1, numHeads: 2, projDim: 16 },
      data: { name: "mnist", limit: 2048 },
      batchSize: 16,
      steps,
      lambda: 0.01,
      checkpointEvery: 500,
      keepCheckpoints: 2,
      sampleEvery: 1000,
      sampleSteps: 5,
      samplesPerClass: 1,
      eval: { every: 0 },
      outDir: out,
    },
    {
      quiet: true,
      onStep: (s) => {
        if (s.step % 250 !== 0) return;
        // RSS splits into V8's heap, memory V8 tracks outside it (Buffers: checkpoint and PNG bytes), and the rest:
        // the native core's allocations (mimalloc), code and stacks.
        const m = process.memoryUsage();
        const heapMiB = m.heapUsed / 2 ** 20;
        const externalMiB = m.external / 2 ** 20;
        samples.push({ step: s.step, rssMiB: m.rss / 2 ** 20, heapMiB, externalMiB, nativeMiB: (m.rss - m.heapTotal - m.external) / 2 ** 20 });
      },
    },
  );
  fs.rmSync(out, { recursive: true, force: true });
  // From the first quarter on: allocator pools and caches fill in the first steps.
  const warm = samples.find((s) => s.step >= steps / 4);
  const end = samples[samples.length - 1];
  const growth = end.rssMiB - warm.rssMiB;
  console.error("| step | RSS MiB | JS heap MiB | external MiB | rest (native) MiB |\n|---|---|---|---|---|");
  for (const s of samples)
    console.error(
      `| ${s.step} | ${s.rssMiB.toFixed(1)} | ${s.heapMiB.toFixed(1)} | ${s.externalMiB.toFixed(1)} | ${s.nativeMiB.toFixed(1)} |`,
    );
  console.error(
    `\nRSS ${warm.rssMiB.toFixed(1)} MiB at step ${warm.step} → ${end.rssMiB.toFixed(1)} MiB at step ${end.step} ` +
      `(${growth >= 0 ? "+" : ""}${growth.toFixed(1)} MiB, ${((1e3 * growth) / (end.step - warm.step)).toFixed(2)} KiB/step); ` +
      `${((Date.now() - t0) / 1000).toFixed(0)} s`,
  );
  console.log(JSON.stringify({ steps, samples, warmStep: warm.step, growthMiB: growth, growthKiBPerStep: (1e3 * growth) / (end.step - warm.step) }));
}

main().catch((e) => {
  console.error(`soak: ${e.message}`);
  process.exit(1);
});
