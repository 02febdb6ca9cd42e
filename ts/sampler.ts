/**
 * Sampling from a checkpoint (EMA weights by default) with any of the core's samplers ({@link SAMPLERS}: DDPM, DDIM,
 * DPM-Solver++ 2M and its SDE variant, Euler and Heun on Karras σ) and classifier-free guidance. The native
 * sampler is called in chunks of at most {@link SAMPLE_CHUNK} images, so memory stays bounded however many samples
 * are asked for: a grid is filled chunk by chunk and refused up front when it is larger than a PNG sadm writes, and
 * any number of samples can go to a directory, one PNG each, as the chunks come back ({@link sampleToDir}).
 * Classes can be given by name when the checkpoint's data had named classes (state.json `extra.dataset.classNames`).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { CheckpointError, ConfigError, NativeError, fsError, isFsError } from "./errors.js";
import { loadNative } from "./native.js";
import type { SampleOptions, SampleProgress } from "./native.js";
import { readState, resolveCheckpoint, type CheckpointState } from "./checkpoint.js";
import { GridCanvas, assertGridFits, encodeImage, gridGeometry, writeFileAtomic } from "./image.js";
import { DEFAULT_SAMPLING, SAMPLERS, SPACINGS, checkOneOf, checkSampling, normalizeDevice, samplerEvaluations, type SamplerName, type SpacingName } from "./config.js";
import { classIndices } from "./data/spec.js";
import type { VaeIdentity } from "./data/latents.js";
import { checkSameVae, decodeAll, loadVae, type Vae } from "./latent/vae.js";

/** Images per native sampling call: what bounds a sampling's memory (activations, the CFG-doubled batch). */
export const SAMPLE_CHUNK = 256;
/** The most values {@link sample} returns in memory (2^28 floats = 1 GiB); more go to files with {@link sampleToDir}. */
export const MAX_IN_MEMORY_VALUES = 2 ** 28;

/** Options of {@link sample}, {@link sampleGrid} and {@link sampleToDir}. */
export interface SampleRequest {
  /**
   * A checkpoint directory, a run directory (its latest checkpoint), or a DiT weights file (`.pt`/`.pth` as
   * `torch.save` wrote it, or `.safetensors`, in the reference names), such as the published `DiT-XL-2-256x256.pt`.
   * A weights file samples as DiT's `sample.py` by default: DDPM 250 steps, guidance 4 on 3 of 4 channels.
   */
  checkpoint: string;
  /**
   * Classes, one grid column each (default: all classes; ignored for unconditional models): label numbers, or
   * class names of the checkpoint's data (a string that is no name but a whole number is a label), mixed freely.
   */
  classes?: ReadonlyArray<number | string>;
  /** Samples per class (grid rows). Default 8. */
  perClass?: number;
  /** Total samples for an unconditional model (default 64). */
  n?: number;
  /** Guidance scale (1 = plain conditional). Default 3. */
  cfgScale?: number;
  /** Sampling steps. Default 10 (a weights file: 250). Heun's N steps cost 2N − 1 network evaluations. */
  steps?: number;
  /**
   * One of {@link SAMPLERS}; default "unipc", which reaches DDPM 250's FD in 10 steps on the digits and on the RGB
   * preset (a weights file: "ddpm", as DiT's sample.py).
   */
  sampler?: SamplerName;
  /** Timestep spacing, one of {@link SPACINGS}; default: the sampler's (karras for euler/heun, else linspace). */
  spacing?: SpacingName;
  /** DDIM η (default 0; DDIM only). */
  eta?: number;
  /**
   * Dynamic thresholding of x̂0 (Imagen; diffusers' `thresholding`) instead of clipping: per image, s = the `ratio`
   * quantile of |x̂0| clamped to [1, `maxValue`]; x̂0 is clipped to [−s, s] and divided by s.
   */
  dynamicThreshold?: { ratio: number; maxValue: number };
  /**
   * Noise seed (default 0). The chunk of images from index i on is sampled with seed `seed + i`, so results depend
   * on the seed and the chunk size only.
   */
  seed?: number;
  /** Device, "cpu" (default) or "cuda:N". */
  device?: string;
  /** Use the EMA weights (default true). */
  useEma?: boolean;
  /** Clip x̂0 to [-1, 1] at each step (default true; false for latent models, as DiT samples latents). */
  clipDenoised?: boolean;
  /**
   * The VAE that decodes a latent model's samples to images (a diffusers folder or weights file); default: the one
   * the run's latents were encoded with. A run trained on latents checks it is that one.
   */
  vae?: string;
  /**
   * Guide only the first this many channels. Default: all; for a published DiT checkpoint 3 of its 4, as DiT's
   * `sample.py` does.
   */
  guidanceChannels?: number;
  /** A weights file of a width that is no reference DiT size: its attention heads (not readable from the tensors). */
  numHeads?: number;
  /** Images per native call (default {@link SAMPLE_CHUNK}); larger is faster on a GPU and needs more memory. */
  chunkSize?: number;
  /** Called once the model is loaded with (0, total), then after each chunk with the images done so far. */
  onProgress?: (done: number, total: number) => void;
  /**
   * Called a few times a second while the sampler runs, with the network evaluations done over the whole request
   * and their total (evaluations per chunk × chunks): the finer progress for samplings whose chunks take minutes (a
   * DiT-XL/2 on a CPU).
   */
  onEvaluations?: (done: number, total: number) => void;
}

