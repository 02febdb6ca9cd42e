/**
 * The user configuration: a strict zod schema, presets, defaults and the mapping to the native CoreConfig.
 *
 * Resolution order (later wins): {@link BASE_DEFAULTS} ← the preset ({@link RUN_PRESETS} or a DiT model preset
 * from {@link MODEL_PRESETS}) ← the user's input; then derived defaults (λ warm-up at 70 % of the steps: SADM as a second stage, the
 * discriminator patch = the DiT patch, …) and cross-field checks.
 */
import { z } from "zod";
import * as path from "node:path";
import { ConfigError } from "./errors.js";
import { IMAGE_DEFAULTS, classIndices, dataFacts, isImageFiles, listNames, type DataConfig, type DataFacts } from "./data/spec.js";

export type { DataConfig, DataFacts } from "./data/spec.js";

// ---------------------------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------------------------

/** DiT architecture (field names as the native core expects them). */
export interface ModelConfig {
  /** Side of the (square) input in pixels/latent cells. */
  inputSize: number;
  /** Input channels (1 for MNIST, 4 for SD latents). */
  inChannels: number;
  /** Patch side; must divide `inputSize`. */
  patchSize: number;
  /** Transformer width; must be divisible by `numHeads`. */
  hiddenSize: number;
  /** Number of DiT blocks. */
  depth: number;
  /** Attention heads. */
  numHeads: number;
  /** MLP hidden width = hiddenSize × mlpRatio. */
  mlpRatio: number;
  /** Number of classes; 0 = unconditional. */
  numClasses: number;
  /** Predict the variance interpolation as extra output channels (DiT default). */
  learnSigma: boolean;
  /** Probability of dropping a label to the null class in training (for classifier-free guidance). */
  classDropoutProb: number;
}

/** Diffusion process. */
export interface DiffusionConfig {
  /** Number of diffusion timesteps T. */
  numTimesteps: number;
  /** β schedule. */
  schedule: "linear" | "cosine";
  /**
   * What the network predicts: "epsilon" (DiT; needed to load DiT checkpoints) or "v" (v = √ᾱ·ε − √(1−ᾱ)·x0,
   * well-conditioned at high noise; converges much faster on small budgets).
   */
  prediction: "epsilon" | "v";
  /**
   * Per-timestep weighting of the ε-loss: "uniform" is plain DiT; "minSnr" is Min-SNR-γ (Hang et al. 2023),
   * `min(SNR, γ)/SNR`, which converges several times faster on small budgets.
   */
  lossWeighting: "uniform" | "minSnr";
  /** γ of the Min-SNR weighting. */
  minSnrGamma: number;
}

/** The frozen network of a `features` discriminator: a built-in LeNet and its weights. */
export interface FeatureNetConfig {
  /** `lenet-mnist` (1×28×28 digits) or `lenet-emoji` (3×32×32 emoji); it must read the model's images. */
  arch: BuiltinArch;
  /** The weights; default: the ones shipped with sadm. Read once when the discriminator is created. */
  weights?: string;
}

/** The encoder bodies of the structure discriminator (see {@link DiscriminatorConfig.encoder}). */
export const ENCODERS = ["transformer", "conv", "features"] as const;
export type EncoderName = (typeof ENCODERS)[number];

/** The structure discriminator and the structural distance D. */
export interface DiscriminatorConfig {
  /**
   * The encoder's body, under a mean pool and a 2-layer projector: `transformer` (linear patch embedding and
   * pre-norm transformer blocks, the DiT's own ops), `conv` (`depth` stride-2 3×3 convolutions doubling up to
   * `width` channels) or `features` (a frozen pretrained LeNet, {@link featureNet}; only the projector learns).
   */
  encoder: EncoderName;
  /**
   * With `encoder: "features"`, the frozen network. Default: the run's evaluation extractor when it is a built-in
   * LeNet (lenet-mnist for the digits, lenet-emoji for the emoji at 32²).
   */
  featureNet?: FeatureNetConfig;
  /** Divide every learned weight matrix by its largest singular value (spectral normalisation). */
  spectralNorm: boolean;
  /** Add an embedding of each pair's timestep to the pooled features, so the encoder knows x̂0's noise level. */
  timeConditioned: boolean;
  /** Patch side of the transformer encoder's patch embedding; must divide `model.inputSize`. Default: the DiT patch. */
  patchSize: number;
  /** Width of the encoder: the transformer's, or the conv body's last channel count. */
  width: number;
  /** Number of encoder blocks (transformer) or stride-2 convolutions (conv). */
  depth: number;
  /** Attention heads of the encoder; must divide `width`. */
  numHeads: number;
  /** Output dimension of the projector (the manifold space). */
  projDim: number;
  /** Affinity kernel between embeddings. */
  kernel: "cosine" | "euclidean" | "gaussian";
  /** Temperature of the Gaussian kernel. */
  tau: number;
  /** Distance between affinity matrices. */
  distance: "l1" | "squared" | "huber";
  /** δ of the Huber distance. */
  huberDelta: number;
  /** `within`: Â_ij = ẑ_i·ẑ_j; `cross`: Â_ij = z_i·ẑ_j. */
  pairs: "within" | "cross";
  /** Pair weights: SNR-based, uniform, or a cut-off t < tMax. */
  weighting: "snr" | "uniform" | "cutoff";
  /** Timestep cut-off for `weighting: "cutoff"`. */
  tMax: number;
  /** Discriminator updates per denoiser update. */
  steps: number;
}

/** AdamW hyper-parameters (the learning rates are scheduled separately). */
export interface OptimConfig {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Global gradient-norm clip; 0 = off. */
  gradClip: number;
}

/**
 * The extractors shipped with sadm, trained by `sadm train-classifier`, and the images each reads: the MNIST LeNet
 * (1×28×28 digits) and the emoji LeNet (3×32×32, the emoji set's 10 categories).
 */
export const BUILTIN_EXTRACTORS = {
  "lenet-mnist": { input: [1, 28, 28], reads: "28×28 grey digits" },
  "lenet-emoji": { input: [3, 32, 32], reads: "32×32 RGB images (the emoji set at --resolution 32)" },
} as const;
export type BuiltinArch = keyof typeof BUILTIN_EXTRACTORS;

export function isBuiltinExtractor(arch: string): arch is BuiltinArch {
  return Object.hasOwn(BUILTIN_EXTRACTORS, arch);
}

/** The weights shipped with sadm for a built-in extractor (`assets/<arch>.safetensors`). */
export function builtinExtractorWeights(arch: BuiltinArch = "lenet-mnist"): string {
  return path.resolve(__dirname, "..", "assets", `${arch}.safetensors`);
}

/** A feature extractor for the metrics: a named architecture and its weights (safetensors). */
export interface ExtractorConfig {
  /**
   * Architecture name: `lenet-mnist` (built in, 28×28 grey images; the default), `lenet-emoji` (built in, 32×32 RGB
   * emoji; the default for `--data emoji` at 32²) or `inception-v3-fid` (the network of published FIDs, pytorch-fid's
   * parameter names; any image size, grey or RGB; needs `weights`).
   */
  arch: string;
  /** Path of the weights; default for the built-in LeNets: the weights shipped with sadm (`assets/<arch>.safetensors`). */
  weights?: string;
}

/**
 * The samplers: DiT's ancestral `ddpm` and `ddim`; the few-step solvers `dpm++2m` (DPM-Solver++ 2M, diffusers'
 * default), `dpm++2m-sde` (its SDE variant), `unipc` (UniPC-2 with its corrector), and `euler`/`heun` on Karras σ
 * (k-diffusion's). Heun's N steps cost 2N − 1 network evaluations; the others cost one per step.
 */
