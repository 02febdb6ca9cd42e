/**
 * Sample quality against network evaluations for every sampler, on one trained checkpoint:
 * `npm run experiment:samplers -- --checkpoint runs/mnist [--samples 1000] [--out experiments/results/samplers-mnist]`.
 *
 * Each cell is one `evaluate()` of the checkpoint's EMA model (the run's own data and extractor: FD, KID,
 * precision/recall, classifier accuracy) with a sampler at a step count whose cost is the row's NFE (Heun's N steps
 * are 2N − 1 evaluations, so it gets the nearest odd count). DDPM at 250 steps, DiT's evaluation sampler, is the
 * reference: it runs with several sample seeds, and its FD's mean ± std is the line a few-step sampler must reach.
 * Seconds per image are wall time on whatever else the machine runs: compare them within one run only.
 * A second table samples with guidance (`--cfg`) at a few NFE, where solvers are known to break. The script writes
 * `results.json` (every cell, resumable: a cell already there is not run again) and `results.md`.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import yargs from "yargs";
import type * as Sadm from "../dist/index.js";

const ROOT = path.resolve(__dirname, "..", "..");
const { evaluate, samplerEvaluations, version } = require(path.join(ROOT, "dist", "index.js")) as typeof Sadm;

type SamplerName = Sadm.SamplerName;

interface Cell {
  id: string;
  sampler: SamplerName;
  steps: number;
  nfe: number;
  cfg: number;
  seed: number;
  fd: number;
  kid: number;
  precision: number;
  recall: number;
  accuracy: number | null;
  /** Seconds per image of the evaluation (sampling dominates; features and metrics included). */
  secondsPerImage: number;
}

interface Results {
  checkpoint: string;
  samples: number;
  version: string;
  cells: Cell[];
}

const ALL: SamplerName[] = ["ddpm", "ddim", "dpm++2m", "dpm++2m-sde", "unipc", "euler", "heun"];

/** The step count whose cost is closest to `nfe` evaluations (at least the sampler's minimum). */
function stepsFor(sampler: SamplerName, nfe: number): number {
  return sampler === "heun" ? Math.max(2, Math.round((nfe + 1) / 2)) : nfe;
}

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
const std = (xs: number[]): number => (xs.length < 2 ? 0 : Math.sqrt(xs.reduce((a, b) => a + (b - mean(xs)) ** 2, 0) / (xs.length - 1)));

function table(res: Results, cfg: number, nfes: number[], reference: { mean: number; std: number } | undefined): string {
  const rows = ["| sampler | NFE | steps | FD | KID | precision | recall | accuracy | s/image |", "|---|---|---|---|---|---|---|---|---|"];
  for (const sampler of ALL)
    for (const nfe of nfes) {
      const cells = res.cells.filter((c) => c.sampler === sampler && c.cfg === cfg && c.nfe === samplerEvaluations(sampler, stepsFor(sampler, nfe)));
      if (cells.length === 0) continue;
      const fd = cells.map((c) => c.fd);
      const within = reference && mean(fd) <= reference.mean + reference.std ? " ✓" : "";
      const f = (xs: number[], d: number): string => (cells.length > 1 ? `${mean(xs).toFixed(d)} ± ${std(xs).toFixed(d)}` : mean(xs).toFixed(d));
      const acc = cells.every((c) => c.accuracy !== null) ? f(cells.map((c) => 100 * (c.accuracy ?? 0)), 1) + " %" : "–";
      rows.push(
        `| ${sampler} | ${cells[0].nfe} | ${cells[0].steps} | ${f(fd, 1)}${within} | ${f(cells.map((c) => c.kid), 0)} | ` +
          `${f(cells.map((c) => c.precision), 3)} | ${f(cells.map((c) => c.recall), 3)} | ${acc} | ${mean(cells.map((c) => c.secondsPerImage)).toFixed(4)} |`,
      );
    }
  return rows.join("\n");
}