/** How often {@link SampleRequest.onEvaluations} reads the native counter. */
const STEP_POLL_MS = 250;

/** Samples with their layout: NCHW floats, one label per image, `cols` = grid columns. */
export interface SampleResult {
  images: Float32Array;
  labels: Int32Array;
  shape: [number, number, number, number];
  cols: number;
  /** The text under each column: the class's name, or its label number; undefined for an unconditional model. */
  columnLabels: string[] | undefined;
}

/** What {@link sampleGrid} wrote: the layout of the samples (not the samples: they went into the PNG chunk by chunk). */
export type SampleGridResult = Omit<SampleResult, "images"> & {
  /** The PNG written, and its size in pixels. */
  path: string;
  width: number;
  height: number;
};

/** What {@link sampleToDir} wrote. */
export interface SampleDirResult {
  /** The directory, and the number of PNGs written into it (named by {@link sampleFileName}). */
  dir: string;
  count: number;
  labels: Int32Array;
  shape: [number, number, number, number];
}

/** Model facts read from a core config (the addon's configJson(), or state.json's `config`). */
interface ModelFacts {
  inputSize: number;
  inChannels: number;
  numClasses: number;
}

function factsOf(config: unknown): ModelFacts | undefined {
  const model = typeof config === "object" && config !== null ? (config as { model?: unknown }).model : undefined;
  const m = typeof model === "object" && model !== null ? (model as Record<string, unknown>) : {};
  const { inputSize, inChannels, numClasses } = m;
  if (typeof inputSize !== "number" || typeof inChannels !== "number" || typeof numClasses !== "number") return undefined;
  return { inputSize, inChannels, numClasses };
}

function modelFacts(configJson: string): ModelFacts {
  let v: unknown;
  try {
    v = JSON.parse(configJson);
  } catch (e) {
    throw new NativeError(`native configJson() returned invalid JSON`, { cause: e });
  }
  const facts = factsOf(v);
  if (!facts) throw new NativeError(`native configJson() has no model.inputSize/inChannels/numClasses`);
  return facts;
}

/**
 * The class names a checkpoint's data had (`extra.dataset.classNames`; `names[k]` is label k), or undefined for
 * data without names and for checkpoints older than named classes.
 * @throws CheckpointError when the field is there but not a list of strings.
 */
