/**
 * Sampling from checkpoints: class names ↔ labels, chunked native calls (bounded memory), the grid size limit
 * (refused before anything is loaded or sampled), one PNG per sample in a directory, and `sadm info --checkpoint`
 * on a real tiny run.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { PNG } from "pngjs";
import { ConfigError, setNativeModule, train } from "../ts/index";
import {
  MAX_IN_MEMORY_VALUES,
  SAMPLE_CHUNK,
  planSamples,
  resolveClasses,
  sample,
  sampleFileName,
  sampleFrom,
  sampleGrid,
  sampleToDir,
} from "../ts/sampler";
import { GRID_PADDING, gridGeometry } from "../ts/image";
import { main } from "../ts/cli";
import { makeFakeNative, type FakeLog } from "./fake-native";
import { TINY_NETS, runCliAsync, tmpDir } from "./helpers";

const NAMES = ["cat", "dog", "Animals & Nature"];

/** A checkpoint directory the fake addon loads: state.json with a core config and the data's class names. */
function fakeCheckpoint(
  opts: { numClasses?: number; inputSize?: number; inChannels?: number; classNames?: string[] } = {},
): string {
  const dir = path.join(tmpDir(), "run", "checkpoints", "step-00000001");
  fs.mkdirSync(dir, { recursive: true });
  for (const f of ["model", "ema", "discriminator", "optimizer"]) fs.writeFileSync(path.join(dir, `${f}.safetensors`), "x");
  const model = { inputSize: opts.inputSize ?? 8, inChannels: opts.inChannels ?? 1, numClasses: opts.numClasses ?? 3 };
  const dataset = opts.classNames ? { source: "folder /data/pets", classNames: opts.classNames, fingerprint: "f00d", images: 30 } : undefined;
  fs.writeFileSync(path.join(dir, "state.json"), JSON.stringify({ formatVersion: 1, config: { model }, step: 1, rng: 0, extra: { dataset } }));
  return dir;
}

function withFake(): FakeLog {
  const { native, log } = makeFakeNative();
  setNativeModule(native);
  return log;
}

afterEach(() => setNativeModule(undefined));

describe("class names ↔ labels", () => {
  it("maps names and labels, mixed, to labels", () => {
    expect(resolveClasses(["dog", 0, "2", " cat ", "Animals & Nature"], 3, NAMES)).toEqual([1, 0, 2, 0, 2]);
    expect(resolveClasses([2, "1"], 3)).toEqual([2, 1]);
  });

  it("a name wins over a label of the same spelling", () => {
    expect(resolveClasses(["1", "0"], 2, ["1", "0"])).toEqual([0, 1]);
  });

  it("refuses a name that is no class, listing the names", () => {
    expect(() => resolveClasses(["cow"], 3, NAMES)).toThrow(ConfigError);
    expect(() => resolveClasses(["dog", "cow"], 3, NAMES)).toThrow(
      'classes[1]: "cow" is not a class of this checkpoint (its classes: "cat", "dog", "Animals & Nature")',
    );
    expect(() => resolveClasses(["cow"], 10)).toThrow(/"cow" is not a class label: the classes of this checkpoint have no names, use labels 0 to 9/);
    expect(() => resolveClasses([3], 3, NAMES)).toThrow("classes[0]: must be a class between 0 and 2 (got 3)");
    expect(() => resolveClasses(["11"], 10)).toThrow("classes[0]: must be a class between 0 and 9 (got 11)");
    const many = Array.from({ length: 30 }, (_, k) => `c${k}`);
    expect(() => resolveClasses(["x"], 30, many)).toThrow(/"c19" … \(10 more\)\)$/);
  });

  it("plans columns with their names, or label numbers without names", () => {
    const plan = planSamples({ numClasses: 3, classNames: NAMES }, ["Animals & Nature", 0], 2, 0);
    expect(Array.from(plan.labels)).toEqual([2, 0, 2, 0]);
    expect(plan.columnLabels).toEqual(["Animals & Nature", "cat"]);
    expect(planSamples({ numClasses: 3 }, undefined, 1, 0).columnLabels).toEqual(["0", "1", "2"]);
    expect(planSamples({ numClasses: 0 }, ["cat"], 1, 5).columnLabels).toBeUndefined();
  });
});

