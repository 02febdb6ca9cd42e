import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import {
  ConfigError,
  MODEL_PRESETS,
  RUN_PRESETS,
  resolveConfig,
  toCoreConfig,
  presetNames,
} from "../ts/index";
import { DEFAULT_SAMPLING } from "../ts/config";

describe("discriminator encoders", () => {
  it("gives the RGB presets the setting the study measured to help (conv encoder, Gaussian kernel, cross pairs)", () => {
    for (const data of [{ name: "emoji" as const }, { name: "emoji" as const, resolution: 64 }]) {
      const c = resolveConfig({ data });
      expect([c.preset, c.discriminator.encoder, c.discriminator.kernel, c.discriminator.pairs]).toEqual([
        data.resolution ? "rgb-64" : "rgb-32", "conv", "gaussian", "cross",
      ]);
      expect(c.lambda).toBe(0.01);
    }
    // The digits keep the design's transformer encoder until their half of the study says otherwise.
    expect(resolveConfig({}).discriminator.encoder).toBe("transformer");
  });

  it("gives a features encoder the run's own LeNet, with the shipped weights as a resolved path", () => {
    const digits = toCoreConfig(resolveConfig({ discriminator: { encoder: "features" } })).discriminator;
    expect(digits.featureNet?.arch).toBe("lenet-mnist");
    expect(path.isAbsolute(digits.featureNet?.weights ?? "")).toBe(true);
    expect(fs.existsSync(digits.featureNet?.weights ?? "")).toBe(true);
    const mine = resolveConfig({ discriminator: { encoder: "features", featureNet: { arch: "lenet-mnist", weights: "my.safetensors" } } });
    expect(toCoreConfig(mine).discriminator.featureNet?.weights).toBe(path.resolve("my.safetensors"));
    // No feature network unless the encoder reads one.
    expect(toCoreConfig(resolveConfig({ discriminator: { encoder: "conv", spectralNorm: true } })).discriminator.featureNet).toBeUndefined();
  });

  it("names the field when a feature network cannot be used", () => {
    const wrongImages = configError({ discriminator: { encoder: "features", featureNet: { arch: "lenet-emoji" } } });
    expect(wrongImages.field).toBe("config.discriminator.featureNet.arch");
    expect(wrongImages.message).toMatch(/reads 32×32 RGB.*not the model's 1×28×28/);
    const unused = configError({ discriminator: { encoder: "conv", featureNet: { arch: "lenet-mnist" } } });
    expect(unused.field).toBe("config.discriminator.featureNet");
    expect(configError({ discriminator: { encoder: "vit" } }).field).toBe("config.discriminator.encoder");
    expect(configError({ discriminator: { spectralNorm: "yes" } }).field).toBe("config.discriminator.spectralNorm");
  });

  it("needs no patch that divides the image for a conv encoder", () => {
    expect(configError({ discriminator: { patchSize: 5 } }).field).toBe("config.discriminator.patchSize");
    expect(resolveConfig({ discriminator: { encoder: "conv", patchSize: 5 } }).discriminator.encoder).toBe("conv");
  });
});

function configError(input: unknown): ConfigError {
  try {
    resolveConfig(input);
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error(`expected a ConfigError for ${JSON.stringify(input)}`);
}

describe("resolveConfig defaults", () => {
  it("defaults to the mnist-tiny preset", () => {
    const c = resolveConfig(undefined);
    expect(c.preset).toBe("mnist-tiny");
    expect(c.model).toMatchObject({ inputSize: 28, inChannels: 1, patchSize: 4, hiddenSize: 128, depth: 4, numHeads: 4 });
    expect(c.model.numClasses).toBe(10);
    expect(c.batchSize).toBe(64);
    expect(c.steps).toBe(2000);
    expect(c.lr).toBe(2e-3);
    expect(c.lambda).toBe(0.01);
    expect(c.discLr).toBe(1e-4);
    // The digits evaluate with the default sampler, as grids and `sadm eval` do.
    expect(c.eval).toMatchObject({ every: 500, samples: 500, ...DEFAULT_SAMPLING });
    expect(c.emaDecay).toBe(0.9999);
    expect(c.emaWarmup).toBe(true);
    expect(c.outDir).toBe("runs/mnist");
    expect(c.device).toBe("cpu");
    expect(c.data).toEqual({ name: "mnist" });
    expect(c.discriminator.kernel).toBe("cosine");
    expect(c.discriminator.distance).toBe("l1");
    expect(c.discriminator.pairs).toBe("within");
    expect(c.discriminator.weighting).toBe("snr");
    expect(c.diffusion).toEqual({
      numTimesteps: 1000,
      schedule: "linear",
      prediction: "v",
      lossWeighting: "uniform",
      minSnrGamma: 5,
    });
    expect(c.model.classDropoutProb).toBe(0.1);
  });

  it("derives the adversarial warm-up (70 %: SADM as a second stage) and ramp from the steps", () => {
    const c = resolveConfig({ steps: 1000 });
    expect(c.advWarmupSteps).toBe(700);
    expect(c.advRampSteps).toBe(100);
    expect(resolveConfig({ steps: 1000, advWarmupSteps: 0 }).advWarmupSteps).toBe(0);
  });

  it("applies user overrides over the preset, deeply", () => {
    const c = resolveConfig({ preset: "mnist-small", model: { depth: 2 }, lambda: 0.03 });
    expect(c.model.depth).toBe(2);
    expect(c.model.hiddenSize).toBe(192);
    expect(c.lambda).toBe(0.03);
    expect(c.steps).toBe(3500);
    expect(c.diffusion.prediction).toBe("v");
  });

  it("knows the DiT reference presets", () => {
    expect(MODEL_PRESETS["DiT-S/2"]).toMatchObject({ depth: 12, hiddenSize: 384, numHeads: 6, patchSize: 2 });
    expect(MODEL_PRESETS["DiT-B/4"]).toMatchObject({ depth: 12, hiddenSize: 768, numHeads: 12, patchSize: 4 });
    expect(MODEL_PRESETS["DiT-L/8"]).toMatchObject({ depth: 24, hiddenSize: 1024, numHeads: 16, patchSize: 8 });
    expect(MODEL_PRESETS["DiT-XL/2"]).toMatchObject({ depth: 28, hiddenSize: 1152, numHeads: 16, mlpRatio: 4, learnSigma: true });
    expect(presetNames()).toHaveLength(Object.keys(RUN_PRESETS).length + 12);
    const c = resolveConfig({ preset: "DiT-S/2" });
    expect(c.model).toMatchObject({ inputSize: 28, depth: 12, hiddenSize: 384, patchSize: 2, learnSigma: true });
    // DiT presets keep DiT's ε-prediction (what its checkpoints need); only the MNIST run presets use v.
    expect(c.diffusion.prediction).toBe("epsilon");
  });

  it("rejects unknown prediction targets and loss weightings", () => {
    expect(configError({ diffusion: { prediction: "x0" } }).field).toBe("config.diffusion.prediction");
    expect(configError({ diffusion: { lossWeighting: "snr" } }).field).toBe("config.diffusion.lossWeighting");
    expect(configError({ diffusion: { minSnrGamma: 0 } }).field).toBe("config.diffusion.minSnrGamma");
  });

  it("normalises cuda to cuda:0", () => {
    expect(resolveConfig({ device: "cuda" }).device).toBe("cuda:0");
    expect(resolveConfig({ device: "cuda:1" }).device).toBe("cuda:1");
  });

  it("maps to the CoreConfig the native core expects", () => {
    const c = resolveConfig({ seed: 7 });
    const core = toCoreConfig(c);
    expect(Object.keys(core).sort()).toEqual(["diffusion", "discOptim", "discriminator", "ditOptim", "model", "precision", "seed", "trainable"]);
    expect(core.trainable).toEqual(["*"]);
    expect(core.precision).toBe("fp32");
    expect(core.seed).toBe(7);
    expect(Object.keys(core.model).sort()).toEqual(
      ["classDropoutProb", "depth", "hiddenSize", "inChannels", "inputSize", "learnSigma", "mlpRatio", "numClasses", "numHeads", "patchSize"],
    );
    expect(Object.keys(core.discriminator).sort()).toEqual(
      ["depth", "distance", "encoder", "huberDelta", "kernel", "numHeads", "pairs", "patchSize", "projDim", "spectralNorm", "steps", "tMax", "tau", "timeConditioned", "weighting", "width"],
    );
    expect(core.discriminator).toMatchObject({ encoder: "transformer", spectralNorm: false, timeConditioned: false });
    expect(Object.keys(core.ditOptim).sort()).toEqual(["beta1", "beta2", "eps", "gradClip", "weightDecay"]);
    // JSON round trip keeps everything (no undefined fields).
    expect(JSON.parse(JSON.stringify(core))).toEqual(core);
  });

  it("maps trainable to parameter-name patterns and defaults the evaluation", () => {
    expect(toCoreConfig(resolveConfig({ trainable: "efficient" })).trainable).toEqual([
      "*.bias",
      "*adaLN_modulation*",
      "t_embedder.*",
      "y_embedder.*",
    ]);
    expect(toCoreConfig(resolveConfig({ trainable: ["blocks.*.attn.*"] })).trainable).toEqual(["blocks.*.attn.*"]);
    const c = resolveConfig({ eval: { every: 100 } });
    expect(c.eval).toEqual({ every: 100, samples: 500, sampler: "unipc", steps: 10, cfgScale: 1, seed: 0, extractor: { arch: "lenet-mnist" } });
    // The emoji set at 32² is evaluated with its own shipped LeNet.
    expect(resolveConfig({ data: { name: "emoji" } }).eval.extractor).toEqual({ arch: "lenet-emoji" });
    expect(resolveConfig({ data: { name: "emoji" }, eval: { extractor: { arch: "lenet-mnist" } } }).eval.extractor.arch).toBe("lenet-mnist");
    // Under a DiT model preset the base defaults apply: no evaluation unless asked for.
    expect(resolveConfig({ preset: "DiT-S/2" }).eval).toEqual({
      every: 0,
      samples: 1000,
      sampler: "unipc",
      steps: 10,
      cfgScale: 1,
      seed: 0,
      extractor: { arch: "lenet-mnist" },
    });
    expect(configError({ trainable: "some" }).field).toBe("config.trainable");
    expect(configError({ trainable: [] }).field).toBe("config.trainable");
    expect(configError({ eval: { samples: 5 } }).message).toMatch(/config\.eval\.samples: must be an integer between 10/);
    expect(configError({ eval: { steps: 5000 } }).message).toMatch(/config\.eval\.steps: must be at most diffusion\.numTimesteps/);
    expect(configError({ eval: { extractor: { arch: "x", weight: "y" } } }).message).toMatch(/unknown key "weight"/);
    expect(configError({ data: { split: "val" } }).field).toBe("config.data.split");
  });

  it("accepts its own output as input (config.json round trip)", () => {
    const c = resolveConfig({ data: { name: "mnist", classes: [1, 7], limit: 100 } });
    expect(resolveConfig(JSON.parse(JSON.stringify(c)))).toEqual(c);
  });
});

describe("resolveConfig errors", () => {
  it("names the field and the allowed range", () => {
    const e = configError({ lambda: -1 });
    expect(e.field).toBe("config.lambda");
    expect(e.message).toBe("config.lambda: must be a number between 0 and 10 (got -1)");
    expect(configError({ lambda: 11 }).message).toContain("config.lambda");
  });

  it.each([
    [{ steps: 0 }, "config.steps"],
    [{ steps: 1.5 }, "config.steps"],
    [{ batchSize: "64" }, "config.batchSize"],
    [{ lr: 0 }, "config.lr"],
    [{ emaDecay: 1.5 }, "config.emaDecay"],
    [{ device: "gpu" }, "config.device"],
    [{ sampler: "euler-a" }, "config.sampler"],
    [{ sampler: "heun", sampleSteps: 1 }, "config.sampleSteps"],
    [{ sampler: "ddim", sampleSpacing: "karras" }, "config.sampleSpacing"],
    [{ sampler: "dpm++2m", eta: 0.5 }, "config.eta"],
    [{ sampleSpacing: "uniform" }, "config.sampleSpacing"],
    [{ eval: { sampler: "heun", steps: 1 } }, "config.eval.steps"],
    [{ eval: { sampler: "ddim", spacing: "karras" } }, "config.eval.spacing"],
    [{ model: { hiddenSize: -3 } }, "config.model.hiddenSize"],
    [{ model: { learnSigma: "yes" } }, "config.model.learnSigma"],
    [{ discriminator: { kernel: "rbf" } }, "config.discriminator.kernel"],
    [{ discriminator: { distance: "l3" } }, "config.discriminator.distance"],
    [{ ditOptim: { beta1: 1 } }, "config.ditOptim.beta1"],
    [{ data: { name: "cifar" } }, "config.data.name"],
    [{ data: { classes: [] } }, "config.data.classes"],
    [{ data: { classes: [1, 12] } }, "config.data.classes[1]"],
    [{ data: { classes: [3, 3] } }, "config.data.classes[1]"],
    [{ seed: -1 }, "config.seed"],
    [{ lambda: Number.NaN }, "config.lambda"],
  ])("rejects %j naming %s", (input, field) => {
    const e = configError(input);
    expect(e.field).toBe(field);
    expect(e.message.startsWith(`${field}: `)).toBe(true);
  });

  it("rejects unknown keys, naming the key", () => {
    const e = configError({ lamda: 0.1 });
    expect(e.field).toBe("config.lamda");
    expect(e.message).toContain('unknown key "lamda"');
    expect(e.message).toContain("lambda");
    const nested = configError({ model: { hidden: 3 } });
    expect(nested.field).toBe("config.model.hidden");
    expect(nested.message).toContain("hiddenSize");
  });

  it("rejects unknown presets", () => {
    const e = configError({ preset: "DiT-XXL/2" });
    expect(e.field).toBe("config.preset");
    expect(e.message).toContain("mnist-tiny");
  });

  it("checks cross-field constraints", () => {
    expect(configError({ model: { patchSize: 3 } }).field).toBe("config.model.patchSize");
    expect(configError({ preset: "DiT-S/8" }).field).toBe("config.model.patchSize");
    expect(configError({ model: { hiddenSize: 128, numHeads: 3 } }).field).toBe("config.model.numHeads");
    expect(configError({ model: { inputSize: 32 } }).field).toBe("config.model.inputSize");
    expect(configError({ discriminator: { patchSize: 5 } }).field).toBe("config.discriminator.patchSize");
    expect(configError({ discriminator: { tMax: 2000 } }).field).toBe("config.discriminator.tMax");
    expect(configError({ batchSize: 1 }).field).toBe("config.batchSize");
    expect(() => resolveConfig({ batchSize: 1, lambda: 0 })).not.toThrow();
    const bf16 = configError({ precision: "bf16" });
    expect(bf16.field).toBe("config.precision");
    expect(bf16.message).toContain("bf16 is for cuda devices");
    expect(resolveConfig({ precision: "bf16", device: "cuda" }).precision).toBe("bf16");
    expect(configError({ precision: "fp16" }).field).toBe("config.precision");
  });

  it("rejects a non-object config", () => {
    expect(configError(42).field).toBe("config");
    expect(configError([1]).field).toBe("config");
  });
});
