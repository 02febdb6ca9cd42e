/**
 * Reads a run directory into what its report draws ({@link ReportRun}): metrics.jsonl (torn lines reported, not
 * fatal), the config, checkpoints, sample grids and status. Works on a run in progress, a finished one, one that
 * stopped on non-finite steps, and one with a single step.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { CheckpointError } from "../errors.js";
import { listCheckpoints, readState, type CheckpointExtra } from "../checkpoint.js";
import { METRICS_FILE, readMetricsLines } from "../logging.js";
import { CONFIG_FILE, SAMPLES_DIR, readRunStatus, writerAlive, type RunStatusFile } from "../rundir.js";
import { emaDecayAt, lambdaAt, lrAt } from "../schedule.js";
import type { SadmConfig } from "../config.js";
import type { GridImage, ReportRun, RunStatus, SkippedStep, StepSeries, TornLine } from "./types.js";

/** A run's config.json: a resolved {@link SadmConfig}, though an older run's may lack fields. */
type RunConfig = Partial<Omit<SadmConfig, "model" | "data">> & { model?: Partial<SadmConfig["model"]>; data?: Partial<SadmConfig["data"]> & { classNames?: string[] } };

/** How a report shows the sample grids: paths relative to the report's folder, or inlined as data URLs. */
export interface ReadOptions {
  /** The folder the report is written to (grid paths are relative to it). */
  reportDir: string;
  /** Inline the grids (a single file that can be mailed), instead of linking the run's PNGs. */
  inlineImages?: boolean;
}

const EVAL_KEYS = ["fd", "kid", "precision", "recall", "accuracy"];
/** Keys of the training records that are not curves. */
const NOT_CURVES = new Set(["step", "time", "seconds", "dataSeconds"]);
/** Points of a planned schedule (plus its corners). */
const SCHEDULE_POINTS = 400;

/**
 * Reads `dir` for its report.
 * @throws CheckpointError when `dir` is not a run directory (no config.json and no metrics.jsonl).
 */
export function readRun(dir: string, opts: ReadOptions): ReportRun {
  const abs = path.resolve(dir);
  const cfgFile = path.join(abs, CONFIG_FILE);
  const metricsFile = path.join(abs, METRICS_FILE);
  if (!fs.existsSync(cfgFile) && !fs.existsSync(metricsFile))
    throw new CheckpointError(`${dir} is not a sadm run directory (it has neither ${CONFIG_FILE} nor ${METRICS_FILE}): give the folder a run's --out wrote`);
  const config = readConfig(cfgFile);
  const { records, torn } = readRecords(metricsFile);
  const train: Record<string, StepSeries> = {};
  const evals: Record<string, StepSeries> = {};
  const skipped: SkippedStep[] = [];
  for (const r of records) {
    const step = r.step;
    if (typeof r.skipped === "string") skipped.push({ step, why: r.skipped });
    else if (typeof r.fd === "number") for (const k of EVAL_KEYS) push(evals, k, step, r[k]);
    else for (const [k, v] of Object.entries(r)) if (!NOT_CURVES.has(k) && typeof v === "number") push(train, k, step, v);
  }
  const checkpoints = listCheckpoints(abs).map((c) => ({ step: c.step, dir: c.dir }));
  const extra = newestExtra(checkpoints);
  const step = Math.max(0, ...records.map((r) => r.step), ...checkpoints.map((c) => c.step));
  const steps = config.steps ?? step;
  const statusFile = readRunStatus(abs);
  const status = runStatus(statusFile, { step, steps, skipped, records, config, checkpoints });
  const resume = status.state === "running" ? undefined : `sadm train --resume ${shellQuote(abs)}${status.state === "finished" ? " --steps " + (steps * 2) : ""}`;
  return {
    name: path.basename(abs),
    dir: abs,
    status,
    step,
    steps,
    train,
    schedules: schedules(config, steps),
    evals,
    skipped,
    torn,
    grids: readGrids(abs, opts),
    checkpoints,
    resume,
    facts: facts(config, extra, records, statusFile),
    config: JSON.stringify(config, null, 2),
  };
}

