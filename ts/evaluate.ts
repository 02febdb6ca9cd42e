/**
 * Sample-quality evaluation: generate samples from a model, embed them and real images with a feature extractor,
 * and compare (Fréchet distance, KID, k-NN precision/recall), plus the extractor's classification accuracy on
 * class-conditional samples when it is a classifier. Extractors: the built-in MNIST LeNet (`lenet-mnist`), or the
 * FID Inception-v3 (`inception-v3-fid`) from weights the user has. Also trains the built-in MNIST extractor.
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { CheckpointError, ConfigError, NativeError, SadmError, errorMessage } from "./errors.js";
import {
  BUILTIN_EXTRACTORS,
  deepMerge,
  isBuiltinExtractor as isBuiltin,
  resolveConfig,
  resolveDataConfig,
  savedInput,
  type BuiltinArch,
  type EvalConfig,
  type ExtractorConfig,
  type SadmConfig,
  builtinExtractorWeights,
} from "./config.js";
import {
  MnistDataset,
  cacheRoot,
  classLabels,
  findData,
  isImageFiles,
  readImages,
  type Batch,
  type DataConfig,
  type DataSource,
  type Dataset,
} from "./data/index.js";
import { loadNative, type FeatureMetrics, type NativeExtractor, type SampleOptions } from "./native.js";
import { readState, resolveCheckpoint, runDirOf } from "./checkpoint.js";
import { METRICS_FILE, MetricsLog } from "./logging.js";
import { writeFileAtomic } from "./image.js";
import { gridLabels } from "./sampler.js";
import { readIndex, type VaeIdentity } from "./data/latents.js";
import { checkSameVae, decodeLatents, loadVae, type Vae } from "./latent/vae.js";

export { builtinExtractorWeights };

/** The architecture of the extractor shipped with sadm for digits (the default). */
export const BUILTIN_ARCH = "lenet-mnist";
/** The feature-extractor architectures the core knows. */
export const EXTRACTOR_ARCHS = ["lenet-mnist", "lenet-emoji", "inception-v3-fid"] as const;

/** What {@link evaluateModel} measures. */
export interface EvalMetrics {
  /** Fréchet distance between real and generated features (lower is better). */
  fd: number;
  /** Kernel inception distance (unbiased MMD², cubic kernel; lower is better) and its std over subsets. */
  kid: number;
  kidStd: number;
  /** k-NN precision (share of samples on the real manifold) and recall (share of real data covered), k = 3. */
  precision: number;
  recall: number;
  /**
   * The extractor's accuracy on the samples w.r.t. their conditioning labels; null for unconditional models and
   * for extractors that are not classifiers (Inception).
   */
  accuracy: number | null;
  /** The extractor's accuracy on the real reference images (what `accuracy` can at best approach); null when it has no classes. */
  realAccuracy: number | null;
  /** Generated samples and real images compared. */
  samples: number;
  realImages: number;
  /** Wall-clock seconds of the evaluation. */
  seconds: number;
}

/** Anything that samples like the addon's NativeTrainer / NativeModel. */
export interface Sampleable {
  sample(labels: Int32Array, opts: SampleOptions): Promise<Float32Array>;
}

const extractors = new Map<string, NativeExtractor>();

/** The extractor's view of the real images: features, predicted and true labels. */
interface RealFeatures {
  features: Float32Array;
  predictions: Int32Array;
  labels: Int32Array;
}
const realFeatureMemo = new Map<string, RealFeatures>();

/**
 * Opens (and caches) a feature extractor.
 * @throws ConfigError when the weights are missing, NativeError when they do not fit the architecture.
 */
