#!/usr/bin/env node
// The soak benchmark of issue 5: thousands of training steps through the public API (the addon, the JS loop, the
// data loader, metrics, checkpoints every 500 steps, sample grids every 1,000), with the process's resident set
// recorded as it goes. A leak shows as RSS that keeps growing after the warm-up; a flat run does not.
//
//   npm run build && node benches/soak.js [STEPS]      # default 3000; prints a table and one JSON line
//
// The adversarial phase starts at 70 % of the steps, and from there each step also runs the discriminator, so each
// phase is judged flat or not on its own. Transparent huge pages are reported apart: khugepaged collapsing part of
// the allocator's arena raises RSS once, at a moment of the kernel's choosing, without any allocation.
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { train } = require("../dist/index.js");

/**
 * Resident memory the kernel holds as transparent huge pages (Linux): khugepaged collapses eligible 4 KiB pages into
 * 2 MiB ones in the background, which raises RSS by the untouched parts of each 2 MiB range, at a moment of its
 * choosing.
 */
function anonHugePagesMiB() {
  try {
    const m = /AnonHugePages:\s+(\d+) kB/.exec(fs.readFileSync("/proc/self/smaps_rollup", "utf8"));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

async function main() {
  const steps = Number(process.argv[2] ?? 3000);
  if (!Number.isInteger(steps) || steps < 2000) throw new Error(`STEPS must be an integer ≥ 2000 (got ${process.argv[2]})`);
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
        samples.push({
          step: s.step,
          rssMiB: m.rss / 2 ** 20,
          heapMiB,
          externalMiB,
          nativeMiB: (m.rss - m.heapTotal - m.external) / 2 ** 20,
          hugeMiB: anonHugePagesMiB(),
        });
      },
    },
  );
  fs.rmSync(out, { recursive: true, force: true });
  // The working set changes once, by design, where the adversarial phase starts (advWarmupSteps: 70 % of the
  // steps), because the discriminator then runs every step. A leak is growth within a phase, so each phase is
  // judged on its own: the plain one from the first quarter (allocator pools fill in the first steps), the
  // adversarial one from 500 steps after it starts (a quarter of it in a short run).
  const advStart = Math.round(0.7 * steps);
  const phases = [
    { name: "plain (λ = 0)", from: steps / 4, to: advStart },
    { name: "adversarial", from: advStart + Math.min(500, Math.round((steps - advStart) / 4)), to: steps },
  ].map((p) => {
    const inside = samples.filter((s) => s.step >= p.from && s.step <= p.to);
    if (inside.length < 2) throw new Error(`the ${p.name} phase has fewer than 2 samples: use more STEPS`);
    const first = inside[0];
    const last = inside[inside.length - 1];
    const rss = inside.map((s) => s.rssMiB);
    const growthMiB = last.rssMiB - first.rssMiB;
    const hugeGrowthMiB = first.hugeMiB === null || last.hugeMiB === null ? null : last.hugeMiB - first.hugeMiB;
    return {
      phase: p.name,
      fromStep: first.step,
      toStep: last.step,
      growthMiB,
      growthKiBPerStep: (1024 * growthMiB) / (last.step - first.step),
      hugeGrowthMiB,
      minMiB: Math.min(...rss),
      maxMiB: Math.max(...rss),
    };
  });
  console.error(
    "| step | RSS MiB | JS heap MiB | external MiB | rest (native) MiB | of RSS: huge pages MiB |\n|---|---|---|---|---|---|",
  );
  for (const s of samples)
    console.error(
      `| ${s.step} | ${s.rssMiB.toFixed(1)} | ${s.heapMiB.toFixed(1)} | ${s.externalMiB.toFixed(1)} | ` +
        `${s.nativeMiB.toFixed(1)} | ${s.hugeMiB === null ? "n/a" : s.hugeMiB.toFixed(0)} |`,
    );
  for (const p of phases)
    console.error(
      `${p.phase}, steps ${p.fromStep}–${p.toStep}: RSS ${p.minMiB.toFixed(1)}–${p.maxMiB.toFixed(1)} MiB, ` +
        `${p.growthMiB >= 0 ? "+" : ""}${p.growthMiB.toFixed(1)} MiB first to last (${p.growthKiBPerStep.toFixed(2)} KiB/step)` +
        (p.hugeGrowthMiB === null ? "" : `, of which huge pages ${p.hugeGrowthMiB >= 0 ? "+" : ""}${p.hugeGrowthMiB.toFixed(0)} MiB`),
    );
  console.error(`${((Date.now() - t0) / 1000).toFixed(0)} s`);
  console.log(JSON.stringify({ steps, advStart, samples, phases }));
}

main().catch((e) => {
  console.error(`soak: ${e.message}`);
  process.exit(1);
});
