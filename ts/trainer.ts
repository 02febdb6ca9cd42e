/**
 * The training loop: config → data → native SADM steps (one native call per step) → logs, sample grids and
 * checkpoints; resumable, abortable.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { CheckpointError, ConfigError, NativeError, NumericalError, SadmError, fsError, isFsError } from "./errors.js";
import {
  deepMerge,
  parseConfigInput,
  resolveConfig,
  toCoreConfig,
  type CoreConfig,
  type SadmConfig,
  type SadmConfigInput,
} from "./config.js";
import { BatchLoader, openDataset, type DataPosition, type Dataset } from "./data.js";
import { emaDecayAt, lambdaAt, lrAt } from "./schedule.js";
import {
  CHECKPOINTS_DIR,
  assertComplete,
  checkpointDir,
  latestCheckpoint,
  listCheckpoints,
  pruneCheckpoints,
  recoverCheckpoints,
  resolveCheckpoint,
  runDirOf,
  type CheckpointExtra,
  type CheckpointState,
} from "./checkpoint.js";
import { METRICS_FILE, MetricsLog, Progress, RunningMean } from "./logging.js";
import { loadNative, type NativeTrainer, type ParamCounts, type StepStats } from "./native.js";
import { saveGrid, writeFileAtomic } from "./image.js";
import { planSamples, sampleFrom } from "./sampler.js";
import { version } from "./version.js";
import { evalRecord, evaluateModel, formatMetrics, type EvalMetrics } from "./evaluate.js";

/** File name of the resolved config saved in the run directory. */
export const CONFIG_FILE = "config.json";
/** Folder of the sample grids written during training. */
export const SAMPLES_DIR = "samples";
const HISTORY_CAP = 2000;

/** Per-step information passed to `onStep`: the native statistics plus the schedule values used. */
export interface TrainStepInfo extends StepStats {
  /** λ used for this step. */
  lambda: number;
  /** DiT learning rate used for this step. */
  lr: number;
  /** EMA decay used for this step. */
  emaDecay: number;
  /** Wall-clock seconds of the native step. */
  seconds: number;
}

/** Options of {@link train}. */
export interface TrainOptions {
  /** Called after every step. */
  onStep?: (info: TrainStepInfo) => void;
  /** Called after a sample grid is written. */
  onSample?: (file: string, step: number) => void;
  /** Called after a checkpoint is written. */
  onCheckpoint?: (dir: string, step: number) => void;
  /** Aborting stops after the current step, saves a checkpoint and resolves with `aborted: true`. */
  signal?: AbortSignal;
  /**
   * Continue a run: `"latest"` (the newest checkpoint in the config's outDir), a checkpoint directory, or a run
   * directory. Values in `config` override the checkpoint's config (e.g. more `steps`); the architecture cannot change.
   */
  resume?: string;
  /** Start afresh in an outDir that already holds a run (its metrics, checkpoints and samples are deleted). */
  force?: boolean;
  /**
   * Fine-tune: start the DiT from pretrained weights (a checkpoint or run directory, whose EMA weights are taken,
   * or a safetensors file in the reference DiT names) with a fresh discriminator, optimizers and EMA. Unless the
   * config names a preset, the architecture and diffusion settings come from the source run (under the config's).
   */
  from?: string;
  /** Called after each evaluation (`config.eval.every`). */
  onEval?: (metrics: EvalMetrics, step: number) => void;
  /** No progress output. */
  quiet?: boolean;
  /** Force the progress bar on (true) or off (false); default: when stdout is a TTY. */
  tty?: boolean;
  /** Where plain progress lines go (default stdout). */
  log?: (line: string) => void;
}