export function openExtractor(spec: ExtractorConfig, device = "cpu"): NativeExtractor {
  if (!(EXTRACTOR_ARCHS as readonly string[]).includes(spec.arch))
    throw new ConfigError("config.eval.extractor.arch", `unknown architecture "${spec.arch}" (known: ${EXTRACTOR_ARCHS.join(", ")})`);
  const weights = spec.weights ?? (isBuiltin(spec.arch) ? builtinExtractorWeights(spec.arch) : undefined);
  if (weights === undefined)
    throw new ConfigError("config.eval.extractor.weights", `is required for architecture "${spec.arch}"`);
  if (!fs.existsSync(weights))
    throw new ConfigError(
      "config.eval.extractor.weights",
      `${weights} does not exist` +
        (spec.weights === undefined ? ` (recreate the shipped weights with \`sadm train-classifier --arch ${spec.arch}\`)` : ""),
    );
  const key = `${spec.arch}|${path.resolve(weights)}|${device}`;
  let ex = extractors.get(key);
  if (!ex) {
    try {
      ex = loadNative(device).NativeExtractor.load(spec.arch, weights, device);
    } catch (e) {
      throw NativeError.wrap(e, `cannot load feature extractor ${spec.arch} from ${weights}`);
    }
    extractors.set(key, ex);
  }
  return ex;
}

function accuracyOf(pred: Int32Array, labels: Int32Array): number {
  let hit = 0;
  for (let i = 0; i < labels.length; i++) if (pred[i] === labels[i]) hit++;
  return labels.length > 0 ? hit / labels.length : 0;
}

/** The classes a run's samples should cover: its class filter, else every class of the model. */
export function runClasses(cfg: SadmConfig): number[] {
  const classes = classLabels(cfg.data);
  if (classes) return [...classes].sort((a, b) => a - b);
  return Array.from({ length: cfg.model.numClasses }, (_, k) => k);
}

/** The weights file an extractor spec loads. */
function extractorWeights(spec: ExtractorConfig): string {
  return path.resolve(spec.weights ?? builtinExtractorWeights(isBuiltin(spec.arch) ? spec.arch : BUILTIN_ARCH));
}

/** Where the real images' features of one data set, extractor and count are kept on disk (as pytorch-fid's --save-stats). */
function statsFile(real: DataSource, spec: ExtractorConfig, n: number, shape: number[]): string {
  const weights = extractorWeights(spec);
  const st = fs.statSync(weights);
  const key = crypto
    .createHash("sha256")
    .update(JSON.stringify({ v: 1, data: real.fingerprint, arch: spec.arch, weights, size: st.size, mtime: st.mtimeMs, n, shape }))
    .digest("hex");
  return path.join(cacheRoot(), "stats", `${spec.arch}-${key.slice(0, 24)}.sadm-stats`);
}

function readStats(file: string): RealFeatures | undefined {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch {
    return undefined;
  }
  try {
    const len = buf.readUInt32LE(0);
    const { n, dim } = JSON.parse(buf.subarray(4, 4 + len).toString("utf8")) as { n: number; dim: number };
    const body = buf.subarray(4 + len);
    if (body.length !== 4 * (n * dim + 2 * n)) return undefined;
    const floats = new Float32Array(body.buffer.slice(body.byteOffset, body.byteOffset + body.length));
    const ints = new Int32Array(floats.buffer);
    return { features: floats.slice(0, n * dim), predictions: ints.slice(n * dim, n * dim + n), labels: ints.slice(n * dim + n) };
  } catch {
    return undefined;
  }
}

function writeStats(file: string, r: RealFeatures, dim: number): void {
  const header = Buffer.from(JSON.stringify({ n: r.labels.length, dim }), "utf8");
  const len = Buffer.alloc(4);
  len.writeUInt32LE(header.length, 0);
  const body = [r.features, r.predictions, r.labels].map((a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength));
  writeFileAtomic(file, Buffer.concat([len, header, ...body]));
}

/** The real side of an evaluation: a data source, and the dataset when it is already open (a training run's). */
export interface RealImages {
  source: DataSource;
  dataset?: Dataset;
  /** Whether its labels are the run's classes (default true): only then is the extractor's accuracy on them a ceiling. */
  sameClasses?: boolean;
}

/**
 * The extractor's features of the first `n` real images (class-interleaved, so balanced): from memory, from the
 * stats cache on disk, or computed (decoding the data only then) and cached.
 */