describe("sampling in bounded chunks (fake addon)", () => {
  it("sample() calls the native sampler in chunks of at most SAMPLE_CHUNK, seeded seed + first index", async () => {
    const log = withFake();
    const ck = fakeCheckpoint({ classNames: NAMES });
    const r = await sample({ checkpoint: ck, classes: ["dog", 2], perClass: 300, seed: 7, steps: 3 });
    expect(SAMPLE_CHUNK).toBe(256);
    expect(log.samples.map((s) => s.labels.length)).toEqual([256, 256, 88]);
    expect(log.samples.map((s) => s.opts.seed)).toEqual([7, 7 + 256, 7 + 512]);
    expect(log.samples.flatMap((s) => s.labels)).toEqual(Array.from(r.labels));
    expect(Array.from(r.labels.subarray(0, 4))).toEqual([1, 2, 1, 2]);
    expect(r.shape).toEqual([600, 1, 8, 8]);
    expect(r.columnLabels).toEqual(["dog", "Animals & Nature"]);
    // Each chunk's values land at its place: the fake's output restarts with every call.
    expect(r.images[256 * 64]).toBe(r.images[0]);
    expect(r.images[256 * 64 + 1]).toBeCloseTo(Math.sin(1) * 0.9, 6);
  });

  it("a smaller chunk size gives smaller calls; results depend only on seed and chunk size", async () => {
    const log = withFake();
    const ck = fakeCheckpoint();
    await sample({ checkpoint: ck, perClass: 10, chunkSize: 7 });
    expect(log.samples.map((s) => s.labels.length)).toEqual([7, 7, 7, 7, 2]);
    expect(log.samples.map((s) => s.opts.seed)).toEqual([0, 7, 14, 21, 28]);
    await expect(sample({ checkpoint: ck, chunkSize: 0 })).rejects.toThrow("chunkSize: must be an integer ≥ 1 (got 0)");
  });

  it("sampleFrom (what training's grids use) is chunked too", async () => {
    const { native, log } = makeFakeNative();
    const trainer = native.NativeTrainer.create(JSON.stringify({ model: { inputSize: 4, inChannels: 3, numClasses: 2 } }), "cpu");
    const calls = (): number[] => log.samples.map((s) => s.labels.length);
    const { images, shape } = await sampleFrom(trainer, new Int32Array(600), { sampler: "ddim", steps: 2, cfgScale: 1, eta: 0, seed: 0, clipDenoised: true });
    expect(calls()).toEqual([256, 256, 88]);
    expect(shape).toEqual([600, 3, 4, 4]);
    expect(images).toHaveLength(600 * 48);
  });

  it("refuses more samples in memory than MAX_IN_MEMORY_VALUES before loading anything", async () => {
    const log = withFake();
    const ck = fakeCheckpoint({ inputSize: 64, inChannels: 3, numClasses: 10 });
    const perClass = Math.ceil(MAX_IN_MEMORY_VALUES / (10 * 3 * 64 * 64)) + 1;
    await expect(sample({ checkpoint: ck, perClass })).rejects.toThrow(/GiB that sample\(\) returns in memory: .*--out-dir/);
    expect(log.loaded).toEqual([]);
    expect(log.samples).toEqual([]);
  });
});

describe("sampleGrid (fake addon)", () => {
  it("refuses a grid too large for a PNG without a single native call", async () => {
    const log = withFake();
    const ck = fakeCheckpoint({ numClasses: 10, inputSize: 28 });
    const out = path.join(tmpDir(), "g.png");
    const err = await sampleGrid({ checkpoint: ck, perClass: 100_000 }, out).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toMatch(/^grid: a grid of 10 columns × 100000 rows is 302×\d+ px, over the PNG limit of 16384 px a side/);
    expect(log.loaded).toEqual([]);
    expect(log.samples).toEqual([]);
    expect(fs.existsSync(out)).toBe(false);
  });

  it("writes the grid with the class names under the columns, sampled in chunks", async () => {
    const log = withFake();
    const ck = fakeCheckpoint({ classNames: NAMES, inputSize: 16 });
    const out = path.join(tmpDir(), "sub", "g.png");
    const r = await sampleGrid({ checkpoint: ck, classes: ["cat", "Animals & Nature"], perClass: 200 }, out);
    expect(log.samples.map((s) => s.labels.length)).toEqual([256, 144]);
    const png = PNG.sync.read(fs.readFileSync(out));
    const g = gridGeometry(400, 16, 16, 2, true);
    expect([png.width, png.height]).toEqual([g.width, g.height]);
    expect([r.width, r.height]).toEqual([g.width, g.height]);
    expect(png.height).toBe(200 * (16 + GRID_PADDING) + GRID_PADDING + g.stripHeight);
    expect(r.columnLabels).toEqual(["cat", "Animals & Nature"]);
  });

  it("an unconditional grid has no label strip", async () => {
    withFake();
    const ck = fakeCheckpoint({ numClasses: 0 });
    const r = await sampleGrid({ checkpoint: ck, n: 10 }, path.join(tmpDir(), "u.png"));
    expect([r.width, r.height]).toEqual([8 * 10 + 2, 2 * 10 + 2]);
    expect(r.columnLabels).toBeUndefined();
  });
});