export const SAMPLERS = ["ddpm", "ddim", "dpm++2m", "dpm++2m-sde", "euler", "heun", "unipc"] as const;
export type SamplerName = (typeof SAMPLERS)[number];
/**
 * Where the steps go: `linspace` (evenly, DiT's), `leading` and `trailing` (diffusers'), `karras` (Karras et al.'s σ
 * schedule; σ-space solvers only). Default: karras for euler and heun, linspace for the rest.
 */
export const SPACINGS = ["linspace", "leading", "trailing", "karras"] as const;
export type SpacingName = (typeof SPACINGS)[number];

/** A sampler's settings as a config, a request or the CLI gives them. */
export interface SamplingChoice {
  sampler: SamplerName;
  steps: number;
  spacing?: SpacingName;
  eta?: number;
}

/**
 * Refuses the combinations no solver runs, naming `field`'s entries: Heun with 1 step, the karras spacing with
 * DDPM or DDIM, η with a sampler that has none.
 * @throws ConfigError
 */
export function checkSampling(c: SamplingChoice, field: { sampler: string; steps: string; spacing: string; eta: string }): void {
  if (c.sampler === "heun" && c.steps < 2)
    throw new ConfigError(field.steps, `heun with 1 step is a single Euler step: use euler, or 2 or more steps (got ${c.steps})`);
  if (c.spacing === "karras" && (c.sampler === "ddpm" || c.sampler === "ddim"))
    throw new ConfigError(field.spacing, `karras is a σ schedule, which ${c.sampler} does not step through: use it with dpm++2m, dpm++2m-sde, unipc, euler or heun`);
  if ((c.eta ?? 0) !== 0 && c.sampler !== "ddim")
    throw new ConfigError(field.eta, `is DDIM's stochasticity; ${c.sampler} has none: leave it at 0 or use ddim (got ${c.eta})`);
}

/**
 * `value` checked against `names` (a sampler, a spacing, a flag's choices), for inputs zod does not parse.
 * @throws ConfigError naming `field` and the names.
 */
export function checkOneOf<T extends string>(value: string | undefined, names: readonly T[], field: string): T | undefined {
  if (value === undefined) return undefined;
  if (!(names as readonly string[]).includes(value)) throw new ConfigError(field, `must be one of ${names.join(", ")} (got "${value}")`);
  return value as T;
}

/** Network evaluations of `steps` steps of `sampler` (Heun: 2N − 1). */
export function samplerEvaluations(sampler: SamplerName, steps: number): number {
  return sampler === "heun" ? Math.max(0, 2 * steps - 1) : steps;
}

/** Sample-quality evaluation (FD, KID, precision/recall, classifier accuracy) of the EMA model. */
export interface EvalConfig {
  /** Evaluate every N training steps (0 = never during training; `sadm eval` works on any checkpoint). */
  every: number;
  /** Generated samples (and as many real images as the data has, up to this number). */
  samples: number;
  /** Sampler for the evaluation samples. */
  sampler: SamplerName;
  /** Sampling steps. */
  steps: number;
  /** Timestep spacing (default: the sampler's, see {@link SPACINGS}). */
  spacing?: SpacingName;
  /** Guidance scale (1 = the plain conditional model, which is what the metrics should judge by default). */
  cfgScale: number;
  /** Noise seed of the evaluation samples (fixed, so evaluations of one run are comparable). */
  seed: number;
  /** The feature extractor. */
  extractor: ExtractorConfig;
}

/** A fully resolved sadm configuration (every field present). */
export interface SadmConfig {
  /** The preset the run started from (a run preset such as `mnist-tiny`, or a DiT model preset such as `DiT-S/2`). */
  preset: string;
  model: ModelConfig;
  diffusion: DiffusionConfig;
  data: DataConfig;
  discriminator: DiscriminatorConfig;
  ditOptim: OptimConfig;
  discOptim: OptimConfig;
  /** Total optimizer steps. */
  steps: number;
  /** Images per step. */
  batchSize: number;
  /** DiT learning rate (after warm-up). */
  lr: number;
  /** Linear LR warm-up steps. */
  lrWarmupSteps: number;
  /** Discriminator learning rate. */
  discLr: number;
  /** Maximum adversarial weight λ (0 = plain DiT training). */
  lambda: number;
  /** Steps with λ = 0 before the ramp starts (default: 70 % of `steps`: SADM as a second stage). */
  advWarmupSteps: number;
  /** Steps of the linear λ ramp (default: 10 % of `steps`). */
  advRampSteps: number;
  /** EMA decay of the DiT weights. */
  emaDecay: number;
  /** Use decay_t = min(decay, (1+t)/(10+t)). */
  emaWarmup: boolean;
  /** Write a sample grid every N steps (0 = only at the end). */
  sampleEvery: number;
  /** Save a checkpoint every N steps (0 = only at the end). */
  checkpointEvery: number;
  /** Keep the last K checkpoints. */
  keepCheckpoints: number;
  /** Keep `report.html` in the run directory up to date (rewritten at every checkpoint); `sadm report` writes it on demand. */
  report: boolean;
  /**
   * A step whose loss or gradient norm is not finite is skipped (nothing is updated) and logged; this many
   * skipped steps in a row stop the run with an error naming the last good checkpoint.
   */
  maxBadSteps: number;
  /** Append to metrics.jsonl every N steps (values averaged over the window). */
  logEvery: number;
  /** Without a TTY, print a progress line every N steps. */
  printEvery: number;
  /** Seed of everything (weights, noise, data order). */
  seed: number;
  /** `cpu` or `cuda:N`. */
  device: string;
  /**
   * Arithmetic of the DiT's matrix products: `fp32`, or `bf16` (CUDA only) with fp32 master weights, optimizer
   * state, norms and losses, as PyTorch's autocast does.
   */
  precision: "fp32" | "bf16";
  /** Run directory. */
  outDir: string;
  /**
   * Latent data: the VAE that decodes the run's sample grids and evaluation samples (a diffusers folder or weights
   * file). Default: the one the latents were encoded with, where it still is; it must be that VAE.
   */
  vae?: string;
  /** Sampler for the grids written during training (and the CLI default). */
  sampler: SamplerName;
  /** Sampling steps (respaced). */
  sampleSteps: number;
  /** Timestep spacing of the grids' sampler (default: the sampler's, see {@link SPACINGS}). */
  sampleSpacing?: SpacingName;
  /** Classifier-free guidance scale (1 = conditional sampling). */
  cfgScale: number;
  /** DDIM η. */
  eta: number;
  /** Rows of the training sample grids (one column per class). */
  samplesPerClass: number;
  /**
   * DiT parameters the optimizer updates: `all`, `efficient` (biases, adaLN modulation, timestep and class
   * embeddings: parameter-efficient fine-tuning) or a list of name patterns with `*` wildcards, e.g.
   * `["blocks.*.attn.*", "final_layer.*"]`.
   */
  trainable: "all" | "efficient" | string[];
  /** Sample-quality evaluation. */
  eval: EvalConfig;
}

/** Recursively optional version of T (arrays are replaced, not merged). */
export type DeepPartial<T> = {
  [K in keyof T]?: T[K] extends Array<infer U> ? U[] : T[K] extends object ? DeepPartial<T[K]> : T[K];
};

/** What users pass: any subset of {@link SadmConfig}. */
export type SadmConfigInput = DeepPartial<SadmConfig>;

/** The JSON the native core deserialises (`NativeTrainer.create`). All fields required. */
export interface CoreConfig {
  seed: number;
  model: ModelConfig;
  diffusion: DiffusionConfig;
  discriminator: CoreDiscriminatorConfig;
  ditOptim: OptimConfig;
  discOptim: OptimConfig;
  /** Name patterns of the trainable DiT parameters (`["*"]` = all). */
  trainable: string[];
  precision: "fp32" | "bf16";
}