async function realFeatures(ex: NativeExtractor, spec: ExtractorConfig, real: RealImages, n: number, shape: number[]): Promise<RealFeatures> {
  const file = statsFile(real.source, spec, n, shape);
  const hit = realFeatureMemo.get(file) ?? readStats(file);
  if (hit) {
    realFeatureMemo.set(file, hit);
    return hit;
  }
  const dataset = real.dataset ?? (await real.source.open({ quiet: true })).dataset;
  const batch = readImages(dataset, n);
  const out = await ex.run(batch.x, shape);
  const r = { features: out.features, predictions: out.predictions, labels: batch.labels };
  writeStats(file, r, ex.featureDim);
  realFeatureMemo.set(file, r);
  return r;
}

/**
 * Evaluates a model of run config `cfg` with `cfg.eval`: `eval.samples` class-balanced samples (over the run's
 * classes) against as many real images: the run's data, or `real`.
 * @throws ConfigError, DataError, NativeError
 */
export async function evaluateModel(
  model: Sampleable,
  cfg: SadmConfig,
  device = cfg.device,
  real?: RealImages,
  vae?: Vae,
): Promise<EvalMetrics> {
  const t0 = Date.now();
  const e: EvalConfig = cfg.eval;
  const latent = cfg.data.name === "latents";
  if (latent && !vae)
    throw new ConfigError("config.vae", "evaluating a run on latents decodes its samples: give the VAE (--vae DIR)");
  real ??= latent ? latentSourceImages(cfg) : { source: findData(cfg.data) };
  const native = loadNative(device);
  const ex = openExtractor(e.extractor, device);
  const f = vae?.facts.downsample ?? 1;
  const modelShape: [number, number, number] = [cfg.model.inChannels, cfg.model.inputSize, cfg.model.inputSize];
  const shape = vae ? [3, cfg.model.inputSize * f, cfg.model.inputSize * f] : [...modelShape];
  const arch = e.extractor.arch;
  if (isBuiltin(arch) && BUILTIN_EXTRACTORS[arch].input.join() !== shape.join())
    throw new ConfigError(
      "config.eval.extractor.arch",
      `${arch} reads ${BUILTIN_EXTRACTORS[arch].reads}, not ${shape[1]}×${shape[2]} ${shape[0] === 3 ? "RGB" : `${shape[0]}-channel`} images: ` +
        "evaluate with inception-v3-fid and its weights (--extractor inception-v3-fid --extractor-weights FILE)",
    );
  try {
    ex.checkInput(shape);
  } catch (err) {
    throw new ConfigError("config.eval.extractor", errorMessage(err), { cause: err });
  }
  const [c, h, w] = shape;
  const realSet = await realFeatures(ex, e.extractor, real, e.samples, shape);
  if (realSet.labels.length < 10)
    throw new ConfigError("config.eval.samples", `the data has only ${realSet.labels.length} images to compare with`);

  const conditional = cfg.model.numClasses > 0;
  const classifies = ex.numClasses > 0;
  // Class-balanced: the grid order cycles through the classes; cut to exactly `samples`.
  const classes = runClasses(cfg);
  const labels = conditional
    ? gridLabels(classes, Math.ceil(e.samples / classes.length)).slice(0, e.samples)
    : new Int32Array(e.samples);
  const per = c * h * w;
  const images = new Float32Array(e.samples * per);
  const chunk = 250;
  for (let i = 0; i < e.samples; i += chunk) {
    const part = labels.subarray(i, Math.min(e.samples, i + chunk));
    let x: Float32Array;
    try {
      x = await model.sample(Int32Array.from(part), {
        sampler: e.sampler,
        steps: e.steps,
        ...(e.spacing ? { spacing: e.spacing } : {}),
        cfgScale: conditional ? e.cfgScale : 1,
        eta: 0,
        // One seed per chunk, derived from the eval seed, so a chunk size change is the only thing that moves them.
        seed: e.seed + i,
        // Latents are not in [-1, 1]: DiT samples them unclipped.
        clipDenoised: !latent,
      });
    } catch (err) {
      throw NativeError.wrap(err, "sampling for the evaluation failed");
    }
    if (vae) await decodeLatents(vae, x, [part.length, ...modelShape], (first, img) => images.set(img, (i + first) * per));
    else images.set(x, i * per);
  }
  const gen = await ex.run(images, shape);
  let m: FeatureMetrics;
  try {
    m = await native.featureMetrics(Float64Array.from(realSet.features), Float64Array.from(gen.features), ex.featureDim);
  } catch (err) {
    throw NativeError.wrap(err, "computing the metrics failed");
  }
  return {
    fd: m.fd,
    kid: m.kid,
    kidStd: m.kidStd,
    precision: m.precision,
    recall: m.recall,
    accuracy: conditional && classifies ? accuracyOf(gen.predictions, labels) : null,
    realAccuracy: classifies && real.sameClasses !== false ? accuracyOf(realSet.predictions, realSet.labels) : null,
    samples: e.samples,
    realImages: realSet.labels.length,
    seconds: (Date.now() - t0) / 1000,
  };
}

