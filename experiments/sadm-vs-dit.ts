/**
 * The SADM-versus-DiT experiment, one command: `npm run experiment`.
 *
 * Every run is a `sadm` CLI invocation (recorded in the results, so any cell can be re-run by hand):
 * - from scratch: plain DiT (λ = 0) against SADM at each λ, both from the first step and as a second stage that
 *   continues the λ = 0 run's checkpoint, always at the same total step count; several seeds;
 * - a one-seed sweep of second-stage variants (kernel, pair scheme, pair weighting, discriminator lr);
 * - fine-tuning: pre-train on digits 0–4, fine-tune on 5–9 with and without SADM; several seeds.
 * Runs evaluate themselves every `--eval-every` steps (FD, KID, precision/recall, classifier accuracy on the
 * shipped LeNet's features). The script writes `results.md`, `results.json` and `fd-over-steps.png`.
 * It is resumable: a finished run (its `done.json`) is not run again.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import yargs from "yargs";
import { CLI, COLORS, QUICK_SET, commandLine, compareReports, evalPoints, meanStd, parseList, pm, reportLink, runCli, runQueue, sadm, threadsPerRun, type EvalPoint } from "./common.js";
import { chartSvg, writePng, type Panel, type Series } from "./plot.js";

const { checkpointName, version } = sadm;

interface Options {
  preset: string;
  steps: number;
  stage2At: number;
  lambdas: number[];
  seeds: number[];
  evalEvery: number;
  evalSamples: number;
  evalSteps: number;
  pretrainSteps: number;
  finetuneSteps: number;
  finetuneLambda: number;
  sweep: boolean;
  jobs: number;
  runs: string;
  out: string;
  /** Extra `--set` overrides for every run (the quick mode shrinks the model with them). */
  set: string[];
}

type Group = "scratch" | "sweep" | "pretrain" | "finetune";

interface Job {
  id: string;
  group: Group;
  /** Row label of the arm in the tables. */
  arm: string;
  seed: number;
  lambda: number;
  /** Step at which the adversarial term starts (0 = from the start; the total for λ = 0). */
  sadmFrom: number;
  args: string[];
  deps: string[];
  runDir: string;
  /** For a second stage: the run whose evaluations up to `sadmFrom` it shares. */
  continues?: string;
}

interface RunResult {
  id: string;
  group: Group;
  arm: string;
  seed: number;
  lambda: number;
  sadmFrom: number;
  command: string;
  seconds: number;
  curve: EvalPoint[];
  final: EvalPoint | undefined;
}

function fmtLambda(l: number): string {
  return String(l);
}