/** What {@link train} resolves with. */
export interface TrainResult {
  /** The run directory. */
  outDir: string;
  /** The resolved config. */
  config: SadmConfig;
  /** Optimizer steps taken in total. */
  step: number;
  /** Steps run by this call. */
  stepsRun: number;
  /** The last checkpoint written or loaded. */
  checkpoint: string | undefined;
  /** Sample grids written by this call. */
  samples: string[];
  /** True when stopped by the AbortSignal. */
  aborted: boolean;
  /** The last step's info. */
  last: TrainStepInfo | undefined;
  /** Wall-clock seconds of this call. */
  seconds: number;
  /** Parameter counts of the DiT and the discriminator. */
  paramCounts: ParamCounts;
  /** Evaluations run by this call. */
  evals: Array<EvalMetrics & { step: number }>;
  /** Steps skipped by this call for a non-finite loss or gradient norm (see `maxBadSteps`). */
  skippedSteps: number;
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
function coreDifferences(ours: unknown, theirs: unknown, prefix: string): string[] {
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

interface ResumePlan {
  dir: string;
  state: CheckpointState;
}

function planResume(resume: string, input: SadmConfigInput): ResumePlan {
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

function resolveResumedConfig(plan: ResumePlan, input: SadmConfigInput): SadmConfig {
  const saved = plan.state.extra.config;
  const base: Record<string, unknown> = saved ? { ...saved } : {};
  const runDir = runDirOf(plan.dir);
  if (input.outDir === undefined && runDir !== undefined) base.outDir = runDir;
  const cfg = resolveConfig(deepMerge(base, input as Record<string, unknown>));
  const diffs = coreDifferences(toCoreConfig(cfg), plan.state.config, "").filter((d) => !STRUCTURE_LOSS_FIELDS.has(d));
  if (diffs.length > 0)
    throw new ConfigError(
      `config.${diffs[0]}`,
      `differs from the checkpoint being resumed (${plan.dir}); the model, diffusion, discriminator architecture, ` +
        "optimizer settings and seed cannot change on resume",
    );
  return cfg;
}

/**
 * Discriminator settings that shape the structure loss but not the networks: a resumed run may change them (e.g. a
 * second stage with another kernel), like λ and the learning rates.
 */
const STRUCTURE_LOSS_FIELDS = new Set(
  ["kernel", "tau", "distance", "huberDelta", "pairs", "weighting", "tMax", "steps"].map((k) => `discriminator.${k}`),
);

/**
 * The config of a fine-tuning run: the source run's architecture and diffusion settings (when the source is a
 * sadm checkpoint and the input names no preset) under the user's input.
 */
function resolveFinetuneConfig(from: string, input: SadmConfigInput): { cfg: SadmConfig; source: string } {
  if (fs.existsSync(from) && fs.statSync(from).isFile()) return { cfg: resolveConfig(input), source: path.resolve(from) };
  const dir = resolveCheckpoint(from);
  const saved = assertComplete(dir).extra.config;
  if (!saved || input.preset !== undefined) return { cfg: resolveConfig(input), source: dir };
  const base: Record<string, unknown> = { preset: saved.preset, model: saved.model, diffusion: saved.diffusion };
  return { cfg: resolveConfig(deepMerge(base, input as Record<string, unknown>)), source: dir };
}

function sampleClasses(cfg: SadmConfig): number[] | undefined {
  if (cfg.model.numClasses === 0) return undefined;
  return cfg.data.classes ? [...cfg.data.classes].sort((a, b) => a - b) : undefined;
}

/**
 * Trains a DiT with SADM. Resolves when `config.steps` steps are done (or the signal aborts).
 * @param config a (partial) user config; see {@link SadmConfig}. Defaults to the built-in MNIST run.
 * @throws ConfigError, DataError, CheckpointError, NativeError
 */
export async function train(config: SadmConfigInput | unknown = {}, opts: TrainOptions = {}): Promise<TrainResult> {
  const t0 = Date.now();
  const input = parseConfigInput(config);
  if (opts.resume !== undefined && opts.from !== undefined)
    throw new ConfigError("from", "give either resume (continue a run) or from (fine-tune a new run), not both");
  const resumePlan = opts.resume !== undefined ? planResume(opts.resume, input) : undefined;
  const finetune = opts.from !== undefined ? resolveFinetuneConfig(opts.from, input) : undefined;
  const cfg = resumePlan ? resolveResumedConfig(resumePlan, input) : finetune ? finetune.cfg : resolveConfig(input);
  const outDir = path.resolve(cfg.outDir);
  recoverCheckpoints(outDir);

  // Refuse early (before the slow parts) to clobber an existing run.
  if (!resumePlan && !opts.force && holdsRun(outDir))
    throw new CheckpointError(
      `${cfg.outDir} already holds a run (metrics.jsonl or checkpoints): resume it with --resume, ` +
        "choose another --out, or overwrite it with --force",
    );

  // Data.
  const dataset: Dataset = openDataset(cfg.data);
  if (cfg.model.numClasses !== 0 && dataset.numClasses > cfg.model.numClasses)
    throw new ConfigError(
      "config.model.numClasses",
      `the dataset has ${dataset.numClasses} classes (got ${cfg.model.numClasses})`,
    );
  const savedPos: DataPosition | undefined = resumePlan?.state.extra.data;
  const loader = new BatchLoader(dataset, cfg.batchSize, cfg.seed, savedPos);
  if (resumePlan && !savedPos) {
    // Older checkpoints without a position: the order is a pure function of the step for a fixed batch size.
    const s = resumePlan.state.step;
    loader.restore({
      epoch: Math.floor(s / loader.batchesPerEpoch),
      index: (s % loader.batchesPerEpoch) * cfg.batchSize,
    });
  }

  // Native trainer.
  const native = loadNative(cfg.device);
  const core: CoreConfig = toCoreConfig(cfg);
  let trainer: NativeTrainer;
  try {
    trainer = resumePlan
      ? native.NativeTrainer.load(resumePlan.dir, cfg.device)
      : finetune
        ? native.NativeTrainer.fromPretrained(JSON.stringify(core), finetune.source, cfg.device)
        : native.NativeTrainer.create(JSON.stringify(core), cfg.device);
  } catch (e) {
    throw NativeError.wrap(
      e,
      resumePlan
        ? `cannot load checkpoint ${resumePlan.dir}`
        : finetune
          ? `cannot start from ${finetune.source}`
          : "cannot create the trainer",
    );
  }
  const finetuneNotes: string[] = finetune ? parseNotes(trainer.extraJson()) : [];
  if (resumePlan && coreDifferences(core.discriminator, resumePlan.state.config.discriminator, "").length > 0) {
    try {
      trainer.setStructureLoss(JSON.stringify(core.discriminator));
    } catch (e) {
      throw NativeError.wrap(e, "cannot change the structure loss on resume");
    }
  }
  const paramCounts = trainer.paramCounts();

  // Run directory (--force: clear the previous run's files, nothing else).
  if (!resumePlan && opts.force) {
    for (const name of [METRICS_FILE, CHECKPOINTS_DIR, SAMPLES_DIR, CONFIG_FILE])
      fs.rmSync(path.join(outDir, name), { recursive: true, force: true });
  }
  try {
    fs.mkdirSync(outDir, { recursive: true });
  } catch (e) {
    throw isFsError(e) ? fsError(e, `cannot create the run directory ${cfg.outDir}`) : e;
  }
  writeFileAtomic(path.join(outDir, CONFIG_FILE), JSON.stringify(cfg, null, 2) + "\n");

  // Logs.
  const metrics = new MetricsLog(path.join(outDir, METRICS_FILE));
  const startStep = trainer.stepCount;
  if (resumePlan) metrics.truncateAfter(startStep);
  const history: Array<Record<string, number>> = [...(resumePlan?.state.extra.metrics?.history ?? [])].filter(
    (h) => (h.step ?? 0) <= startStep,
  );
  const progress = new Progress({
    total: cfg.steps,
    start: startStep,
    printEvery: cfg.printEvery,
    quiet: opts.quiet,
    tty: opts.tty,
    write: opts.log,
  });
  if (!resumePlan) {
    progress.log(
      `sadm: ${finetune ? `fine-tuning ${finetune.source} as` : "training"} ${cfg.preset} ` +
        `(${(paramCounts.dit / 1e6).toFixed(2)}M DiT params, ` +
        `${(paramCounts.discriminator / 1e6).toFixed(2)}M discriminator) for ${cfg.steps} steps on ${cfg.device} → ${cfg.outDir}`,
    );
    if (cfg.trainable !== "all")
      progress.log(`sadm: training ${trainer.trainableNames().length} DiT parameter tensors (trainable: ${JSON.stringify(cfg.trainable)})`);
    for (const note of finetuneNotes) progress.log(`sadm: note: ${note}`);
  } else progress.log(`sadm: resuming ${resumePlan.dir} at step ${startStep} of ${cfg.steps}`);

  const window = new RunningMean();
  const samples: string[] = [];
  let last: TrainStepInfo | undefined;
  let lastCheckpoint: string | undefined = resumePlan?.dir;
  let lastSavedStep = resumePlan ? startStep : -1;
  let lastSampleStep = -1;
  let step = startStep;
  let aborted = false;
  let badInRow = 0;
  let skippedSteps = 0;

  const extra = (): CheckpointExtra => ({
    config: cfg,
    data: loader.position,
    metrics: { last: last ? numericFields(last) : undefined, history },
    sadmVersion: version(),
    ...(finetune ? { finetunedFrom: finetune.source } : resumePlan?.state.extra.finetunedFrom ? { finetunedFrom: resumePlan.state.extra.finetunedFrom } : {}),
  });

  const evals: Array<EvalMetrics & { step: number }> = [];
  let lastEvalStep = -1;
  const runEval = async (): Promise<void> => {
    const m = await evaluateModel(trainer, cfg);
    const record = evalRecord(step, m);
    metrics.append(record);
    history.push(record);
    evals.push({ ...m, step });
    lastEvalStep = step;
    progress.log(`sadm: eval at step ${step}: ${formatMetrics(m)} (${m.seconds.toFixed(1)}s)`);
    opts.onEval?.(m, step);
  };

  const saveCheckpoint = async (): Promise<void> => {
    // The native save replaces an existing directory of the same name only once the new one is complete.
    const dir = checkpointDir(outDir, step);
    try {
      await trainer.save(dir, JSON.stringify(extra()));
    } catch (e) {
      throw NativeError.wrap(e, `saving checkpoint ${dir} failed`);
    }
    lastSavedStep = step;
    lastCheckpoint = dir;
    pruneCheckpoints(outDir, cfg.keepCheckpoints);
    opts.onCheckpoint?.(dir, step);
  };

  const writeSamples = async (): Promise<void> => {
    const plan = planSamples(cfg.model, sampleClasses(cfg), cfg.samplesPerClass, 8 * cfg.samplesPerClass);
    const { images, shape } = await sampleFrom(trainer, plan.labels, {
      sampler: cfg.sampler,
      steps: cfg.sampleSteps,
      cfgScale: plan.conditional ? cfg.cfgScale : 1,
      eta: cfg.eta,
      seed: cfg.seed,
      clipDenoised: true,
    });
    const file = path.join(outDir, SAMPLES_DIR, `step-${String(step).padStart(8, "0")}.png`);
    saveGrid(file, images, shape[0], shape[1], shape[2], shape[3], plan.cols);
    lastSampleStep = step;
    samples.push(file);
    opts.onSample?.(file, step);
  };

  try {
    while (step < cfg.steps) {
      if (opts.signal?.aborted) {
        aborted = true;
        break;
      }
      const t = trainer.stepCount;
      const lambda = lambdaAt(t, cfg.lambda, cfg.advWarmupSteps, cfg.advRampSteps);
      const lr = lrAt(t, cfg.lr, cfg.lrWarmupSteps);
      const emaDecay = emaDecayAt(t, cfg.emaDecay, cfg.emaWarmup);
      const batch = loader.next();
      const labels = cfg.model.numClasses === 0 ? new Int32Array(batch.labels.length) : batch.labels;
      const ts = Date.now();
      let stats: StepStats;
      try {
        stats = await trainer.step(batch.x, labels, {
          lambda,
          lr,
          discLr: cfg.discLr,
          emaDecay,
          // The discriminator trains only while λ > 0: during the warm-up its output would not reach the DiT.
          updateDisc: lambda > 0,
        });
      } catch (e) {
        throw NativeError.wrap(e, `training step ${t + 1} failed`);
      }
      step = stats.step;
      if (stats.skipped) {
        badInRow++;
        skippedSteps++;
        metrics.append({ step, skipped: stats.skipped, time: (Date.now() - t0) / 1000 });
        progress.log(`sadm: step ${step} skipped (nothing updated): ${stats.skipped} [${badInRow} in a row]`);
        if (badInRow >= cfg.maxBadSteps)
          throw new NumericalError(
            `training stopped at step ${step}: ${badInRow} steps in a row were skipped, the last because its ${stats.skipped}. ` +
              (lastCheckpoint
                ? `The last good checkpoint is ${lastCheckpoint}: resume from it (sadm train --resume ${lastCheckpoint})`
                : "No checkpoint was written yet: start again") +
              " with a lower lr or lambda, or with gradient clipping (--set ditOptim.gradClip=1).",
            step,
            lastCheckpoint,
          );
      } else {
        badInRow = 0;
        last = { ...stats, lambda, lr, emaDecay, seconds: (Date.now() - ts) / 1000 };
        window.add(numericFields(last));
      }
      if (step % cfg.logEvery === 0 || step === cfg.steps) {
        const means = window.means();
        // A window of nothing but skipped steps has no means to log; their own records are already there.
        if (Object.keys(means).length > 0) {
          const record: Record<string, number> = {
            ...means,
            step,
            itPerSec: means.seconds > 0 ? 1 / means.seconds : 0,
            time: (Date.now() - t0) / 1000,
          };
          metrics.append(record);
          history.push(record);
          if (history.length > HISTORY_CAP) history.splice(0, history.length - HISTORY_CAP);
          window.reset();
        }
      }
      // Nothing else during a run of skipped steps: its checkpoints would rotate out the good ones before it.
      // (`last` is this step's info whenever badInRow is 0.)
      if (badInRow > 0 || !last) continue;
      progress.update(step, last);
      opts.onStep?.(last);
      if (cfg.sampleEvery > 0 && step % cfg.sampleEvery === 0) await writeSamples();
      if (cfg.eval.every > 0 && step % cfg.eval.every === 0) await runEval();
      if (cfg.checkpointEvery > 0 && step % cfg.checkpointEvery === 0) await saveCheckpoint();
    }
    if (opts.signal?.aborted) aborted = true;
    if (!aborted && lastSampleStep !== step && step > startStep) await writeSamples();
    if (!aborted && cfg.eval.every > 0 && lastEvalStep !== step && step > startStep) await runEval();
    if (lastSavedStep !== step) await saveCheckpoint();
  } finally {
    progress.stop();
  }
  if (aborted) progress.log(`sadm: stopped at step ${step}; checkpoint ${lastCheckpoint ?? "-"}`);

  return {
    outDir,
    config: cfg,
    step,
    stepsRun: step - startStep,
    checkpoint: lastCheckpoint,
    samples,
    aborted,
    last,
    seconds: (Date.now() - t0) / 1000,
    paramCounts,
    evals,
    skippedSteps,
  };
}

function parseNotes(extraJson: string): string[] {
  try {
    const v: unknown = JSON.parse(extraJson);
    const notes = typeof v === "object" && v !== null ? (v as { notes?: unknown }).notes : undefined;
    return Array.isArray(notes) ? notes.filter((n): n is string => typeof n === "string") : [];
  } catch {
    return [];
  }
}

function numericFields(o: object): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(o)) if (typeof v === "number") out[k] = v;
  return out;
}

/** The complete checkpoints of a run directory (re-exported for convenience). */
export { listCheckpoints };