async function main(): Promise<void> {
  const a = yargs(process.argv.slice(2))
    .option("checkpoint", { alias: "k", type: "string", demandOption: true, describe: "Checkpoint or run directory" })
    .option("samples", { type: "number", default: 1000, describe: "Samples per cell" })
    .option("nfe", { type: "string", default: "5,10,15,25,50,250", describe: "Network evaluations per image" })
    .option("samplers", { type: "string", default: ALL.join(","), describe: "Samplers to run" })
    .option("reference-seeds", { type: "number", default: 3, describe: "Sample seeds of the DDPM-250 reference" })
    .option("cfg", { type: "number", default: 4, describe: "Guidance scale of the guided table" })
    .option("cfg-nfe", { type: "string", default: "10,25", describe: "NFE of the guided table" })
    .option("out", { type: "string", default: "experiments/results/samplers", describe: "Output folder" })
    .strict()
    .parseSync();
  const nfes = a.nfe.split(",").map(Number);
  const cfgNfes = a["cfg-nfe"].split(",").map(Number);
  const samplers = a.samplers.split(",") as SamplerName[];
  fs.mkdirSync(a.out, { recursive: true });
  const file = path.join(a.out, "results.json");
  const res: Results = fs.existsSync(file)
    ? (JSON.parse(fs.readFileSync(file, "utf8")) as Results)
    : { checkpoint: path.resolve(a.checkpoint), samples: a.samples, version: version(), cells: [] };

  const plan: Array<{ sampler: SamplerName; nfe: number; cfg: number; seed: number }> = [];
  for (let seed = 0; seed < a["reference-seeds"]; seed++) plan.push({ sampler: "ddpm", nfe: 250, cfg: 1, seed });
  for (const sampler of samplers) for (const nfe of nfes) plan.push({ sampler, nfe, cfg: 1, seed: 0 });
  for (const sampler of samplers) for (const nfe of cfgNfes) plan.push({ sampler, nfe, cfg: a.cfg, seed: 0 });

  for (const p of plan) {
    const steps = stepsFor(p.sampler, p.nfe);
    const id = `${p.sampler}/${steps}/cfg${p.cfg}/seed${p.seed}`;
    if (res.cells.some((c) => c.id === id)) continue;
    const r = await evaluate({
      checkpoint: a.checkpoint,
      eval: { sampler: p.sampler, steps, cfgScale: p.cfg, seed: p.seed * 1_000_003, samples: a.samples },
      append: false,
    });
    const cell: Cell = {
      id, sampler: p.sampler, steps, nfe: samplerEvaluations(p.sampler, steps), cfg: p.cfg, seed: p.seed,
      fd: r.fd, kid: r.kid, precision: r.precision, recall: r.recall, accuracy: r.accuracy, secondsPerImage: r.seconds / r.samples,
    };
    res.cells.push(cell);
    fs.writeFileSync(file + ".tmp", JSON.stringify(res, null, 1));
    fs.renameSync(file + ".tmp", file);
    process.stdout.write(`${id}: FD ${r.fd.toFixed(2)}, precision ${r.precision.toFixed(3)}, recall ${r.recall.toFixed(3)}, ${(r.seconds / r.samples).toFixed(4)} s/image\n`);
  }

  const ref = res.cells.filter((c) => c.sampler === "ddpm" && c.steps === 250 && c.cfg === 1).map((c) => c.fd);
  const reference = ref.length > 0 ? { mean: mean(ref), std: std(ref) } : undefined;
  const md = [
    `# Samplers: quality against network evaluations`,
    ``,
    `Checkpoint \`${res.checkpoint}\`, ${res.samples} samples per cell, sadm ${res.version}; ` +
      `\`npm run experiment:samplers -- ${process.argv.slice(2).join(" ")}\`.`,
    reference ? `DDPM 250 (the reference, ${ref.length} sample seeds): FD ${reference.mean.toFixed(1)} ± ${reference.std.toFixed(1)}; ✓: within it.` : ``,
    ``,
    `## Unguided (cfg 1)`,
    ``,
    table(res, 1, [...new Set([...nfes, 250])], reference),
    ``,
    `## Guided (cfg ${a.cfg})`,
    ``,
    table(res, a.cfg, cfgNfes, undefined),
    ``,
  ].join("\n");
  fs.writeFileSync(path.join(a.out, "results.md"), md);
  process.stdout.write(md);
}

main().catch((e: unknown) => {
  process.stderr.write(`error: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