/** The metrics as a metrics.jsonl record for `step`. */
export function evalRecord(step: number, m: EvalMetrics): Record<string, number> {
  const r: Record<string, number> = {
    step,
    fd: m.fd,
    kid: m.kid,
    kidStd: m.kidStd,
    precision: m.precision,
    recall: m.recall,
    evalSamples: m.samples,
    evalSeconds: m.seconds,
  };
  if (m.accuracy !== null) r.accuracy = m.accuracy;
  if (m.realAccuracy !== null) r.realAccuracy = m.realAccuracy;
  return r;
}

/** One line: `FD 12.3  KID 0.0123 ± 0.0004  precision 0.81  recall 0.77  accuracy 0.95 (real 0.99)`. */
export function formatMetrics(m: EvalMetrics): string {
  return (
    `FD ${m.fd.toFixed(2)}  KID ${m.kid.toFixed(4)} ± ${m.kidStd.toFixed(4)}  precision ${m.precision.toFixed(3)}  ` +
    `recall ${m.recall.toFixed(3)}` +
    // The real images' accuracy is the ceiling of the samples' one, so it is shown only next to it.
    (m.accuracy !== null && m.realAccuracy !== null
      ? `  accuracy ${m.accuracy.toFixed(3)} (real ${m.realAccuracy.toFixed(3)})`
      : "")
  );
}

/** Options of {@link evaluate}. */
export interface EvalRequest {
  /** A checkpoint directory, or a run directory (its latest checkpoint). */
  checkpoint: string;
  /** Overrides of the run's `eval` settings (samples, steps, sampler, cfgScale, seed, extractor). */
  eval?: Partial<EvalConfig>;
  /** Device, default "cpu". */
  device?: string;
  /** A latent run's VAE (default: the one its latents were encoded with). */
  vae?: string;
  /** Append the result to the run's metrics.jsonl (default true when the checkpoint is inside a run directory). */
  append?: boolean;
  /**
   * Compare with the images of this folder instead of the run's data (preprocessed as the run's data is: its
   * resolution, channels, resize and background).
   */
  real?: string;
}

/** What {@link evaluate} resolves with. */
export interface EvalResult extends EvalMetrics {
  /** The checkpoint evaluated and its step. */
  checkpoint: string;
  step: number;
  /** The metrics file appended to, if any. */
  metricsFile: string | undefined;
}

/**
 * Evaluates a checkpoint's EMA model with the run's own data and eval settings (overridable), and appends the
 * result to the run's metrics.jsonl.
 * @throws CheckpointError, ConfigError, NativeError
 */