function readConfig(file: string): RunConfig {
  try {
    const v: unknown = JSON.parse(fs.readFileSync(file, "utf8"));
    return typeof v === "object" && v !== null ? (v as RunConfig) : {};
  } catch {
    return {};
  }
}

type MetricsRow = { step: number } & Record<string, unknown>;

/** metrics.jsonl's records with a step, and the lines that are not (a killed writer's torn last line). */
function readRecords(file: string): { records: MetricsRow[]; torn: TornLine[] } {
  const { records, unread } = readMetricsLines(file);
  const torn: TornLine[] = [...unread];
  const rows: MetricsRow[] = [];
  for (const { line, text, record } of records) {
    if (typeof record.step === "number") rows.push(record as MetricsRow);
    else torn.push({ line, text });
  }
  return { records: rows, torn: torn.sort((x, y) => x.line - y.line) };
}

function push(into: Record<string, StepSeries>, key: string, step: number, v: unknown): void {
  const s = (into[key] ??= { steps: [], values: [] });
  s.steps.push(step);
  s.values.push(typeof v === "number" && Number.isFinite(v) ? v : null);
}

/** The planned λ, LR and EMA decay at every step (the value a step trains with, at that step's number). */
function schedules(c: RunConfig, steps: number): ReportRun["schedules"] {
  const n = Math.max(1, steps);
  const corners = [c.advWarmupSteps ?? 0, (c.advWarmupSteps ?? 0) + (c.advRampSteps ?? 0), c.lrWarmupSteps ?? 0];
  const at = new Set<number>([1, n]);
  for (let i = 0; i <= SCHEDULE_POINTS; i++) at.add(Math.max(1, Math.round(1 + ((n - 1) * i) / SCHEDULE_POINTS)));
  for (const k of corners) for (const s of [k, k + 1]) if (s >= 1 && s <= n) at.add(s);
  const xs = [...at].sort((a, b) => a - b);
  // Step s (1-based, as metrics.jsonl numbers it) trains with the schedules at s − 1 steps taken.
  const series = (f: (t: number) => number): StepSeries => ({ steps: xs, values: xs.map((s) => f(s - 1)) });
  return {
    lambda: series((t) => lambdaAt(t, c.lambda ?? 0, c.advWarmupSteps ?? 0, c.advRampSteps ?? 0)),
    lr: series((t) => lrAt(t, c.lr ?? 0, c.lrWarmupSteps ?? 0)),
    emaDecay: series((t) => emaDecayAt(t, c.emaDecay ?? 0, c.emaWarmup ?? false)),
  };
}

function newestExtra(checkpoints: Array<{ dir: string }>): CheckpointExtra | undefined {
  const last = checkpoints[checkpoints.length - 1];
  if (!last) return undefined;
  try {
    return readState(last.dir).extra;
  } catch {
    return undefined;
  }
}

interface StatusFacts {
  step: number;
  steps: number;
  skipped: SkippedStep[];
  records: MetricsRow[];
  config: RunConfig;
  checkpoints: Array<{ step: number }>;
}

/** Where the run stands: from its status.json, or (older runs) from what it left. */
function runStatus(file: RunStatusFile | undefined, f: StatusFacts): RunStatus {
  const at = `step ${f.step} of ${f.steps}`;
  if (file?.state === "running") {
    if (writerAlive(file) === false)
      return { state: "interrupted", summary: `interrupted at ${at}: its process (pid ${file.pid}) is gone; resume it from the last checkpoint` };
    return { state: "running", summary: `running: ${at} (updated ${file.updated})` };
  }
  if (file?.state === "failed") {
    const numerical = file.error?.name === "NumericalError";
    return { state: numerical ? "stopped" : "failed", summary: `${numerical ? "stopped" : "failed"} at ${at}: ${file.error?.message ?? "unknown error"}` };
  }
  if (file?.state === "aborted") return { state: "stopped", summary: `stopped by the user at ${at}` };
  if (file?.state === "finished" || f.checkpoints.some((c) => c.step >= f.steps)) return { state: "finished", summary: `finished: ${f.step} steps` };
  const last = f.records[f.records.length - 1];
  if (last && typeof last.skipped === "string") {
    const inRow = trailingSkips(f.records);
    if (inRow >= (f.config.maxBadSteps ?? Infinity))
      return { state: "stopped", summary: `stopped at ${at}: ${inRow} steps in a row were skipped (${last.skipped})` };
  }
  return { state: "incomplete", summary: `${at}; no process is known to be training it` };
}

