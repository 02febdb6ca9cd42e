/**
 * Sampling from a checkpoint (EMA weights by default) with DDPM or DDIM and classifier-free guidance.
 */
import * as path from "node:path";
import { ConfigError, NativeError } from "./errors.js";
import { loadNative } from "./native.js";
import type { SampleOptions } from "./native.js";
import { resolveCheckpoint } from "./checkpoint.js";
import { saveGrid } from "./image.js";
import { normalizeDevice } from "./config.js";

/** Options of {@link sample}. */
export interface SampleRequest {
  /** A checkpoint directory, or a run directory (its latest checkpoint). */
  checkpoint: string;
  /** Class labels, one grid column each (default: all classes; ignored for unconditional models). */
  classes?: number[];
  /** Samples per class (grid rows). Default 8. */
  perClass?: number;
  /** Total samples for an unconditional model (default 64). */
  n?: number;
  /** Guidance scale (1 = plain conditional). Default 3. */
  cfgScale?: number;
  /** Sampling steps. Default 50. */
  steps?: number;
  /** "ddim" (default) or "ddpm". */
  sampler?: "ddim" | "ddpm";
  /** DDIM η (default 0). */
  eta?: number;
  /** Noise seed (default 0). */
  seed?: number;
  /** Device, "cpu" (default) or "cuda:N". */
  device?: string;
  /** Use the EMA weights (default true). */
  useEma?: boolean;
  /** Clip x̂0 to [-1, 1] at each step (default true). */
  clipDenoised?: boolean;
}

/** Samples with their layout: NCHW floats, one label per image, `cols` = grid columns. */
export interface SampleResult {
  images: Float32Array;
  labels: Int32Array;
  shape: [number, number, number, number];
  cols: number;
}

/** Model facts read from a checkpoint's core config JSON. */
interface ModelFacts {
  inputSize: number;
  inChannels: number;
  numClasses: number;
}

function modelFacts(configJson: string): ModelFacts {
  let v: unknown;
  try {
    v = JSON.parse(configJson);
  } catch (e) {
    throw new NativeError(`native configJson() returned invalid JSON`, { cause: e });
  }
  const model = typeof v === "object" && v !== null ? (v as { model?: unknown }).model : undefined;
  const m = typeof model === "object" && model !== null ? (model as Record<string, unknown>) : {};
  const { inputSize, inChannels, numClasses } = m;
  if (typeof inputSize !== "number" || typeof inChannels !== "number" || typeof numClasses !== "number")
    throw new NativeError(`native configJson() has no model.inputSize/inChannels/numClasses`);
  return { inputSize, inChannels, numClasses };
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
  sample(labels: Int32Array, opts: SampleOptions): Promise<Float32Array>;
  configJson(): string;
}

/** Plans the labels and layout for a model; checks the classes against it. */
export function planSamples(
  facts: { numClasses: number },
  classes: ReadonlyArray<number> | undefined,
  perClass: number,
  n: number,
): { labels: Int32Array; cols: number; conditional: boolean } {
  if (!Number.isInteger(perClass) || perClass < 1) throw new ConfigError("perClass", `must be an integer ≥ 1 (got ${perClass})`);
  if (facts.numClasses === 0) {
    if (!Number.isInteger(n) || n < 1) throw new ConfigError("n", `must be an integer ≥ 1 (got ${n})`);
    return { labels: new Int32Array(n), cols: Math.min(n, 8), conditional: false };
  }
  const cls = classes && classes.length > 0 ? [...classes] : Array.from({ length: facts.numClasses }, (_, i) => i);
  cls.forEach((k, i) => {
    if (!Number.isInteger(k) || k < 0 || k >= facts.numClasses)
      throw new ConfigError(`classes[${i}]`, `must be a class between 0 and ${facts.numClasses - 1} (got ${k})`);
  });
  return { labels: gridLabels(cls, perClass), cols: cls.length, conditional: true };
}

/** Runs a sampler on anything sampleable; checks the output size. */
export async function sampleFrom(
  model: Sampleable,
  labels: Int32Array,
  opts: SampleOptions,
): Promise<{ images: Float32Array; shape: [number, number, number, number] }> {
  const facts = modelFacts(model.configJson());
  let images: Float32Array;
  try {
    images = await model.sample(labels, opts);
  } catch (e) {
    throw NativeError.wrap(e, "sampling failed");
  }
  const shape: [number, number, number, number] = [labels.length, facts.inChannels, facts.inputSize, facts.inputSize];
  const expected = shape[0] * shape[1] * shape[2] * shape[3];
  if (images.length !== expected)
    throw new NativeError(`sampling returned ${images.length} values, expected ${shape.join("×")} = ${expected}`);
  return { images, shape };
}

/** Samples images from a checkpoint with the NativeModel (EMA weights unless `useEma: false`). */
export async function sample(req: SampleRequest): Promise<SampleResult> {
  const dir = resolveCheckpoint(req.checkpoint);
  const device = normalizeDevice(req.device ?? "cpu");
  const native = loadNative(device);
  let model: Sampleable;
  try {
    model = native.NativeModel.load(dir, device, req.useEma ?? true);
  } catch (e) {
    throw NativeError.wrap(e, `cannot load ${dir}`);
  }
  const facts = modelFacts(model.configJson());
  const plan = planSamples(facts, req.classes, req.perClass ?? 8, req.n ?? 64);
  const steps = req.steps ?? 50;
  if (!Number.isInteger(steps) || steps < 1) throw new ConfigError("steps", `must be an integer ≥ 1 (got ${steps})`);
  const { images, shape } = await sampleFrom(model, plan.labels, {
    sampler: req.sampler ?? "ddim",
    steps,
    cfgScale: plan.conditional ? (req.cfgScale ?? 3) : 1,
    eta: req.eta ?? 0,
    seed: req.seed ?? 0,
    clipDenoised: req.clipDenoised ?? true,
  });
  return { images, labels: plan.labels, shape, cols: plan.cols };
}

/** Samples (see {@link sample}) and writes a PNG grid, one column per class. @returns the result and the path. */
export async function sampleGrid(req: SampleRequest, out: string): Promise<SampleResult & { path: string }> {
  const r = await sample(req);
  const [n, c, h, w] = r.shape;
  if (c !== 1 && c !== 3)
    throw new ConfigError("out", `cannot write ${c}-channel samples as PNG (latent models need a decoder)`);
  const file = path.resolve(out);
  saveGrid(file, r.images, n, c, h, w, r.cols);
  return { ...r, path: file };
}
