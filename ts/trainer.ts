/**
 * The training loop: a planned run ({@link planRun}) → its data → native SADM steps (one native call per step, the
 * next batch assembled while the step runs) → logs, sample grids and checkpoints; resumable, abortable.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { ConfigError, DataError, NativeError, NumericalError, errorMessage, fsError, isFsError } from "./errors.js";
import { toCoreConfig, type SadmConfig, type SadmConfigInput } from "./config.js";
import { BatchLoader, classLabels, type DataPosition, type OpenedData, type PositionedBatch } from "./data/index.js";
import { emaDecayAt, lambdaAt, lrAt } from "./schedule.js";
import { CHECKPOINTS_DIR, checkpointDir, listCheckpoints, pruneCheckpoints, type CheckpointExtra } from "./checkpoint.js";
import { METRICS_FILE, MetricsLog, Progress, RunningMean } from "./logging.js";
import { loadNative, type NativeTrainer, type ParamCounts, type StepStats } from "./native.js";
import { saveLabelledGrid, writeFileAtomic } from "./image.js";
import { decodeAll, type Vae } from "./latent/vae.js";
import { planSamples, sampleFrom } from "./sampler.js";
import { version } from "./version.js";
import { evalRecord, evaluateModel, formatMetrics, runVae, type EvalMetrics } from "./evaluate.js";
import { coreDifferences, planRun, type PlanOptions, type RunPlan } from "./plan.js";
import { BAD_IMAGES_FILE, CONFIG_FILE, REPORT_FILE, SAMPLES_DIR, STATUS_FILE, writeRunStatus, type RunStatusFile } from "./rundir.js";
import { writeReport } from "./report/index.js";

export { BAD_IMAGES_FILE, CONFIG_FILE, SAMPLES_DIR } from "./rundir.js";
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
  /** Seconds spent assembling the next batch, while this step ran (a step waits on data only when this exceeds it). */
  dataSeconds: number;
}

