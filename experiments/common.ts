/**
 * What the experiment scripts share: where the built CLI is, running it as a child process, reading a run's
 * evaluations, and the mean ± std arithmetic of the tables.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawn } from "node:child_process";
import type * as Sadm from "../dist/index.js";

// Compiled to dist-experiments/experiments/: the package root is two levels up, and the built library is read from
// there (a type-only import above, a runtime require here) so the experiment uses exactly what `sadm` runs.
export const ROOT = path.resolve(__dirname, "..", "..");
export const CLI = path.join(ROOT, "dist", "cli.js");
export const sadm = require(path.join(ROOT, "dist", "index.js")) as typeof Sadm;

/** One evaluation of a run (metrics.jsonl's records with an FD). */
export interface EvalPoint {
  step: number;
  fd: number;
  kid: number;
  precision: number;
  recall: number;
  accuracy: number;
}

/** A run's evaluations by step (the last record of a step wins: a resumed run re-evaluates). */
export function evalPoints(runDir: string): EvalPoint[] {
  const file = path.join(runDir, "metrics.jsonl");
  if (!fs.existsSync(file)) return [];
  const byStep = new Map<number, EvalPoint>();
  for (const r of sadm.readMetrics(file)) {
    if (typeof r.fd !== "number" || typeof r.step !== "number") continue;
    byStep.set(r.step, {
      step: r.step,
      fd: r.fd,
      kid: Number(r.kid),
      precision: Number(r.precision),
      recall: Number(r.recall),
      accuracy: typeof r.accuracy === "number" ? r.accuracy : Number.NaN,
    });
  }
  return [...byStep.values()].sort((a, b) => a.step - b.step);
}

/** The command line of a CLI run, with paths inside the package relative to it (so a report reads the same anywhere). */
export function commandLine(args: string[]): string {
  const rel = (a: string): string => (a.startsWith(ROOT + path.sep) ? path.relative(ROOT, a) : a);
  return ["sadm", ...args.map(rel).map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a}'`))].join(" ");
}

/**
 * Runs the CLI with `args`, output to `logFile` (appended, so a resumed run keeps its history), with `threads`
 * compute threads; with `stdoutFile`, standard output goes there instead (truncated first). Resolves to the wall
 * seconds; rejects naming the log on a non-zero exit.
 */
export function runCli(args: string[], logFile: string, threads: number, stdoutFile?: string): Promise<number> {
  fs.mkdirSync(path.dirname(logFile), { recursive: true });
  const log = fs.openSync(logFile, "a");
  const out = stdoutFile === undefined ? log : fs.openSync(stdoutFile, "w");
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      cwd: ROOT,
      env: { ...process.env, RAYON_NUM_THREADS: String(threads), NO_COLOR: "1" },
      stdio: ["ignore", out, log],
    });
    child.on("error", reject);
    child.on("exit", (code) => {
      fs.closeSync(log);
      if (out !== log) fs.closeSync(out);
      if (code !== 0) reject(new Error(`sadm ${args[0]} failed (exit ${code}); see ${logFile}`));
      else resolve((Date.now() - t0) / 1000);
    });
  });
}

/**
 * The compute seconds a run's `metrics.jsonl` records: training and evaluation, summed over the processes that
 * wrote it (each resume restarts its clock), so an interrupted and resumed run costs what it cost to run.
 */
export function runSeconds(runDir: string): number {
  return sadm.wallSeconds(sadm.readMetrics(path.join(runDir, "metrics.jsonl")));
}

/** A markdown link to `file` from a document in `fromDir`. */
const mdLink = (text: string, fromDir: string, file: string): string => `[${text}](${path.relative(fromDir, file).split(path.sep).join("/")})`;

/** A markdown link from `fromDir` (where results.md is) to a run's `report.html`, or "–" when it has none. */
export function reportLink(fromDir: string, runDir: string, text = "report"): string {
  const file = path.join(runDir, sadm.REPORT_FILE);
  return fs.existsSync(file) ? mdLink(text, fromDir, file) : "–";
}

/**
 * Writes one report per group that overlays its runs' curves (e.g. λ = 0 against SADM, one seed) into `dir`,
 * skipping groups none of whose runs exist yet. Returns markdown links to them from `fromDir`.
 */