/** The runs, in the order they should start (seed by seed, so partial results are complete arms). */
function plan(o: Options): Job[] {
  const jobs: Job[] = [];
  const evalArgs = ["--eval-samples", String(o.evalSamples), "--set", `eval.steps=${o.evalSteps}`];
  const common = (seed: number, steps: number): string[] => [
    "--preset", o.preset,
    "--seed", String(seed),
    "--steps", String(steps),
    "--sample-every", String(steps),
    "--keep", "1000",
    "-q",
    ...evalArgs,
    ...o.set.flatMap((s) => ["--set", s]),
  ];
  const dir = (...parts: string[]): string => path.join(o.runs, ...parts);
  const ramp = Math.max(1, Math.round(o.steps / 10));
  const stageRamp = Math.max(1, Math.round((o.steps - o.stage2At) / 5));
  /** A second stage: continue seed `seed`'s λ = 0 run from step stage2At with λ = `l` (and `extra` flags). */
  const secondStage = (seed: number, l: number, extra: string[], out: string): Pick<Job, "args" | "deps" | "runDir" | "continues" | "seed" | "lambda" | "sadmFrom"> => ({
    seed,
    lambda: l,
    sadmFrom: o.stage2At,
    args: [
      "train", "--resume", path.join(dir("scratch", "dit", `seed-${seed}`), "checkpoints", checkpointName(o.stage2At)),
      "--steps", String(o.steps), "--sample-every", String(o.steps), "--keep", "1000", "-q",
      "--eval-every", String(o.evalEvery), "--checkpoint-every", String(o.steps), ...evalArgs,
      "--lambda", String(l), "--adv-warmup", String(o.stage2At), "--adv-ramp", String(stageRamp),
      ...extra, "--out", out,
    ],
    deps: [`dit-s${seed}`],
    runDir: out,
    continues: `dit-s${seed}`,
  });
  const pre = dir("finetune", "pretrain-0-4");
  jobs.push({
    id: "pretrain-0-4",
    group: "pretrain",
    arm: "pre-train on 0–4 (λ = 0)",
    seed: 0,
    lambda: 0,
    sadmFrom: o.pretrainSteps,
    args: [
      "train", ...common(0, o.pretrainSteps),
      "--lambda", "0", "--classes", "0,1,2,3,4",
      "--eval-every", String(o.pretrainSteps), "--checkpoint-every", String(o.pretrainSteps), "--out", pre,
    ],
    deps: [],
    runDir: pre,
  });
  for (const seed of o.seeds) {
    const base = dir("scratch", "dit", `seed-${seed}`);
    const scratchArgs = [...common(seed, o.steps), "--eval-every", String(o.evalEvery), "--checkpoint-every", String(o.evalEvery)];
    jobs.push({
      id: `dit-s${seed}`,
      group: "scratch",
      arm: "DiT (λ = 0)",
      seed,
      lambda: 0,
      sadmFrom: o.steps,
      args: ["train", ...scratchArgs, "--lambda", "0", "--out", base],
      deps: [],
      runDir: base,
    });
    for (const l of o.lambdas) {
      const start = dir("scratch", `sadm-start-${fmtLambda(l)}`, `seed-${seed}`);
      jobs.push({
        id: `sadm-start-${fmtLambda(l)}-s${seed}`,
        group: "scratch",
        arm: `SADM from the start, λ = ${fmtLambda(l)}`,
        seed,
        lambda: l,
        sadmFrom: 0,
        args: ["train", ...scratchArgs, "--lambda", String(l), "--adv-warmup", "0", "--adv-ramp", String(ramp), "--out", start],
        deps: [],
        runDir: start,
      });
      jobs.push({
        id: `sadm-stage2-${fmtLambda(l)}-s${seed}`,
        group: "scratch",
        arm: `SADM second stage, λ = ${fmtLambda(l)}`,
        ...secondStage(seed, l, [], dir("scratch", `sadm-stage2-${fmtLambda(l)}`, `seed-${seed}`)),
      });
    }
    const ftArgs = (lambda: number, out: string): string[] => [
      "finetune", "--from", pre, ...common(seed, o.finetuneSteps),
      "--classes", "5,6,7,8,9", "--lambda", String(lambda), "--adv-warmup", "0",
      "--adv-ramp", String(Math.max(1, Math.round(o.finetuneSteps / 10))),
      "--eval-every", String(Math.max(1, Math.round(o.finetuneSteps / 2))),
      "--checkpoint-every", String(o.finetuneSteps), "--out", out,
    ];
    for (const lambda of [0, o.finetuneLambda]) {
      const name = lambda === 0 ? "ft-dit" : `ft-sadm-${fmtLambda(lambda)}`;
      const out = dir("finetune", name, `seed-${seed}`);
      jobs.push({
        id: `${name}-s${seed}`,
        group: "finetune",
        arm: lambda === 0 ? "fine-tune on 5–9, λ = 0" : `fine-tune on 5–9 with SADM, λ = ${fmtLambda(lambda)}`,
        seed,
        lambda,
        sadmFrom: lambda === 0 ? o.finetuneSteps : 0,
        args: ftArgs(lambda, out),
        deps: ["pretrain-0-4"],
        runDir: out,
      });
    }
  }
  if (o.sweep) {
    const seed = o.seeds[0];
    const l = o.lambdas[o.lambdas.length - 1];
    const variants: Array<[string, string, string[]]> = [
      ["gaussian", "kernel: gaussian", ["--set", "discriminator.kernel=gaussian"]],
      ["cross", "pairs: cross", ["--set", "discriminator.pairs=cross"]],
      ["cutoff", "weighting: cutoff t < 300", ["--set", "discriminator.weighting=cutoff", "--set", "discriminator.tMax=300"]],
      ["disclr", "discriminator lr ×10 (1e-3)", ["--disc-lr", "1e-3"]],
    ];
    for (const [key, label, extra] of variants) {
      jobs.push({
        id: `sweep-${key}-s${seed}`,
        group: "sweep",
        arm: `second stage, λ = ${fmtLambda(l)}, ${label}`,
        ...secondStage(seed, l, extra, dir("sweep", key, `seed-${seed}`)),
      });
    }
  }
  return jobs;
}

