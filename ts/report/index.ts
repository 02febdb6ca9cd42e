/**
 * Run reports: `sadm report RUN_DIR…` and the `report.html` that training keeps up to date in its run directory.
 * One self-contained HTML file per report; several runs in one report overlay their curves.
 */
import * as path from "node:path";
import { ConfigError } from "../errors.js";
import { writeFileAtomic } from "../image.js";
import { REPORT_FILE } from "../rundir.js";
import { version } from "../version.js";
import { renderReport } from "./html.js";
import { readRun } from "./read.js";
import type { ReportData } from "./types.js";

export type { ReportData, ReportRun, RunStatus, StepSeries } from "./types.js";
export { renderReport } from "./html.js";
export { readRun, wallSeconds } from "./read.js";

/** Options of {@link writeReport}. */
export interface ReportOptions {
  /** Where to write the page (default: `report.html` in the first run's directory). */
  out?: string;
  /** Inline the sample grids as data URLs (one file to share) instead of linking the runs' PNGs. */
  inlineImages?: boolean;
  /** The page's title (default: the run names). */
  title?: string;
}

/**
 * Reads the runs and writes their report, atomically (a browser refreshing it never sees half a file).
 * @returns the report's path.
 * @throws ConfigError with no run; CheckpointError for a folder that is not a run
 */
export function writeReport(runs: string | string[], opts: ReportOptions = {}): string {
  const runDirs = typeof runs === "string" ? [runs] : runs;
  if (!Array.isArray(runDirs) || runDirs.length === 0 || runDirs.some((d) => typeof d !== "string"))
    throw new ConfigError("runs", "give one run directory or a list of them");
  const out = path.resolve(opts.out ?? path.join(runDirs[0], REPORT_FILE));
  const reportDir = path.dirname(out);
  const read = runDirs.map((d) => readRun(d, { reportDir, inlineImages: opts.inlineImages }));
  // Runs named alike (seed-0 of two arms) are told apart by their parent folder.
  const alike = read.map((r) => read.filter((x) => x.name === r.name).length > 1);
  read.forEach((r, i) => {
    if (alike[i]) r.name = `${path.basename(path.dirname(r.dir))}/${r.name}`;
  });
  const now = new Date();
  const data: ReportData = {
    title: opts.title ?? `sadm ${read.length === 1 ? "run" : "runs"}: ${read.map((r) => r.name).join(" · ")}`,
    written: `${now.toISOString().replace("T", " ").slice(0, 19)} UTC, sadm ${version()}`,
    writtenAt: now.toISOString(),
    runs: read,
  };
  writeFileAtomic(out, renderReport(data));
  return out;
}