export function classNamesOf(state: CheckpointState, dir = "checkpoint"): string[] | undefined {
  const names: unknown = state.extra.dataset?.classNames;
  if (names === undefined) return undefined;
  if (!Array.isArray(names) || !names.every((s): s is string => typeof s === "string"))
    throw new CheckpointError(`${dir}: state.json extra.dataset.classNames is not a list of strings`);
  return names;
}

/** "a, b, c" of up to `max` names, then how many more. */
/**
 * Maps classes given by label or name to labels (see {@link classIndices}).
 * @throws ConfigError naming the entry and listing the checkpoint's class names.
 */
export function resolveClasses(
  classes: ReadonlyArray<number | string>,
  numClasses: number,
  classNames?: ReadonlyArray<string>,
): number[] {
  return classIndices(classes, { numClasses, classNames, field: (i) => `classes[${i}]`, owner: "this checkpoint" });
}

/** The text under a column of class `label`: its name, or the label number when it has none. */
export function classLabel(label: number, classNames?: ReadonlyArray<string>): string {
  return classNames?.[label] ?? String(label);
}

/**
 * Labels for a class-conditional grid laid out row-major with one column per class:
 * image k has label classes[k mod classes.length].
 */
export function gridLabels(classes: ReadonlyArray<number>, perClass: number): Int32Array {
  const labels = new Int32Array(classes.length * perClass);
  for (let k = 0; k < labels.length; k++) labels[k] = classes[k % classes.length];
  return labels;
}

/** Anything with the addon's `sample` + `configJson` (NativeModel or NativeTrainer). */
export interface Sampleable {
  sample(labels: Int32Array, opts: SampleOptions, progress?: SampleProgress): Promise<Float32Array>;
  configJson(): string;
}

/** A native evaluation counter and who to tell its count ({@link sampleInChunks}). */
export interface EvaluationWatch {
  counter: SampleProgress;
  onEvaluations: (done: number) => void;
}

/** Awaits `work` while telling `watch` the counter's count every {@link STEP_POLL_MS} and once at the end. */
async function watched<T>(work: Promise<T>, watch: EvaluationWatch | undefined): Promise<T> {
  if (!watch) return work;
  const timer = setInterval(() => watch.onEvaluations(watch.counter.evaluations), STEP_POLL_MS);
  try {
    return await work;
  } finally {
    clearInterval(timer);
    watch.onEvaluations(watch.counter.evaluations);
  }
}

/** The labels and layout of a sampling ({@link planSamples}). */
export interface SamplePlan {
  /** One label per image, grid order. */
  labels: Int32Array;
  /** Grid columns. */
  cols: number;
  conditional: boolean;
  /** The class of each column (conditional models). */
  classes: number[];
  /** The text under each column ({@link classLabel}); undefined for an unconditional model. */
  columnLabels: string[] | undefined;
}

/**
 * Plans the labels and layout for a model; checks the classes against it.
 * @param facts the model's class count, and its class names when its data had them.
 * @param classes labels or names ({@link resolveClasses}); default: every class.
 */
export function planSamples(
  facts: { numClasses: number; classNames?: ReadonlyArray<string> },
  classes: ReadonlyArray<number | string> | undefined,
  perClass: number,
  n: number,
): SamplePlan {
  if (!Number.isInteger(perClass) || perClass < 1) throw new ConfigError("perClass", `must be an integer ≥ 1 (got ${perClass})`);
  if (facts.numClasses === 0) {
    if (!Number.isInteger(n) || n < 1) throw new ConfigError("n", `must be an integer ≥ 1 (got ${n})`);
    return { labels: new Int32Array(n), cols: Math.min(n, 8), conditional: false, classes: [], columnLabels: undefined };
  }
  const cls =
    classes && classes.length > 0
      ? resolveClasses(classes, facts.numClasses, facts.classNames)
      : Array.from({ length: facts.numClasses }, (_, i) => i);
  return {
    labels: gridLabels(cls, perClass),
    cols: cls.length,
    conditional: true,
    classes: cls,
    columnLabels: cls.map((k) => classLabel(k, facts.classNames)),
  };
}