const DONE = "done.json";

interface Done {
  seconds: number;
  command: string;
}

function readDone(job: Job): Done | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(job.runDir, DONE), "utf8")) as Done;
  } catch {
    return undefined;
  }
}

/** When a finished run ended (its done.json's write time). */
function finishedAt(job: Job): number {
  return fs.statSync(path.join(job.runDir, DONE)).mtimeMs;
}

/** Runs one job as a child process; a half-finished earlier attempt is discarded first. */
async function runJob(job: Job, threads: number): Promise<Done> {
  fs.rmSync(job.runDir, { recursive: true, force: true });
  fs.mkdirSync(job.runDir, { recursive: true });
  const logFile = path.join(job.runDir, "..", `${path.basename(job.runDir)}.log`);
  fs.rmSync(logFile, { force: true });
  const seconds = await runCli(job.args, logFile, threads).catch((e: unknown) => {
    throw new Error(`${job.id}: ${e instanceof Error ? e.message : String(e)}`);
  });
  const done: Done = { seconds, command: commandLine(job.args) };
  fs.writeFileSync(path.join(job.runDir, DONE), JSON.stringify(done, null, 2) + "\n");
  return done;
}

async function runAll(jobs: Job[], o: Options): Promise<void> {
  const threads = threadsPerRun(o.jobs);
  await runQueue(jobs, o.jobs, (j) => readDone(j) !== undefined, async (job) => `in ${(await runJob(job, threads)).seconds.toFixed(0)}s`);
}

function collect(jobs: Job[]): RunResult[] {
  const byId = new Map(jobs.map((j) => [j.id, j]));
  return jobs.flatMap((j) => {
    const d = readDone(j);
    if (!d) return [];
    let curve = evalPoints(j.runDir);
    if (j.continues) {
      const src = byId.get(j.continues);
      const shared = src ? evalPoints(src.runDir).filter((p) => p.step <= j.sadmFrom) : [];
      curve = [...shared, ...curve.filter((p) => p.step > j.sadmFrom)];
    }
    return [{
      id: j.id, group: j.group, arm: j.arm, seed: j.seed, lambda: j.lambda, sadmFrom: j.sadmFrom,
      command: commandLine(j.args), seconds: d.seconds, curve, final: curve[curve.length - 1],
    }];
  });
}

function armsOf(results: RunResult[], group: Group): string[] {
  return [...new Set(results.filter((r) => r.group === group).map((r) => r.arm))];
}