export function compareReports(groups: Array<{ name: string; title: string; runDirs: string[] }>, dir: string, fromDir: string): string[] {
  return groups.flatMap((g) => {
    const runs = g.runDirs.filter((d) => fs.existsSync(path.join(d, "config.json")));
    if (runs.length === 0) return [];
    const file = sadm.writeReport(runs, { out: path.join(dir, `${g.name}.html`), title: g.title });
    return [mdLink(g.title, fromDir, file)];
  });
}

/** Mean and sample standard deviation of the finite values (NaN, NaN when there are none). */
export function meanStd(xs: number[]): [number, number] {
  const v = xs.filter((x) => Number.isFinite(x));
  if (v.length === 0) return [Number.NaN, Number.NaN];
  const m = v.reduce((a, b) => a + b, 0) / v.length;
  const s = v.length > 1 ? Math.sqrt(v.reduce((a, b) => a + (b - m) ** 2, 0) / (v.length - 1)) : 0;
  return [m, s];
}

/** "mean ± std" with `digits` decimals; the value alone for one (a spread of one is not 0); or "–". */
export function pm(xs: number[], digits: number): string {
  const [m, s] = meanStd(xs);
  if (!Number.isFinite(m)) return "–";
  return xs.filter((x) => Number.isFinite(x)).length === 1 ? m.toFixed(digits) : `${m.toFixed(digits)} ± ${s.toFixed(digits)}`;
}

export const COLORS = ["#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];

/** Comma-separated numbers ("0,1,2"). */
export function parseList(s: string): number[] {
  return s.split(",").map((x) => Number(x.trim())).filter((x) => Number.isFinite(x));
}

/** The `--set` overrides of a `--quick` run: a toy model on 200 images, so the whole pipeline runs in minutes. */
export const QUICK_SET = [
  "model.hiddenSize=32", "model.depth=1", "model.numHeads=2", "discriminator.width=32", "discriminator.depth=1",
  "discriminator.numHeads=2", "discriminator.projDim=16", "batchSize=8", "data.limit=200", "samplesPerClass=1",
];

/** A job of {@link runQueue}: its id and the ids of the jobs it waits for. */
export interface QueuedJob {
  id: string;
  deps: string[];
  /** Asked once its deps are done: a reason not to run it after all (it then counts as done), or undefined. */
  skip?: () => string | undefined;
}

/** Compute threads per run when `workers` runs share this machine's cores. */
export function threadsPerRun(workers: number): number {
  return Math.max(1, Math.floor(os.cpus().length / workers));
}

/**
 * Runs `jobs` `workers` at a time, in list order, each once the jobs it depends on are done; the ones `isDone`
 * says are finished are skipped, and so is one whose `skip` gives a reason. `run` resolves to what the progress line prints after "done <id>". The first
 * failure stops new starts and is thrown once the running jobs have ended.
 */
export async function runQueue<J extends QueuedJob>(jobs: J[], workers: number, isDone: (j: J) => boolean, run: (j: J) => Promise<string>): Promise<void> {
  const done = new Set(jobs.filter(isDone).map((j) => j.id));
  const started = new Set<string>(done);
  const pending = (): J[] => jobs.filter((j) => !started.has(j.id));
  const stamp = (): string => new Date().toISOString().slice(11, 19);
  let failure: Error | undefined;
  const worker = async (): Promise<void> => {
    for (;;) {
      if (failure) return;
      const next = pending().find((j) => j.deps.every((d) => done.has(d)));
      if (!next) {
        if (pending().length === 0) return;
        await new Promise((r) => setTimeout(r, 500));
        continue;
      }
      started.add(next.id);
      const reason = next.skip?.();
      if (reason !== undefined) {
        done.add(next.id);
        process.stdout.write(`[${stamp()}] skip  ${next.id}: ${reason}\n`);
        continue;
      }
      process.stdout.write(`[${stamp()}] start ${next.id} (${done.size}/${jobs.length} done)\n`);
      try {
        const what = await run(next);
        done.add(next.id);
        process.stdout.write(`[${stamp()}] done  ${next.id} ${what}\n`);
      } catch (e) {
        failure = e instanceof Error ? e : new Error(String(e));
      }
    }
  };
  await Promise.all(Array.from({ length: workers }, () => worker()));
  if (failure) throw failure;
}
