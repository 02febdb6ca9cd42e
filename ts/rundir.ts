/**
 * What a run directory holds besides checkpoints and metrics: the file names, and `status.json`, the run's own
 * account of where it stands (written by the trainer, read by the report).
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { writeFileAtomic } from "./image.js";

/** File name of the resolved config saved in the run directory. */
export const CONFIG_FILE = "config.json";
/** Folder of the sample grids written during training. */
export const SAMPLES_DIR = "samples";
/** The list of files the run's data skipped because they did not decode (path, then the decoder's message). */
export const BAD_IMAGES_FILE = "bad-images.txt";
/** The run's status ({@link RunStatusFile}). */
export const STATUS_FILE = "status.json";
/** The HTML run report that training keeps up to date. */
export const REPORT_FILE = "report.html";

/** `status.json`: what the process training a run last said about it. */
export interface RunStatusFile {
  /** `running` until the process ends; then `finished`, `aborted` (the signal, e.g. Ctrl-C) or `failed`. */
  state: "running" | "finished" | "aborted" | "failed";
  /** Steps taken and the run's target. */
  step: number;
  steps: number;
  /** The training process (to tell a live run from a killed one on the same host). */
  pid: number;
  host: string;
  device: string;
  sadmVersion: string;
  /** ISO times: when this process started, and when it wrote this. */
  started: string;
  updated: string;
  /** A failed run: the error's class and message. */
  error?: { name: string; message: string };
}

/** Writes `status.json` atomically. */
export function writeRunStatus(outDir: string, status: Omit<RunStatusFile, "pid" | "host" | "updated">): void {
  const full: RunStatusFile = { ...status, pid: process.pid, host: os.hostname(), updated: new Date().toISOString() };
  writeFileAtomic(path.join(outDir, STATUS_FILE), JSON.stringify(full, null, 2) + "\n");
}

/** The run's `status.json`, or undefined when it has none (older runs) or it does not parse. */
export function readRunStatus(outDir: string): RunStatusFile | undefined {
  try {
    const v: unknown = JSON.parse(fs.readFileSync(path.join(outDir, STATUS_FILE), "utf8"));
    if (typeof v !== "object" || v === null) return undefined;
    const s = v as Partial<RunStatusFile>;
    return typeof s.state === "string" && typeof s.step === "number" && typeof s.pid === "number" ? (s as RunStatusFile) : undefined;
  } catch {
    return undefined;
  }
}

/** Whether the process that wrote `status` is still alive (only knowable on its own host). */
export function writerAlive(status: RunStatusFile): boolean | undefined {
  if (status.host !== os.hostname()) return undefined;
  try {
    process.kill(status.pid, 0);
    return true;
  } catch (e) {
    // EPERM: it exists but belongs to someone else.
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}
