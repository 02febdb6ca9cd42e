/**
 * What a run report shows: the data the page script draws. Shared by the reader (Node) and the page (a browser),
 * so this file imports nothing.
 */

/** A series over steps: `steps[i]` pairs with `values[i]`; null where a record lacks the value. */
export interface StepSeries {
  steps: number[];
  values: Array<number | null>;
}

/** A non-finite step the trainer skipped (nothing was updated). */
export interface SkippedStep {
  step: number;
  why: string;
}

/** A metrics.jsonl line that did not parse (a killed process leaves a torn last line). */
export interface TornLine {
  /** 1-based line number. */
  line: number;
  text: string;
}

/** A sample grid written at a step; `src` is what the page's `<img>` loads (a relative path or a data URL). */
export interface GridImage {
  step: number;
  src: string;
}

/** Where the run stands. */
export interface RunStatus {
  state: "running" | "finished" | "stopped" | "failed" | "interrupted" | "incomplete";
  /** One line for the header, e.g. "stopped at step 40: 5 steps in a row were skipped…". */
  summary: string;
}

/** One run, as the page draws it. */
export interface ReportRun {
  name: string;
  dir: string;
  status: RunStatus;
  /** Steps taken (the newest record's step) and the run's target. */
  step: number;
  steps: number;
  /** Training curves by metrics.jsonl key (mse, vb, structure, discLoss, gradNormDit, gradNormDisc, …). */
  train: Record<string, StepSeries>;
  /** The planned λ, learning rate and EMA decay over the whole run (from the config, so the future shows too). */
  schedules: Record<"lambda" | "lr" | "emaDecay", StepSeries>;
  /** Evaluation metrics by key (fd, kid, precision, recall, accuracy). */
  evals: Record<string, StepSeries>;
  skipped: SkippedStep[];
  torn: TornLine[];
  grids: GridImage[];
  checkpoints: Array<{ step: number; dir: string }>;
  /** How to continue it (a shell command), when it can be continued. */
  resume: string | undefined;
  /** Label/value pairs of the run card: preset, data, classes, device, version, throughput, wall time… */
  facts: Array<[string, string]>;
  /** The resolved config, pretty-printed JSON. */
  config: string;
}

/** The page's data: the runs, and when the report was written. */
export interface ReportData {
  title: string;
  /** When and by which sadm it was written, for the header; `writtenAt` is the same moment as an ISO time. */
  written: string;
  writtenAt: string;
  runs: ReportRun[];
}
