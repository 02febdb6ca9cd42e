/**
 * Planning a run: everything that is decided before the first step, in one place. A run starts one of three ways —
 * fresh, resumed from a checkpoint, or fine-tuned from pretrained weights — and each resolves its config
 * differently (a resumed run's comes from its checkpoint, a fine-tuned run's architecture from its source). The
 * plan also finds the data (without decoding it) and checks that a resumed run reads the same data it was trained
 * on, and refuses to clobber a run directory. `train()` then executes the plan.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { CheckpointError, ConfigError, DataError, NativeError } from "./errors.js";
import { loadNative } from "./native.js";
import { deepMerge, parseConfigInput, resolveConfig, savedInput, toCoreConfig, type SadmConfig, type SadmConfigInput } from "./config.js";
import {
  CHECKPOINTS_DIR,
  assertComplete,
  latestCheckpoint,
  recoverCheckpoints,
  resolveCheckpoint,
  runDirOf,
  type CheckpointState,
  type DatasetInfo,
} from "./checkpoint.js";
import { METRICS_FILE } from "./logging.js";
import { findData, type DataSource } from "./data/index.js";

/** How a run starts. */
export type RunKind = "fresh" | "resume" | "finetune";

/** What {@link planRun} needs besides the config. */
export interface PlanOptions {
  /** Continue a run: `"latest"` (the newest checkpoint in the config's outDir), a checkpoint or a run directory. */
  resume?: string;
  /** Fine-tune: start the DiT from a checkpoint/run directory (its EMA weights) or a safetensors file. */
  from?: string;
  /** Start afresh in an outDir that already holds a run. */
  force?: boolean;
  /** Resume even though the data changed since the checkpoint (its fingerprint differs). */
  forceData?: boolean;
}

/** A run, decided: its config, how it starts, where, and on what data. */
export interface RunPlan {
  kind: RunKind;
  /** The resolved config. */
  cfg: SadmConfig;
  /** The run directory, absolute. */
  outDir: string;
  /** The checkpoint a resumed run continues. */
  resume?: { dir: string; state: CheckpointState };
  /** The weights a fine-tuned run starts from (a checkpoint directory or a weights file, absolute). */
  finetune?: { source: string; dataset?: DatasetInfo };
  /** The data, found but not decoded. */
  data: DataSource;
  /** Start afresh over an existing run (its files are cleared). */
  force: boolean;
  /** What the plan noticed and the user should know (data changes accepted with forceData, fine-tuning on new classes). */
  notes: string[];
}

/** True when a directory already holds a run (metrics or checkpoints). */
export function holdsRun(outDir: string): boolean {
  if (fs.existsSync(path.join(outDir, METRICS_FILE))) return true;
  const ck = path.join(outDir, CHECKPOINTS_DIR);
  try {
    return fs.readdirSync(ck).length > 0;
  } catch {
    return false;
  }
}

function approxEqual(a: unknown, b: unknown): boolean {
  if (typeof a === "number" && typeof b === "number")
    return a === b || Math.abs(a - b) <= 1e-6 * Math.max(Math.abs(a), Math.abs(b));
  return a === b;
}

/** Fields of `ours` (recursively) whose values differ from `theirs` (fields absent from `theirs` are ignored). */
export function coreDifferences(ours: unknown, theirs: unknown, prefix: string): string[] {
  if (typeof ours !== "object" || ours === null) return approxEqual(ours, theirs) ? [] : [prefix];
  if (typeof theirs !== "object" || theirs === null) return [];
  const out: string[] = [];
  for (const [k, v] of Object.entries(ours)) {
    const t: unknown = (theirs as Record<string, unknown>)[k];
    if (t === undefined) continue;
    out.push(...coreDifferences(v, t, prefix ? `${prefix}.${k}` : k));
  }
  return out;
}

/**
 * A resumed run may change the discriminator, like λ and the learning rates: a second stage with another kernel
 * keeps the trained encoder, one with another architecture starts a fresh one (the core says so).
 */
const isDiscriminatorField = (field: string): boolean => field.startsWith("discriminator.");

function findResume(resume: string, input: SadmConfigInput): { dir: string; state: CheckpointState } {
  let dir: string;
  if (resume === "latest" || resume === "") {
    const outDir = input.outDir ?? resolveConfig(input).outDir;
    recoverCheckpoints(outDir);
    const latest = latestCheckpoint(outDir);
    if (!latest) throw new CheckpointError(`nothing to resume: ${outDir} has no complete checkpoint`);
    dir = latest.dir;
  } else {
    if (fs.existsSync(path.join(resume, CHECKPOINTS_DIR))) recoverCheckpoints(resume);
    dir = resolveCheckpoint(resume);
  }
  return { dir, state: assertComplete(dir) };
}

/** The config of a resumed run: the checkpoint's, under the user's overrides, with the networks unchanged. */
function resumedConfig(resume: { dir: string; state: CheckpointState }, input: SadmConfigInput): SadmConfig {
  const saved = resume.state.extra.config;
  const base: Record<string, unknown> = saved ? savedInput(saved) : {};
  const runDir = runDirOf(resume.dir);
  if (input.outDir === undefined && runDir !== undefined) base.outDir = runDir;
  const cfg = resolveConfig(deepMerge(base, input as Record<string, unknown>));
  const diffs = coreDifferences(toCoreConfig(cfg), resume.state.config, "").filter((d) => !isDiscriminatorField(d));
  if (diffs.length > 0)
    throw new ConfigError(
      `config.${diffs[0]}`,
      `differs from the checkpoint being resumed (${resume.dir}); the model, diffusion, ` +
        "optimizer settings and seed cannot change on resume",
    );
  return cfg;
}