function table(results: RunResult[], group: Group, baseline: string | undefined): string[] {
  const rows = [
    "| arm | seeds | FD ↓ | Δ FD vs λ = 0 | KID ↓ | precision ↑ | recall ↑ | accuracy ↑ | wall s/run |",
    "|---|---|---|---|---|---|---|---|---|",
  ];
  const base = baseline ? results.filter((r) => r.group === group && r.arm === baseline) : [];
  for (const arm of armsOf(results, group)) {
    const rs = results.filter((r) => r.group === group && r.arm === arm && r.final);
    const f = rs.map((r) => r.final as EvalPoint);
    // Paired by seed: SADM and λ = 0 share the seed, data order and (for a second stage) the first stage.
    const deltas = rs.flatMap((r) => {
      const b = base.find((x) => x.seed === r.seed)?.final;
      return b ? [(r.final as EvalPoint).fd - b.fd] : [];
    });
    rows.push(
      `| ${arm} | ${rs.map((r) => r.seed).join(", ")} | ${pm(f.map((p) => p.fd), 1)} | ` +
        `${arm === baseline || deltas.length === 0 ? "–" : pm(deltas, 1)} | ${pm(f.map((p) => p.kid), 1)} | ` +
        `${pm(f.map((p) => p.precision), 3)} | ${pm(f.map((p) => p.recall), 3)} | ${pm(f.map((p) => p.accuracy), 3)} | ` +
        `${meanStd(rs.map((r) => r.seconds))[0].toFixed(0)} |`,
    );
  }
  return rows;
}


function panel(results: RunResult[], groups: Group[], title: string): Panel {
  const series: Series[] = [];
  const arms = groups.flatMap((g) => armsOf(results, g));
  arms.forEach((arm, i) => {
    const color = COLORS[i % COLORS.length];
    const rs = results.filter((r) => r.arm === arm);
    for (const r of rs) series.push({ label: arm, color, thin: true, points: r.curve.map((p) => [p.step, p.fd]) });
    const steps = [...new Set(rs.flatMap((r) => r.curve.map((p) => p.step)))].sort((a, b) => a - b);
    const mean: Array<[number, number]> = steps.flatMap((s) => {
      const v = rs.flatMap((r) => r.curve.filter((p) => p.step === s).map((p) => p.fd));
      return v.length === rs.length ? [[s, meanStd(v)[0]] as [number, number]] : [];
    });
    series.push({ label: `${arm} (mean of ${rs.length})`, color, points: mean });
  });
  return { title, xLabel: "training step", yLabel: "Fréchet distance (LeNet features)", series, logY: true };
}

/** One overlay report per seed of the from-scratch arms, and one of the fine-tuning arms; their links. */
function comparisons(o: Options, jobs: Job[]): string[] {
  const groups = o.seeds.map((seed) => ({
    name: `compare-scratch-seed-${seed}`,
    title: `from scratch, seed ${seed}`,
    runDirs: jobs.filter((j) => j.group === "scratch" && j.seed === seed).map((j) => j.runDir),
  }));
  groups.push({ name: "compare-finetune", title: "fine-tuning 0–4 → 5–9", runDirs: jobs.filter((j) => j.group === "finetune").map((j) => j.runDir) });
  return compareReports(groups, o.runs, o.out);
}

