/**
 * Checkpoint directories: `<outDir>/checkpoints/step-<8 digits>/` holding model.safetensors, ema.safetensors,
 * discriminator.safetensors, optimizer.safetensors and state.json (written last by the native core, so a directory
 * whose state.json parses is complete).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { CheckpointError, errorMessage } from "./errors.js";
import { processAlive } from "./process.js";
import type { CoreConfig, SadmConfig } from "./config.js";
import type { DataPosition } from "./data/loader.js";
import type { VaeIdentity } from "./data/latents.js";

/** Name of the folder holding a run's checkpoints. */
export const CHECKPOINTS_DIR = "checkpoints";
/** The completion marker of a checkpoint. */
export const STATE_FILE = "state.json";
/** Weight files the native core writes. */
export const WEIGHT_FILES = [
  "model.safetensors",
  "ema.safetensors",
  "discriminator.safetensors",
  "optimizer.safetensors",
] as const;

const STEP_DIR = /^step-(\d{8,})$/;

/** Metrics recorded in a checkpoint's `extra`. */
export interface CheckpointMetrics {
  /** The last step's statistics (with the λ and LR used). */
  last?: Record<string, number>;
  /** Averages logged so far (one entry per logEvery window, capped). */
  history?: Array<Record<string, number>>;
}

/** What a run's data was: stored with every checkpoint so that resume and fine-tuning can check it. */
export interface DatasetInfo {
  /** What the data is, e.g. `mnist`, `folder /abs/path/to/images`, `emoji`. */
  source: string;
  /** Class names by label index (`classNames[k]` is label k) when the data has named classes. */
  classNames?: string[];
  /** Digest of the file list, sizes, mtimes and preprocessing (a changed folder gets another). */
  fingerprint: string;
  /** Images in the dataset. */
  images: number;
  /** For latents: the VAE they were encoded with (sampling and evaluation decode through it). */
  vae?: VaeIdentity;
}

/** What the TS side stores in state.json's `extra`. */
export interface CheckpointExtra {
  /** The run's data. */
  dataset?: DatasetInfo;
  /** The resolved user config of the run. */
  config?: SadmConfig;
  /** The data-order position to continue from. */
  data?: DataPosition;
  /** Metrics so far. */
  metrics?: CheckpointMetrics;
  /** sadm version that wrote it. */
  sadmVersion?: string;
  /** For a fine-tuning run: the checkpoint or weights file it started from. */
  finetunedFrom?: string;
}

/** A checkpoint's state.json (as written by the native core). */
export interface CheckpointState {
  formatVersion: number;
  config: CoreConfig;
  step: number;
  rng: unknown;
  extra: CheckpointExtra;
  /**
   * SHA-256 (lowercase hex, as `sha256sum` prints it) of each weight file by name, which the native core checks on
   * every load; absent in checkpoints written before sadm recorded them.
   */
  files?: Record<string, string>;
}

/** A complete checkpoint found on disk. */
export interface CheckpointInfo {
  /** Absolute path of the checkpoint directory. */
  dir: string;
  /** Optimizer steps taken when it was written. */
  step: number;
}

/** Directory name for a step: `step-00001500`. */
export function checkpointName(step: number): string {
  return `step-${String(step).padStart(8, "0")}`;
}