/** Options of {@link train}. */
export interface TrainOptions extends PlanOptions {
  /** Called after every step. */
  onStep?: (info: TrainStepInfo) => void;
  /** Called after a sample grid is written. */
  onSample?: (file: string, step: number) => void;
  /** Called after a checkpoint is written. */
  onCheckpoint?: (dir: string, step: number) => void;
  /** Aborting stops after the current step, saves a checkpoint and resolves with `aborted: true`. */
  signal?: AbortSignal;
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

/**
 * Trains a DiT with SADM. Resolves when `config.steps` steps are done (or the signal aborts).
 * @param config a (partial) user config; see {@link SadmConfig}. Defaults to the built-in MNIST run.
 * @throws ConfigError, DataError, CheckpointError, NativeError, NumericalError
 */
export async function train(config: SadmConfigInput | unknown = {}, opts: TrainOptions = {}): Promise<TrainResult> {
  const t0 = Date.now();
  const plan = planRun(config, opts);
  const say = (line: string): void => {
    if (!opts.quiet) (opts.log ?? ((l: string) => process.stdout.write(l + "\n")))(line);
  };
  const data = await plan.data.open({ quiet: opts.quiet, tty: opts.tty, log: opts.log });
  const { trainer, notes } = createTrainer(plan);
  prepareRunDir(plan, data);
  const run = new Run(plan, trainer, data, opts, t0, notes);
  run.announce(say);
  run.record("running");
  let result: TrainResult;
  try {
    result = await run.execute();
  } catch (e) {
    run.record("failed", e);
    throw e;
  }
  run.record(result.aborted ? "aborted" : "finished");
  return result;
}

/**
 * The native trainer a plan starts from: fresh, a checkpoint, or pretrained weights; with the notes to print (what
 * a fine-tune did not take over, a resumed run's new discriminator). @throws NativeError
 */
function createTrainer(plan: RunPlan): { trainer: NativeTrainer; notes: string[] } {
  const { cfg } = plan;
  const native = loadNative(cfg.device);
  const core = JSON.stringify(toCoreConfig(cfg));
  let trainer: NativeTrainer;
  try {
    trainer = plan.resume
      ? native.NativeTrainer.load(plan.resume.dir, cfg.device)
      : plan.finetune
        ? native.NativeTrainer.fromPretrained(core, plan.finetune.source, cfg.device)
        : native.NativeTrainer.create(core, cfg.device);
  } catch (e) {
    throw NativeError.wrap(
      e,
      plan.resume
        ? `cannot load checkpoint ${plan.resume.dir}`
        : plan.finetune
          ? `cannot start from ${plan.finetune.source}`
          : "cannot create the trainer",
    );
  }
  const notes = plan.finetune ? parseNotes(trainer.extraJson()) : [];
  const disc = toCoreConfig(cfg).discriminator;
  if (plan.resume && coreDifferences(disc, plan.resume.state.config.discriminator, "").length > 0) {
    try {
      const note = trainer.setDiscriminator(JSON.stringify(disc));
      if (note) notes.push(note);
    } catch (e) {
      throw NativeError.wrap(e, "cannot change the discriminator on resume");
    }
  }
  return { trainer, notes };
}

/** Creates the run directory (clearing a previous run's files under --force) and writes the config and bad-file list. */
function prepareRunDir(plan: RunPlan, data: OpenedData): void {
  const { outDir, cfg } = plan;
  if (plan.force)
    for (const name of [METRICS_FILE, CHECKPOINTS_DIR, SAMPLES_DIR, CONFIG_FILE, BAD_IMAGES_FILE, STATUS_FILE, REPORT_FILE])
      fs.rmSync(path.join(outDir, name), { recursive: true, force: true });
  try {
    fs.mkdirSync(outDir, { recursive: true });
  } catch (e) {
    throw isFsError(e) ? fsError(e, `cannot create the run directory ${cfg.outDir}`) : e;
  }
  writeFileAtomic(path.join(outDir, CONFIG_FILE), JSON.stringify(cfg, null, 2) + "\n");
  const bad = path.join(outDir, BAD_IMAGES_FILE);
  if (data.bad.length > 0) writeFileAtomic(bad, data.bad.map((b) => `${b.rel}: ${b.reason}\n`).join(""));
  else fs.rmSync(bad, { force: true });
}

function sampleClasses(cfg: SadmConfig): number[] | undefined {
  if (cfg.model.numClasses === 0) return undefined;
  const classes = classLabels(cfg.data);
  return classes ? [...classes].sort((a, b) => a - b) : undefined;
}

/** A run in progress: the loop and what it writes (logs, grids, evaluations, checkpoints). */
class Run {
  private readonly cfg: SadmConfig;
  private readonly loader: BatchLoader;
  private readonly metrics: MetricsLog;
  private readonly history: Array<Record<string, number>>;
  private readonly progress: Progress;
  private readonly window = new RunningMean();
  private readonly startStep: number;
  private readonly samples: string[] = [];
  private readonly evals: Array<EvalMetrics & { step: number }> = [];
  private last: TrainStepInfo | undefined;
  /** The data position after the last batch a step consumed: where a checkpoint continues (the loader is a batch ahead). */
  private consumed: DataPosition;
  private lastCheckpoint: string | undefined;
  private lastSavedStep: number;
  private lastSampleStep = -1;
  private lastEvalStep = -1;
  private step: number;
  private badInRow = 0;
  private skippedSteps = 0;
  /** The grids' VAE of a latent run, once looked for (null: there is none). */
  private vae: Vae | null | undefined;
  private readonly started = new Date().toISOString();
  private reportFailed = false;

  constructor(
    private readonly plan: RunPlan,
    private readonly trainer: NativeTrainer,
    private readonly data: OpenedData,
    private readonly opts: TrainOptions,
    private readonly t0: number,
    /** What the start did not take over or changed (a fine-tune's class table, a resumed run's new discriminator). */
    private readonly notes: string[],
  ) {
    const { cfg, resume } = plan;
    this.cfg = cfg;
    this.loader = this.makeLoader();
    this.consumed = this.loader.position;
    this.metrics = new MetricsLog(path.join(plan.outDir, METRICS_FILE));
    this.startStep = trainer.stepCount;
    this.step = this.startStep;
    if (resume) this.metrics.truncateAfter(this.startStep);
    this.history = [...(resume?.state.extra.metrics?.history ?? [])].filter((h) => (h.step ?? 0) <= this.startStep);
    this.lastCheckpoint = resume?.dir;
    this.lastSavedStep = resume ? this.startStep : -1;
    this.progress = new Progress({
      total: cfg.steps,
      start: this.startStep,
      printEvery: cfg.printEvery,
      quiet: opts.quiet,
      tty: opts.tty,
      write: opts.log,
    });
  }