function report(o: Options, jobs: Job[], results: RunResult[], compared: string[]): string {
  // Wall time from the first run's start to the last run's end, across invocations of this script.
  const done = jobs.filter((j) => readDone(j));
  const start = Math.min(...done.map((j) => finishedAt(j) - (readDone(j)?.seconds ?? 0) * 1000));
  const end = Math.max(...done.map((j) => finishedAt(j)));
  const wall = done.length > 0 ? (end - start) / 1000 : 0;
  const cpu = os.cpus()[0]?.model ?? "unknown CPU";
  const total = results.reduce((a, r) => a + r.seconds, 0);
  const lines: string[] = [];
  lines.push("# SADM versus plain DiT training on MNIST");
  lines.push("");
  lines.push(`Written by \`npm run experiment\` (experiments/sadm-vs-dit.ts), sadm ${version()}, ${new Date().toISOString().slice(0, 10)}.`);
  lines.push(
    `Machine: ${cpu}, ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; ${o.jobs} runs at a time, ` +
      `${threadsPerRun(o.jobs)} thread(s) each. ` +
      `Compute: ${results.length}/${jobs.length} runs, ${(total / 60).toFixed(0)} min of run time, ${(wall / 60).toFixed(0)} min wall ` +
        "from the first run's start to the last one's end.",
  );
  lines.push("");
  lines.push(
    `Setup: preset \`${o.preset}\` (batch 64, v-prediction; see the README)${o.set.length ? ` with ${o.set.map((s) => `\`${s}\``).join(", ")}` : ""}, ` +
      `${o.steps} steps from scratch; the second stage continues the λ = 0 run's checkpoint at step ${o.stage2At} ` +
      `(so it shares its first ${o.stage2At} steps and has the same total), SADM from the start ramps λ up over the first ` +
      `${Math.round(o.steps / 10)} steps. Metrics on the final EMA model: ${o.evalSamples} class-balanced samples ` +
      `(DDIM, ${o.evalSteps} steps, no guidance) against ${o.evalSamples} real digits, on the 128-d features of the ` +
      "shipped LeNet (assets/lenet-mnist.json); accuracy = the LeNet's accuracy on the samples w.r.t. their " +
      "conditioning labels. Mean ± sample std over seeds; Δ FD is paired by seed (negative = SADM better).",
  );
  lines.push("");
  lines.push(`## From scratch (${o.steps} steps, seeds ${o.seeds.join(", ")})`);
  lines.push("");
  lines.push(...table(results, "scratch", "DiT (λ = 0)"));
  if (o.sweep) {
    lines.push("");
    lines.push(`## Second-stage variants (seed ${o.seeds[0]}; compare with the rows above for that seed)`);
    lines.push("");
    lines.push(...table(results, "sweep", undefined));
  }
  lines.push("");
  lines.push(
    `## Fine-tuning: pre-train on digits 0–4 (${o.pretrainSteps} steps, seed 0), fine-tune on 5–9 (${o.finetuneSteps} steps, fresh optimizers and EMA)`,
  );
  lines.push("");
  lines.push(...table(results, "pretrain", undefined));
  lines.push("");
  lines.push(...table(results, "finetune", "fine-tune on 5–9, λ = 0"));
  lines.push("");
  lines.push("## Runs");
  lines.push("");
  if (compared.length > 0) lines.push(`Curves side by side (\`sadm report\`, in the runs folder): ${compared.join(", ")}.`, "");
  lines.push("| run | seed | FD | KID | precision | recall | accuracy | wall s | report | command |");
  lines.push("|---|---|---|---|---|---|---|---|---|---|");
  for (const r of results) {
    const f = r.final;
    const job = jobs.find((j) => j.id === r.id);
    lines.push(
      `| ${r.id} | ${r.seed} | ${f ? f.fd.toFixed(1) : "–"} | ${f ? f.kid.toFixed(1) : "–"} | ${f ? f.precision.toFixed(3) : "–"} | ` +
        `${f ? f.recall.toFixed(3) : "–"} | ${f && Number.isFinite(f.accuracy) ? f.accuracy.toFixed(3) : "–"} | ${r.seconds.toFixed(0)} | ` +
        `${job ? reportLink(o.out, job.runDir) : "–"} | \`${r.command}\` |`,
    );
  }
  lines.push("");
  return lines.join("\n");
}