describe("sampleToDir (fake addon)", () => {
  it("writes N PNGs named in order with their class, chunk by chunk, and reports progress", async () => {
    const log = withFake();
    const ck = fakeCheckpoint({ classNames: NAMES });
    const dir = path.join(tmpDir(), "out");
    const progress: Array<[number, number]> = [];
    const r = await sampleToDir(
      { checkpoint: ck, perClass: 200, onProgress: (done, total) => progress.push([done, total]) },
      dir,
    );
    expect(r.count).toBe(600);
    expect(log.samples.map((s) => s.labels.length)).toEqual([256, 256, 88]);
    expect(progress).toEqual([[0, 600], [256, 600], [512, 600], [600, 600]]);
    const files = fs.readdirSync(dir).sort();
    expect(files).toHaveLength(600);
    expect(files.slice(0, 4)).toEqual(["00000000-cat.png", "00000001-dog.png", "00000002-Animals-Nature.png", "00000003-cat.png"]);
    expect(files[599]).toBe("00000599-Animals-Nature.png");
    const png = PNG.sync.read(fs.readFileSync(path.join(dir, files[256])));
    expect([png.width, png.height]).toEqual([8, 8]);
    // Image 256 is the first of the second chunk; the fake's values restart there.
    expect(png.data[0]).toBe(128);
    expect(png.data[4]).toBe(Math.round((Math.sin(1) * 0.9 + 1) * 127.5));
  });

  it("reports network evaluations over all chunks, ending at evaluations × chunks", async () => {
    withFake();
    const ck = fakeCheckpoint();
    const seen: Array<[number, number]> = [];
    const onEvaluations = (d: number, t: number): number => seen.push([d, t]);
    await sampleToDir({ checkpoint: ck, perClass: 100, chunkSize: 128, steps: 7, onEvaluations }, path.join(tmpDir(), "o"));
    // The fake counts a call's evaluations when it returns: one report per chunk.
    expect(seen).toEqual([[7, 21], [14, 21], [21, 21]]);
    seen.length = 0;
    await sampleToDir({ checkpoint: ck, perClass: 100, chunkSize: 256, steps: 4, sampler: "heun", onEvaluations }, path.join(tmpDir(), "h"));
    expect(seen).toEqual([[7, 14], [14, 14]]);
  });

  it("streams: each chunk's files are on disk before the next chunk is sampled", async () => {
    const log = withFake();
    const ck = fakeCheckpoint();
    const dir = path.join(tmpDir(), "out");
    const onDisk: number[] = [];
    await sampleToDir({ checkpoint: ck, perClass: 100, chunkSize: 64, onProgress: () => onDisk.push(fs.readdirSync(dir).length) }, dir);
    expect(onDisk).toEqual([0, 64, 128, 192, 256, 300]);
    expect(log.samples).toHaveLength(5);
  });

  it("refuses a directory that already holds samples; names without classes are numbers", async () => {
    withFake();
    const ck = fakeCheckpoint({ numClasses: 0 });
    const dir = path.join(tmpDir(), "out");
    await sampleToDir({ checkpoint: ck, n: 3 }, dir);
    expect(fs.readdirSync(dir).sort()).toEqual(["00000000.png", "00000001.png", "00000002.png"]);
    await expect(sampleToDir({ checkpoint: ck, n: 3 }, dir)).rejects.toThrow(/already holds samples \(0000000\d\.png\)/);
    expect(sampleFileName(5, 1e9, "a/b c")).toBe("000000005-a-b-c.png");
    expect(sampleFileName(5, 10, "7")).toBe("00000005-7.png");
  });
});

describe("sadm sample (in process, fake addon)", () => {
  it("--out and --out-dir are exclusive; --classes takes names", async () => {
    const log = withFake();
    const ck = fakeCheckpoint({ classNames: NAMES });
    const dir = tmpDir();
    const errors: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((s: string) => (errors.push(s), true)) as typeof process.stderr.write;
    let code: number;
    try {
      code = await main(["sample", "-k", ck, "--out", path.join(dir, "g.png"), "--out-dir", path.join(dir, "d")]);
    } finally {
      process.stderr.write = write;
      process.exitCode = undefined;
    }
    expect(code).toBe(1);
    expect(errors.join("")).toMatch(/^error: --out-dir: cannot be combined with --out/);
    expect(log.samples).toEqual([]);
    expect(await main(["sample", "-k", ck, "--classes", "dog, Animals & Nature", "--per-class", "2", "--out-dir", path.join(dir, "d"), "-q"])).toBe(0);
    process.exitCode = undefined;
    expect(fs.readdirSync(path.join(dir, "d")).sort()).toEqual([
      "00000000-dog.png",
      "00000001-Animals-Nature.png",
      "00000002-dog.png",
      "00000003-Animals-Nature.png",
    ]);
  });
});