function checkChunkSize(chunkSize: number): void {
  if (!Number.isInteger(chunkSize) || chunkSize < 1)
    throw new ConfigError("chunkSize", `must be an integer ≥ 1 (got ${chunkSize})`);
}

/**
 * Runs a sampler on anything sampleable in chunks of at most `chunkSize` images, yielding each chunk's first index
 * and images (NCHW) as it comes back. The chunk from index i on uses seed `opts.seed + i`. `watch` is told the
 * network evaluations its counter has seen, over all chunks, while they run.
 * @throws NativeError when the sampler fails or returns the wrong number of values.
 */
export async function* sampleInChunks(
  model: Sampleable,
  labels: Int32Array,
  opts: SampleOptions,
  chunkSize = SAMPLE_CHUNK,
  watch?: EvaluationWatch,
): AsyncGenerator<{ first: number; images: Float32Array }> {
  checkChunkSize(chunkSize);
  const facts = modelFacts(model.configJson());
  const per = facts.inChannels * facts.inputSize * facts.inputSize;
  for (let first = 0; first < labels.length; first += chunkSize) {
    const part = labels.slice(first, Math.min(labels.length, first + chunkSize));
    let images: Float32Array;
    try {
      images = await watched(model.sample(part, { ...opts, seed: opts.seed + first }, watch?.counter), watch);
    } catch (e) {
      throw NativeError.wrap(e, "sampling failed");
    }
    if (images.length !== part.length * per)
      throw new NativeError(
        `sampling returned ${images.length} values, expected ${part.length}×${facts.inChannels}×${facts.inputSize}×` +
          `${facts.inputSize} = ${part.length * per}`,
      );
    yield { first, images };
  }
}

/** Runs a sampler on anything sampleable (in chunks, see {@link sampleInChunks}); returns all the images. */
export async function sampleFrom(
  model: Sampleable,
  labels: Int32Array,
  opts: SampleOptions,
  chunkSize = SAMPLE_CHUNK,
): Promise<{ images: Float32Array; shape: [number, number, number, number] }> {
  const facts = modelFacts(model.configJson());
  const shape: [number, number, number, number] = [labels.length, facts.inChannels, facts.inputSize, facts.inputSize];
  const per = shape[1] * shape[2] * shape[3];
  const images = new Float32Array(labels.length * per);
  for await (const chunk of sampleInChunks(model, labels, opts, chunkSize)) images.set(chunk.images, chunk.first * per);
  return { images, shape };
}

/** A request checked against its model, before anything is sampled. */
interface Prepared {
  /** What is sampled from: a checkpoint dir, or a weights file (already loaded: its config comes from its tensors). */
  source: { dir: string; model?: undefined } | { dir?: undefined; file: string; model: Sampleable };
  plan: SamplePlan;
  /** The images the caller gets: [n, C, H, W] (after the VAE for a latent model). */
  shape: [number, number, number, number];
  /** What the DiT makes per image, [C, h, w] (latents for a latent model). */
  modelShape: [number, number, number];
  opts: SampleOptions;
  sampler: SamplerName;
  chunkSize: number;
  device: string;
  /** The VAE that decodes a latent model's samples, and the one its run was trained with (checked on load). */
  vae?: { path: string; want?: VaeIdentity };
}

/** Whether `target` is a weights file (a `.pt`/`.pth`/`.ckpt` or `.safetensors` of DiT weights), not a checkpoint. */
export function isWeightsFile(target: string): boolean {
  return /\.(pt|pth|ckpt|bin|safetensors)$/i.test(target) && fs.statSync(target, { throwIfNoEntry: false })?.isFile() === true;
}