/** The discriminator as the core reads it: a feature network's weights as a resolved path. */
export type CoreDiscriminatorConfig = Omit<DiscriminatorConfig, "featureNet"> & { featureNet?: { arch: string; weights: string } };

/** Architecture fields of a DiT model preset. */
export interface ModelPreset {
  depth: number;
  hiddenSize: number;
  numHeads: number;
  patchSize: number;
  mlpRatio: number;
  learnSigma: boolean;
}

/** A named run preset: a partial config plus a description. */
export interface RunPreset {
  description: string;
  config: SadmConfigInput;
}

// ---------------------------------------------------------------------------------------------------------------
// ===== PRESET TABLE (edit numbers here) =====
// ---------------------------------------------------------------------------------------------------------------

/**
 * Named run presets for the built-in MNIST runs. `mnist-tiny` is the default and must finish in ≤ 15 min on a
 * 2-core CPU; `mnist-small` in about 1 h.
 */
export const RUN_PRESETS: Readonly<Record<string, RunPreset>> = {
  // Measured on 2 CPU cores (README): v-prediction is what makes a DiT this small draw digits within the budget;
  // with DiT's ε-prediction the same model still drew speckle after 1,000 steps. SADM runs as a second stage
  // (λ = 0 for the first 70 % of the steps, then a ramp) and its discriminator is small (7×7 patches). λ = 0.01 is
  // the largest weight the experiment (experiments/results/results.md) found not to hurt FD at this scale; the
  // design's 0.1 made every metric clearly worse. Each run evaluates itself every 500 steps (500 samples).
  "mnist-tiny": {
    description: "Tiny DiT on MNIST (default): ≤ 15 min on 2 CPU cores",
    config: {
      model: { patchSize: 4, hiddenSize: 128, depth: 4, numHeads: 4, mlpRatio: 4, learnSigma: false },
      diffusion: { prediction: "v" },
      discriminator: { patchSize: 7, width: 64, depth: 2, numHeads: 4, projDim: 64 },
      ditOptim: { gradClip: 1 },
      batchSize: 64,
      steps: 2000,
      lr: 2e-3,
      lrWarmupSteps: 100,
      lambda: 0.01,
      sampleEvery: 500,
      checkpointEvery: 500,
      eval: { every: 500, samples: 500 },
    },
  },
  "mnist-small": {
    description: "Small DiT on MNIST: about 1 h on 2 CPU cores, clearly recognisable digits",
    config: {
      model: { patchSize: 4, hiddenSize: 192, depth: 6, numHeads: 6, mlpRatio: 4, learnSigma: false },
      diffusion: { prediction: "v" },
      discriminator: { patchSize: 7, width: 64, depth: 2, numHeads: 4, projDim: 64 },
      ditOptim: { gradClip: 1 },
      batchSize: 64,
      steps: 3500,
      lr: 1e-3,
      lrWarmupSteps: 200,
      lambda: 0.01,
      sampleEvery: 500,
      checkpointEvery: 500,
      eval: { every: 500, samples: 500 },
    },
  },
  // RGB image folders and the emoji set, sized like the digits' presets: the DiT sees 8×8 patches of 4×4 pixels
  // at 32² (a 2-pixel patch is 4× the tokens and ~5× the step time on this CPU) and of 8×8 pixels at 64². A folder's
  // metrics need an extractor for its images (Inception-v3, weights the user brings; the emoji at 32² have the
  // shipped lenet-emoji), so they do not evaluate themselves by default. Their SADM stage compares structure on a
  // small conv encoder with the Gaussian kernel and cross pairs: in the converged-model study (README, "Does SADM
  // help?") that is the one general setting that beat plain training on the emoji beyond the seeds' spread, on the
  // shipped LeNet and on an independent second one; the transformer encoder at any λ did not.
  "rgb-32": {
    description: "Tiny DiT on 32×32 RGB images (your folder, or --data emoji): under an hour on 2 CPU cores",
    config: {
      model: { patchSize: 4, hiddenSize: 128, depth: 4, numHeads: 4, mlpRatio: 4, learnSigma: false },
      diffusion: { prediction: "v" },
      discriminator: { encoder: "conv", kernel: "gaussian", pairs: "cross", patchSize: 4, width: 64, depth: 2, numHeads: 4, projDim: 64 },
      ditOptim: { gradClip: 1 },
      batchSize: 64,
      steps: 4000,
      lr: 2e-3,
      lrWarmupSteps: 100,
      lambda: 0.01,
      sampleEvery: 1000,
      checkpointEvery: 500,
      eval: { every: 0 },
    },
  },
  "rgb-64": {
    description: "Small DiT on 64×64 RGB images (your folder, or --data emoji --resolution 64): a few hours on 2 CPU cores",
    config: {
      model: { patchSize: 8, hiddenSize: 192, depth: 6, numHeads: 6, mlpRatio: 4, learnSigma: false },
      diffusion: { prediction: "v" },
      discriminator: { encoder: "conv", kernel: "gaussian", pairs: "cross", patchSize: 8, width: 64, depth: 2, numHeads: 4, projDim: 64 },
      ditOptim: { gradClip: 1 },
      batchSize: 64,
      steps: 6000,
      lr: 1e-3,
      lrWarmupSteps: 200,
      lambda: 0.01,
      sampleEvery: 1000,
      checkpointEvery: 1000,
      eval: { every: 0 },
    },
  },
  // VAE latents (sadm encode): 4 channels at an eighth of the image side. A 2-latent-pixel patch is DiT's own; the
  // width and depth are rgb-32's, so a scaled-down latent run fits this CPU. The paper's setting is a DiT preset
  // (--preset DiT-XL/2) or a published checkpoint (--from DiT-XL-2-256x256.pt), on a GPU.
  "latent-tiny": {
    description: "Tiny DiT on VAE latents (sadm encode): patch 2, for small latent runs on the CPU",
    config: {
      model: { patchSize: 2, hiddenSize: 128, depth: 4, numHeads: 4, mlpRatio: 4, learnSigma: false },
      diffusion: { prediction: "v" },
      discriminator: { patchSize: 2, width: 64, depth: 2, numHeads: 4, projDim: 64 },
      ditOptim: { gradClip: 1 },
      batchSize: 64,
      steps: 4000,
      lr: 2e-3,
      lrWarmupSteps: 100,
      lambda: 0.01,
      sampleEvery: 1000,
      checkpointEvery: 500,
      eval: { every: 0 },
    },
  },
};

const DIT_SIZES: Readonly<Record<string, { depth: number; hiddenSize: number; numHeads: number }>> = {
  S: { depth: 12, hiddenSize: 384, numHeads: 6 },
  B: { depth: 12, hiddenSize: 768, numHeads: 12 },
  L: { depth: 24, hiddenSize: 1024, numHeads: 16 },
  XL: { depth: 28, hiddenSize: 1152, numHeads: 16 },
};

/** The DiT reference model presets `DiT-{S,B,L,XL}/{2,4,8}` (architecture only; input size comes from the data). */
export const MODEL_PRESETS: Readonly<Record<string, ModelPreset>> = Object.fromEntries(
  Object.entries(DIT_SIZES).flatMap(([size, arch]) =>
    [2, 4, 8].map((patchSize) => [`DiT-${size}/${patchSize}`, { ...arch, patchSize, mlpRatio: 4, learnSigma: true }]),
  ),
);

/** The default preset (of the built-in digits). */
export const DEFAULT_PRESET = "mnist-tiny";

