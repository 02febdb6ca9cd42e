import * as fs from "node:fs";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { PNG } from "pngjs";
import {
  gridGeometry,
  CheckpointError,
  ConfigError,
  NativeError,
  NumericalError,
  SadmError,
  listCheckpoints,
  readMetrics,
  readState,
  setNativeModule,
  train,
  type SadmConfigInput,
} from "../ts/index";
import { makeFakeNative } from "./fake-native";
import { TINY_NETS, tmpDir } from "./helpers";

function tiny(outDir: string, extra: SadmConfigInput = {}): SadmConfigInput {
  return {
    ...TINY_NETS,
    outDir,
    steps: 10,
    lr: 1e-3,
    sampleEvery: 5,
    checkpointEvery: 4,
    keepCheckpoints: 2,
    logEvery: 2,
    lrWarmupSteps: 2,
    advWarmupSteps: 3,
    advRampSteps: 2,
    sampleSteps: 5,
    samplesPerClass: 2,
    lambda: 0.1,
    eval: { every: 0 },
    ...extra,
  };
}

afterEach(() => setNativeModule(undefined));

describe("train (with a fake native core)", () => {
  it("runs, logs, samples, checkpoints and prunes", async () => {
    const { native, log } = makeFakeNative();
    setNativeModule(native);
    const out = path.join(tmpDir(), "run");
    const seen: number[] = [];
    const sampled: string[] = [];
    const r = await train(tiny(out), {
      quiet: true,
      onStep: (s) => seen.push(s.step),
      onSample: (f) => sampled.push(f),
    });
    expect(r.step).toBe(10);
    expect(r.stepsRun).toBe(10);
    expect(r.aborted).toBe(false);
    expect(seen).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    // schedules reach the native step
    // The discriminator trains only once λ > 0 (during the warm-up its output would not reach the DiT).
    expect(log.steps[0].opts).toMatchObject({ lambda: 0, updateDisc: false, discLr: 1e-4 });
    expect(log.steps[0].opts.lr).toBeCloseTo(1e-3 / 2, 12);
    expect(log.steps[0].opts.emaDecay).toBeCloseTo(0.1, 12);
    expect(log.steps[2].opts.lambda).toBe(0);
    expect(log.steps[2].opts.updateDisc).toBe(false);
    expect(log.steps[3].opts.lambda).toBeCloseTo(0.05, 12);
    expect(log.steps[3].opts.updateDisc).toBe(true);
    expect(log.steps[4].opts.lambda).toBeCloseTo(0.1, 12);
    // created with the core config
    expect(JSON.parse(log.created[0].config)).toMatchObject({ seed: 0, model: { hiddenSize: 32, depth: 1 } });
    expect(log.created[0].device).toBe("cpu");
    // config.json
    const saved = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8")) as { steps: number };
    expect(saved.steps).toBe(10);
    // metrics every 2 steps
    const m = readMetrics(path.join(out, "metrics.jsonl"));
    expect(m.map((x) => x.step)).toEqual([2, 4, 6, 8, 10]);
    expect(m[0]).toHaveProperty("loss");
    expect(m[0]).toHaveProperty("lambda");
    expect(m[0]).toHaveProperty("lr");
    // samples at 5 and 10: a grid of 10 classes × 2 rows
    expect(sampled.map((f) => path.basename(f))).toEqual(["step-00000005.png", "step-00000010.png"]);
    expect(log.samples[0].labels).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(log.samples[0].opts).toMatchObject({ sampler: "unipc", steps: 5, cfgScale: 3, clipDenoised: true });
    const png = PNG.sync.read(fs.readFileSync(sampled[0]));
    // Ten columns of two 28-px rows, with the class names under the columns.
    const g = gridGeometry(20, 28, 28, 10, true);
    expect([png.width, png.height]).toEqual([g.width, g.height]);
    expect(g.height).toBeGreaterThan(2 * 30 + 2);
    // checkpoints at 4, 8 and the end (10); keep 2
    expect(log.saves.map((d) => path.basename(d))).toEqual(["step-00000004", "step-00000008", "step-00000010"]);
    expect(listCheckpoints(out).map((c) => c.step)).toEqual([8, 10]);
    expect(r.checkpoint).toBe(path.join(out, "checkpoints", "step-00000010"));
    const state = readState(r.checkpoint ?? "");
    expect(state.extra.config?.steps).toBe(10);
    expect(state.extra.data).toEqual({ epoch: 1, index: 16 });
    expect(state.extra.metrics?.last?.step).toBe(10);
    expect(state.extra.metrics?.history).toHaveLength(5);
  });

  it("refuses to overwrite a run unless forced", async () => {
    const { native } = makeFakeNative();
    setNativeModule(native);
    const out = path.join(tmpDir(), "run");
    await train(tiny(out, { steps: 2 }), { quiet: true });
    await expect(train(tiny(out, { steps: 2 }), { quiet: true })).rejects.toThrow(CheckpointError);
    await expect(train(tiny(out, { steps: 2 }), { quiet: true })).rejects.toThrow(/--resume|--force/);
    const r = await train(tiny(out, { steps: 3 }), { quiet: true, force: true });
    expect(r.step).toBe(3);
    expect(listCheckpoints(out).map((c) => c.step)).toEqual([3]);
    expect(readMetrics(path.join(out, "metrics.jsonl")).map((x) => x.step)).toEqual([2, 3]);
  });

  it("resumes the same data order and continues to the new step count", async () => {
    const straight = makeFakeNative();
    setNativeModule(straight.native);
    const a = path.join(tmpDir(), "a");
    await train(tiny(a, { steps: 12, checkpointEvery: 0 }), { quiet: true });

    const split = makeFakeNative();
    setNativeModule(split.native);
    const b = path.join(tmpDir(), "b");
    await train(tiny(b, { steps: 7, checkpointEvery: 0 }), { quiet: true });
    const r = await train({ outDir: b, steps: 12 }, { quiet: true, resume: "latest" });
    expect(split.log.loaded).toEqual([path.join(b, "checkpoints", "step-00000007")]);
    expect(r.step).toBe(12);
    expect(r.stepsRun).toBe(5);
    expect(split.log.steps.map((s) => s.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    expect(split.log.steps.map((s) => [s.firstPixels, s.labels, s.opts])).toEqual(
      straight.log.steps.map((s) => [s.firstPixels, s.labels, s.opts]),
    );
    const steps = readMetrics(path.join(b, "metrics.jsonl")).map((x) => x.step);
    expect(steps).toEqual([2, 4, 6, 7, 8, 10, 12]);
  });

  it("resumes from a checkpoint directory and drops metrics logged after it", async () => {
    const { native } = makeFakeNative();
    setNativeModule(native);
    const out = path.join(tmpDir(), "run");
    await train(tiny(out, { steps: 10, checkpointEvery: 4, keepCheckpoints: 5 }), { quiet: true });
    const r = await train({}, { quiet: true, resume: path.join(out, "checkpoints", "step-00000004") });
    expect(r.outDir).toBe(out);
    expect(r.stepsRun).toBe(6);
    const steps = readMetrics(path.join(out, "metrics.jsonl")).map((x) => x.step);
    expect(steps).toEqual([2, 4, 6, 8, 10]);
  });

  it("rejects a resume that changes the model", async () => {
    const { native } = makeFakeNative();
    setNativeModule(native);
    const out = path.join(tmpDir(), "run");
    await train(tiny(out, { steps: 2 }), { quiet: true });
    await expect(train({ outDir: out, model: { depth: 2 } }, { quiet: true, resume: "latest" })).rejects.toThrow(
      ConfigError,
    );
    await expect(train({ outDir: out, model: { depth: 2 } }, { quiet: true, resume: "latest" })).rejects.toThrow(
      /config\.model\.depth/,
    );
  });

  it("lets a resumed run change the discriminator's architecture, and says the encoder starts fresh", async () => {
    const { native } = makeFakeNative();
    setNativeModule(native);
    const out = path.join(tmpDir(), "run");
    await train(tiny(out, { steps: 2 }), { quiet: true });
    const lines: string[] = [];
    const r = await train(
      { outDir: out, steps: 4, discriminator: { encoder: "conv", timeConditioned: true } },
      { resume: "latest", log: (l) => lines.push(l) },
    );
    expect(lines.some((l) => /note: the discriminator starts fresh/.test(l))).toBe(true);
    expect(readState(r.checkpoint!).config.discriminator).toMatchObject({ encoder: "conv", timeConditioned: true });
  });

  it("lets a resumed run (a second stage) change the structure loss, and saves the change", async () => {
    const { native } = makeFakeNative();
    setNativeModule(native);
    const out = path.join(tmpDir(), "run");
    await train(tiny(out, { steps: 2 }), { quiet: true });
    const r = await train(
      { outDir: out, steps: 4, discriminator: { kernel: "gaussian", pairs: "cross", weighting: "cutoff", tMax: 300 } },
      { quiet: true, resume: "latest" },
    );
    expect(readState(r.checkpoint!).config.discriminator).toMatchObject({
      kernel: "gaussian",
      pairs: "cross",
      weighting: "cutoff",
      tMax: 300,
    });
  });

  it("errors clearly when there is nothing to resume", async () => {
    setNativeModule(makeFakeNative().native);
    await expect(train({ outDir: path.join(tmpDir(), "empty") }, { quiet: true, resume: "latest" })).rejects.toThrow(
      /nothing to resume/,
    );
    await expect(train({}, { quiet: true, resume: path.join(tmpDir(), "nope") })).rejects.toThrow(CheckpointError);
  });

  it("stops on abort after the current step and saves a checkpoint", async () => {
    const { native, log } = makeFakeNative();
    setNativeModule(native);
    const out = path.join(tmpDir(), "run");
    const ac = new AbortController();
    const r = await train(tiny(out, { steps: 100, checkpointEvery: 0, sampleEvery: 0 }), {
      quiet: true,
      signal: ac.signal,
      onStep: (s) => {
        if (s.step === 3) ac.abort();
      },
    });
    expect(r.aborted).toBe(true);
    expect(r.step).toBe(3);
    expect(log.samples).toHaveLength(0);
    expect(listCheckpoints(out).map((c) => c.step)).toEqual([3]);
    const resumed = await train({ outDir: out }, { quiet: true, resume: "latest" });
    expect(resumed.step).toBe(100);
  });

  it("wraps native errors in NativeError, keeping the message", async () => {
    setNativeModule(makeFakeNative({ failAtStep: 2 }).native);
    const p = train(tiny(path.join(tmpDir(), "run")), { quiet: true });
    await expect(p).rejects.toThrow(NativeError);
    await expect(train(tiny(path.join(tmpDir(), "run2")), { quiet: true })).rejects.toThrow(/shapes do not match/);
  });

  it("skips and logs non-finite steps, and goes on when the next one is good", async () => {
    setNativeModule(makeFakeNative({ badSteps: [3, 4] }).native);
    const out = path.join(tmpDir(), "run");
    const lines: string[] = [];
    const r = await train(tiny(out), { tty: false, log: (l) => lines.push(l) });
    expect(r.step).toBe(10);
    expect(r.skippedSteps).toBe(2);
    expect(lines.filter((l) => l.includes("skipped (nothing updated)"))).toHaveLength(2);
    expect(lines.some((l) => l.includes("step 4 skipped") && l.includes("[2 in a row]"))).toBe(true);
    const records = fs.readFileSync(path.join(out, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(records.filter((x) => typeof x.skipped === "string").map((x) => x.step)).toEqual([3, 4]);
  });

  it("stops after maxBadSteps skipped steps in a row, naming the last good checkpoint", async () => {
    setNativeModule(makeFakeNative({ badSteps: [5, 6, 7, 8, 9] }).native);
    const out = path.join(tmpDir(), "run");
    const p = train(tiny(out, { maxBadSteps: 3, checkpointEvery: 2 }), { quiet: true });
    const err = await p.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NumericalError);
    const e = err as NumericalError;
    expect(e.step).toBe(7);
    expect(e.lastCheckpoint).toBe(path.join(out, "checkpoints", "step-00000004"));
    expect(e.message).toContain("3 steps in a row were skipped");
    expect(e.message).toContain(`resume from it (sadm train --resume ${e.lastCheckpoint})`);
    // The checkpoint it names is complete and loads.
    expect(fs.existsSync(path.join(e.lastCheckpoint ?? "", "state.json"))).toBe(true);
  });

  it("prints plain progress lines without a TTY", async () => {
    setNativeModule(makeFakeNative().native);
    const lines: string[] = [];
    await train(tiny(path.join(tmpDir(), "run"), { printEvery: 5 }), { tty: false, log: (l) => lines.push(l) });
    expect(lines[0]).toMatch(/^sadm: training mnist-tiny/);
    expect(lines[1]).toBe("sadm: data: 64 MNIST digits (28×28 grey)");
    expect(lines.filter((l) => l.startsWith("step "))).toHaveLength(2);
    expect(lines[2]).toMatch(/^sadm: report: .*report\.html \(refreshed at every checkpoint/);
    expect(lines[3]).toMatch(/^step 5\/10 .*it\/s .*loss .*mse .*D /);
  });

  it("samples only the filtered classes", async () => {
    const { native, log } = makeFakeNative();
    setNativeModule(native);
    await train(tiny(path.join(tmpDir(), "run"), { steps: 5, data: { name: "mnist", classes: [7, 1] } }), {
      quiet: true,
    });
    expect(log.samples[0].labels).toEqual([1, 7, 1, 7]);
    for (const s of log.steps) for (const l of s.labels) expect([1, 7]).toContain(l);
  });
});

describe("evaluation and fine-tuning in the training loop (fake native core)", () => {
  it("evaluates every eval.every steps and at the end, into metrics.jsonl and the result", async () => {
    const { native, log } = makeFakeNative();
    setNativeModule(native);
    const out = path.join(tmpDir(), "run");
    // The fake extractor needs a weights file to exist.
    const weights = path.join(tmpDir(), "w.safetensors");
    fs.writeFileSync(weights, "x");
    const evalSteps: number[] = [];
    const r = await train(
      tiny(out, { steps: 7, eval: { every: 3, samples: 20, steps: 4, extractor: { arch: "lenet-mnist", weights } } }),
      { quiet: true, onEval: (_, s) => evalSteps.push(s) },
    );
    expect(evalSteps).toEqual([3, 6, 7]);
    expect(r.evals.map((e) => e.step)).toEqual([3, 6, 7]);
    const evals = readMetrics(path.join(out, "metrics.jsonl")).filter((m) => "fd" in m);
    expect(evals.map((m) => m.step)).toEqual([3, 6, 7]);
    for (const m of evals) {
      expect(m.evalSamples).toBe(20);
      expect(Number.isFinite(m.fd)).toBe(true);
      // The fake predicts index mod 10 and the labels cycle through 0..9: every sample counts as correct.
      expect(m.accuracy).toBe(1);
    }
    // 20 samples per evaluation in one chunk, class-balanced, at the eval settings (cfg 1).
    const evalSamples = log.samples.filter((s) => s.opts.steps === 4);
    expect(evalSamples).toHaveLength(3);
    expect(evalSamples[0].labels.slice(0, 12)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
    expect(evalSamples[0].opts).toMatchObject({ steps: 4, cfgScale: 1 });
    // Real features are computed once per process and data, then reused.
    expect(log.extracted.filter((n) => n === 20)).toHaveLength(4);
  });

  it("refuses a missing extractor file with the field named", async () => {
    setNativeModule(makeFakeNative().native);
    const out = path.join(tmpDir(), "run");
    const cfg = tiny(out, { eval: { every: 2, samples: 20, extractor: { arch: "lenet-mnist", weights: "/nonexistent.safetensors" } } });
    await expect(train(cfg, { quiet: true })).rejects.toThrow(/config\.eval\.extractor\.weights: \/nonexistent\.safetensors does not exist/);
  });

  it("fine-tunes from a run: the source's architecture, the new data and trainable set, fresh native state", async () => {
    const { native, log } = makeFakeNative();
    setNativeModule(native);
    const src = path.join(tmpDir(), "src");
    await train(tiny(src, { steps: 4, model: { hiddenSize: 48, depth: 1, numHeads: 2 } }), { quiet: true });
    const out = path.join(tmpDir(), "ft");
    const lines: string[] = [];
    const r = await train(
      { outDir: out, steps: 3, batchSize: 4, data: { name: "mnist", classes: [5, 6], limit: 16 }, trainable: "efficient", sampleEvery: 0 },
      { from: src, log: (l) => lines.push(l), tty: false },
    );
    expect(log.pretrained).toHaveLength(1);
    expect(log.pretrained[0].from).toBe(path.join(src, "checkpoints", "step-00000004"));
    const core = JSON.parse(log.pretrained[0].config) as { model: { hiddenSize: number }; trainable: string[] };
    expect(core.model.hiddenSize).toBe(48);
    expect(core.trainable).toEqual(["*.bias", "*adaLN_modulation*", "t_embedder.*", "y_embedder.*"]);
    expect(r.config.data.classes).toEqual([5, 6]);
    expect(lines.join("\n")).toMatch(/fine-tuning .*src.* as/);
    expect(lines.join("\n")).toContain("note: fake note");
    expect(readState(r.checkpoint!).extra.finetunedFrom).toBe(path.join(src, "checkpoints", "step-00000004"));
    // The labels the fine-tuning steps see are the new classes only.
    const ftSteps = log.steps.slice(-3);
    expect(new Set(ftSteps.flatMap((s) => s.labels))).toEqual(new Set([5, 6]));
    await expect(train({ outDir: path.join(tmpDir(), "x") }, { from: src, resume: "latest" })).rejects.toThrow(/either resume/);
    await expect(train({ outDir: path.join(tmpDir(), "y") }, { from: "/no/such/run", quiet: true })).rejects.toThrow(CheckpointError);
  });
});