/** The model a request names: its facts, class names, training VAE, and the loaded model for a weights file. */
function findModel(req: SampleRequest, device: string): {
  source: Prepared["source"];
  facts: ModelFacts;
  classNames: string[] | undefined;
  trainedVae: VaeIdentity | undefined;
} {
  if (isWeightsFile(req.checkpoint)) {
    const file = path.resolve(req.checkpoint);
    let model: Sampleable;
    try {
      model = loadNative(device).NativeModel.fromWeights(file, device, req.numHeads);
    } catch (e) {
      // The core's message names the file already.
      throw NativeError.wrap(e);
    }
    return { source: { file, model }, facts: modelFacts(model.configJson()), classNames: undefined, trainedVae: undefined };
  }
  const dir = resolveCheckpoint(req.checkpoint);
  const state = readState(dir);
  const facts = factsOf(state.config);
  if (!facts) throw new CheckpointError(`checkpoint ${dir}: state.json config has no model.inputSize/inChannels/numClasses`);
  return { source: { dir }, facts, classNames: classNamesOf(state, dir), trainedVae: state.extra.dataset?.vae };
}

/** Checks a request against its model (a checkpoint's state.json, or a weights file's tensors); samples nothing. */
function prepare(req: SampleRequest): Prepared {
  const device = normalizeDevice(req.device ?? "cpu");
  const { source, facts, classNames, trainedVae } = findModel(req, device);
  const reference = source.dir === undefined;
  const plan = planSamples({ ...facts, classNames }, req.classes, req.perClass ?? 8, req.n ?? 64);
  // A published DiT checkpoint samples as DiT's sample.py does by default.
  const steps = req.steps ?? (reference ? 250 : DEFAULT_SAMPLING.steps);
  if (!Number.isInteger(steps) || steps < 1) throw new ConfigError("steps", `must be an integer ≥ 1 (got ${steps})`);
  const sampler = checkOneOf(req.sampler, SAMPLERS, "sampler") ?? (reference ? "ddpm" : DEFAULT_SAMPLING.sampler);
  checkOneOf(req.spacing, SPACINGS, "spacing");
  checkSampling({ sampler, steps, spacing: req.spacing, eta: req.eta }, { sampler: "sampler", steps: "steps", spacing: "spacing", eta: "eta" });
  const seed = req.seed ?? 0;
  if (!Number.isInteger(seed) || seed < 0 || seed + plan.labels.length > Number.MAX_SAFE_INTEGER)
    throw new ConfigError("seed", `must be an integer from 0 to ${Number.MAX_SAFE_INTEGER - plan.labels.length} (got ${seed})`);
  // A published DiT takes minutes per image on a CPU: one image per call makes the progress bar move.
  const chunkSize = req.chunkSize ?? (reference ? 1 : SAMPLE_CHUNK);
  checkChunkSize(chunkSize);
  const latent = facts.inChannels !== 1 && facts.inChannels !== 3;
  const vaePath = req.vae ?? trainedVae?.path;
  if (req.vae !== undefined && !latent)
    throw new ConfigError("vae", `this model makes ${facts.inChannels}-channel images, not latents: sample it without --vae`);
  const vae = latent && vaePath !== undefined ? { path: vaePath, ...(trainedVae ? { want: trainedVae } : {}) } : undefined;
  const down = vae ? (trainedVae?.downsample ?? 8) : 1;
  const imageChannels = vae ? 3 : facts.inChannels;
  const guidance = req.guidanceChannels ?? (reference && facts.inChannels === 4 ? 3 : undefined);
  return {
    source,
    plan,
    shape: [plan.labels.length, imageChannels, facts.inputSize * down, facts.inputSize * down],
    modelShape: [facts.inChannels, facts.inputSize, facts.inputSize],
    sampler,
    opts: {
      sampler,
      steps,
      ...(req.spacing !== undefined ? { spacing: req.spacing } : {}),
      ...(req.dynamicThreshold !== undefined ? { dynamicThreshold: req.dynamicThreshold } : {}),
      cfgScale: plan.conditional ? (req.cfgScale ?? (reference ? 4 : 3)) : 1,
      eta: req.eta ?? 0,
      seed,
      // Latents are not in [-1, 1]: DiT samples them with clip_denoised=False.
      clipDenoised: req.clipDenoised ?? !latent,
      ...(guidance !== undefined ? { guidanceChannels: guidance } : {}),
    },
    chunkSize,
    device,
    ...(vae ? { vae } : {}),
  };
}