/** The preset a run gets when it names none: `mnist-tiny` for the digits, `rgb-32`/`rgb-64` for images by resolution. */
export function defaultPreset(data: { name?: DataConfig["name"]; resolution?: number } | undefined): string {
  if (!data?.name || data.name === "mnist") return DEFAULT_PRESET;
  if (data.name === "latents") return "latent-tiny";
  return (data.resolution ?? IMAGE_DEFAULTS.resolution) > 32 ? "rgb-64" : "rgb-32";
}

/**
 * The default few-step sampler and its step count: the fewest network evaluations that reach DDPM 250's FD on the
 * digits and on the RGB preset (README, "Samplers"). Grids, evaluations and `sample()` all start from it.
 */
export const DEFAULT_SAMPLING = { sampler: "unipc", steps: 10 } as const satisfies { sampler: SamplerName; steps: number };

/** Defaults under every preset (a DiT model preset gets these training settings). */
export const BASE_DEFAULTS: SadmConfigInput = {
  model: { mlpRatio: 4, learnSigma: true, classDropoutProb: 0.1 },
  diffusion: { numTimesteps: 1000, schedule: "linear", prediction: "epsilon", lossWeighting: "uniform", minSnrGamma: 5 },
  data: { name: "mnist" },
  discriminator: {
    encoder: "transformer",
    spectralNorm: false,
    timeConditioned: false,
    width: 128,
    depth: 2,
    numHeads: 4,
    projDim: 128,
    kernel: "cosine",
    tau: 1,
    distance: "l1",
    huberDelta: 0.1,
    pairs: "within",
    weighting: "snr",
    tMax: 500,
    steps: 1,
  },
  ditOptim: { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, gradClip: 0 },
  discOptim: { beta1: 0.5, beta2: 0.999, eps: 1e-8, weightDecay: 0, gradClip: 1 },
  steps: 1000,
  batchSize: 32,
  lr: 1e-4,
  lrWarmupSteps: 0,
  discLr: 1e-4,
  lambda: 0.1,
  emaDecay: 0.9999,
  emaWarmup: true,
  keepCheckpoints: 3,
  report: true,
  maxBadSteps: 5,
  logEvery: 10,
  printEvery: 100,
  seed: 0,
  device: "cpu",
  precision: "fp32",
  outDir: "runs/mnist",
  sampler: DEFAULT_SAMPLING.sampler,
  sampleSteps: DEFAULT_SAMPLING.steps,
  cfgScale: 3,
  eta: 0,
  samplesPerClass: 4,
  trainable: "all",
  eval: { every: 0, samples: 1000, sampler: DEFAULT_SAMPLING.sampler, steps: DEFAULT_SAMPLING.steps, cfgScale: 1, seed: 0, extractor: { arch: "lenet-mnist" } },
};

/**
 * Parameter-efficient fine-tuning (`trainable: "efficient"`), after DiffFit (Xie et al. 2023): biases, the adaLN
 * modulation that scales and shifts every norm, and the timestep and class embeddings.
 */
export const EFFICIENT_PATTERNS: readonly string[] = ["*.bias", "*adaLN_modulation*", "t_embedder.*", "y_embedder.*"];

// ---------------------------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------------------------

const MAX_STEPS = 1e9;

function fmt(n: number): string {
  return String(n);
}

/** A number in [min, max] (integer when `int`). */
function num(min: number, max: number, int = false): z.ZodNumber {
  const msg = `must be ${int ? "an integer" : "a number"} between ${fmt(min)} and ${fmt(max)}`;
  let s = z.number({ error: msg });
  if (int) s = s.int({ error: msg });
  return s.gte(min, { error: msg }).lte(max, { error: msg });
}

/** A number in (0, max]. */
function pos(max: number): z.ZodNumber {
  const msg = `must be a number greater than 0 and at most ${fmt(max)}`;
  return z.number({ error: msg }).gt(0, { error: msg }).lte(max, { error: msg });
}

/** A number in [min, max). */
function halfOpen(min: number, max: number): z.ZodNumber {
  const msg = `must be a number ≥ ${fmt(min)} and < ${fmt(max)}`;
  return z.number({ error: msg }).gte(min, { error: msg }).lt(max, { error: msg });
}

function oneOf<const T extends readonly [string, ...string[]]>(values: T): z.ZodEnum<{ [K in T[number]]: K }> {
  return z.enum(values, { error: `must be one of ${values.map((v) => `"${v}"`).join(", ")}` });
}

function bool(): z.ZodBoolean {
  return z.boolean({ error: "must be true or false" });
}

const modelSchema = z.strictObject({
  inputSize: num(2, 4096, true).optional(),
  inChannels: num(1, 64, true).optional(),
  patchSize: num(1, 64, true).optional(),
  hiddenSize: num(1, 16384, true).optional(),
  depth: num(1, 256, true).optional(),
  numHeads: num(1, 256, true).optional(),
  mlpRatio: pos(64).optional(),
  numClasses: num(0, 1_000_000, true).optional(),
  learnSigma: bool().optional(),
  classDropoutProb: halfOpen(0, 1).optional(),
});

const diffusionSchema = z.strictObject({
  numTimesteps: num(2, 100_000, true).optional(),
  schedule: oneOf(["linear", "cosine"] as const).optional(),
  prediction: oneOf(["epsilon", "v"] as const).optional(),
  lossWeighting: oneOf(["uniform", "minSnr"] as const).optional(),
  minSnrGamma: num(1e-3, 1e3).optional(),
});

const discriminatorSchema = z.strictObject({
  encoder: oneOf(ENCODERS).optional(),
  featureNet: z
    .strictObject({
      arch: oneOf(Object.keys(BUILTIN_EXTRACTORS) as [BuiltinArch, ...BuiltinArch[]]),
      weights: z.string({ error: "must be the path of a safetensors file" }).min(1, { error: "must not be empty" }).optional(),
    })
    .optional(),
  spectralNorm: bool().optional(),
  timeConditioned: bool().optional(),
  patchSize: num(1, 64, true).optional(),
  width: num(1, 16384, true).optional(),
  depth: num(1, 64, true).optional(),
  numHeads: num(1, 256, true).optional(),
  projDim: num(1, 16384, true).optional(),
  kernel: oneOf(["cosine", "euclidean", "gaussian"] as const).optional(),
  tau: pos(1e6).optional(),
  distance: oneOf(["l1", "squared", "huber"] as const).optional(),
  huberDelta: pos(1e6).optional(),
  pairs: oneOf(["within", "cross"] as const).optional(),
  weighting: oneOf(["snr", "uniform", "cutoff"] as const).optional(),
  tMax: num(1, 100_000, true).optional(),
  steps: num(1, 100, true).optional(),
});

const optimSchema = z.strictObject({
  beta1: halfOpen(0, 1).optional(),
  beta2: halfOpen(0, 1).optional(),
  eps: pos(1).optional(),
  weightDecay: num(0, 10).optional(),
  gradClip: num(0, 1e9).optional(),
});

