/**
 * End-to-end tests against the real native addon (the .node binary built by `npm run build`).
 * They fail (never skip) when the addon has not been built: run `npm run build` first.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { PNG } from "pngjs";
import { spawn } from "node:child_process";
import { CLI, ROOT, TINY_NETS, nativeBuilt, runCliAsync, tmpDir } from "./helpers";
import { Rng } from "../ts/rng";
import {
  BatchLoader,
  MnistDataset,
  latestCheckpoint,
  listCheckpoints,
  loadNative,
  readMetrics,
  readState,
  resolveConfig,
  toCoreConfig,
  type SadmConfigInput,
  type StepStats,
  openExtractor,
  readImages,
  evaluateModel,
  builtinExtractorWeights,
  gridGeometry,
  findData,
  resolveDataConfig,
} from "../ts/index";


const TINY: SadmConfigInput = {
  ...TINY_NETS,
  steps: 6,
  sampleEvery: 6,
  checkpointEvery: 3,
  keepCheckpoints: 5,
  lambda: 0.1,
  advWarmupSteps: 2,
  advRampSteps: 2,
  sampleSteps: 5,
  samplesPerClass: 1,
  eval: { every: 0 },
};

function close(a: number | undefined, b: number | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return Math.abs(a - b) <= 1e-5 * Math.max(1, Math.abs(a), Math.abs(b));
}

function pngSize(file: string): [number, number] {
  const png = PNG.sync.read(fs.readFileSync(file));
  return [png.width, png.height];
}

describe("end to end (native addon)", () => {
  it("has the native addon built", () => {
    expect(nativeBuilt(), "the native binary is missing: run `npm run build`").toBe(true);
  });

  it("the addon loads and reports its build", async () => {
    const info = loadNative().buildInfo();
    expect(typeof info.version).toBe("string");
    expect(info.devices).toContain("cpu");
    const r = await runCliAsync(["info"]);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^sadm 0\.1\.0/);
    expect(r.stdout).toContain("cpu");
  });

  it("`sadm train` writes checkpoints, samples and metrics that reload; resume and `sadm sample` work", async () => {
    const dir = tmpDir();
    const out = path.join(dir, "run");
    const cfgFile = path.join(dir, "tiny.json");
    fs.writeFileSync(cfgFile, JSON.stringify(TINY));
    const r = await runCliAsync(["train", "--config", cfgFile, "--out", out], { timeoutMs: 300_000 });
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(r.stdout).toContain("done at step 6");

    // Checkpoints at 3 and 6, complete and loadable.
    expect(listCheckpoints(out).map((c) => c.step)).toEqual([3, 6]);
    const ck = path.join(out, "checkpoints", "step-00000006");
    for (const f of ["model.safetensors", "ema.safetensors", "discriminator.safetensors", "optimizer.safetensors", "state.json"])
      expect(fs.existsSync(path.join(ck, f)), f).toBe(true);
    const state = readState(ck);
    expect(state.step).toBe(6);
    expect(state.extra.config?.batchSize).toBe(8);
    expect(state.extra.data).toEqual({ epoch: 0, index: 48 });
    const native = loadNative();
    const t = native.NativeTrainer.load(ck, "cpu");
    expect(t.stepCount).toBe(6);
    expect(JSON.parse(t.configJson())).toMatchObject(toCoreConfig(resolveConfig({ ...TINY, outDir: out })));
    expect((JSON.parse(t.extraJson()) as { data: unknown }).data).toEqual({ epoch: 0, index: 48 });

    // The sample grid: 10 classes × 1 row of 28×28 with 2px padding, the class names under the columns.
    const grid = path.join(out, "samples", "step-00000006.png");
    const g = gridGeometry(10, 28, 28, 10, true);
    expect(pngSize(grid)).toEqual([g.width, g.height]);
    expect([g.width, g.height - g.stripHeight]).toEqual([10 * 30 + 2, 30 + 2]);

    // Metrics: finite losses, D present once λ > 0.
    const m = readMetrics(path.join(out, "metrics.jsonl"));
    expect(m.map((x) => x.step)).toEqual([6]);
    expect(Number.isFinite(m[0].loss)).toBe(true);
    expect(Number.isFinite(m[0].structure)).toBe(true);

    // A second run in the same dir is refused; --resume continues.
    const again = await runCliAsync(["train", "--config", cfgFile, "--out", out]);
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/^error: .*already holds a run/);
    const resumed = await runCliAsync(["train", "--out", out, "--resume", "--steps", "8", "--sample-every", "0", "-q"], {
      timeoutMs: 300_000,
    });
    expect(resumed.stderr).toBe("");
    expect(resumed.status).toBe(0);
    expect(listCheckpoints(out).map((c) => c.step)).toEqual([3, 6, 8]);

    // `sadm sample` on the run directory (latest checkpoint).
    const png = path.join(dir, "grid.png");
    const s = await runCliAsync(["sample", "--checkpoint", out, "--classes", "0,1,2", "--per-class", "2", "--steps", "5", "--cfg", "2", "--out", png]);
    expect(s.stderr).toBe("");
    expect(s.status).toBe(0);
    const sg = gridGeometry(6, 28, 28, 3, true);
    expect(pngSize(png)).toEqual([sg.width, sg.height]);
    expect([sg.width, sg.height - sg.stripHeight]).toEqual([3 * 30 + 2, 2 * 30 + 2]);

    // The native counter sees every network evaluation of every call it is given to (Heun: 2N − 1).
    const model = native.NativeModel.load(ck, "cpu", true);
    const counter = new native.SampleProgress();
    const opts = { sampler: "ddim", steps: 5, cfgScale: 2, eta: 0, seed: 0, clipDenoised: true };
    await model.sample(new Int32Array([0, 1]), opts, counter);
    await model.sample(new Int32Array([2]), { ...opts, steps: 3 }, counter);
    expect(counter.evaluations).toBe(8);
    await model.sample(new Int32Array([2]), { ...opts, sampler: "heun", steps: 3 }, counter);
    expect(counter.evaluations).toBe(13);
  }, 600_000);

  it("the loss goes down on one fixed batch", async () => {
    const cfg = resolveConfig({
      model: { hiddenSize: 64, depth: 2, numHeads: 4 },
      discriminator: { width: 32, depth: 1, numHeads: 2, projDim: 16 },
      seed: 1,
    });
    const t = loadNative().NativeTrainer.create(JSON.stringify(toCoreConfig(cfg)), "cpu");
    const batch = new BatchLoader(new MnistDataset({ limit: 16 }), 16, 0).next();
    const stats: StepStats[] = [];
    for (let i = 0; i < 60; i++)
      stats.push(await t.step(batch.x, batch.labels, { lambda: 0, lr: 2e-3, discLr: 1e-4, emaDecay: 0.99, updateDisc: false }));
    expect(t.stepCount).toBe(60);
    expect(stats[59].step).toBe(60);
    for (const s of stats) {
      expect(Number.isFinite(s.loss)).toBe(true);
      expect(s.structure).toBeUndefined();
    }
    const mean = (xs: StepStats[]): number => xs.reduce((a, s) => a + s.mse, 0) / xs.length;
    const first = mean(stats.slice(0, 10));
    const last = mean(stats.slice(-10));
    expect(last).toBeLessThan(0.7 * first);
  }, 300_000);

  it("an adversarial step reports D, and a saved trainer continues exactly like the original", async () => {
    const cfg = resolveConfig({ ...TINY, seed: 3 });
    const native = loadNative();
    const a = native.NativeTrainer.create(JSON.stringify(toCoreConfig(cfg)), "cpu");
    const loader = new BatchLoader(new MnistDataset({ limit: 64 }), 8, 0);
    const batches = Array.from({ length: 6 }, () => loader.next());
    const opts = { lambda: 0.1, lr: 1e-3, discLr: 1e-4, emaDecay: 0.9, updateDisc: true };
    for (const b of batches.slice(0, 4)) {
      const s = await a.step(b.x, b.labels, opts);
      expect(Number.isFinite(s.structure ?? Number.NaN)).toBe(true);
      expect(Number.isFinite(s.discLoss ?? Number.NaN)).toBe(true);
    }
    const ck = path.join(tmpDir(), "ck");
    await a.save(ck, JSON.stringify({ note: "x" }));
    expect(readState(ck).extra).toEqual({ note: "x" });
    const b = native.NativeTrainer.load(ck, "cpu");
    expect(b.stepCount).toBe(4);
    for (const batch of batches.slice(4)) {
      const sa = await a.step(batch.x, batch.labels, opts);
      const sb = await b.step(batch.x, batch.labels, opts);
      expect(sb.step).toBe(sa.step);
      for (const k of ["loss", "mse", "vb", "structure", "discLoss", "gradNormDit", "gradNormDisc"] as const)
        expect(close(sb[k], sa[k]), `${k}: ${sb[k]} vs ${sa[k]}`).toBe(true);
    }
    const labels = Int32Array.from([0, 1, 2]);
    const sopts = { sampler: "ddim", steps: 4, cfgScale: 2, eta: 0, seed: 5, clipDenoised: true };
    const xa = await a.sample(labels, sopts);
    expect(xa).toHaveLength(3 * 28 * 28);
    expect(await b.sample(labels, sopts)).toEqual(xa);
  }, 300_000);

  it("exact resume: 10 steps straight equal 4 steps, then a new process resuming for 6 more, bit for bit", async () => {
    // λ switches on at step 3 and the 64 images are 8 batches: the resume point (4) is inside the adversarial phase,
    // and the resumed part crosses an epoch boundary (a reshuffle).
    const dir = tmpDir();
    const cfgFile = path.join(dir, "cfg.json");
    fs.writeFileSync(cfgFile, JSON.stringify({ ...TINY, steps: 10, sampleEvery: 0, checkpointEvery: 10 }));
    const straight = path.join(dir, "straight");
    const split = path.join(dir, "split");
    const run = async (args: string[]): Promise<void> => {
      const r = await runCliAsync(["train", "--config", cfgFile, ...args], { timeoutMs: 300_000 });
      expect(r.stderr).toBe("");
      expect(r.status).toBe(0);
    };
    await run(["--out", straight]);
    await run(["--out", split, "--steps", "4"]);
    expect(listCheckpoints(split).map((c) => c.step)).toEqual([4]);
    await run(["--out", split, "--resume", "--steps", "10"]);
    const a = path.join(straight, "checkpoints", "step-00000010");
    const b = path.join(split, "checkpoints", "step-00000010");
    for (const f of ["model", "ema", "discriminator", "optimizer"]) {
      const same = fs.readFileSync(path.join(a, `${f}.safetensors`)).equals(fs.readFileSync(path.join(b, `${f}.safetensors`)));
      expect(same, `${f}.safetensors differs between the straight and the resumed run`).toBe(true);
    }
    const [sa, sb] = [readState(a), readState(b)];
    expect(sb.step).toBe(10);
    expect(sb.rng).toEqual(sa.rng);
    expect(sb.extra.data).toEqual(sa.extra.data);
  }, 600_000);

  it("the default preset on 2 threads: two identical runs, and 4 steps resumed to 10, write the same bytes", async () => {
    // mnist-tiny's networks are large enough that every kernel splits its work across the threads (TINY_NETS' are
    // not), so a reduction whose order followed work stealing would differ here. λ is on from step 3: the resume
    // point is inside the adversarial phase. No evaluation, and the end-of-run grid is one image per class, 1 step.
    const dir = tmpDir();
    const sets = ["eval.every=0", "sampleEvery=0", "sampleSteps=1", "samplesPerClass=1", "advWarmupSteps=2", "advRampSteps=1"];
    const run = async (out: string, ...args: string[]): Promise<string> => {
      const r = await runCliAsync(["train", "--out", out, ...sets.flatMap((s) => ["--set", s]), ...args], {
        env: { RAYON_NUM_THREADS: "2" },
        timeoutMs: 300_000,
      });
      expect(r.stderr).toBe("");
      expect(r.status).toBe(0);
      return path.join(out, "checkpoints", "step-00000010");
    };
    const first = await run(path.join(dir, "a"), "--steps", "10");
    expect(readState(first).extra.config?.preset).toBe("mnist-tiny");
    const second = await run(path.join(dir, "b"), "--steps", "10");
    await run(path.join(dir, "split"), "--steps", "4");
    expect(listCheckpoints(path.join(dir, "split")).map((c) => c.step)).toEqual([4]);
    const resumed = await run(path.join(dir, "split"), "--resume", "--steps", "10");
    for (const [other, what] of [[second, "a second identical run"], [resumed, "the run resumed at step 4"]]) {
      for (const f of ["model", "ema", "discriminator", "optimizer"]) {
        const same = fs.readFileSync(path.join(first, `${f}.safetensors`)).equals(fs.readFileSync(path.join(other, `${f}.safetensors`)));
        expect(same, `${f}.safetensors differs between the first run and ${what}`).toBe(true);
      }
      expect(readState(other).rng).toEqual(readState(first).rng);
      expect(readState(other).extra.data).toEqual(readState(first).extra.data);
    }
  }, 600_000);

  it("SIGKILL at random moments while checkpoints are written never costs the previous checkpoint", async () => {
    // A checkpoint every step (the size of the default preset's, ~20 MB with fsyncs) and fast steps, so that most
    // of a run's time is spent saving and most kills land inside a save.
    const dir = tmpDir();
    const out = path.join(dir, "run");
    const cfgFile = path.join(dir, "cfg.json");
    fs.writeFileSync(
      cfgFile,
      JSON.stringify({ ...TINY, model: { hiddenSize: 128, depth: 4, numHeads: 4 }, steps: 400, batchSize: 4, checkpointEvery: 1, keepCheckpoints: 2, sampleEvery: 0 }),
    );
    const native = loadNative();
    const rng = new Rng(11);
    let newest = 0;
    let interrupted = 0;
    for (let kill = 0; kill < 16; kill++) {
      const resume = listCheckpoints(out).length > 0 ? ["--resume"] : ["--force"];
      // Killed 0–400 ms after this process's first new checkpoint, whatever the machine's speed: a kill before
      // any save would test nothing.
      const child = spawn(process.execPath, [CLI, "train", "--config", cfgFile, "--out", out, ...resume], { stdio: "ignore" });
      const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
      const deadline = Date.now() + 120_000;
      while ((latestCheckpoint(out)?.step ?? 0) <= newest && Date.now() < deadline && child.exitCode === null)
        await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setTimeout(r, rng.nextInt(400)));
      child.kill("SIGKILL");
      expect(await exited, "the run ended by itself before the kill").toBe(null);
      const root = path.join(out, "checkpoints");
      interrupted += fs.existsSync(root) ? fs.readdirSync(root).filter((n) => n.startsWith(".")).length : 0;
      const all = listCheckpoints(out);
      for (const c of all) native.NativeTrainer.load(c.dir, "cpu"); // every listed checkpoint is whole
      const latest = all.at(-1)?.step ?? 0;
      expect(latest, "the newest checkpoint went backwards").toBeGreaterThanOrEqual(newest);
      newest = latest;
    }
    expect(newest, "each run got at least one checkpoint further").toBeGreaterThanOrEqual(16);
    // The kills did land inside saves (their temporaries are the evidence), and a resumed run cleans them up.
    expect(interrupted).toBeGreaterThan(0);
    const r = await runCliAsync(["train", "--config", cfgFile, "--out", out, "--resume", "--steps", String(newest + 2)], { timeoutMs: 300_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain(`resuming ${path.join(out, "checkpoints", `step-${String(newest).padStart(8, "0")}`)}`);
    expect(fs.readdirSync(path.join(out, "checkpoints")).filter((n) => n.startsWith("."))).toEqual([]);
  }, 600_000);

  it("computes feature metrics natively and rejects malformed feature sets", async () => {
    const native = loadNative();
    const n = 64, d = 3;
    const a = new Float64Array(n * d).map((_, i) => Math.sin(i * 1.7) + (i % d));
    const same = await native.featureMetrics(a, a, d);
    // These columns span only 2 dimensions; √ of the null space's rounding noise (~1e-16) leaves ~1e-8.
    expect(Math.abs(same.fd)).toBeLessThan(1e-6);
    expect([same.precision, same.recall]).toEqual([1, 1]);
    const shifted = await native.featureMetrics(a, a.map((v) => v + 5), d);
    expect(shifted.fd).toBeGreaterThan(70); // |Δμ|² = 3·25, same covariance
    expect(shifted.precision).toBe(0);
    await expect(native.featureMetrics(a, a.subarray(0, 5), d)).rejects.toThrow(/generated features: 5 values/);
    await expect(native.featureMetrics(a, a.map(() => Number.NaN), d)).rejects.toThrow(/non-finite/);
  });
});


describe("evaluation and fine-tuning end to end (native addon)", () => {
  it("the shipped emoji LeNet classifies the held-out tenth of the emoji set as its report says", async () => {
    const report = JSON.parse(fs.readFileSync(path.join(ROOT, "assets", "lenet-emoji.json"), "utf8")) as { testAccuracy: number; testImages: number };
    const ex = openExtractor({ arch: "lenet-emoji" });
    expect([ex.arch, ex.featureDim, ex.numClasses]).toEqual(["lenet-emoji", 128, 10]);
    expect(() => ex.checkInput([1, 28, 28])).toThrow(/lenet-emoji reads 32×32 RGB/);
    const { dataset } = await findData(resolveDataConfig({ name: "emoji", resolution: 32 })).open();
    const all = readImages(dataset);
    // The held-out split: every tenth image of each category.
    const seen = new Map<number, number>();
    const per = 3 * 32 * 32;
    const idx = Array.from(all.labels, (l, i) => {
      const k = seen.get(l) ?? 0;
      seen.set(l, k + 1);
      return k % 10 === 9 ? i : -1;
    }).filter((i) => i >= 0);
    expect(idx.length).toBe(report.testImages);
    const x = new Float32Array(idx.length * per);
    idx.forEach((i, j) => x.set(all.x.subarray(i * per, (i + 1) * per), j * per));
    const out = await ex.run(x, [3, 32, 32]);
    const hit = idx.filter((i, j) => out.predictions[j] === all.labels[i]).length;
    expect(hit / idx.length).toBeCloseTo(report.testAccuracy, 10);
    // Far above the 10 categories' chance, and above always guessing the largest one.
    expect(hit / idx.length).toBeGreaterThan(0.8);
  }, 120_000);

  it("the shipped LeNet classifies held-out digits and embeds them in 128 dimensions", async () => {
    const ex = openExtractor({ arch: "lenet-mnist" });
    expect([ex.arch, ex.featureDim, ex.numClasses]).toEqual(["lenet-mnist", 128, 10]);
    expect(() => ex.checkInput([3, 32, 32])).toThrow(/lenet-mnist reads 28×28 grey .*not 3×32×32/);
    const test = readImages(new MnistDataset({ split: "test" }));
    const out = await ex.run(test.x, [1, 28, 28]);
    expect(out.features).toHaveLength(test.labels.length * 128);
    let hit = 0;
    out.predictions.forEach((p, i) => (hit += p === test.labels[i] ? 1 : 0));
    expect(hit / test.labels.length).toBeGreaterThan(0.95);
    expect(() => loadNative().NativeExtractor.load("inception-v3", builtinExtractorWeights(), "cpu")).toThrow(
      /unknown feature-extractor architecture 'inception-v3' \(known: lenet-mnist, lenet-emoji, inception-v3-fid\)/,
    );
    // Inception needs the user's weights; a file of another network is named as such.
    expect(() => openExtractor({ arch: "inception-v3-fid" })).toThrow(/eval.extractor.weights: is required/);
    expect(() => openExtractor({ arch: "inception-v3-fid", weights: builtinExtractorWeights() })).toThrow(
      /Conv2d_1a_3x3\.\S+' is missing/,
    );
    await expect(ex.run(new Float32Array(100), [1, 28, 28])).rejects.toThrow(/not a whole number of 1×28×28 images/);
  });

  it("real digits score far better than noise: FD, precision and accuracy order the two", async () => {
    const cfg = resolveConfig({ ...TINY, eval: { samples: 200 } });
    const realSource = {
      // A "model" that returns real digits of the requested classes (test split, so not the reference images).
      sample: async (labels: Int32Array): Promise<Float32Array> => {
        const test = readImages(new MnistDataset({ split: "test" }));
        const out = new Float32Array(labels.length * 784);
        const used = new Set<number>();
        labels.forEach((l, i) => {
          const j = test.labels.findIndex((t, k) => t === l && !used.has(k));
          used.add(j);
          out.set(test.x.subarray(j * 784, (j + 1) * 784), i * 784);
        });
        return out;
      },
    };
    const noise = { sample: async (labels: Int32Array) => new Float32Array(labels.length * 784).map((_, i) => Math.sin(i * 12.9898) ) };
    const good = await evaluateModel(realSource, cfg);
    const bad = await evaluateModel(noise, cfg);
    expect(good.fd).toBeLessThan(bad.fd / 10);
    expect(good.kid).toBeLessThan(bad.kid);
    expect(good.precision).toBeGreaterThan(0.8);
    expect(good.recall).toBeGreaterThan(0.8);
    expect(good.accuracy).toBeGreaterThan(0.9);
    expect(bad.accuracy).toBeLessThan(0.3);
    expect(good.realAccuracy).toBeGreaterThan(0.95);
  }, 120_000);

  it("`sadm eval` appends to the run's metrics; `sadm finetune` starts a new run from it", async () => {
    const dir = tmpDir();
    const out = path.join(dir, "run");
    const cfgFile = path.join(dir, "tiny.json");
    fs.writeFileSync(cfgFile, JSON.stringify({ ...TINY, data: { name: "mnist", classes: [0, 1, 2], limit: 64 } }));
    expect((await runCliAsync(["train", "--config", cfgFile, "--out", out, "-q"], { timeoutMs: 300_000 })).status).toBe(0);
    const e = await runCliAsync(["eval", "-k", out, "-n", "30", "--steps", "5", "--json"], { timeoutMs: 300_000 });
    expect(e.stderr).toBe("");
    expect(e.status).toBe(0);
    const r = JSON.parse(e.stdout) as { step: number; fd: number; accuracy: number; samples: number };
    expect(r.step).toBe(6);
    expect(r.samples).toBe(30);
    expect(Number.isFinite(r.fd)).toBe(true);
    const evals = readMetrics(path.join(out, "metrics.jsonl")).filter((m) => "fd" in m);
    expect(evals).toHaveLength(1);
    expect(evals[0]).toMatchObject({ step: 6, evalSamples: 30 });

    const ft = path.join(dir, "ft");
    const f = await runCliAsync(
      ["finetune", "--from", out, "--classes", "5,6", "--trainable", "efficient", "--steps", "3", "--out", ft, "--sample-every", "0", "--eval-every", "0"],
      { timeoutMs: 300_000 },
    );
    expect(f.stderr).toBe("");
    expect(f.status).toBe(0);
    expect(f.stdout).toMatch(/fine-tuning .*step-00000006 as/);
    expect(f.stdout).toMatch(/training \d+ DiT parameter tensors/);
    const state = readState(path.join(ft, "checkpoints", "step-00000003"));
    expect(state.step).toBe(3);
    expect(state.config.model.hiddenSize).toBe(TINY.model?.hiddenSize);
    const t = loadNative().NativeTrainer.load(path.join(ft, "checkpoints", "step-00000003"), "cpu");
    const names = t.trainableNames();
    expect(names).toContain("blocks.0.attn.qkv.bias");
    expect(names).not.toContain("blocks.0.attn.qkv.weight");
    // A checkpoint's ema.safetensors alone starts the same run as the checkpoint (the study commits only those).
    const args = (from: string, to: string): string[] =>
      ["finetune", "--from", from, "--config", cfgFile, "--lambda", "0.1", "--steps", "3", "--out", to, "--sample-every", "0", "--eval-every", "0", "-q"];
    const [viaDir, viaFile] = [path.join(dir, "via-dir"), path.join(dir, "via-file")];
    const checkpoint = path.join(out, "checkpoints", "step-00000006");
    expect((await runCliAsync(args(checkpoint, viaDir), { timeoutMs: 300_000 })).status).toBe(0);
    expect((await runCliAsync(args(path.join(checkpoint, "ema.safetensors"), viaFile), { timeoutMs: 300_000 })).status).toBe(0);
    for (const f of ["model.safetensors", "ema.safetensors", "discriminator.safetensors"]) {
      const a = fs.readFileSync(path.join(viaDir, "checkpoints", "step-00000003", f));
      expect(a.equals(fs.readFileSync(path.join(viaFile, "checkpoints", "step-00000003", f))), f).toBe(true);
    }
    // Another architecture is refused with the tensor named.
    const bad = await runCliAsync(["finetune", "--from", out, "--set", "model.depth=2", "--steps", "1", "--out", path.join(dir, "bad")]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/error: cannot start from .*tensor 'blocks\.1\..*' is missing/);
  }, 600_000);
});