export async function evaluate(req: EvalRequest): Promise<EvalResult> {
  const dir = resolveCheckpoint(req.checkpoint);
  const state = readState(dir);
  const saved = state.extra.config;
  if (!saved) throw new CheckpointError(`${dir} holds no run config (state.json extra.config); it was not written by sadm train`);
  const device = req.device ?? "cpu";
  const cfg = resolveConfig(deepMerge(savedInput(saved), { eval: req.eval ?? {}, device }));
  let model;
  try {
    model = loadNative(cfg.device).NativeModel.load(dir, cfg.device, true);
  } catch (e) {
    throw NativeError.wrap(e, `cannot load checkpoint ${dir}`);
  }
  const vae = runVae(req.vae !== undefined ? { ...cfg, vae: path.resolve(req.vae) } : cfg, state.extra.dataset?.vae);
  const real = req.real !== undefined ? realFolder(req.real, cfg, state.extra.dataset?.classNames, vae) : undefined;
  const m = await evaluateModel(model, cfg, cfg.device, real, vae);
  const runDir = runDirOf(dir);
  let metricsFile: string | undefined;
  if (req.append !== false && runDir !== undefined) {
    metricsFile = path.join(runDir, METRICS_FILE);
    new MetricsLog(metricsFile).append(evalRecord(state.step, m));
  }
  return { ...m, checkpoint: dir, step: state.step, metricsFile };
}

/** The images a latent run's latents were encoded from, preprocessed as they were for the VAE. */
function latentSourceImages(cfg: SadmConfig): RealImages {
  const idx = readIndex(cfg.data.path ?? "");
  if (!idx.source.data)
    throw new ConfigError("real", `${cfg.data.path}: its index does not say how its images were read: compare with a folder (--real DIR)`);
  return { source: findData(resolveDataConfig({ ...idx.source.data, flip: false })) };
}

/** The VAE of a latent run: `--vae`/`config.vae`, else the one its latents were encoded with; checked to be that one. */
export function runVae(cfg: SadmConfig, trained: VaeIdentity | undefined): Vae | undefined {
  if (cfg.data.name !== "latents") return undefined;
  const where = cfg.vae ?? trained?.path;
  if (where === undefined) return undefined;
  const vae = loadVae(where, cfg.device);
  if (trained) checkSameVae(vae, trained, "this run's latents");
  return vae;
}

/** Another folder as the real images of an evaluation, preprocessed as the run's own images are. */
function realFolder(folder: string, cfg: SadmConfig, runClassNames: string[] | undefined, vae?: Vae): RealImages {
  const image = isImageFiles(cfg.data);
  const data: DataConfig = {
    name: "folder",
    path: path.resolve(folder),
    resolution: cfg.model.inputSize * (vae?.facts.downsample ?? 1),
    channels: cfg.model.inChannels === 1 && !vae ? 1 : 3,
    resize: image ? (cfg.data.resize ?? "crop") : "crop",
    background: image ? (cfg.data.background ?? "white") : "white",
    labels: "auto",
    onBadImage: "skip",
    flip: false,
  };
  if (!vae && cfg.model.inChannels !== 1 && cfg.model.inChannels !== 3)
    throw new ConfigError("real", `a model of ${cfg.model.inChannels} channels is not compared with image files`);
  const source = findData(data);
  const sameClasses = (source.classNames ?? []).join("\u0000") === (runClassNames ?? []).join("\u0000");
  return { source, sameClasses };
}

/** Options of {@link trainClassifier}. */
export interface ClassifierOptions {
  /** Which shipped extractor to train: `lenet-mnist` (default; the built-in digits) or `lenet-emoji` (`--data emoji`). */
  arch?: BuiltinArch;
  /** Where to write the weights (safetensors); a JSON report is written next to it. */
  out: string;
  /** Default 4 (lenet-emoji: 30). */
  epochs?: number;
  batchSize?: number;
  lr?: number;
  seed?: number;
  /** Called with (epoch, mean training loss). */
  onEpoch?: (epoch: number, loss: number) => void;
}

