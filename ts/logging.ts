/**
 * Metrics log (`<outDir>/metrics.jsonl`) and progress reporting (a cli-progress bar on a TTY, plain lines otherwise).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { SingleBar, Presets } from "cli-progress";

/** File name of the metrics log inside a run directory. */
export const METRICS_FILE = "metrics.jsonl";

/** One metrics record: numbers keyed by name (`step` always present). */
export type MetricsRecord = { step: number } & Record<string, number>;

/** Appends JSON lines to a metrics file. */
export class MetricsLog {
  /** Path of the JSONL file. */
  readonly file: string;

  constructor(file: string) {
    this.file = file;
    fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  }

  /** Appends one record as a JSON line. */
  append(record: Record<string, unknown>): void {
    fs.appendFileSync(this.file, JSON.stringify(record) + "\n");
  }

  /** Drops records whose `step` is greater than `step` (used when resuming from an older checkpoint). */
  truncateAfter(step: number): void {
    const records = readMetrics(this.file);
    const kept = records.filter((r) => !(typeof r.step === "number" && r.step > step));
    if (kept.length === records.length) return;
    const tmp = `${this.file}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, kept.map((r) => JSON.stringify(r) + "\n").join(""));
    fs.renameSync(tmp, this.file);
  }
}

/** Reads a metrics.jsonl file (skipping unparsable lines, e.g. a torn last line). */
export function readMetrics(file: string): Array<Record<string, unknown>> {
  return readMetricsLines(file).records.map((r) => r.record);
}

/** A metrics.jsonl line that is not a JSON object (a killed writer leaves a torn last line): 1-based number, text. */
export interface UnreadLine {
  line: number;
  text: string;
}

/** A metrics.jsonl record and where it stands in the file. */
export interface MetricsLine extends UnreadLine {
  record: Record<string, unknown>;
}

/** metrics.jsonl's records with their lines, and the lines that are not JSON objects (empty lines are neither). */
export function readMetricsLines(file: string): { records: MetricsLine[]; unread: UnreadLine[] } {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch {
    return { records: [], unread: [] };
  }
  const records: MetricsLine[] = [];
  const unread: UnreadLine[] = [];
  text.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      v = undefined;
    }
    const at = { line: i + 1, text: line.slice(0, 200) };
    if (typeof v === "object" && v !== null && !Array.isArray(v)) records.push({ ...at, record: v as Record<string, unknown> });
    else unread.push(at);
  });
  return { records, unread };
}

/** Averages numeric fields over a window of steps. */
export class RunningMean {
  private sums = new Map<string, number>();
  private counts = new Map<string, number>();

  /** Adds one observation of each numeric field (undefined / non-finite values are skipped). */
  add(values: Record<string, number | undefined>): void {
    for (const [k, v] of Object.entries(values)) {
      if (v === undefined || !Number.isFinite(v)) continue;
      this.sums.set(k, (this.sums.get(k) ?? 0) + v);
      this.counts.set(k, (this.counts.get(k) ?? 0) + 1);
    }
  }

  /** The means so far. */
  means(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [k, s] of this.sums) out[k] = s / (this.counts.get(k) ?? 1);
    return out;
  }

  /** Clears the window. */
  reset(): void {
    this.sums.clear();
    this.counts.clear();
  }
}

/** What the progress display shows each step. */
export interface ProgressValues {
  loss: number;
  mse: number;
  structure?: number;
  lambda: number;
}

/** Options of {@link Progress}. */
export interface ProgressOptions {
  /** Total steps of the run. */
  total: number;
  /** Step the run starts from (when resuming). */
  start: number;
  /** Without a TTY, print a line every N steps. */
  printEvery: number;
  /** Print nothing. */
  quiet?: boolean;
  /** Force (true) or forbid (false) the bar; default: stdout is a TTY. */
  tty?: boolean;
  /** Where plain lines go (default: stdout). */
  write?: (line: string) => void;
}

function fmtNum(v: number | undefined): string {
  if (v === undefined || !Number.isFinite(v)) return "-";
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(2) : v.toFixed(4);
}

function fmtDuration(sec: number): string {
  if (!Number.isFinite(sec) || sec < 0) return "?";
  const s = Math.round(sec);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, "0")}m` : m > 0 ? `${m}m${String(r).padStart(2, "0")}s` : `${r}s`;
}

/** Progress display: a bar with it/s, ETA, loss, mse and D on a TTY; plain lines every `printEvery` steps otherwise. */
export class Progress {
  private readonly opts: ProgressOptions;
  private readonly bar: SingleBar | undefined;
  private readonly startTime = Date.now();
  private readonly startStep: number;
  private readonly write: (line: string) => void;
  private barStarted = false;