/** Loads the model (and VAE) of a prepared request and samples it chunk by chunk, reporting progress. */
async function* run(p: Prepared, req: SampleRequest): AsyncGenerator<{ first: number; images: Float32Array }> {
  let model: Sampleable;
  if (p.source.dir === undefined) model = p.source.model;
  else
    try {
      model = loadNative(p.device).NativeModel.load(p.source.dir, p.device, req.useEma ?? true);
    } catch (e) {
      throw NativeError.wrap(e, `cannot load ${p.source.dir}`);
    }
  let vae: Vae | undefined;
  if (p.vae) {
    vae = loadVae(p.vae.path, p.device);
    if (p.vae.want) checkSameVae(vae, p.vae.want, "this run's data");
  }
  const [total, c, h, w] = p.shape;
  req.onProgress?.(0, total);
  const report = req.onEvaluations;
  const evaluations = Math.ceil(total / p.chunkSize) * samplerEvaluations(p.sampler, p.opts.steps);
  const watch = report && { counter: new (loadNative(p.device).SampleProgress)(), onEvaluations: (n: number) => report(n, evaluations) };
  for await (const chunk of sampleInChunks(model, p.plan.labels, p.opts, p.chunkSize, watch)) {
    let images = chunk.images;
    if (vae) {
      const [mc, mh, mw] = p.modelShape;
      images = (await decodeAll(vae, images, [images.length / (mc * mh * mw), mc, mh, mw])).images;
    }
    yield { first: chunk.first, images };
    // After the consumer's work on the chunk (its files are written when this says they are done).
    req.onProgress?.(chunk.first + images.length / (c * h * w), total);
  }
}

/**
 * Samples images from a checkpoint with the NativeModel (EMA weights unless `useEma: false`), into memory.
 * @throws ConfigError when the samples would take more than {@link MAX_IN_MEMORY_VALUES} values (use
 * {@link sampleToDir}); CheckpointError, NativeError.
 */
export async function sample(req: SampleRequest): Promise<SampleResult> {
  const p = prepare(req);
  const [n, c, h, w] = p.shape;
  if (n * c * h * w > MAX_IN_MEMORY_VALUES)
    throw new ConfigError(
      "n",
      `${n} samples of ${c}×${h}×${w} are ${((n * c * h * w * 4) / 2 ** 30).toFixed(1)} GiB, over the ` +
        `${(MAX_IN_MEMORY_VALUES * 4) / 2 ** 30} GiB that sample() returns in memory: write them to files with ` +
        `sampleToDir (sadm sample --out-dir DIR)`,
    );
  const images = new Float32Array(n * c * h * w);
  for await (const chunk of run(p, req)) images.set(chunk.images, chunk.first * c * h * w);
  return { images, labels: p.plan.labels, shape: p.shape, cols: p.plan.cols, columnLabels: p.plan.columnLabels };
}

function assertPngChannels(c: number, field: string): void {
  if (c !== 1 && c !== 3)
    throw new ConfigError(field, `cannot write ${c}-channel latents as PNG: give the VAE that decodes them (--vae DIR)`);
}

/** Creates a directory before the sampling, so that an unusable path fails in a moment, not after it. */
function makeDir(dir: string, doing: string): void {
  try {
    fs.mkdirSync(dir, { recursive: true });
  } catch (e) {
    throw isFsError(e) ? fsError(e, doing) : e;
  }
}