/** What {@link trainClassifier} resolves with (also written as `<out without .safetensors>.json`). */
export interface ClassifierReport {
  arch: string;
  weights: string;
  epochs: number;
  batchSize: number;
  lr: number;
  seed: number;
  trainImages: number;
  testImages: number;
  /** Accuracy on the held-out test split (MNIST's test split; for the emoji, every tenth image of each category). */
  testAccuracy: number;
  losses: number[];
  seconds: number;
}

/** The train and held-out images of a shipped extractor's data. */
async function classifierData(arch: BuiltinArch): Promise<{ train: Batch; test: Batch }> {
  if (arch === "lenet-mnist")
    return { train: readImages(new MnistDataset({ split: "train" })), test: readImages(new MnistDataset({ split: "test" })) };
  const { dataset } = await findData(resolveDataConfig({ name: "emoji", resolution: 32 })).open();
  const all = readImages(dataset);
  // Every tenth image of each category is held out: a split that does not depend on the categories' sizes.
  const seen = new Map<number, number>();
  const held = Array.from(all.labels, (l) => {
    const k = seen.get(l) ?? 0;
    seen.set(l, k + 1);
    return k % 10 === 9;
  });
  const per = 3 * 32 * 32;
  const pick = (keep: boolean): Batch => {
    const idx = held.flatMap((h, i) => (h === keep ? [i] : []));
    const x = new Float32Array(idx.length * per);
    idx.forEach((i, j) => x.set(all.x.subarray(i * per, (i + 1) * per), j * per));
    return { x, labels: Int32Array.from(idx, (i) => all.labels[i]) };
  };
  return { train: pick(false), test: pick(true) };
}

/**
 * Trains a shipped feature extractor: the MNIST LeNet on the `train` split of the built-in digits, scored on the
 * `test` split, or the emoji LeNet on nine tenths of the emoji set at 32×32, scored on the rest. This is how
 * `assets/lenet-mnist.safetensors` and `assets/lenet-emoji.safetensors` were made.
 * @throws SadmError, NativeError
 */
export async function trainClassifier(opts: ClassifierOptions): Promise<ClassifierReport> {
  const t0 = Date.now();
  const arch = opts.arch ?? BUILTIN_ARCH;
  if (!isBuiltin(arch)) throw new SadmError(`arch must be one of ${Object.keys(BUILTIN_EXTRACTORS).join(", ")} (got ${String(arch)})`);
  const epochs = opts.epochs ?? (arch === "lenet-emoji" ? 30 : 4);
  const batchSize = opts.batchSize ?? 64;
  const lr = opts.lr ?? 1e-3;
  const seed = opts.seed ?? 0;
  for (const [name, v, lo] of [["epochs", epochs, 1], ["batchSize", batchSize, 1], ["seed", seed, 0]] as const)
    if (!Number.isInteger(v) || v < lo) throw new SadmError(`${name} must be an integer ≥ ${lo} (got ${v})`);
  if (!(lr > 0 && lr < 1)) throw new SadmError(`lr must be in (0, 1) (got ${lr})`);
  const { train, test } = await classifierData(arch);
  const native = loadNative();
  let losses: number[];
  try {
    losses = await native.trainClassifier(train.x, train.labels, { epochs, batchSize, lr, seed }, opts.out, arch);
  } catch (e) {
    throw NativeError.wrap(e, "training the classifier failed");
  }
  losses.forEach((l, i) => opts.onEpoch?.(i + 1, l));
  const ex = native.NativeExtractor.load(arch, opts.out, "cpu");
  const out = await ex.run(test.x, [...BUILTIN_EXTRACTORS[arch].input]);
  const report: ClassifierReport = {
    arch,
    weights: path.basename(opts.out),
    epochs,
    batchSize,
    lr,
    seed,
    trainImages: train.labels.length,
    testImages: test.labels.length,
    testAccuracy: accuracyOf(out.predictions, test.labels),
    losses,
    seconds: (Date.now() - t0) / 1000,
  };
  writeFileAtomic(opts.out.replace(/\.safetensors$/, "") + ".json", JSON.stringify(report, null, 2) + "\n");
  return report;
}