/** Path of the checkpoint for `step` under a run directory. */
export function checkpointDir(outDir: string, step: number): string {
  return path.join(outDir, CHECKPOINTS_DIR, checkpointName(step));
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * Reads and checks a checkpoint's state.json.
 * @throws CheckpointError when the directory, state.json or a weight file is missing, or state.json is corrupt.
 */
export function readState(dir: string): CheckpointState {
  if (!fs.existsSync(dir)) throw new CheckpointError(`checkpoint ${dir} does not exist`);
  if (!fs.statSync(dir).isDirectory()) throw new CheckpointError(`checkpoint ${dir} is not a directory`);
  const file = path.join(dir, STATE_FILE);
  if (!fs.existsSync(file))
    throw new CheckpointError(`checkpoint ${dir} is incomplete: ${STATE_FILE} is missing (interrupted save?)`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    throw new CheckpointError(`checkpoint ${dir}: ${STATE_FILE} is corrupt: ${errorMessage(e)}`, { cause: e });
  }
  if (!isRecord(parsed)) throw new CheckpointError(`checkpoint ${dir}: ${STATE_FILE} is not a JSON object`);
  const { formatVersion, config, step, rng, extra, files } = parsed;
  if (typeof formatVersion !== "number")
    throw new CheckpointError(`checkpoint ${dir}: ${STATE_FILE} has no numeric formatVersion`);
  if (typeof step !== "number" || !Number.isInteger(step) || step < 0)
    throw new CheckpointError(`checkpoint ${dir}: ${STATE_FILE} has no valid step`);
  if (!isRecord(config)) throw new CheckpointError(`checkpoint ${dir}: ${STATE_FILE} has no config`);
  const ext = extra === undefined || extra === null ? {} : extra;
  if (!isRecord(ext)) throw new CheckpointError(`checkpoint ${dir}: ${STATE_FILE} has a non-object extra`);
  if (files !== undefined && !(isRecord(files) && Object.values(files).every((v) => typeof v === "string")))
    throw new CheckpointError(`checkpoint ${dir}: ${STATE_FILE} has a files entry that is not a map of file names to digests`);
  return {
    formatVersion,
    config: config as unknown as CoreConfig,
    step,
    rng,
    extra: ext as CheckpointExtra,
    ...(files === undefined ? {} : { files: files as Record<string, string> }),
  };
}

/** Checks the weight files are there too. @throws CheckpointError naming the missing file. */
export function assertComplete(dir: string): CheckpointState {
  const state = readState(dir);
  for (const f of WEIGHT_FILES)
    if (!fs.existsSync(path.join(dir, f))) throw new CheckpointError(`checkpoint ${dir} is incomplete: ${f} is missing`);
  return state;
}

function tryState(dir: string): CheckpointState | undefined {
  try {
    return assertComplete(dir);
  } catch {
    return undefined;
  }
}

/** The checkpoints folder of a run and the names in it (none when it does not exist). */
function checkpointEntries(outDir: string): { root: string; names: string[] } {
  const root = path.resolve(outDir, CHECKPOINTS_DIR);
  try {
    return { root, names: fs.readdirSync(root) };
  } catch {
    return { root, names: [] };
  }
}

/** The complete checkpoints of a run (state.json parses and every weight file is there), oldest first. */
export function listCheckpoints(outDir: string): CheckpointInfo[] {
  const { root, names } = checkpointEntries(outDir);
  const out: CheckpointInfo[] = [];
  for (const name of names) {
    const m = STEP_DIR.exec(name);
    if (!m) continue;
    const dir = path.join(root, name);
    const state = tryState(dir);
    if (!state) continue;
    out.push({ dir, step: state.step });
  }
  return out.sort((a, b) => a.step - b.step || a.dir.localeCompare(b.dir));
}

/** The newest complete checkpoint of a run, or undefined. */
export function latestCheckpoint(outDir: string): CheckpointInfo | undefined {
  const all = listCheckpoints(outDir);
  return all.length > 0 ? all[all.length - 1] : undefined;
}

/**
 * Deletes all but the newest `keep` complete checkpoints.
 * @returns the directories removed.
 */
export function pruneCheckpoints(outDir: string, keep: number): string[] {
  if (!Number.isInteger(keep) || keep < 1) throw new CheckpointError(`keepCheckpoints must be ≥ 1 (got ${keep})`);
  const all = listCheckpoints(outDir);
  const doomed = all.slice(0, Math.max(0, all.length - keep));
  for (const c of doomed) {
    // Out of the checkpoint namespace in one rename first: a deletion killed halfway would otherwise leave a
    // directory with state.json but without some weights.
    const gone = path.join(path.dirname(c.dir), `.${path.basename(c.dir)}.del-${process.pid}-${Date.now()}`);
    fs.renameSync(c.dir, gone);
    fs.rmSync(gone, { recursive: true, force: true });
  }
  return doomed.map((c) => c.dir);
}

/**
 * The temporaries of an interrupted save (`.step-N.tmp-PID-T`, `.step-N.old-PID-T`; see the core's `save`) or
 * deletion (`.step-N.del-PID-T`, {@link pruneCheckpoints}).
 */
const SAVE_TEMP = /^\.(step-\d+)\.(tmp|old|del)-(\d+)-\d+$/;

/**
 * Cleans up after saves and deletions that a killed process left half-done: a `.tmp` directory is an incomplete
 * new checkpoint and a `.del` one a pruned checkpoint, and both are deleted; an `.old` directory is the previous
 * checkpoint of that name, moved aside just before the new one was renamed into place, and is put back if the new
 * one never arrived. Those of processes still alive are left alone.
 * @returns what was done, one line per directory.
 */
export function recoverCheckpoints(outDir: string): string[] {
  const { root, names } = checkpointEntries(outDir);
  const done: string[] = [];
  for (const name of names) {
    const m = SAVE_TEMP.exec(name);
    if (!m || processAlive(Number(m[3]))) continue;
    const [dir, target] = [path.join(root, name), path.join(root, m[1])];
    if (m[2] === "old" && !tryState(target) && tryState(dir)) {
      fs.rmSync(target, { recursive: true, force: true });
      fs.renameSync(dir, target);
      done.push(`restored ${target} from an interrupted replacement`);
    } else {
      fs.rmSync(dir, { recursive: true, force: true });
      done.push(`removed ${dir}, left by an interrupted save or deletion`);
    }
  }
  return done;
}

/**
 * Resolves what a user named as a checkpoint: a checkpoint directory (has state.json), or a run directory
 * (its latest complete checkpoint).
 * @throws CheckpointError when nothing usable is there.
 */
export function resolveCheckpoint(target: string): string {
  const abs = path.resolve(target);
  if (!fs.existsSync(abs)) throw new CheckpointError(`checkpoint ${target} does not exist`);
  if (fs.existsSync(path.join(abs, STATE_FILE))) return abs;
  if (fs.existsSync(path.join(abs, CHECKPOINTS_DIR))) {
    const latest = latestCheckpoint(abs);
    if (!latest) throw new CheckpointError(`run ${target} has no complete checkpoint`);
    return latest.dir;
  }
  // Let readState produce the precise message (not a directory / no state.json).
  readState(abs);
  return abs;
}

/** The run directory a checkpoint directory belongs to (`<outDir>/checkpoints/step-N` → `<outDir>`), if it does. */
export function runDirOf(checkpoint: string): string | undefined {
  const abs = path.resolve(checkpoint);
  const parent = path.dirname(abs);
  return path.basename(parent) === CHECKPOINTS_DIR && STEP_DIR.test(path.basename(abs)) ? path.dirname(parent) : undefined;
}