describe("a real tiny run (native addon)", () => {
  it("`sadm info --checkpoint` reports it; class names in state.json label the grid and name the classes", async () => {
    const out = path.join(tmpDir(), "run");
    const r = await train({ ...TINY_NETS, outDir: out, steps: 2, sampleEvery: 0, eval: { every: 0 } }, { quiet: true });
    const ck = r.checkpoint!;

    const info = await runCliAsync(["info", "--checkpoint", out]);
    expect(info.stderr).toBe("");
    expect(info.status).toBe(0);
    expect(info.stdout).toContain(`checkpoint:  ${ck}\n`);
    expect(info.stdout).toContain("step:        2 of 2\n");
    expect(info.stdout).toContain("preset:      mnist-tiny\n");
    expect(info.stdout).toMatch(/model: +DiT depth 1, hidden 32, heads 2, patch \d+, 28×28×1, 10 classes/);
    expect(info.stdout).toContain("written by:  sadm 0.1.0\n");
    expect(info.stdout).toMatch(/files:\n(  .*\n)*  ema\.safetensors +[\d.]+ kB\n/);

    // A checkpoint from before named classes: no dataset record, the data as the run's config says.
    const stateFile = path.join(ck, "state.json");
    const state = JSON.parse(fs.readFileSync(stateFile, "utf8")) as { extra: Record<string, unknown> };
    delete state.extra.dataset;
    fs.writeFileSync(stateFile, JSON.stringify(state));
    const old = await runCliAsync(["info", "-k", ck]);
    expect(old.status, old.stderr).toBe(0);
    expect(old.stdout).toContain("data:        mnist limit 64\nimages:      -\nfingerprint: -\n");
    expect(old.stdout).toContain("classes:     no names (labels 0 to 9)\n");

    // Named classes, as the data path writes them for a folder of images.
    const names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];
    state.extra.dataset = { source: "folder /data/digits", classNames: names, fingerprint: "abc123", images: 64 };
    fs.writeFileSync(stateFile, JSON.stringify(state));
    const json = await runCliAsync(["info", "-k", ck, "--json"]);
    expect(json.status, json.stderr).toBe(0);
    const report = JSON.parse(json.stdout) as Record<string, unknown>;
    expect(report).toMatchObject({
      checkpoint: ck,
      step: 2,
      preset: "mnist-tiny",
      classNames: names,
      data: { source: "folder /data/digits", images: 64, fingerprint: "abc123" },
      sadmVersion: "0.1.0",
    });
    expect((report.model as { hiddenSize: number }).hiddenSize).toBe(32);
    expect((report.files as Array<{ name: string }>).map((f) => f.name)).toEqual([
      "discriminator.safetensors",
      "ema.safetensors",
      "model.safetensors",
      "optimizer.safetensors",
      "state.json",
    ]);
    const text = await runCliAsync(["info", "-k", ck]);
    expect(text.stdout).toContain("classes:\n  0: zero\n  1: one\n");
    expect(text.stdout).toContain("data:        folder /data/digits\nimages:      64\nfingerprint: abc123\n");

    const png = path.join(tmpDir(), "g.png");
    const s = await runCliAsync(["sample", "-k", out, "--classes", "two,0", "--per-class", "1", "--steps", "2", "--out", png]);
    expect(s.stderr).toBe("");
    expect(s.status).toBe(0);
    const grid = PNG.sync.read(fs.readFileSync(png));
    const g = gridGeometry(2, 28, 28, 2, true);
    expect([grid.width, grid.height]).toEqual([2 * 30 + 2, 30 + 2 + g.stripHeight]);
    const bad = await runCliAsync(["sample", "-k", out, "--classes", "two,eleven", "--out", png]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/^error: classes\[1\]: "eleven" is not a class of this checkpoint \(its classes: "zero", "one",/);
  }, 300_000);

  it("`sadm info --checkpoint` on a bad path is a one-line CheckpointError", async () => {
    const missing = await runCliAsync(["info", "--checkpoint", path.join(tmpDir(), "none")]);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/^error: checkpoint .*none does not exist\n$/);
    const empty = tmpDir();
    const r = await runCliAsync(["info", "-k", empty]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^error: checkpoint .* is incomplete: state\.json is missing .*\n$/);
  });
});
