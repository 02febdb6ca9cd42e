/**
 * An in-process stand-in for the native addon with the same API, so the training loop, resume, abort and
 * checkpoint handling can be tested without the Rust build. Its "loss" falls with the step; checkpoints are real
 * directories with the same file names and a state.json written last (temp dir + rename).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type {
  BuildInfo,
  Extracted,
  FeatureMetrics,
  NativeModule,
  ParamCounts,
  SampleOptions,
  StepOptions,
  StepStats,
} from "../ts/native";

/** Everything the fake saw, for assertions. */
export interface FakeLog {
  steps: Array<{ step: number; opts: StepOptions; firstPixels: number[]; labels: number[] }>;
  samples: Array<{ labels: number[]; opts: SampleOptions }>;
  saves: string[];
  created: Array<{ config: string; device: string }>;
  loaded: string[];
  pretrained: Array<{ config: string; from: string }>;
  extracted: number[];
}

/** Behaviour switches. */
export interface FakeBehaviour {
  failAtStep?: number;
  /** Steps the fake reports as skipped for a non-finite loss, as the core does. */
  badSteps?: number[];
}

export function makeFakeNative(behaviour: FakeBehaviour = {}): { native: NativeModule; log: FakeLog } {
  const log: FakeLog = { steps: [], samples: [], saves: [], created: [], loaded: [], pretrained: [], extracted: [] };

  class FakeTrainer {
    private cfg = "{}";
    private extra = "{}";
    private steps = 0;
    private rng = 0;

    static create(coreConfigJson: string, device: string): FakeTrainer {
      JSON.parse(coreConfigJson);
      const t = new FakeTrainer();
      t.cfg = coreConfigJson;
      log.created.push({ config: coreConfigJson, device });
      return t;
    }

    static fromPretrained(coreConfigJson: string, from: string, device: string): FakeTrainer {
      void device;
      if (!fs.existsSync(from)) throw new Error(`checkpoint ${from}: no such checkpoint directory or weights file`);
      const t = new FakeTrainer();
      t.cfg = coreConfigJson;
      t.extra = JSON.stringify({ notes: ["fake note"] });
      log.pretrained.push({ config: coreConfigJson, from });
      return t;
    }

    static load(dir: string, device: string): FakeTrainer {
      void device;
      const state = JSON.parse(fs.readFileSync(path.join(dir, "state.json"), "utf8")) as {
        config: unknown;
        step: number;
        rng: number;
        extra: unknown;
      };
      const t = new FakeTrainer();
      t.cfg = JSON.stringify(state.config);
      t.steps = state.step;
      t.rng = state.rng;
      t.extra = JSON.stringify(state.extra);
      log.loaded.push(dir);
      return t;
    }

    async step(x0: Float32Array, labels: Int32Array, opts: StepOptions): Promise<StepStats> {
      await Promise.resolve();
      const next = this.steps + 1;
      if (behaviour.failAtStep === next) throw new Error("fake native failure: shapes do not match");
      this.steps = next;
      this.rng++;
      log.steps.push({ step: next, opts: { ...opts }, firstPixels: Array.from(x0.subarray(0, 3)), labels: Array.from(labels) });
      const mse = 1 / (1 + 0.1 * next);
      const structure = opts.updateDisc ? 0.5 : undefined;
      if (behaviour.badSteps?.includes(next))
        return { step: next, loss: Number.NaN, mse: Number.NaN, vb: 0, gradNormDit: 0, skipped: "denoising loss (mse NaN, vb 0) is not finite" };
      const loss = mse + opts.lambda * (structure ?? 0);
      return {
        step: next,
        loss,
        mse,
        vb: 0,
        structure,
        discLoss: structure === undefined ? undefined : -structure,
        gradNormDit: 1,
        gradNormDisc: structure === undefined ? undefined : 0.5,
      };
    }

    async sample(labels: Int32Array, opts: SampleOptions, progress?: FakeProgress): Promise<Float32Array> {
      log.samples.push({ labels: Array.from(labels), opts: { ...opts } });
      if (progress) progress.evaluations += opts.sampler === "heun" ? 2 * opts.steps - 1 : opts.steps;
      const m = (JSON.parse(this.cfg) as { model: { inChannels: number; inputSize: number } }).model;
      const out = new Float32Array(labels.length * m.inChannels * m.inputSize * m.inputSize);
      for (let i = 0; i < out.length; i++) out[i] = Math.sin(i) * 0.9;
      return out;
    }

    async save(dir: string, extraJson: string): Promise<void> {
      const tmp = `${dir}.tmp`;
      fs.rmSync(tmp, { recursive: true, force: true });
      fs.mkdirSync(tmp, { recursive: true });
      for (const f of ["model", "ema", "discriminator", "optimizer"]) fs.writeFileSync(path.join(tmp, `${f}.safetensors`), "x");
      fs.writeFileSync(
        path.join(tmp, "state.json"),
        JSON.stringify({ formatVersion: 1, config: JSON.parse(this.cfg), step: this.steps, rng: this.rng, extra: JSON.parse(extraJson) }),
      );
      // Like the native save: an existing checkpoint of the same name is replaced only once the new one is whole.
      if (fs.existsSync(dir)) {
        const old = `${dir}.old`;
        fs.renameSync(dir, old);
        fs.renameSync(tmp, dir);
        fs.rmSync(old, { recursive: true, force: true });
      } else fs.renameSync(tmp, dir);
      log.saves.push(dir);
    }

    get stepCount(): number {
      return this.steps;
    }
    configJson(): string {
      return this.cfg;
    }
    extraJson(): string {
      return this.extra;
    }
    paramCounts(): ParamCounts {
      return { dit: 1000, discriminator: 100 };
    }
    setDiscriminator(discriminatorJson: string): string | null {
      const c = JSON.parse(this.cfg) as { discriminator: Record<string, unknown> };
      const next = JSON.parse(discriminatorJson) as Record<string, unknown>;
      const arch = (d: Record<string, unknown>): string => JSON.stringify([d.encoder, d.width, d.depth, d.timeConditioned]);
      const note = arch(c.discriminator) === arch(next) ? null : "the discriminator starts fresh";
      c.discriminator = next;
      this.cfg = JSON.stringify(c);
      return note;
    }
    trainableNames(): string[] {
      const patterns = (JSON.parse(this.cfg) as { trainable?: string[] }).trainable ?? ["*"];
      return patterns.includes("*") ? ["a.weight", "a.bias"] : ["a.bias"];
    }
  }

  /** Features = (mean, mean², first pixel, last pixel); prediction = the image's index mod 10. */
  class FakeExtractor {
    static load(arch: string, weights: string, device: string): FakeExtractor {
      void device;
      if (arch !== "lenet-mnist") throw new Error(`unknown feature-extractor architecture '${arch}'`);
      if (!fs.existsSync(weights)) throw new Error(`${weights}: file is missing`);
      return new FakeExtractor();
    }
    get arch(): string {
      return "lenet-mnist";
    }
    checkInput(shape: number[]): void {
      if (shape.join("×") !== "1×28×28") throw new Error(`feature extractor lenet-mnist reads 1×28×28 images, not ${shape.join("×")}`);
    }
    get featureDim(): number {
      return 4;
    }
    get numClasses(): number {
      return 10;
    }
    async run(images: Float32Array, shape: number[]): Promise<Extracted> {
      this.checkInput(shape);
      const n = images.length / 784;
      log.extracted.push(n);
      const features = new Float32Array(n * 4);
      const predictions = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const img = images.subarray(i * 784, (i + 1) * 784);
        const mean = img.reduce((a, v) => a + v, 0) / 784;
        features.set([mean, mean * mean, img[0], img[783]], i * 4);
        predictions[i] = i % 10;
      }
      return { features, predictions, dim: 4 };
    }
  }

  const featureMetrics = async (real: Float64Array, generated: Float64Array, dim: number): Promise<FeatureMetrics> => {
    const mean = (x: Float64Array): number => x.reduce((a, v) => a + v, 0) / x.length;
    const fd = (mean(real) - mean(generated)) ** 2 * dim;
    return { fd, kid: fd / 10, kidStd: 0, precision: 0.5, recall: 0.25 };
  };

  const trainClassifier = (): Promise<number[]> => Promise.reject(new Error("the fake addon cannot train a classifier"));
  const preprocessImage = (): Promise<Uint8Array> => Promise.reject(new Error("the fake addon cannot preprocess images"));
  const decodeImageFile = (): Promise<Uint8Array | null> => Promise.reject(new Error("the fake addon cannot decode images"));

  /** The native evaluation counter: the fake's sampling counts all of a call's evaluations at once. */
  class FakeProgress {
    evaluations = 0;
  }

  class FakeModel {
    private inner = new FakeTrainer();
    static load(dir: string, device: string, useEma: boolean): FakeModel {
      void useEma;
      const m = new FakeModel();
      m.inner = FakeTrainer.load(dir, device);
      return m;
    }
    static fromWeights(): FakeModel {
      throw new Error("the fake addon reads no weights files");
    }
    sample(labels: Int32Array, opts: SampleOptions, progress?: FakeProgress): Promise<Float32Array> {
      return this.inner.sample(labels, opts, progress);
    }
    configJson(): string {
      return this.inner.configJson();
    }
  }

  /** The fake has no VAE: latent paths are tested through the real addon (tests/latent-train.test.ts). */
  class FakeVae {
    static load(): FakeVae {
      throw new Error("the fake addon has no VAE");
    }
    configJson(): string {
      return "{}";
    }
    encode(): Promise<Float32Array> {
      return Promise.reject(new Error("the fake addon has no VAE"));
    }
    decode(): Promise<Float32Array> {
      return Promise.reject(new Error("the fake addon has no VAE"));
    }
  }
  const inspectWeights = (): string => {
    throw new Error("the fake addon reads no weights files");
  };

  const buildInfo = (): BuildInfo => ({ version: "0.0.0-fake", features: [], devices: ["cpu"] });
  const native = {
    NativeTrainer: FakeTrainer,
    NativeModel: FakeModel,
    NativeExtractor: FakeExtractor,
    NativeVae: FakeVae,
    SampleProgress: FakeProgress,
    inspectWeights,
    buildInfo,
    featureMetrics,
    trainClassifier,
    preprocessImage,
    decodeImageFile,
  } satisfies NativeModule;
  return { native, log };
}