  private makeLoader(): BatchLoader {
    const { cfg, resume } = this.plan;
    const { dataset } = this.data;
    if (cfg.model.numClasses !== 0 && dataset.numClasses > cfg.model.numClasses)
      throw new ConfigError("config.model.numClasses", `the dataset has ${dataset.numClasses} classes (got ${cfg.model.numClasses})`);
    const saved = resume?.state.extra.data;
    let loader: BatchLoader;
    try {
      loader = new BatchLoader(dataset, cfg.batchSize, cfg.seed, saved, { flip: cfg.data.flip ?? false });
    } catch (e) {
      throw e instanceof DataError ? new DataError(`${this.plan.data.description}: ${e.message}`, { cause: e }) : e;
    }
    if (resume && !saved) {
      // Older checkpoints without a position: the order is a pure function of the step for a fixed batch size.
      const s = resume.state.step;
      loader.restore({ epoch: Math.floor(s / loader.batchesPerEpoch), index: (s % loader.batchesPerEpoch) * cfg.batchSize });
    }
    return loader;
  }

  /** The run's opening lines. */
  announce(say: (line: string) => void): void {
    const { cfg, kind, finetune, resume } = this.plan;
    const p = this.trainer.paramCounts();
    if (kind === "resume") say(`sadm: resuming ${resume?.dir} at step ${this.startStep} of ${cfg.steps}`);
    else {
      say(
        `sadm: ${finetune ? `fine-tuning ${finetune.source} as` : "training"} ${cfg.preset} ` +
          `(${(p.dit / 1e6).toFixed(2)}M DiT params, ${(p.discriminator / 1e6).toFixed(2)}M discriminator) ` +
          `for ${cfg.steps} steps on ${cfg.device} → ${cfg.outDir}`,
      );
      if (cfg.trainable !== "all")
        say(`sadm: training ${this.trainer.trainableNames().length} DiT parameter tensors (trainable: ${JSON.stringify(cfg.trainable)})`);
    }
    for (const note of this.notes) say(`sadm: note: ${note}`);
    say(`sadm: data: ${this.data.summary}`);
    for (const note of this.plan.data.notes) say(`sadm: data: ${note}`);
    if (this.data.bad.length > 0)
      say(
        `sadm: data: skipped ${this.data.bad.length} file(s) that did not decode (e.g. ${this.data.bad[0].rel}: ` +
          `${this.data.bad[0].reason}); all are listed in ${path.join(this.plan.outDir, BAD_IMAGES_FILE)}`,
      );
    for (const note of this.plan.notes) say(`sadm: note: ${note}`);
    if (this.cfg.report) say(`sadm: report: ${path.join(this.plan.outDir, REPORT_FILE)} (refreshed at every checkpoint; open it in a browser)`);
  }

  /**
   * Writes status.json and, unless `report: false`, refreshes report.html: at the start, at every checkpoint and
   * at the end (also a failed one). Neither may cost the run: a report that cannot be written is said once.
   */
  record(state: RunStatusFile["state"], err?: unknown): void {
    const { cfg, plan } = this;
    const error = err === undefined ? undefined : { name: err instanceof Error ? err.name : "Error", message: errorMessage(err) };
    try {
      writeRunStatus(plan.outDir, {
        state, step: this.step, steps: cfg.steps, device: cfg.device, sadmVersion: version(), started: this.started,
        ...(error ? { error } : {}),
      });
      if (cfg.report) writeReport([plan.outDir]);
    } catch (e) {
      if (this.reportFailed) return;
      this.reportFailed = true;
      this.progress.log(`sadm: note: cannot write the run's status or report (${errorMessage(e)}); training goes on`);
    }
  }