function trailingSkips(records: MetricsRow[]): number {
  let n = 0;
  for (let i = records.length - 1; i >= 0 && typeof records[i].skipped === "string"; i--) n++;
  return n;
}

/** The run's sample grids (samples/step-*.png), oldest first. */
function readGrids(dir: string, opts: ReadOptions): GridImage[] {
  const folder = path.join(dir, SAMPLES_DIR);
  let names: string[] = [];
  try {
    names = fs.readdirSync(folder);
  } catch {
    return [];
  }
  return names
    .flatMap((n) => {
      const m = /^step-(\d+)\.png$/.exec(n);
      return m ? [{ step: Number(m[1]), file: path.join(folder, n) }] : [];
    })
    .sort((a, b) => a.step - b.step)
    .map(({ step, file }) => ({
      step,
      src: opts.inlineImages
        ? `data:image/png;base64,${fs.readFileSync(file).toString("base64")}`
        : path.relative(opts.reportDir, file).split(path.sep).map(encodeURIComponent).join("/"),
    }));
}

/** The run card: what was trained on what, where, how fast. */
function facts(c: RunConfig, extra: CheckpointExtra | undefined, records: MetricsRow[], status: RunStatusFile | undefined): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  const m = c.model;
  if (c.preset) out.push(["preset", c.preset]);
  if (m) out.push(["model", `DiT ${m.hiddenSize}×${m.depth}, patch ${m.patchSize}, ${m.inChannels}×${m.inputSize}², ${m.numClasses || "no"} classes${m.learnSigma ? ", learned Σ" : ""}`]);
  const data = extra?.dataset;
  out.push(["data", data ? `${data.source} (${data.images} images)` : (c.data?.name ?? "?") + (c.data?.path ? ` ${c.data.path}` : "")]);
  const names = data?.classNames ?? c.data?.classNames;
  if (names && names.length > 0) out.push(["classes", names.map((n, i) => `${i}: ${n}`).join(", ")]);
  if (extra?.finetunedFrom) out.push(["fine-tuned from", extra.finetunedFrom]);
  out.push(["batch size", String(c.batchSize ?? "?")]);
  out.push(["λ (SADM)", String(c.lambda ?? "?")]);
  out.push(["device", `${status?.device ?? c.device ?? "?"}${c.precision && c.precision !== "fp32" ? ` (${c.precision})` : ""}`]);
  out.push(["sadm", status?.sadmVersion ?? extra?.sadmVersion ?? "?"]);
  const speed = records.filter((r) => typeof r.itPerSec === "number").slice(-20).map((r) => r.itPerSec as number);
  if (speed.length > 0) {
    const it = speed.reduce((a, b) => a + b, 0) / speed.length;
    out.push(["throughput", `${it.toFixed(2)} it/s, ${(it * (c.batchSize ?? 0)).toFixed(1)} images/s (the last ${speed.length} log windows)`]);
  }
  out.push(["wall time", duration(wallSeconds(records))]);
  if (status) out.push(["started", status.started], ["updated", status.updated]);
  return out;
}

/** Training and evaluation seconds over every process that wrote the log (each resume restarts the clock). */
export function wallSeconds(records: Array<Record<string, unknown>>): number {
  let total = 0;
  let clock = 0;
  let evalsAfter = 0;
  for (const r of records) {
    if (typeof r.time === "number") {
      if (r.time < clock) total += clock + evalsAfter;
      evalsAfter = 0;
      clock = r.time;
    } else if (typeof r.evalSeconds === "number") evalsAfter += r.evalSeconds;
  }
  return total + clock + evalsAfter;
}

function duration(s: number): string {
  if (s < 120) return `${s.toFixed(0)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(2)} h`;
}

function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}