/**
 * The config of a fine-tuning run: the source run's architecture and diffusion settings (when the source is a
 * sadm checkpoint and the input names no preset) under the user's input.
 */
function finetuneConfig(from: string, input: SadmConfigInput): { cfg: SadmConfig; source: string; dataset?: DatasetInfo } {
  if (fs.existsSync(from) && fs.statSync(from).isFile()) {
    const source = path.resolve(from);
    if (input.preset !== undefined || input.model?.hiddenSize !== undefined) return { cfg: resolveConfig(input), source };
    return { cfg: resolveConfig(deepMerge(weightsArchitecture(source, input), input as Record<string, unknown>)), source };
  }
  const dir = resolveCheckpoint(from);
  const extra = assertComplete(dir).extra;
  const saved = extra.config;
  const dataset = extra.dataset;
  if (!saved || input.preset !== undefined) return { cfg: resolveConfig(input), source: dir, dataset };
  const base: Record<string, unknown> = { preset: saved.preset, model: saved.model, diffusion: saved.diffusion };
  return { cfg: resolveConfig(deepMerge(base, input as Record<string, unknown>)), source: dir, dataset };
}

/**
 * A weights file's DiT architecture, read from its tensors by the core (a published DiT checkpoint is recognised
 * as its preset), as the base config of a run fine-tuned from it: the new data decide the input size and the class
 * table, DiT's diffusion settings (ε-prediction, learned Σ) come with it.
 * @throws ConfigError when the width is not a reference one and the input names no model.numHeads.
 */
function weightsArchitecture(file: string, input: SadmConfigInput): Record<string, unknown> {
  let arch: { preset: string | null; model: Record<string, unknown> };
  try {
    arch = JSON.parse(loadNative().inspectWeights(file, input.model?.numHeads)) as typeof arch;
  } catch (e) {
    throw NativeError.wrap(e, `cannot read ${file}`);
  }
  const { patchSize, hiddenSize, depth, numHeads, mlpRatio, learnSigma } = arch.model;
  return {
    ...(arch.preset ? { preset: arch.preset } : {}),
    model: { patchSize, hiddenSize, depth, numHeads, mlpRatio, learnSigma },
    diffusion: { prediction: "epsilon" },
  };
}

/**
 * Checks that a resumed run reads the data its checkpoint was trained on.
 * @returns a note when the data changed and `forceData` accepts it.
 * @throws DataError when it changed without `forceData`.
 */
function checkSameData(saved: DatasetInfo | undefined, data: DataSource, checkpoint: string, forceData: boolean): string[] {
  // Checkpoints from before sadm recorded its data carry nothing to check against.
  if (!saved || saved.fingerprint === data.fingerprint) return [];
  const what =
    saved.source !== data.description
      ? `it was trained on ${saved.source}, this run reads ${data.description}`
      : `${data.description} changed (files added, removed or modified, or other preprocessing)`;
  if (!forceData)
    throw new DataError(
      `the data differs from the checkpoint being resumed (${checkpoint}): ${what}. ` +
        "Resume with --force-data (forceData: true) to continue on the data as it is now",
    );
  return [`resuming on changed data (--force-data): ${what}`];
}

/** What a fine-tuning run should know about its classes against its source's. */
function finetuneNotes(source: DatasetInfo | undefined, data: DataSource): string[] {
  const before = source?.classNames;
  const now = data.classNames;
  if (!before || !now || before.join("\u0000") === now.join("\u0000")) return [];
  return [
    `the source was trained on the classes ${before.slice(0, 10).join(", ")}${before.length > 10 ? ", …" : ""}; ` +
      `this run's are ${now.slice(0, 10).join(", ")}${now.length > 10 ? ", …" : ""}`,
  ];
}

/**
 * Decides a run: resolves its config (from the input, a checkpoint or a fine-tuning source), finds its data and
 * checks that it may start.
 * @throws ConfigError, CheckpointError, DataError
 */
export function planRun(config: unknown, opts: PlanOptions = {}): RunPlan {
  const input = parseConfigInput(config);
  if (opts.resume !== undefined && opts.from !== undefined)
    throw new ConfigError("from", "give either resume (continue a run) or from (fine-tune a new run), not both");
  const resume = opts.resume !== undefined ? findResume(opts.resume, input) : undefined;
  const finetune = opts.from !== undefined ? finetuneConfig(opts.from, input) : undefined;
  const cfg = resume ? resumedConfig(resume, input) : finetune ? finetune.cfg : resolveConfig(input);
  const outDir = path.resolve(cfg.outDir);
  recoverCheckpoints(outDir);
  // Refused before the data is walked: clobbering is the cheapest mistake to catch.
  if (!resume && !opts.force && holdsRun(outDir))
    throw new CheckpointError(
      `${cfg.outDir} already holds a run (metrics.jsonl or checkpoints): resume it with --resume, ` +
        "choose another --out, or overwrite it with --force",
    );
  const data = findData(cfg.data);
  const notes = [
    ...(resume ? checkSameData(resume.state.extra.dataset, data, resume.dir, opts.forceData ?? false) : []),
    ...(finetune ? finetuneNotes(finetune.dataset, data) : []),
  ];
  return {
    kind: resume ? "resume" : finetune ? "finetune" : "fresh",
    cfg,
    outDir,
    ...(resume ? { resume } : {}),
    ...(finetune ? { finetune: { source: finetune.source, ...(finetune.dataset ? { dataset: finetune.dataset } : {}) } } : {}),
    data,
    force: !resume && (opts.force ?? false),
    notes,
  };
}