/**
 * Samples (see {@link sample}) and writes a PNG grid, one column per class, with the class names (or labels)
 * under the columns. The grid is filled chunk by chunk (memory: the PNG and one chunk).
 * @throws ConfigError when the grid would be over the PNG limit ({@link assertGridFits}), before anything is
 * sampled or loaded; CheckpointError, NativeError, SadmError (an unwritable path).
 */
export async function sampleGrid(req: SampleRequest, out: string): Promise<SampleGridResult> {
  const p = prepare(req);
  const [n, c, h, w] = p.shape;
  assertPngChannels(c, "out");
  const labelled = p.plan.columnLabels !== undefined;
  assertGridFits(gridGeometry(n, h, w, p.plan.cols, labelled), "grid");
  const file = path.resolve(out);
  makeDir(path.dirname(file), `cannot write ${file}`);
  const canvas = new GridCanvas(n, c, h, w, p.plan.cols, { labelled });
  for await (const chunk of run(p, req)) canvas.put(chunk.first, chunk.images);
  if (p.plan.columnLabels) await canvas.drawColumnLabels(p.plan.columnLabels);
  writeFileAtomic(file, canvas.encode());
  const { labels, cols, columnLabels } = p.plan;
  return { labels, shape: p.shape, cols, columnLabels, path: file, width: canvas.geometry.width, height: canvas.geometry.height };
}

/** A class name made safe for a file name: letters, digits, `.`, `_` and `-`, other runs as one `-`, ≤ 64 chars. */
function fileTag(text: string): string {
  return text
    .normalize("NFC")
    .replace(/[^\p{L}\p{N}._-]+/gu, "-")
    .replace(/^[-.]+|-+$/g, "")
    .slice(0, 64);
}

/**
 * The file name of sample `index` of `total` in {@link sampleToDir}: the index zero-padded to 8 digits (or more
 * for more samples), so names sort in sampling order, then the class's name or label: `00000123-cat.png`
 * (unconditional: `00000123.png`).
 */
export function sampleFileName(index: number, total: number, classText?: string): string {
  const digits = Math.max(8, String(Math.max(0, total - 1)).length);
  const tag = classText === undefined ? "" : fileTag(classText);
  return `${String(index).padStart(digits, "0")}${tag ? `-${tag}` : ""}.png`;
}

const SAMPLE_FILE = /^\d{8,}(-.*)?\.png$/;

/**
 * Samples (see {@link sample}) into `dir`, each image its own PNG named by {@link sampleFileName}, written
 * atomically as each chunk comes back: memory stays at one chunk whatever the number of samples.
 * @throws ConfigError when `dir` already holds samples (nothing of the user's is overwritten); CheckpointError,
 * NativeError, SadmError (an unwritable directory).
 */
export async function sampleToDir(req: SampleRequest, dir: string): Promise<SampleDirResult> {
  const p = prepare(req);
  const [n, c, h, w] = p.shape;
  assertPngChannels(c, "outDir");
  const abs = path.resolve(dir);
  makeDir(abs, `cannot create the sample directory ${abs}`);
  const existing = fs.readdirSync(abs).find((f) => SAMPLE_FILE.test(f));
  if (existing !== undefined)
    throw new ConfigError("outDir", `${abs} already holds samples (${existing}): choose another directory or remove them`);
  const { labels, columnLabels, cols } = p.plan;
  // Image k is in column k mod cols, whose class it has.
  const text = (k: number): string | undefined => columnLabels?.[k % cols];
  let count = 0;
  for await (const chunk of run(p, req)) {
    const m = chunk.images.length / (c * h * w);
    for (let j = 0; j < m; j++) {
      const k = chunk.first + j;
      writeFileAtomic(path.join(abs, sampleFileName(k, n, text(k))), encodeImage(chunk.images, j, c, h, w));
      count++;
    }
  }
  return { dir: abs, count, labels, shape: p.shape };
}
