/**
 * sadm: train class-conditional diffusion transformers (DiT) with SADM structure-guided adversarial training.
 *
 * @example
 * ```ts
 * import { train, sampleGrid } from "sadm";
 * const run = await train({ preset: "mnist-tiny", outDir: "runs/mnist" });
 * await sampleGrid({ checkpoint: run.checkpoint!, cfgScale: 3 }, "grid.png");
 * ```
 */
export { SadmError, ConfigError, DataError, CheckpointError, NativeError, NumericalError } from "./errors.js";
export {
  resolveConfig,
  parseConfigInput,
  toCoreConfig,
  presetNames,
  presetConfig,
  normalizeDevice,
  RUN_PRESETS,
  MODEL_PRESETS,
  BASE_DEFAULTS,
  DEFAULT_PRESET,
  defaultPreset,
  configInputSchema,
  trainablePatterns,
  EFFICIENT_PATTERNS,
  type EvalConfig,
  type ExtractorConfig,
  type SadmConfig,
  type SadmConfigInput,
  type CoreConfig,
  type ModelConfig,
  type DiffusionConfig,
  type DiscriminatorConfig,
  type OptimConfig,
  type DataConfig,
  type DataFacts,
  type ModelPreset,
  type RunPreset,
  type DeepPartial,
} from "./config.js";
export { Rng, permutation, hashSeed } from "./rng.js";
export {
  MnistDataset,
  BatchLoader,
  ByteDataset,
  MemoryBytes,
  openDataset,
  findData,
  scanFolder,
  scanEmoji,
  discoverClasses,
  comparePy,
  decodeImage,
  openCache,
  cacheRoot,
  dataFacts,
  readImages,
  interleaveByClass,
  TEST_FRACTION,
  IMAGE_EXTENSIONS,
  IMAGE_DEFAULTS,
  MNIST_CLASS_NAMES,
  EMOJI_PACKAGE,
  type DataSplit,
  type Dataset,
  type DataSource,
  type OpenedData,
  type MnistOptions,
  type Batch,
  type DataPosition,
  type PositionedBatch,
  type LoaderOptions,
  type ScanResult,
  type ImageFile,
  type LabelMode,
  type ResizeMode,
  type Preprocess,
  type BadImage,
} from "./data/index.js";
export { planRun, type RunPlan, type RunKind, type PlanOptions } from "./plan.js";
export { lambdaAt, lrAt, emaDecayAt } from "./schedule.js";
export { saveGrid, encodeGrid } from "./image.js";
export {
  listCheckpoints,
  latestCheckpoint,
  pruneCheckpoints,
  recoverCheckpoints,
  readState,
  resolveCheckpoint,
  checkpointDir,
  checkpointName,
  type CheckpointState,
  type CheckpointExtra,
  type CheckpointInfo,
  type CheckpointMetrics,
  type DatasetInfo,
} from "./checkpoint.js";
export { MetricsLog, Progress, readMetrics, METRICS_FILE } from "./logging.js";
export { train, holdsRun, type TrainOptions, type TrainResult, type TrainStepInfo } from "./trainer.js";
export { sample, sampleGrid, gridLabels, type SampleRequest, type SampleResult } from "./sampler.js";
export {
  loadNative,
  cpuBinary,
  cudaBinaryCandidates,
  setNativeModule,
  type NativeModule,
  type StepOptions,
  type StepStats,
  type SampleOptions,
  type BuildInfo,
  type ParamCounts,
  type Extracted,
  type FeatureMetrics,
} from "./native.js";
export {
  evaluate,
  evaluateModel,
  evalRecord,
  formatMetrics,
  openExtractor,
  runClasses,
  trainClassifier,
  builtinExtractorWeights,
  BUILTIN_ARCH,
  type EvalMetrics,
  type EvalRequest,
  type EvalResult,
  type RealImages,
  type Sampleable,
  type ClassifierOptions,
  type ClassifierReport,
} from "./evaluate.js";
export { version } from "./version.js";