  /** Runs the loop to `cfg.steps` or an abort, with the final grid, evaluation and checkpoint. */
  async execute(): Promise<TrainResult> {
    const { cfg } = this;
    let aborted = false;
    try {
      let next: PositionedBatch | undefined = this.step < cfg.steps ? this.loader.next() : undefined;
      while (next) {
        if (this.opts.signal?.aborted) {
          aborted = true;
          break;
        }
        next = await this.trainStep(next);
        if (this.badInRow > 0 || !this.last) continue;
        // Nothing else during a run of skipped steps: its checkpoints would rotate out the good ones before it.
        this.progress.update(this.step, this.last);
        this.opts.onStep?.(this.last);
        if (cfg.sampleEvery > 0 && this.step % cfg.sampleEvery === 0) await this.writeSamples();
        if (cfg.eval.every > 0 && this.step % cfg.eval.every === 0) await this.runEval();
        if (cfg.checkpointEvery > 0 && this.step % cfg.checkpointEvery === 0) await this.saveCheckpoint();
      }
      if (this.opts.signal?.aborted) aborted = true;
      const ran = this.step > this.startStep;
      if (!aborted && ran && this.lastSampleStep !== this.step) await this.writeSamples();
      if (!aborted && ran && cfg.eval.every > 0 && this.lastEvalStep !== this.step) await this.runEval();
      if (this.lastSavedStep !== this.step) await this.saveCheckpoint();
    } finally {
      this.progress.stop();
    }
    if (aborted) this.progress.log(`sadm: stopped at step ${this.step}; checkpoint ${this.lastCheckpoint ?? "-"}`);
    return {
      outDir: this.plan.outDir,
      config: cfg,
      step: this.step,
      stepsRun: this.step - this.startStep,
      checkpoint: this.lastCheckpoint,
      samples: this.samples,
      aborted,
      last: this.last,
      seconds: (Date.now() - this.t0) / 1000,
      paramCounts: this.trainer.paramCounts(),
      evals: this.evals,
      skippedSteps: this.skippedSteps,
    };
  }


  /**
   * One native step on `batch`; while it runs, the next batch is assembled (so the step does not wait on data).
   * @returns the next batch, or undefined after the last step.
   */
  private async trainStep(batch: PositionedBatch): Promise<PositionedBatch | undefined> {
    const { cfg, trainer } = this;
    const t = trainer.stepCount;
    const lambda = lambdaAt(t, cfg.lambda, cfg.advWarmupSteps, cfg.advRampSteps);
    const lr = lrAt(t, cfg.lr, cfg.lrWarmupSteps);
    const emaDecay = emaDecayAt(t, cfg.emaDecay, cfg.emaWarmup);
    const labels = cfg.model.numClasses === 0 ? new Int32Array(batch.labels.length) : batch.labels;
    const ts = Date.now();
    const pending = trainer.step(batch.x, labels, {
      lambda,
      lr,
      discLr: cfg.discLr,
      emaDecay,
      // The discriminator trains only while λ > 0: during the warm-up its output would not reach the DiT.
      updateDisc: lambda > 0,
    });
    const td = Date.now();
    const next = t + 1 < cfg.steps ? this.loader.next() : undefined;
    const dataSeconds = (Date.now() - td) / 1000;
    let stats: StepStats;
    try {
      stats = await pending;
    } catch (e) {
      throw NativeError.wrap(e, `training step ${t + 1} failed`);
    }
    this.consumed = batch.after;
    this.step = stats.step;
    if (stats.skipped) this.recordSkip(stats.skipped);
    else {
      this.badInRow = 0;
      this.last = { ...stats, lambda, lr, emaDecay, seconds: (Date.now() - ts) / 1000, dataSeconds };
      this.window.add(numericFields(this.last));
    }
    this.logWindow();
    return this.step < cfg.steps ? next : undefined;
  }

  /** Counts a skipped step; too many in a row stop the run. @throws NumericalError */
  private recordSkip(why: string): void {
    const { step } = this;
    this.badInRow++;
    this.skippedSteps++;
    this.metrics.append({ step, skipped: why, time: (Date.now() - this.t0) / 1000 });
    this.progress.log(`sadm: step ${step} skipped (nothing updated): ${why} [${this.badInRow} in a row]`);
    if (this.badInRow < this.cfg.maxBadSteps) return;
    const ck = this.lastCheckpoint;
    throw new NumericalError(
      `training stopped at step ${step}: ${this.badInRow} steps in a row were skipped, the last because its ${why}. ` +
        (ck ? `The last good checkpoint is ${ck}: resume from it (sadm train --resume ${ck})` : "No checkpoint was written yet: start again") +
        " with a lower lr or lambda, or with gradient clipping (--set ditOptim.gradClip=1).",
      step,
      ck,
    );
  }

  /** Appends the window's means to metrics.jsonl every `logEvery` steps. */
  private logWindow(): void {
    const { step, cfg } = this;
    if (step % cfg.logEvery !== 0 && step !== cfg.steps) return;
    const means = this.window.means();
    // A window of nothing but skipped steps has no means to log; their own records are already there.
    if (Object.keys(means).length === 0) return;
    const record: Record<string, number> = {
      ...means,
      step,
      itPerSec: means.seconds > 0 ? 1 / means.seconds : 0,
      time: (Date.now() - this.t0) / 1000,
    };
    this.metrics.append(record);
    this.history.push(record);
    if (this.history.length > HISTORY_CAP) this.history.splice(0, this.history.length - HISTORY_CAP);
    this.window.reset();
  }