  constructor(opts: ProgressOptions) {
    this.opts = opts;
    this.startStep = opts.start;
    this.write = opts.write ?? ((line) => process.stdout.write(line + "\n"));
    const tty = opts.tty ?? Boolean(process.stdout.isTTY);
    if (!opts.quiet && tty) {
      this.bar = new SingleBar(
        {
          format: " {bar} {value}/{total} | {speed} it/s | ETA {etaText} | loss {loss} mse {mse} D {D} λ {lambda}",
          hideCursor: true,
          clearOnComplete: false,
          etaBuffer: 50,
        },
        Presets.shades_classic,
      );
    }
  }

  /** Steps per second since the start. */
  rate(step: number): number {
    const dt = (Date.now() - this.startTime) / 1000;
    return dt > 0 ? (step - this.startStep) / dt : 0;
  }

  /** Reports that `step` steps are done. */
  update(step: number, v: ProgressValues): void {
    if (this.opts.quiet) return;
    const rate = this.rate(step);
    const eta = rate > 0 ? (this.opts.total - step) / rate : Number.NaN;
    if (this.bar) {
      const payload = {
        speed: rate.toFixed(2),
        etaText: fmtDuration(eta),
        loss: fmtNum(v.loss),
        mse: fmtNum(v.mse),
        D: fmtNum(v.structure),
        lambda: fmtNum(v.lambda),
      };
      if (!this.barStarted) {
        this.bar.start(this.opts.total, step, payload);
        this.barStarted = true;
      } else this.bar.update(step, payload);
    } else if (step % this.opts.printEvery === 0 || step === this.opts.total) {
      this.write(
        `step ${step}/${this.opts.total}  ${rate.toFixed(2)} it/s  eta ${fmtDuration(eta)}  ` +
          `loss ${fmtNum(v.loss)}  mse ${fmtNum(v.mse)}  D ${fmtNum(v.structure)}  λ ${fmtNum(v.lambda)}`,
      );
    }
  }

  /** Prints a message without breaking the bar. */
  log(message: string): void {
    if (this.opts.quiet) return;
    if (this.bar && this.barStarted) {
      // cli-progress redraws on the next update; clear the line first.
      process.stdout.write("\r\x1b[K" + message + "\n");
    } else this.write(message);
  }

  /** Stops the bar. */
  stop(): void {
    if (this.bar && this.barStarted) this.bar.stop();
    this.barStarted = false;
  }
}

/** Options of {@link TaskProgress}. */
export interface TaskProgressOptions {
  /** What is counted, e.g. "files". */
  unit: string;
  /** Items to do. */
  total: number;
  /** Print nothing. */
  quiet?: boolean;
  /** Force (true) or forbid (false) the bar; default: stdout is a TTY. */
  tty?: boolean;
  /** Where plain lines go (default: stdout). */
  write?: (line: string) => void;
  /** Without a TTY, a line every this many seconds (default 10). */
  everySeconds?: number;
}

/** Progress of a batch of work items (decoding files, writing samples): items/s and ETA, as a bar or plain lines. */
export class TaskProgress {
  private readonly bar: SingleBar | undefined;
  private readonly start = Date.now();
  private readonly write: (line: string) => void;
  private lastLine = Date.now();
  private done = 0;

  constructor(private readonly opts: TaskProgressOptions) {
    this.write = opts.write ?? ((line) => process.stdout.write(line + "\n"));
    if (!opts.quiet && (opts.tty ?? Boolean(process.stdout.isTTY))) {
      this.bar = new SingleBar(
        { format: ` {bar} {value}/{total} ${opts.unit} | {speed} ${opts.unit}/s | ETA {etaText}`, hideCursor: true },
        Presets.shades_classic,
      );
      this.bar.start(opts.total, 0, { speed: "0", etaText: "?" });
    }
  }

  /** Items per second so far. */
  rate(): number {
    const dt = (Date.now() - this.start) / 1000;
    return dt > 0 ? this.done / dt : 0;
  }

  /** Counts `n` more items done. */
  tick(n = 1): void {
    this.done += n;
    if (this.opts.quiet) return;
    const rate = this.rate();
    const eta = fmtDuration(rate > 0 ? (this.opts.total - this.done) / rate : Number.NaN);
    if (this.bar) this.bar.update(this.done, { speed: rate.toFixed(1), etaText: eta });
    else if (Date.now() - this.lastLine >= 1000 * (this.opts.everySeconds ?? 10) && this.done < this.opts.total) {
      this.lastLine = Date.now();
      this.write(`  ${this.done}/${this.opts.total} ${this.opts.unit}  ${rate.toFixed(1)} ${this.opts.unit}/s  eta ${eta}`);
    }
  }

  /** Stops the bar. @returns the seconds since the start. */
  stop(): number {
    this.bar?.stop();
    return (Date.now() - this.start) / 1000;
  }
}
