/**
 * An in-process stand-in for the native addon with the same API, so the training loop, resume, abort and
 * checkpoint handling can be tested without the Rust build. Its "loss" falls with the step; checkpoints are real
 * directories with the same file names and a state.json written last (temp dir + rename).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type {
  BuildInfo,
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
}

/** Behaviour switches. */
export interface FakeBehaviour {
  failAtStep?: number;
  nanAtStep?: number;
}

export function makeFakeNative(behaviour: FakeBehaviour = {}): { native: NativeModule; log: FakeLog } {
  const log: FakeLog = { steps: [], samples: [], saves: [], created: [], loaded: [] };

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
      const loss = behaviour.nanAtStep === next ? Number.NaN : mse + opts.lambda * (structure ?? 0);
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

    async sample(labels: Int32Array, opts: SampleOptions): Promise<Float32Array> {
      log.samples.push({ labels: Array.from(labels), opts: { ...opts } });
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
  }

  class FakeModel {
    private inner = new FakeTrainer();
    static load(dir: string, device: string, useEma: boolean): FakeModel {
      void useEma;
      const m = new FakeModel();
      m.inner = FakeTrainer.load(dir, device);
      return m;
    }
    sample(labels: Int32Array, opts: SampleOptions): Promise<Float32Array> {
      return this.inner.sample(labels, opts);
    }
    configJson(): string {
      return this.inner.configJson();
    }
  }

  const buildInfo = (): BuildInfo => ({ version: "0.0.0-fake", features: [], devices: ["cpu"] });
  const native = { NativeTrainer: FakeTrainer, NativeModel: FakeModel, buildInfo } satisfies NativeModule;
  return { native, log };
}