  private extra(): CheckpointExtra {
    const { plan } = this;
    const finetunedFrom = plan.finetune?.source ?? plan.resume?.state.extra.finetunedFrom;
    return {
      config: this.cfg,
      data: this.consumed,
      dataset: this.data.info,
      metrics: { last: this.last ? numericFields(this.last) : undefined, history: this.history },
      sadmVersion: version(),
      ...(finetunedFrom ? { finetunedFrom } : {}),
    };
  }

  private async saveCheckpoint(): Promise<void> {
    // The native save replaces an existing directory of the same name only once the new one is complete.
    const dir = checkpointDir(this.plan.outDir, this.step);
    try {
      await this.trainer.save(dir, JSON.stringify(this.extra()));
    } catch (e) {
      throw NativeError.wrap(e, `saving checkpoint ${dir} failed`);
    }
    this.lastSavedStep = this.step;
    this.lastCheckpoint = dir;
    pruneCheckpoints(this.plan.outDir, this.cfg.keepCheckpoints);
    this.record("running");
    this.opts.onCheckpoint?.(dir, this.step);
  }

  /**
   * The VAE that turns a latent run's samples into a grid: the config's, else the one the latents were encoded with
   * where it still is (checked to be that one); undefined, with one note, when there is none.
   */
  private gridVae(): Vae | undefined {
    if (this.vae !== undefined || this.cfg.data.name !== "latents") return this.vae ?? undefined;
    const trained = this.data.info.vae;
    if (this.cfg.vae === undefined && !(trained && fs.existsSync(trained.path))) {
      this.progress.log(`sadm: note: no sample grids or evaluations: the latents' VAE ${trained?.path ?? ""} is not there; give it with --vae DIR`);
      this.vae = null;
      return undefined;
    }
    this.vae = runVae(this.cfg, trained);
    return this.vae;
  }

  private async writeSamples(): Promise<void> {
    const { cfg } = this;
    const latent = cfg.data.name === "latents";
    const vae = this.gridVae();
    if (latent && !vae) return;
    const facts = { numClasses: cfg.model.numClasses, classNames: this.data.dataset.classNames };
    const plan = planSamples(facts, sampleClasses(cfg), cfg.samplesPerClass, 8 * cfg.samplesPerClass);
    const sampled = await sampleFrom(this.trainer, plan.labels, {
      sampler: cfg.sampler,
      steps: cfg.sampleSteps,
      ...(cfg.sampleSpacing ? { spacing: cfg.sampleSpacing } : {}),
      cfgScale: plan.conditional ? cfg.cfgScale : 1,
      eta: cfg.eta,
      seed: cfg.seed,
      // Latents are not in [-1, 1]: DiT samples them unclipped.
      clipDenoised: !latent,
    });
    const { images, shape } = vae ? await decodeAll(vae, sampled.images, sampled.shape) : sampled;
    const file = path.join(this.plan.outDir, SAMPLES_DIR, `step-${String(this.step).padStart(8, "0")}.png`);
    await saveLabelledGrid(file, images, shape[0], shape[1], shape[2], shape[3], plan.cols, plan.columnLabels);
    this.lastSampleStep = this.step;
    this.samples.push(file);
    this.opts.onSample?.(file, this.step);
  }

  private async runEval(): Promise<void> {
    const latent = this.cfg.data.name === "latents";
    const vae = this.gridVae();
    if (latent && !vae) return;
    // A latent run is compared with the images its latents were encoded from, its samples decoded.
    const real = latent ? undefined : { source: this.plan.data, dataset: this.data.dataset };
    const m = await evaluateModel(this.trainer, this.cfg, this.cfg.device, real, vae);
    const record = evalRecord(this.step, m);
    this.metrics.append(record);
    this.history.push(record);
    this.evals.push({ ...m, step: this.step });
    this.lastEvalStep = this.step;
    this.progress.log(`sadm: eval at step ${this.step}: ${formatMetrics(m)} (${m.seconds.toFixed(1)}s)`);
    this.opts.onEval?.(m, this.step);
  }
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
export { holdsRun } from "./plan.js";