async function main(): Promise<void> {
  const a = await yargs(process.argv.slice(2))
    .usage("npm run experiment -- [options]")
    .option("quick", { type: "boolean", describe: "A tiny smoke run of the whole pipeline (seconds, meaningless numbers)" })
    .option("preset", { type: "string", default: "mnist-tiny" })
    .option("steps", { type: "number", describe: "Steps from scratch (default 1000)" })
    .option("stage2-at", { type: "number", describe: "Step where the second stage starts (default 75 % of steps)" })
    .option("lambdas", { type: "string", default: "0.01,0.1", describe: "SADM λ values" })
    .option("seeds", { type: "string", default: "0,1,2" })
    .option("eval-every", { type: "number", describe: "Evaluate every N steps (default steps/4)" })
    .option("eval-samples", { type: "number", describe: "Samples per evaluation (default 500)" })
    .option("eval-steps", { type: "number", describe: "DDIM steps of the evaluation samples (default 25)" })
    .option("pretrain-steps", { type: "number", describe: "Pre-training steps on 0–4 (default = steps)" })
    .option("finetune-steps", { type: "number", describe: "Fine-tuning steps on 5–9 (default 40 % of steps)" })
    .option("finetune-lambda", { type: "number", default: 0.1 })
    .option("sweep", { type: "boolean", default: true, describe: "Also run the one-seed second-stage variants" })
    .option("jobs", { type: "number", default: 2, describe: "Runs at a time (cores are split between them)" })
    .option("runs", { type: "string", default: "runs/experiment", describe: "Where the run directories go" })
    .option("out", { type: "string", default: "experiments/results", describe: "Where the report goes" })
    .option("set", { type: "string", array: true, default: [] as string[], describe: "Config overrides for every run" })
    .strict()
    .parseAsync();
  const quick = a.quick === true;
  const steps = a.steps ?? (quick ? 8 : 1000);
  const o: Options = {
    preset: a.preset,
    steps,
    stage2At: a["stage2-at"] ?? Math.round(0.75 * steps),
    lambdas: parseList(a.lambdas),
    seeds: parseList(a.seeds),
    evalEvery: a["eval-every"] ?? Math.max(1, Math.round(steps / 4)),
    evalSamples: a["eval-samples"] ?? (quick ? 20 : 500),
    evalSteps: a["eval-steps"] ?? (quick ? 2 : 25),
    pretrainSteps: a["pretrain-steps"] ?? steps,
    finetuneSteps: a["finetune-steps"] ?? Math.max(2, Math.round(0.4 * steps)),
    finetuneLambda: a["finetune-lambda"],
    sweep: a.sweep,
    jobs: Math.max(1, a.jobs),
    runs: path.resolve(a.runs),
    out: path.resolve(a.out),
    set: [
      ...(quick ? [...QUICK_SET] : []),
      ...a.set,
    ],
  };
  if (o.stage2At <= 0 || o.stage2At >= o.steps || o.stage2At % o.evalEvery !== 0)
    throw new Error(`--stage2-at (${o.stage2At}) must be a multiple of --eval-every (${o.evalEvery}) inside (0, ${o.steps})`);
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first`);
  const jobs = plan(o);
  await runAll(jobs, o);
  const results = collect(jobs);
  fs.mkdirSync(o.out, { recursive: true });
  fs.writeFileSync(path.join(o.out, "results.json"), JSON.stringify({ options: o, results }, null, 2) + "\n");
  fs.writeFileSync(path.join(o.out, "results.md"), report(o, jobs, results, comparisons(o, jobs)));
  const svg = chartSvg(
    [panel(results, ["scratch"], "From scratch"), panel(results, ["finetune"], "Fine-tuning 0–4 → 5–9")],
    `thin lines: single seeds; thick: mean over seeds. ${o.evalSamples} samples per point, DDIM ${o.evalSteps} steps.`,
  );
  writePng(svg, path.join(o.out, "fd-over-steps.png"));
  // The final sample grids of the first seed, for a look at what the numbers mean.
  for (const j of jobs.filter((x) => x.seed === o.seeds[0] && x.group !== "sweep")) {
    const last = j.group === "finetune" ? o.finetuneSteps : j.group === "pretrain" ? o.pretrainSteps : o.steps;
    const grid = path.join(j.runDir, "samples", `${checkpointName(last)}.png`);
    if (fs.existsSync(grid)) fs.copyFileSync(grid, path.join(o.out, `grid-${j.id}.png`));
  }
  process.stdout.write(`wrote ${path.join(o.out, "results.md")}, results.json and fd-over-steps.png\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`error: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