const dataSchema = z.strictObject({
  name: oneOf(["mnist", "folder", "emoji", "latents"] as const).optional(),
  path: z.string({ error: "must be the path of an image folder or a latent dataset" }).min(1, { error: "must not be empty" }).optional(),
  resolution: num(2, 4096, true).optional(),
  channels: z.union([z.literal(1), z.literal(3)], { error: "must be 1 (grey) or 3 (RGB)" }).optional(),
  resize: oneOf(["crop", "pad", "stretch"] as const).optional(),
  flip: bool().optional(),
  background: z
    .string({ error: "must be a colour: #rrggbb, #rgb, white or black" })
    .regex(/^(#[0-9a-fA-F]{3}|#[0-9a-fA-F]{6}|white|black)$/, { error: "must be a colour: #rrggbb, #rgb, white or black" })
    .optional(),
  labels: oneOf(["auto", "folders", "metadata", "none"] as const).optional(),
  onBadImage: oneOf(["skip", "error"] as const).optional(),
  split: oneOf(["all", "train", "test"] as const).optional(),
  classes: z
    .array(z.union([num(0, 1_000_000, true), z.string().min(1)]), {
      error: "must be an array of class labels or class names",
    })
    .min(1, { error: "must list at least one class" })
    .optional(),
  limit: num(1, 1e9, true).optional(),
  classNames: z.array(z.string({ error: "must be a list of class names" }), { error: "must be a list of class names" }).optional(),
});

/** The strict schema of a user config (every field optional; unknown keys are errors). */
const evalSchema = z.strictObject({
  every: num(0, MAX_STEPS, true).optional(),
  samples: num(10, 1_000_000, true).optional(),
  sampler: oneOf(SAMPLERS).optional(),
  steps: num(1, 100_000, true).optional(),
  spacing: oneOf(SPACINGS).optional(),
  cfgScale: num(0, 100).optional(),
  seed: num(0, Number.MAX_SAFE_INTEGER, true).optional(),
  extractor: z
    .strictObject({
      arch: z.string({ error: "must be an architecture name such as lenet-mnist" }).min(1).optional(),
      weights: z.string({ error: "must be a path to a safetensors file" }).min(1).optional(),
    })
    .optional(),
});

export const configInputSchema = z.strictObject({
  preset: z.string({ error: "must be a preset name" }).optional(),
  model: modelSchema.optional(),
  diffusion: diffusionSchema.optional(),
  data: dataSchema.optional(),
  discriminator: discriminatorSchema.optional(),
  ditOptim: optimSchema.optional(),
  discOptim: optimSchema.optional(),
  steps: num(1, MAX_STEPS, true).optional(),
  batchSize: num(1, 65536, true).optional(),
  lr: pos(1).optional(),
  lrWarmupSteps: num(0, MAX_STEPS, true).optional(),
  discLr: num(0, 1).optional(),
  lambda: num(0, 10).optional(),
  advWarmupSteps: num(0, MAX_STEPS, true).optional(),
  advRampSteps: num(0, MAX_STEPS, true).optional(),
  emaDecay: num(0, 1).optional(),
  emaWarmup: bool().optional(),
  sampleEvery: num(0, MAX_STEPS, true).optional(),
  checkpointEvery: num(0, MAX_STEPS, true).optional(),
  keepCheckpoints: num(1, 1_000_000, true).optional(),
  report: bool().optional(),
  maxBadSteps: num(1, 1_000_000, true).optional(),
  logEvery: num(1, MAX_STEPS, true).optional(),
  printEvery: num(1, MAX_STEPS, true).optional(),
  seed: num(0, Number.MAX_SAFE_INTEGER, true).optional(),
  device: z
    .string({ error: 'must be "cpu" or "cuda:N"' })
    .regex(/^(cpu|cuda(:\d+)?)$/, { error: 'must be "cpu", "cuda" or "cuda:N"' })
    .optional(),
  precision: oneOf(["fp32", "bf16"] as const).optional(),
  outDir: z.string({ error: "must be a path" }).min(1, { error: "must not be empty" }).optional(),
  vae: z.string({ error: "must be the path of a VAE folder or file" }).min(1, { error: "must not be empty" }).optional(),
  sampler: oneOf(SAMPLERS).optional(),
  sampleSteps: num(1, 100_000, true).optional(),
  sampleSpacing: oneOf(SPACINGS).optional(),
  cfgScale: num(0, 100).optional(),
  eta: num(0, 10).optional(),
  samplesPerClass: num(1, 64, true).optional(),
  trainable: z
    .union([
      oneOf(["all", "efficient"] as const),
      z.array(z.string().min(1), { error: "must be a list of parameter-name patterns" }).min(1),
    ], { error: 'must be "all", "efficient" or a list of parameter-name patterns such as ["*.bias"]' })
    .optional(),
  eval: evalSchema.optional(),
});

// Compile-time check that the schema accepts exactly SadmConfigInput.
type SchemaInput = z.input<typeof configInputSchema>;
const _schemaMatchesInput: (x: SchemaInput) => SadmConfigInput = (x) => x;
const _inputMatchesSchema: (x: SadmConfigInput) => SchemaInput = (x) => x;
void _schemaMatchesInput;
void _inputMatchesSchema;

// ---------------------------------------------------------------------------------------------------------------
// Resolution
// ---------------------------------------------------------------------------------------------------------------

type PlainObject = { [key: string]: unknown };

function isPlainObject(v: unknown): v is PlainObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Deep-merges plain objects (later wins; arrays and scalars are replaced; `undefined` values are skipped). */
export function deepMerge<T extends PlainObject>(...objs: ReadonlyArray<PlainObject | undefined>): T {
  const out: PlainObject = {};
  for (const o of objs) {
    if (!o) continue;
    for (const [k, v] of Object.entries(o)) {
      if (v === undefined) continue;
      const prev = out[k];
      out[k] = isPlainObject(v) && isPlainObject(prev) ? deepMerge(prev, v) : isPlainObject(v) ? deepMerge(v) : v;
    }
  }
  return out as T;
}

function valueAt(input: unknown, path: ReadonlyArray<PropertyKey>): unknown {
  let cur: unknown = input;
  for (const key of path) {
    if (isPlainObject(cur) && typeof key === "string") cur = cur[key];
    else if (Array.isArray(cur) && typeof key === "number") cur = cur[key];
    else return undefined;
  }
  return cur;
}

function pathString(path: ReadonlyArray<PropertyKey>): string {
  let s = "config";
  for (const key of path) s += typeof key === "number" ? `[${key}]` : `.${String(key)}`;
  return s;
}

function describe(v: unknown): string {
  if (v === undefined) return "undefined";
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "number" || typeof v === "boolean" || v === null) return String(v);
  if (Array.isArray(v)) return "an array";
  return "an object";
}

/** Turns the first zod issue into a ConfigError naming the field, the allowed range and the value given. */
function toConfigError(error: z.ZodError, input: unknown): ConfigError {
  const issue = error.issues[0];
  if (issue.code === "unrecognized_keys") {
    const key = issue.keys[0];
    const container = valueAt(input, issue.path);
    void container;
    return new ConfigError(pathString([...issue.path, key]), `unknown key "${key}"${allowedKeysHint(issue.path)}`);
  }
  const got = valueAt(input, issue.path);
  return new ConfigError(pathString(issue.path), `${issue.message} (got ${describe(got)})`);
}

function allowedKeysHint(path: ReadonlyArray<PropertyKey>): string {
  let schema: z.ZodType = configInputSchema;
  for (const key of path) {
    const inner = unwrapOptional(schema);
    if (inner instanceof z.ZodObject && typeof key === "string") {
      const next: unknown = inner.shape[key];
      if (!(next instanceof z.ZodType)) return "";
      schema = next;
    } else return "";
  }
  const obj = unwrapOptional(schema);
  if (!(obj instanceof z.ZodObject)) return "";
  return ` (allowed: ${Object.keys(obj.shape).join(", ")})`;
}

function unwrapOptional(s: z.ZodType): z.ZodType {
  return s instanceof z.ZodOptional ? (s.unwrap() as z.ZodType) : s;
}

/**
 * Validates a user config (strictly: unknown keys are errors) without applying defaults.
 * @throws ConfigError naming the first invalid field.
 */
export function parseConfigInput(input: unknown): SadmConfigInput {
  const value = input === undefined || input === null ? {} : input;
  if (!isPlainObject(value)) throw new ConfigError("config", `must be an object (got ${describe(value)})`);
  const r = configInputSchema.safeParse(value);
  if (!r.success) throw toConfigError(r.error, value);
  return r.data;
}

/** The known preset names (run presets first). */
export function presetNames(): string[] {
  return [...Object.keys(RUN_PRESETS), ...Object.keys(MODEL_PRESETS)];
}

/** The partial config a preset contributes. @throws ConfigError for an unknown name. */
export function presetConfig(name: string): SadmConfigInput {
  const run = RUN_PRESETS[name];
  if (run) return run.config;
  const model = MODEL_PRESETS[name];
  if (model) return { model: { ...model } };
  throw new ConfigError("config.preset", `unknown preset "${name}" (known: ${presetNames().join(", ")})`);
}

function requireField<T>(v: T | undefined, field: string): T {
  if (v === undefined) throw new ConfigError(field, "is required");
  return v;
}

/** The data options that only image files (folder, emoji) have, and those only a folder has. */
const IMAGE_ONLY = ["resolution", "channels", "resize", "background", "onBadImage"] as const;
const FOLDER_ONLY = ["path", "labels"] as const;

/**
 * The data section with every default filled: the image options of folders and emoji, the folder's path made
 * absolute (a resumed run may start elsewhere), no labels for an unconditional model unless asked for.
 */
function resolveData(d: DeepPartial<DataConfig>, userModel: DeepPartial<ModelConfig> | undefined): DataConfig {
  const name = d.name ?? "mnist";
  const misplaced = [
    ...(isImageFiles({ name }) ? [] : IMAGE_ONLY),
    ...(name === "folder" ? [] : name === "latents" ? FOLDER_ONLY.filter((k) => k !== "path") : FOLDER_ONLY),
  ].find((k) => d[k] !== undefined);
  if (misplaced)
    throw new ConfigError(
      `config.data.${misplaced}`,
      `applies to ${FOLDER_ONLY.includes(misplaced as (typeof FOLDER_ONLY)[number]) ? "folder" : "folder and emoji"} data, not ${name}`,
    );
  if (name === "folder" && d.path === undefined)
    throw new ConfigError("config.data.path", "is required for folder data: the folder holding the images (--data DIR)");
  if (name === "latents" && d.path === undefined)
    throw new ConfigError("config.data.path", "is required for latent data: the folder sadm encode wrote (--data DIR)");
  const out: DataConfig = { name };
  if (name === "latents") out.path = path.resolve(d.path ?? "");
  if (name === "folder") {
    out.path = path.resolve(d.path ?? "");
    out.labels = d.labels ?? (userModel?.numClasses === 0 ? "none" : IMAGE_DEFAULTS.labels);
  }
  if (isImageFiles({ name })) {
    out.resolution = d.resolution ?? userModel?.inputSize ?? IMAGE_DEFAULTS.resolution;
    out.channels = d.channels ?? (userModel?.inChannels === 1 ? 1 : IMAGE_DEFAULTS.channels);
    out.resize = d.resize ?? IMAGE_DEFAULTS.resize;
    out.background = d.background ?? IMAGE_DEFAULTS.background;
    out.onBadImage = d.onBadImage ?? IMAGE_DEFAULTS.onBadImage;
  }
  if (d.flip !== undefined || isImageFiles({ name }) || name === "latents") out.flip = d.flip ?? true;
  if (d.classes) out.classes = [...d.classes];
  if (d.limit !== undefined) out.limit = d.limit;
  if (d.split !== undefined) out.split = d.split;
  return out;
}

/**
 * Validates a user config and fills every default (preset, derived values), then checks cross-field constraints.
 * The data's shape and class table size the model: for an image folder that means reading its top level (and its
 * metadata file), not its images.
 * @param input a plain object (e.g. parsed JSON); `undefined` means all defaults.
 * @throws ConfigError whose message names the field, e.g. `config.lambda: must be a number between 0 and 10 (got -1)`;
 * DataError when the data is not there.
 */
export function resolveConfig(input: unknown): SadmConfig {
  const user = parseConfigInput(input);
  const preset = user.preset ?? defaultPreset(user.data);
  const fromPreset = presetConfig(preset);
  const data = resolveData(
    deepMerge<PlainObject>(BASE_DEFAULTS.data as PlainObject, fromPreset.data as PlainObject, user.data as PlainObject),
    deepMerge<PlainObject>(fromPreset.model as PlainObject, user.model as PlainObject),
  );
  const facts = dataFacts(data);
  settleClasses(data, facts, user.data?.classNames);
  const dataDefaults: SadmConfigInput = {
    model: { inputSize: facts.size, inChannels: facts.channels, numClasses: facts.numClasses },
    // The emoji set at 32² has its own shipped extractor.
    ...(data.name === "emoji" && facts.size === 32 && facts.channels === 3 ? { eval: { extractor: { arch: "lenet-emoji" } } } : {}),
  };
  const merged = deepMerge<PlainObject>(
    BASE_DEFAULTS as PlainObject,
    dataDefaults as PlainObject,
    fromPreset as PlainObject,
    user as PlainObject,
    { preset },
  );
  // Re-validate the merged object: catches bad preset-table edits with the same messages.
  const m = parseConfigInput(merged);
  const steps = requireField(m.steps, "config.steps");
  const model = m.model ?? {};
  const disc = m.discriminator ?? {};
  const cfg: SadmConfig = {
    preset,
    model: {
      inputSize: requireField(model.inputSize, "config.model.inputSize"),
      inChannels: requireField(model.inChannels, "config.model.inChannels"),
      patchSize: requireField(model.patchSize, "config.model.patchSize"),
      hiddenSize: requireField(model.hiddenSize, "config.model.hiddenSize"),
      depth: requireField(model.depth, "config.model.depth"),
      numHeads: requireField(model.numHeads, "config.model.numHeads"),
      mlpRatio: requireField(model.mlpRatio, "config.model.mlpRatio"),
      numClasses: requireField(model.numClasses, "config.model.numClasses"),
      learnSigma: requireField(model.learnSigma, "config.model.learnSigma"),
      classDropoutProb: requireField(model.classDropoutProb, "config.model.classDropoutProb"),
    },
    diffusion: {
      numTimesteps: requireField(m.diffusion?.numTimesteps, "config.diffusion.numTimesteps"),
      schedule: requireField(m.diffusion?.schedule, "config.diffusion.schedule"),
      prediction: requireField(m.diffusion?.prediction, "config.diffusion.prediction"),
      lossWeighting: requireField(m.diffusion?.lossWeighting, "config.diffusion.lossWeighting"),
      minSnrGamma: requireField(m.diffusion?.minSnrGamma, "config.diffusion.minSnrGamma"),
    },
    data,
    discriminator: {
      encoder: requireField(disc.encoder, "config.discriminator.encoder"),
      ...resolveFeatureNet(disc, m.eval?.extractor?.arch, [model.inChannels, model.inputSize]),
      spectralNorm: requireField(disc.spectralNorm, "config.discriminator.spectralNorm"),
      timeConditioned: requireField(disc.timeConditioned, "config.discriminator.timeConditioned"),
      patchSize: disc.patchSize ?? requireField(model.patchSize, "config.model.patchSize"),
      width: requireField(disc.width, "config.discriminator.width"),
      depth: requireField(disc.depth, "config.discriminator.depth"),
      numHeads: requireField(disc.numHeads, "config.discriminator.numHeads"),
      projDim: requireField(disc.projDim, "config.discriminator.projDim"),
      kernel: requireField(disc.kernel, "config.discriminator.kernel"),
      tau: requireField(disc.tau, "config.discriminator.tau"),
      distance: requireField(disc.distance, "config.discriminator.distance"),
      huberDelta: requireField(disc.huberDelta, "config.discriminator.huberDelta"),
      pairs: requireField(disc.pairs, "config.discriminator.pairs"),
      weighting: requireField(disc.weighting, "config.discriminator.weighting"),
      tMax: requireField(disc.tMax, "config.discriminator.tMax"),
      steps: requireField(disc.steps, "config.discriminator.steps"),
    },
    ditOptim: resolveOptim(m.ditOptim, "config.ditOptim"),
    discOptim: resolveOptim(m.discOptim, "config.discOptim"),
    steps,
    batchSize: requireField(m.batchSize, "config.batchSize"),
    lr: requireField(m.lr, "config.lr"),
    lrWarmupSteps: requireField(m.lrWarmupSteps, "config.lrWarmupSteps"),
    discLr: requireField(m.discLr, "config.discLr"),
    lambda: requireField(m.lambda, "config.lambda"),
    advWarmupSteps: m.advWarmupSteps ?? Math.round(0.7 * steps),
    advRampSteps: m.advRampSteps ?? Math.round(0.1 * steps),
    emaDecay: requireField(m.emaDecay, "config.emaDecay"),
    emaWarmup: requireField(m.emaWarmup, "config.emaWarmup"),
    sampleEvery: m.sampleEvery ?? steps,
    checkpointEvery: m.checkpointEvery ?? steps,
    keepCheckpoints: requireField(m.keepCheckpoints, "config.keepCheckpoints"),
    report: m.report ?? true,
    maxBadSteps: requireField(m.maxBadSteps, "config.maxBadSteps"),
    logEvery: requireField(m.logEvery, "config.logEvery"),
    printEvery: requireField(m.printEvery, "config.printEvery"),
    seed: requireField(m.seed, "config.seed"),
    device: normalizeDevice(requireField(m.device, "config.device")),
    precision: requireField(m.precision, "config.precision"),
    outDir: requireField(m.outDir, "config.outDir"),
    ...(m.vae !== undefined ? { vae: path.resolve(m.vae) } : {}),
    sampler: requireField(m.sampler, "config.sampler"),
    sampleSteps: requireField(m.sampleSteps, "config.sampleSteps"),
    ...(m.sampleSpacing !== undefined ? { sampleSpacing: m.sampleSpacing } : {}),
    cfgScale: requireField(m.cfgScale, "config.cfgScale"),
    eta: requireField(m.eta, "config.eta"),
    samplesPerClass: requireField(m.samplesPerClass, "config.samplesPerClass"),
    trainable: requireField(m.trainable, "config.trainable"),
    eval: {
      every: requireField(m.eval?.every, "config.eval.every"),
      samples: requireField(m.eval?.samples, "config.eval.samples"),
      sampler: requireField(m.eval?.sampler, "config.eval.sampler"),
      steps: requireField(m.eval?.steps, "config.eval.steps"),
      ...(m.eval?.spacing !== undefined ? { spacing: m.eval.spacing } : {}),
      cfgScale: requireField(m.eval?.cfgScale, "config.eval.cfgScale"),
      seed: requireField(m.eval?.seed, "config.eval.seed"),
      extractor: {
        arch: requireField(m.eval?.extractor?.arch, "config.eval.extractor.arch"),
        ...(m.eval?.extractor?.weights !== undefined ? { weights: m.eval.extractor.weights } : {}),
      },
    },
  };
  checkCrossFields(cfg, facts);
  return cfg;
}

/**
 * Resolves a `data` config on its own (what `sadm encode` reads): validated as in a full config, defaults filled in,
 * class names settled.
 * @throws ConfigError naming the field (`config.data.…`); DataError when the data is not there.
 */
export function resolveDataConfig(input: unknown): DataConfig {
  const user = parseConfigInput({ data: input });
  const data = resolveData(deepMerge<PlainObject>(BASE_DEFAULTS.data as PlainObject, user.data as PlainObject), undefined);
  settleClasses(data, dataFacts(data), user.data?.classNames);
  return data;
}

/** The data's class names fill `data.classNames` (a user may not set them otherwise) and `data.classes` becomes indices. */
function settleClasses(data: DataConfig, facts: DataFacts, given: readonly string[] | undefined): void {
  if (given !== undefined && JSON.stringify(given) !== JSON.stringify(facts.classNames ?? []))
    throw new ConfigError(
      "config.data.classNames",
      `are the data's and cannot be set: the ${data.name} data's classes are ${facts.classNames ? listNames(facts.classNames) : "none"} (got ${listNames(given)})`,
    );
  if (isImageFiles(data) && facts.classNames) data.classNames = [...facts.classNames];
  if (data.classes) {
    if (facts.numClasses === 0) throw new ConfigError("config.data.classes", `the ${data.name} data has no labels to filter by`);
    data.classes = classIndices(data.classes, {
      numClasses: facts.numClasses,
      classNames: facts.classNames,
      field: (i) => `config.data.classes[${i}]`,
      owner: `the ${data.name} data`,
      kind: data.name,
      unique: true,
    });
  }
}

function resolveOptim(o: DeepPartial<OptimConfig> | undefined, field: string): OptimConfig {
  return {
    beta1: requireField(o?.beta1, `${field}.beta1`),
    beta2: requireField(o?.beta2, `${field}.beta2`),
    eps: requireField(o?.eps, `${field}.eps`),
    weightDecay: requireField(o?.weightDecay, `${field}.weightDecay`),
    gradClip: requireField(o?.gradClip, `${field}.gradClip`),
  };
}

/**
 * A saved run config as input for a resumed or re-evaluated run: without what sadm derives from the data (the class
 * names), which the data as it is now supplies again.
 */
export function savedInput(cfg: SadmConfig): Record<string, unknown> {
  const { classNames: _derived, ...data } = cfg.data;
  return { ...cfg, data };
}

/** `cuda` → `cuda:0`; everything else unchanged. */
export function normalizeDevice(device: string): string {
  return device === "cuda" ? "cuda:0" : device;
}

/** A `features` discriminator's network: the user's, else the evaluation extractor when it is a built-in LeNet. */
function resolveFeatureNet(
  disc: DeepPartial<DiscriminatorConfig>,
  evalArch: string | undefined,
  [channels, size]: [number | undefined, number | undefined],
): { featureNet?: FeatureNetConfig } {
  const f = disc.featureNet;
  if (f?.arch !== undefined) return { featureNet: { arch: f.arch, ...(f.weights !== undefined ? { weights: f.weights } : {}) } };
  if (disc.encoder !== "features" || evalArch === undefined || !isBuiltinExtractor(evalArch)) return {};
  const [c, h, w] = BUILTIN_EXTRACTORS[evalArch].input;
  return c === channels && h === size && w === size ? { featureNet: { arch: evalArch } } : {};
}

/** The feature network is there exactly when the encoder reads one, and it reads the model's images. */
function checkFeatureNet(d: DiscriminatorConfig, m: ModelConfig): void {
  if (d.encoder !== "features") {
    if (d.featureNet)
      throw new ConfigError("config.discriminator.featureNet", `is read only with discriminator.encoder "features" (got "${d.encoder}")`);
    return;
  }
  if (!d.featureNet)
    throw new ConfigError(
      "config.discriminator.featureNet",
      `a "features" encoder needs a frozen network for these ${m.inChannels}×${m.inputSize}×${m.inputSize} images: ` +
        `set discriminator.featureNet.arch (${Object.keys(BUILTIN_EXTRACTORS).join(", ")}) or use encoder "transformer" or "conv"`,
    );
  const want = BUILTIN_EXTRACTORS[d.featureNet.arch].input;
  if (want[0] !== m.inChannels || want[1] !== m.inputSize || want[2] !== m.inputSize)
    throw new ConfigError(
      "config.discriminator.featureNet.arch",
      `${d.featureNet.arch} reads ${BUILTIN_EXTRACTORS[d.featureNet.arch].reads}, not the model's ${m.inChannels}×${m.inputSize}×${m.inputSize} images; ` +
        `pick the LeNet for these images or use discriminator.encoder "transformer" or "conv"`,
    );
}

function checkCrossFields(c: SadmConfig, facts: DataFacts): void {
  if (c.vae !== undefined && c.data.name !== "latents")
    throw new ConfigError("config.vae", `decodes latents; the ${c.data.name} data are images, so a run on them needs no VAE`);
  if (c.precision === "bf16" && c.device === "cpu")
    throw new ConfigError(
      "config.precision",
      'bf16 is for cuda devices: candle has no CPU bf16 matrix product, so on the CPU it is slower than fp32; use "fp32"',
    );
  const m = c.model;
  const what = c.data.name === "folder" ? "folder" : c.data.name;
  if (m.inputSize !== facts.size && c.data.name === "latents")
    throw new ConfigError(
      "config.model.inputSize",
      `must match the latents, which are ${facts.size}×${facts.size} (got ${m.inputSize}): ` +
        "encode the images at the run's resolution, or start a new run",
    );
  if (m.inputSize !== facts.size)
    throw new ConfigError(
      "config.model.inputSize",
      `must match the ${what} images (${facts.size}${isImageFiles(c.data) ? ": set data.resolution, --resolution" : ""}) (got ${m.inputSize})`,
    );
  if (m.inChannels !== facts.channels)
    throw new ConfigError(
      "config.model.inChannels",
      `must match the ${what} images (${facts.channels}${isImageFiles(c.data) ? ": set data.channels" : ""}) (got ${m.inChannels})`,
    );
  if (m.numClasses !== 0 && m.numClasses < facts.numClasses)
    throw new ConfigError(
      "config.model.numClasses",
      `must be 0 (unconditional) or at least ${facts.numClasses} for ${what} (got ${m.numClasses})`,
    );
  if (m.numClasses !== 0 && facts.numClasses === 0)
    throw new ConfigError(
      "config.model.numClasses",
      `the ${what} data has no labels, so the model can only be unconditional (0) (got ${m.numClasses})`,
    );
  const e = c.eval;
  const lenet = isBuiltinExtractor(e.extractor.arch) ? BUILTIN_EXTRACTORS[e.extractor.arch] : undefined;
  if (e.every > 0 && lenet && lenet.input.join() !== [facts.channels, facts.size, facts.size].join())
    throw new ConfigError(
      "config.eval.extractor.arch",
      `${e.extractor.arch} reads ${lenet.reads}, not these ${facts.size}×${facts.size} ${facts.channels === 3 ? "RGB" : "grey"} images: ` +
        "evaluate with inception-v3-fid and its weights (--extractor inception-v3-fid --extractor-weights FILE), or turn evaluation off (eval.every: 0)",
    );
  if (m.inputSize % m.patchSize !== 0)
    throw new ConfigError(
      "config.model.patchSize",
      `must divide model.inputSize (${m.inputSize}) (got ${m.patchSize}${c.preset in MODEL_PRESETS ? ` from preset ${c.preset}` : ""})`,
    );
  if (m.hiddenSize % m.numHeads !== 0)
    throw new ConfigError("config.model.numHeads", `must divide model.hiddenSize (${m.hiddenSize}) (got ${m.numHeads})`);
  if (m.hiddenSize % 4 !== 0)
    throw new ConfigError(
      "config.model.hiddenSize",
      `must be a multiple of 4 (2-D sin-cos position embedding) (got ${m.hiddenSize})`,
    );
  const d = c.discriminator;
  checkFeatureNet(d, m);
  if (d.encoder === "transformer" && m.inputSize % d.patchSize !== 0)
    throw new ConfigError(
      "config.discriminator.patchSize",
      `must divide model.inputSize (${m.inputSize}) (got ${d.patchSize})`,
    );
  if (d.width % 4 !== 0)
    throw new ConfigError("config.discriminator.width", `must be a multiple of 4 (got ${d.width})`);
  if (d.width % d.numHeads !== 0)
    throw new ConfigError(
      "config.discriminator.numHeads",
      `must divide discriminator.width (${d.width}) (got ${d.numHeads})`,
    );
  if (d.tMax > c.diffusion.numTimesteps)
    throw new ConfigError(
      "config.discriminator.tMax",
      `must be at most diffusion.numTimesteps (${c.diffusion.numTimesteps}) (got ${d.tMax})`,
    );
  if (c.eval.steps > c.diffusion.numTimesteps)
    throw new ConfigError(
      "config.eval.steps",
      `must be at most diffusion.numTimesteps (${c.diffusion.numTimesteps}) (got ${c.eval.steps})`,
    );
  if (c.sampleSteps > c.diffusion.numTimesteps)
    throw new ConfigError(
      "config.sampleSteps",
      `must be at most diffusion.numTimesteps (${c.diffusion.numTimesteps}) (got ${c.sampleSteps})`,
    );
  if (c.lambda > 0 && c.batchSize < 2)
    throw new ConfigError("config.batchSize", `must be at least 2 when lambda > 0 (pairs of samples) (got ${c.batchSize})`);
  checkSampling(
    { sampler: c.sampler, steps: c.sampleSteps, spacing: c.sampleSpacing, eta: c.eta },
    { sampler: "config.sampler", steps: "config.sampleSteps", spacing: "config.sampleSpacing", eta: "config.eta" },
  );
  checkSampling(
    { sampler: c.eval.sampler, steps: c.eval.steps, spacing: c.eval.spacing },
    { sampler: "config.eval.sampler", steps: "config.eval.steps", spacing: "config.eval.spacing", eta: "config.eval.eta" },
  );
}

/** The part of the config the native core needs (`NativeTrainer.create(JSON.stringify(core), device)`). */
export function toCoreConfig(cfg: SadmConfig): CoreConfig {
  const { featureNet, ...disc } = cfg.discriminator;
  return {
    seed: cfg.seed,
    model: { ...cfg.model },
    diffusion: { ...cfg.diffusion },
    discriminator: {
      ...disc,
      ...(featureNet ? { featureNet: { arch: featureNet.arch, weights: path.resolve(featureNet.weights ?? builtinExtractorWeights(featureNet.arch)) } } : {}),
    },
    ditOptim: { ...cfg.ditOptim },
    discOptim: { ...cfg.discOptim },
    trainable: trainablePatterns(cfg.trainable),
    precision: cfg.precision,
  };
}

/** The parameter-name patterns a `trainable` setting stands for. */
export function trainablePatterns(t: SadmConfig["trainable"]): string[] {
  return t === "all" ? ["*"] : t === "efficient" ? [...EFFICIENT_PATTERNS] : [...t];
}

/**
 * Sets a value at a dotted path in a plain object (creating intermediate objects), e.g. for `--set model.depth=2`.
 * @throws ConfigError when the path runs through a non-object.
 */
export function setPath(obj: PlainObject, dotted: string, value: unknown): void {
  const keys = dotted.split(".");
  if (keys.some((k) => k.length === 0)) throw new ConfigError(`config.${dotted}`, "is not a valid field path");
  let cur: PlainObject = obj;
  for (const k of keys.slice(0, -1)) {
    const next = cur[k];
    if (next === undefined) {
      const created: PlainObject = {};
      cur[k] = created;
      cur = created;
    } else if (isPlainObject(next)) cur = next;
    else throw new ConfigError(`config.${dotted}`, `"${k}" is not an object`);
  }
  cur[keys[keys.length - 1]] = value;
}
