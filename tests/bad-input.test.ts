/**
 * Bad input, table-driven: every row goes through the CLI (and so the public API and the native core) or through
 * the API directly, and must end in a clear `error: …` naming the problem, with exit status 1: no stack trace, no
 * panic, no hang (each CLI call runs under a timeout), and nothing of an existing run touched.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import sharp from "sharp";
import { CLI, TINY_NETS, runCliAsync, runNodeAsync, tmpDir } from "./helpers";
import { loadNative, resolveConfig, toCoreConfig, type SadmConfigInput } from "../ts/index";
import type { SampleOptions } from "../ts/native";

const TINY: SadmConfigInput = {
  ...TINY_NETS,
  steps: 2,
  sampleEvery: 0,
  sampleSteps: 2,
  samplesPerClass: 1,
  eval: { every: 0 },
};

let dir = "";
let run = "";
let ck = "";
let cfgFile = "";

/** A copy of the good checkpoint with `f` applied to it. */
function brokenCheckpoint(name: string, f: (d: string) => void): string {
  const d = path.join(dir, name);
  fs.cpSync(ck, d, { recursive: true });
  f(d);
  return d;
}

beforeAll(async () => {
  dir = tmpDir();
  run = path.join(dir, "run");
  cfgFile = path.join(dir, "tiny.json");
  fs.writeFileSync(cfgFile, JSON.stringify(TINY));
  const r = await runCliAsync(["train", "--config", cfgFile, "--out", run], { timeoutMs: 300_000 });
  expect(r.status, r.stderr).toBe(0);
  ck = path.join(run, "checkpoints", "step-00000002");
}, 300_000);

type Case = [name: string, args: () => string[], expected: RegExp];

const CASES: Case[] = [
  ["negative lambda", () => ["train", "--out", fresh(), "--lambda", "-1"], /config\.lambda: must be a number between 0 and 10/],
  ["zero steps", () => ["train", "--out", fresh(), "--steps", "0"], /config\.steps: /],
  ["fractional batch size", () => ["train", "--out", fresh(), "--batch-size", "1.5"], /config\.batchSize: .*integer/],
  ["unknown config key", () => ["train", "--out", fresh(), "--set", "model.hiddenSiz=3"], /config\.model\.hiddenSiz: unknown key/],
  ["non-numeric value", () => ["train", "--out", fresh(), "--set", "model.hiddenSize=wide"], /config\.model\.hiddenSize: /],
  ["unknown preset", () => ["train", "--out", fresh(), "--preset", "DiT-Q/3"], /config\.preset: unknown preset "DiT-Q\/3" \(known: mnist-tiny/],
  ["unknown device", () => ["train", "--out", fresh(), "--device", "gpu"], /config\.device: must be "cpu", "cuda" or "cuda:N"/],
  ["cuda without the CUDA build", () => ["train", "--out", fresh(), "--device", "cuda:0", "--steps", "1"], /cuda device needs sadm's CUDA build/],
  ["bf16 on the CPU", () => ["train", "--out", fresh(), "--precision", "bf16"], /config\.precision: bf16 is for cuda devices/],
  ["missing config file", () => ["train", "--out", fresh(), "--config", path.join(dir, "none.json")], /--config: .*(no such file|cannot read|does not exist)/i],
  ["config file that is not JSON", () => ["train", "--out", fresh(), "--config", write("bad.json", "{ nope")], /--config: .*not valid JSON/],
  ["config file holding an array", () => ["train", "--out", fresh(), "--config", write("arr.json", "[1, 2]")], /config.* object/i],
  ["duplicate class", () => ["train", "--out", fresh(), "--classes", "1,1"], /duplicate class 1/],
  ["class out of range", () => ["train", "--out", fresh(), "--classes", "3,12"], /config\.data\.classes\[1\]: must be a mnist class between 0 and 9 \(got 12\)/],
  ["dataset smaller than a batch", () => ["train", "--limit", "4", "--batch-size", "8", "--out", fresh()], /4 image\(s\), fewer than one batch of 8: lower the batch size or add data/],
  ["run directory already holding a run", () => ["train", "--config", cfgFile, "--out", run], /already holds a run \(metrics\.jsonl or checkpoints\): resume it with --resume/],
  ["nothing to resume", () => ["train", "--resume", "--out", fresh()], /nothing to resume: .* has no complete checkpoint/],
  ["resume with another architecture", () => ["train", "--resume", ck, "--set", "model.depth=3", "--out", run], /config\.model\.depth: differs from the checkpoint/],
  ["output under a file", () => ["train", "--config", cfgFile, "--out", path.join(write("plain-file", "x"), "run")], /cannot create the run directory .*: part of the path is a file, not a directory/],
  ["missing checkpoint", () => ["sample", "--checkpoint", path.join(dir, "none"), "--out", fresh() + ".png"], /checkpoint .* does not exist/],
  ["heun with one step", () => ["sample", "--checkpoint", ck, "--sampler", "heun", "--steps", "1", "--out", fresh() + ".png"], /^error: steps: heun with 1 step is a single Euler step: use euler, or 2 or more steps \(got 1\)\n$/],
  ["karras spacing with ddim", () => ["sample", "--checkpoint", ck, "--sampler", "ddim", "--spacing", "karras", "--out", fresh() + ".png"], /spacing: karras is a σ schedule, which ddim does not step through/],
  ["eta with a solver that has none", () => ["sample", "--checkpoint", ck, "--sampler", "dpm++2m", "--eta", "0.5", "--out", fresh() + ".png"], /eta: is DDIM's stochasticity; dpm\+\+2m has none/],
  ["a malformed dynamic threshold", () => ["sample", "--checkpoint", ck, "--dynamic-threshold", "1.5", "--out", fresh() + ".png"], /--dynamic-threshold: must be RATIO\[,MAX\]/],
  ["checkpoint without state.json", () => ["sample", "--checkpoint", brokenCheckpoint("nostate", (d) => fs.rmSync(path.join(d, "state.json"))), "--out", fresh() + ".png"], /state\.json/],
  ["corrupt state.json", () => ["sample", "--checkpoint", brokenCheckpoint("badstate", (d) => fs.writeFileSync(path.join(d, "state.json"), "{\"step\": ")), "--out", fresh() + ".png"], /state\.json/],
  ["a byte flipped in the weights", () => ["sample", "--checkpoint", brokenCheckpoint("flip", (d) => flipByte(path.join(d, "ema.safetensors"))), "--out", fresh() + ".png"], /^error: [^\n]*ema\.safetensors is corrupt: [^\n]*changed after it was written; use another checkpoint of the run\n$/],
  ["truncated weights", () => ["sample", "--checkpoint", brokenCheckpoint("trunc", (d) => truncate(path.join(d, "ema.safetensors"))), "--out", fresh() + ".png"], /ema\.safetensors is corrupt/],
  // Checkpoints from before the digests: nothing to check the files against, the reader's own checks catch these.
  ["truncated weights of a checkpoint without digests", () => ["sample", "--checkpoint", brokenCheckpoint("trunc-old", (d) => { withoutDigests(d); truncate(path.join(d, "ema.safetensors")); }), "--out", fresh() + ".png"], /ema\.safetensors: cannot read safetensors/],
  ["weights of another architecture", () => ["sample", "--checkpoint", brokenCheckpoint("arch", (d) => { withoutDigests(d); fs.copyFileSync(path.join(process.cwd(), "assets", "lenet-mnist.safetensors"), path.join(d, "ema.safetensors")); }), "--out", fresh() + ".png"], /ema\.safetensors: tensor 'blocks\.0\.adaLN_modulation\.1\.bias' is missing/],
  ["sample class out of range", () => ["sample", "--checkpoint", ck, "--classes", "11", "--out", fresh() + ".png"], /classes\[0\]: must be a class between 0 and 9 \(got 11\)/],
  ["zero sampling steps", () => ["sample", "--checkpoint", ck, "--steps", "0", "--out", fresh() + ".png"], /steps: must be an integer ≥ 1 \(got 0\)/],
  ["unwritable sample output", () => ["sample", "--checkpoint", ck, "--out", path.join(write("file2", "x"), "g.png")], /cannot write .*g\.png: a file is in the way of a directory/],
  ["zero evaluation samples", () => ["eval", "--checkpoint", ck, "--samples", "0"], /config\.eval\.samples: must be an integer between 10/],
  ["unknown extractor", () => ["eval", "--checkpoint", ck, "--extractor", "resnet-9000"], /config\.eval\.extractor\.arch: unknown architecture "resnet-9000" \(known: lenet-mnist, lenet-emoji, inception-v3-fid\)/],
  ["Inception without its weights", () => ["eval", "--checkpoint", ck, "--extractor", "inception-v3-fid"], /config\.eval\.extractor\.weights: is required/],
  ["fine-tune from nothing", () => ["finetune", "--from", path.join(dir, "none"), "--out", fresh()], /checkpoint .*none does not exist/],
  ["fine-tune from weights with other names", () => ["finetune", "--from", path.join(process.cwd(), "assets", "lenet-mnist.safetensors"), "--config", cfgFile, "--out", fresh()], /tensor 'blocks\.0\.adaLN_modulation\.1\.bias' is missing/],
  ["classifier training for zero epochs", () => ["train-classifier", "--epochs", "0", "--out", fresh() + ".safetensors"], /epochs must be an integer ≥ 1/],
];

function write(name: string, text: string): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, text);
  return f;
}

let n = 0;
function fresh(): string {
  return path.join(dir, `fresh-${n++}`);
}

function truncate(f: string): void {
  fs.truncateSync(f, Math.floor(fs.statSync(f).size / 2));
}

/** Flips one bit in the middle of `f` (inside the tensor data: the file still parses). */
function flipByte(f: string): void {
  const b = fs.readFileSync(f);
  b[b.length >> 1] ^= 0x10;
  fs.writeFileSync(f, b);
}

/** Removes the weight files' digests from a checkpoint's state.json, as sadm wrote it before it recorded them. */
function withoutDigests(d: string): void {
  const file = path.join(d, "state.json");
  const { files, ...rest } = JSON.parse(fs.readFileSync(file, "utf8")) as Record<string, unknown>;
  expect(files, "the checkpoint records digests").toBeDefined();
  fs.writeFileSync(file, JSON.stringify(rest));
}

describe("bad input (the CLI, the API and the native core)", () => {
  it("has at least 30 cases", () => expect(CASES.length).toBeGreaterThanOrEqual(30));

  it.each(CASES)("%s", async (_name, args, expected) => {
    const before = fs.readFileSync(path.join(ck, "model.safetensors"));
    const r = await runCliAsync(args(), { timeoutMs: 120_000, env: { SADM_CUDA_BINARY: path.join(dir, "no-cuda.node") } });
    expect(r.status, `stdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(1);
    expect(r.stderr).toMatch(/^error: /);
    expect(r.stderr).toMatch(expected);
    expect(r.stderr).not.toMatch(/\n\s+at |panicked|RUST_BACKTRACE/);
    // The existing run is untouched.
    expect(fs.readFileSync(path.join(ck, "model.safetensors")).equals(before)).toBe(true);
  }, 120_000);

  it("the native step rejects wrong typed-array lengths and labels out of range", async () => {
    const native = loadNative();
    const t = native.NativeTrainer.create(JSON.stringify(toCoreConfig(resolveConfig(TINY))), "cpu");
    const opts = { lambda: 0, lr: 1e-3, discLr: 1e-4, emaDecay: 0.9, updateDisc: false };
    await expect(t.step(new Float32Array(10), new Int32Array(2), opts)).rejects.toThrow(/batch has 10 values but 2 labels/);
    await expect(t.step(new Float32Array(2 * 784), Int32Array.from([0, 10]), opts)).rejects.toThrow(/label 10 at index 1 is outside \[0, 10\)/);
    await expect(t.step(new Float32Array(2 * 784).fill(Number.NaN), Int32Array.from([0, 1]), opts)).rejects.toThrow(/not finite/);
    await expect(t.sample(Int32Array.from([0]), { sampler: "ddim", steps: 0, cfgScale: 1, eta: 0, seed: 0, clipDenoised: true })).rejects.toThrow(/steps/);
  });

  it("the native step, sampler, metrics and classifier training refuse non-finite and out-of-range numbers", async () => {
    const native = loadNative();
    const t = native.NativeTrainer.create(JSON.stringify(toCoreConfig(resolveConfig(TINY))), "cpu");
    const x = new Float32Array(2 * 784);
    const y = Int32Array.from([0, 1]);
    const opts = { lambda: 0.1, lr: 1e-3, discLr: 1e-4, emaDecay: 0.9, updateDisc: true };
    const range = (what: string, lo: number, hi: number, got: string): RegExp =>
      new RegExp(`^invalid input: ${what} must be a finite number between ${lo} and ${hi} \\(got ${got}\\)$`);
    const integer = (what: string, lo: number, hi: number, got: string): RegExp =>
      new RegExp(`^invalid input: ${what} must be an integer between ${lo} and ${hi} \\(got ${got}\\)$`);
    const steps: Array<[Partial<typeof opts>, RegExp]> = [
      [{ lr: Number.NaN }, range("step: lr", 0, 1, "NaN")],
      [{ lr: Number.POSITIVE_INFINITY }, range("step: lr", 0, 1, "Infinity")],
      [{ lr: 1.5 }, range("step: lr", 0, 1, "1.5")],
      [{ discLr: -1e-4 }, range("step: discLr", 0, 1, "-0.0001")],
      [{ discLr: Number.NaN }, range("step: discLr", 0, 1, "NaN")],
      [{ lambda: Number.NaN }, range("step: lambda", 0, 10, "NaN")],
      [{ lambda: 10.5 }, range("step: lambda", 0, 10, "10.5")],
      [{ emaDecay: Number.NaN }, range("step: emaDecay", 0, 1, "NaN")],
      [{ emaDecay: -0.5 }, range("step: emaDecay", 0, 1, "-0.5")],
    ];
    for (const [bad, expected] of steps) await expect(t.step(x, y, { ...opts, ...bad })).rejects.toThrow(expected);
    expect(t.stepCount, "a refused step counts").toBe(0);
    expect((await t.step(x, y, opts)).skipped).toBeUndefined();

    const sopts: SampleOptions = { sampler: "ddim", steps: 2, cfgScale: 2, eta: 0, seed: 0, clipDenoised: true };
    const samples: Array<[Partial<SampleOptions>, RegExp]> = [
      [{ sampler: "dpm++3m" }, /unknown sampler 'dpm\+\+3m': use one of ddpm, ddim, dpm\+\+2m, dpm\+\+2m-sde, euler, heun, unipc$/],
      [{ spacing: "uniform" }, /unknown spacing 'uniform'/],
      [{ sampler: "heun", steps: 1 }, /heun with 1 step is a single Euler step/],
      [{ spacing: "karras" }, /the karras spacing is a σ schedule, which ddim does not step through/],
      [{ sampler: "euler", eta: 1 }, /eta is DDIM's stochasticity; euler has none/],
      [{ dynamicThreshold: { ratio: 2, maxValue: 1.5 } }, range("sample: dynamicThreshold.ratio", 0, 1, "2")],
      [{ dynamicThreshold: { ratio: 0.9, maxValue: Number.NaN } }, range("sample: dynamicThreshold.maxValue", 1, 1000000, "NaN")],
      [{ cfgScale: Number.NaN }, range("sample: cfgScale", 0, 100, "NaN")],
      [{ cfgScale: 101 }, range("sample: cfgScale", 0, 100, "101")],
      [{ eta: Number.NaN }, range("sample: eta", 0, 10, "NaN")],
      [{ eta: -1 }, range("sample: eta", 0, 10, "-1")],
      [{ steps: 1.5 }, integer("sample: steps", 1, 1000, "1.5")],
      [{ steps: Number.NaN }, integer("sample: steps", 1, 1000, "NaN")],
      [{ steps: 1001 }, integer("sample: steps", 1, 1000, "1001")],
      [{ seed: -1 }, integer("sample: seed", 0, Number.MAX_SAFE_INTEGER, "-1")],
      [{ seed: 0.5 }, integer("sample: seed", 0, Number.MAX_SAFE_INTEGER, "0.5")],
      [{ seed: 2 ** 53 }, integer("sample: seed", 0, Number.MAX_SAFE_INTEGER, String(2 ** 53))],
    ];
    for (const [bad, expected] of samples) await expect(t.sample(Int32Array.from([0]), { ...sopts, ...bad })).rejects.toThrow(expected);
    const ok = await t.sample(Int32Array.from([0]), { ...sopts, cfgScale: 100, eta: 10, seed: Number.MAX_SAFE_INTEGER });
    expect(ok.every(Number.isFinite)).toBe(true);
    await expect(t.sample(Int32Array.from([10]), sopts)).rejects.toThrow(/class 10 is outside \[0, 10\)/);

    const feats = Float64Array.from({ length: 40 }, (_, i) => Math.sin(i));
    await expect(native.featureMetrics(feats, feats, Number.NaN)).rejects.toThrow(integer("featureMetrics: dim", 1, 4294967295, "NaN"));
    await expect(native.featureMetrics(feats, feats, 2.5)).rejects.toThrow(integer("featureMetrics: dim", 1, 4294967295, "2.5"));
    await expect(native.featureMetrics(feats, feats.subarray(0, 39), 4)).rejects.toThrow(/generated features: 39 values are not at least 4 rows of 4/);
    await expect(native.featureMetrics(feats, Float64Array.from(feats).fill(Number.NaN, 7, 8), 4)).rejects.toThrow(/generated features contain a non-finite value/);

    const out = path.join(dir, "refused-lenet.safetensors");
    const images = new Float32Array(4 * 784);
    const labels = Int32Array.from([0, 1, 2, 3]);
    const copts = { epochs: 1, batchSize: 2, lr: 1e-3, seed: 0 };
    const classifier: Array<[Partial<typeof copts>, RegExp]> = [
      [{ epochs: 0 }, integer("trainClassifier: epochs", 1, 4294967295, "0")],
      [{ epochs: 1.5 }, integer("trainClassifier: epochs", 1, 4294967295, "1.5")],
      [{ batchSize: Number.NaN }, integer("trainClassifier: batchSize", 1, 4294967295, "NaN")],
      [{ seed: -2 }, integer("trainClassifier: seed", 0, Number.MAX_SAFE_INTEGER, "-2")],
      [{ lr: Number.NaN }, /trainClassifier: lr must be a finite number greater than 0 and less than 1 \(got NaN\)$/],
      [{ lr: 1 }, /trainClassifier: lr must be a finite number greater than 0 and less than 1 \(got 1\)$/],
    ];
    for (const [bad, expected] of classifier) await expect(native.trainClassifier(images, labels, { ...copts, ...bad }, out)).rejects.toThrow(expected);
    await expect(native.trainClassifier(images, Int32Array.from([0, 1, 2, 10]), copts, out)).rejects.toThrow(/label 10 at index 3 is outside \[0, 10\)/);
    await expect(native.trainClassifier(Float32Array.from(images).fill(Number.NaN, 5, 6), labels, copts, out)).rejects.toThrow(/value at index 5 is not finite/);
    expect(fs.existsSync(out), "a refused training wrote weights").toBe(false);
  });

  it("the native ranges are the TS config's: both take the largest allowed value and refuse the next", async () => {
    const native = loadNative();
    const t = native.NativeTrainer.create(JSON.stringify(toCoreConfig(resolveConfig(TINY))), "cpu");
    const x = new Float32Array(2 * 784);
    const y = Int32Array.from([0, 1]);
    const step = { lambda: 0.1, lr: 1e-3, discLr: 1e-4, emaDecay: 0.9, updateDisc: true };
    const sample = { sampler: "ddim", steps: 1, cfgScale: 2, eta: 0, seed: 0, clipDenoised: true };
    const cases: Array<[key: "lambda" | "lr" | "discLr" | "emaDecay" | "cfgScale" | "eta", max: number, native: (v: number) => Promise<unknown>]> = [
      ["lambda", 10, (v) => t.step(x, y, { ...step, lambda: v })],
      ["lr", 1, (v) => t.step(x, y, { ...step, lr: v })],
      ["discLr", 1, (v) => t.step(x, y, { ...step, discLr: v })],
      ["emaDecay", 1, (v) => t.step(x, y, { ...step, emaDecay: v })],
      ["cfgScale", 100, (v) => t.sample(Int32Array.from([0]), { ...sample, cfgScale: v })],
      ["eta", 10, (v) => t.sample(Int32Array.from([0]), { ...sample, eta: v })],
    ];
    for (const [key, max, call] of cases) {
      const above = max * (1 + 1e-9);
      // η is DDIM's: the config refuses it with another sampler.
      const cfg = key === "eta" ? { ...TINY, sampler: "ddim" as const } : TINY;
      expect(() => resolveConfig({ ...cfg, [key]: max }), key).not.toThrow();
      expect(() => resolveConfig({ ...cfg, [key]: above }), key).toThrow(new RegExp(`config\\.${key}: `));
      await expect(call(max), key).resolves.toBeDefined();
      await expect(call(above), key).rejects.toThrow(new RegExp(`: ${key} must be a finite number between 0 and ${max} \\(got `));
    }
  });
});

describe("bad data (image folders, through the CLI)", () => {
  let data = "";
  let cache = "";
  /** A folder of files (relative path → content; PNG bytes for `png`). */
  const folder = (files: Record<string, string | Buffer>): string => {
    const root = fs.mkdtempSync(path.join(data, "f-"));
    for (const [rel, content] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
      fs.writeFileSync(path.join(root, rel), content);
    }
    return root;
  };
  let png: Buffer;
  const TRAIN = ["train", "--resolution", "8", "--steps", "1", "--batch-size", "4", "--set", "model.patchSize=2", "--set", "discriminator.patchSize=2"];
  const DATA_CASES: Array<[name: string, args: () => string[], expected: RegExp]> = [
    ["a folder that does not exist", () => [...TRAIN, "--data", path.join(data, "nowhere"), "--out", fresh()], /the image folder .*nowhere does not exist: check the path \(--data/],
    ["a file instead of a folder", () => [...TRAIN, "--data", write("not-a-folder.png", "x"), "--out", fresh()], /not-a-folder\.png is not a folder/],
    ["an empty folder", () => [...TRAIN, "--data", folder({}), "--out", fresh()], /is empty: put the images in it, or in one sub-folder per class/],
    ["a folder with no image files", () => [...TRAIN, "--data", folder({ "a.txt": "x", "c.csv": "y" }), "--out", fresh()], /holds no image files \(\.jpg.*; it has 2 other file\(s\)/],
    ["fewer images than a batch", () => [...TRAIN, "--data", folder({ "a/1.png": png, "a/2.png": png, "b/3.png": png }), "--out", fresh()], /folder .*: the dataset has 3 image\(s\), fewer than one batch of 4: lower the batch size or add data/],
    ["a class folder left empty", () => [...TRAIN, "--data", folder({ "cat/1.png": png, "dog/notes.txt": "x" }), "--out", fresh()], /the class folder .*dog holds no images: add images to it or remove it/],
    ["a symlink loop", () => {
      const root = folder({ "a/1.png": png, "a/2.png": png, "a/3.png": png, "a/4.png": png });
      fs.symlinkSync(root, path.join(root, "a", "loop"));
      return [...TRAIN, "--data", root, "--out", fresh()];
    }, /symlink loop: .*loop leads back to .*, a folder it is inside; remove the link/],
    ["no file decodes", () => [...TRAIN, "--data", folder({ "a/1.png": "junk", "a/2.jpg": "" }), "--out", fresh()], /none of the 2 image file\(s\) of folder .* could be decoded \(e\.g\. a\/1\.png: /],
    ["a bad file with onBadImage error", () => [...TRAIN, "--data", folder({ "a/1.png": png, "a/2.png": png, "a/3.png": png, "a/4.png": png, "a/5.png": "junk" }), "--set", "data.onBadImage=error", "--out", fresh()], /cannot decode a\/5\.png: .*\(data\.onBadImage is "error"; fix or remove the file/],
    ["metadata naming a missing file", () => [...TRAIN, "--data", folder({ "metadata.jsonl": '{"file_name": "gone.png", "label": "x"}\n', "1.png": png }), "--out", fresh()], /metadata\.jsonl lists 1 file\(s\) that are not in .*, e\.g\. gone\.png: fix or remove those entries/],
    ["an unknown class name", () => [...TRAIN, "--data", folder({ "cat/1.png": png }), "--classes", "cow", "--out", fresh()], /config\.data\.classes\[0\]: "cow" is not a class of the folder data \(its classes: "cat"\)/],
    ["an image option on the digits", () => ["train", "--resolution", "32", "--out", fresh()], /config\.data\.resolution: applies to folder and emoji data, not mnist/],
    ["the LeNet on RGB images", () => [...TRAIN, "--data", folder({ "cat/1.png": png }), "--eval-every", "1", "--out", fresh()], /config\.eval\.extractor\.arch: lenet-mnist reads 28×28 grey digits/],
  ];

  beforeAll(async () => {
    data = tmpDir("sadm-bad-data-");
    cache = tmpDir("sadm-bad-cache-");
    png = await sharp(Buffer.alloc(10 * 10 * 3, 128), { raw: { width: 10, height: 10, channels: 3 } }).png().toBuffer();
  });

  it.each(DATA_CASES)("%s", async (_name, args, expected) => {
    const r = await runCliAsync(args(), { timeoutMs: 120_000, env: { SADM_CACHE_DIR: cache } });
    expect(r.status, `stdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(1);
    expect(r.stderr).toMatch(/^error: [^\n]*\n$/);
    expect(r.stderr).toMatch(expected);
  }, 120_000);

  it("an unreadable folder (run as the unprivileged user nobody: root reads everything)", async () => {
    const root = folder({ "a/1.png": png, "a/2.png": png, "locked/3.png": png });
    fs.chmodSync(path.join(root, "locked"), 0o000);
    const open = fs.mkdtempSync(path.join(data, "out-"));
    for (const d of [data, root, open, cache]) fs.chmodSync(d, 0o777);
    const r = await runNodeAsync([CLI, ...TRAIN, "--data", root, "--out", path.join(open, "run")], {
      timeoutMs: 120_000,
      env: { SADM_CACHE_DIR: cache },
      runAs: "nobody",
    });
    expect(r.status, `stdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(1);
    expect(r.stderr).toMatch(/^error: cannot read the folder .*locked: permission denied; fix its permissions or move it out of the data\n$/);
  }, 120_000);
});

describe("bad latents, VAEs and .pt files (through the CLI)", () => {
  const VAE = path.join(process.cwd(), "tests", "data", "tiny-vae");
  const IMAGES = path.join(process.cwd(), "tests", "data", "tiny-vae-images");
  let root = "";
  let cache = "";
  let latents = "";
  let latents16 = "";
  let otherVae = "";
  let run = "";
  const cli = (args: string[]) => runCliAsync(args, { timeoutMs: 120_000, env: { SADM_CACHE_DIR: cache } });
  const vaeFolder = (files: Record<string, string | Buffer>): string => {
    const d = fs.mkdtempSync(path.join(root, "vae-"));
    for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(d, name), content);
    return d;
  };
  const config = (): Record<string, unknown> => JSON.parse(fs.readFileSync(path.join(VAE, "config.json"), "utf8")) as Record<string, unknown>;
  const weights = (): Buffer => fs.readFileSync(path.join(VAE, "diffusion_pytorch_model.safetensors"));
  const pt = (name: string): string => path.join(process.cwd(), "crates", "sadm-core", "testdata", name);
  const truncatedPt = (): string => {
    const f = path.join(root, "cut.pt");
    fs.writeFileSync(f, fs.readFileSync(pt("pth_dit_small.pt")).subarray(0, 3000));
    return f;
  };
  const TRAIN = ["train", "--steps", "1", "--batch-size", "1", "--lambda", "0", "--set", "model.hiddenSize=32", "--set", "model.depth=1",
    "--set", "model.numHeads=2", "--set", "sampleEvery=0"];
  const CASES: Array<[name: string, args: () => string[], expected: RegExp]> = [
    ["a VAE folder without weights", () => ["encode", "--data", IMAGES, "--resolution", "64", "--vae", vaeFolder({ "config.json": JSON.stringify(config()) }), "--out", path.join(root, "o1")],
      /the VAE folder has config\.json but no weights: download diffusion_pytorch_model\.safetensors next to config\.json/],
    ["a VAE of another kind", () => ["encode", "--data", IMAGES, "--resolution", "64", "--vae", vaeFolder({ "config.json": JSON.stringify({ ...config(), _class_name: "UNet2DModel" }), "diffusion_pytorch_model.safetensors": weights() }), "--out", path.join(root, "o2")],
      /config\.json: the model is a UNet2DModel, not an AutoencoderKL/],
    ["VAE weights of another architecture", () => ["encode", "--data", IMAGES, "--resolution", "64", "--vae", vaeFolder({ "config.json": JSON.stringify({ ...config(), block_out_channels: [8, 8, 16, 32] }), "diffusion_pytorch_model.safetensors": weights() }), "--out", path.join(root, "o3")],
      /diffusion_pytorch_model\.safetensors: .*(shape|missing|unexpected).*the weights do not match/],
    ["a resolution the VAE cannot encode", () => ["encode", "--data", IMAGES, "--resolution", "60", "--vae", VAE, "--out", path.join(root, "o4")],
      /--resolution 60 is not a multiple of the VAE's downsampling factor 8/],
    ["encoding into a folder that holds other latents", () => ["encode", "--data", IMAGES, "--resolution", "128", "--vae", VAE, "--out", latents],
      /holds latents of something else: the resolution \(64 then, 128 now\).*use another --out folder/],
    ["encoding into a folder of other files", () => ["encode", "--data", IMAGES, "--resolution", "64", "--vae", VAE, "--out", IMAGES],
      /is not empty and holds no latent index: give sadm encode an empty or new --out folder/],
    ["a folder that is not latents", () => [...TRAIN, "--set", "data.name=latents", "--set", `data.path=${root}`, "--out", path.join(root, "r1")],
      /has no index\.json, so it is not a latent dataset: make one with sadm encode/],
    ["sampling a latent run with another VAE", () => ["sample", "-k", run, "--vae", otherVae, "--steps", "1", "--out", path.join(root, "s.png")],
      /this run's data was encoded with the VAE .*tiny-vae .*but .* is another .*decode with the same VAE/],
    ["resuming a latent run on latents of another resolution", () => [...TRAIN, "--data", latents16, "--steps", "2", "--resume", "--out", run],
      /config\.model\.inputSize: must match the latents, which are 16×16 \(got 8\): encode the images at the run's resolution, or start a new run/],
    ["latents with a VAE on an image run", () => [...TRAIN, "--data", IMAGES, "--resolution", "16", "--vae", VAE, "--out", path.join(root, "r2")],
      /config\.vae: decodes latents; the folder data are images/],
    ["a .pt that is not a state dict", () => ["sample", "-k", pt("pth_list.pt"), "--out", path.join(root, "p1.png")],
      /pth_list\.pt: holds a list, not a state dict \(a dict of named tensors\): save one with torch\.save\(model\.state_dict\(\), path\)/],
    ["a truncated .pt", () => ["sample", "-k", truncatedPt(), "--out", path.join(root, "p2.png")],
      /cut\.pt: is truncated or damaged: .*download or copy it again/],
    ["a .pt whose pickle asks to run code", () => ["finetune", "--from", pt("pth_os_system.pt"), "--data", latents, "--out", path.join(root, "p3")],
      /pth_os_system\.pt: refused: its pickle calls os\.system, and sadm never runs code from a checkpoint/],
    ["a whole module saved with torch.save(model)", () => ["sample", "-k", pt("pth_module.pt"), "--out", path.join(root, "p4.png")],
      /pth_module\.pt: refused: its pickle calls __main__\.TinyNet.*save only the weights with torch\.save\(model\.state_dict\(\), path\)/],
    ["a .pt in PyTorch's legacy format", () => ["sample", "-k", pt("pth_legacy.pt"), "--out", path.join(root, "p5.png")],
      /pth_legacy\.pt: is in PyTorch's legacy format .*re-save it/],
    ["a .pt of no reference DiT width without its heads", () => ["sample", "-k", pt("pth_dit_small.pt"), "--out", path.join(root, "p6.png")],
      /pth_dit_small\.pt: its hidden size 64 is not a reference DiT's .*give the number of heads/],
    ["decoding a file without latents", () => ["decode", "--latents", path.join(VAE, "diffusion_pytorch_model.safetensors"), "--vae", VAE, "--out", path.join(root, "d1")],
      /has several \[N, C, h, w\] tensors .*: name the latents with --tensor/],
  ];

  beforeAll(async () => {
    root = tmpDir("sadm-bad-latents-");
    cache = tmpDir("sadm-bad-latents-cache-");
    latents = path.join(root, "latents");
    latents16 = path.join(root, "latents16");
    for (const [out, res] of [[latents, "64"], [latents16, "128"]] as const) {
      const r = await cli(["encode", "--data", IMAGES, "--resolution", res, "--vae", VAE, "--out", out]);
      expect(r.status, r.stderr).toBe(0);
    }
    run = path.join(root, "run");
    const t = await cli([...TRAIN, "--data", latents, "--checkpoint-every", "1", "--out", run]);
    expect(t.status, t.stderr).toBe(0);
    const w = weights();
    w[w.length - 3] ^= 0x01;
    otherVae = vaeFolder({ "config.json": JSON.stringify(config()), "diffusion_pytorch_model.safetensors": w });
  }, 300_000);

  it.each(CASES)("%s", async (_name, args, expected) => {
    const r = await cli(args());
    expect(r.status, `stdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(1);
    expect(r.stderr).toMatch(/^error: [^\n]*\n$/);
    expect(r.stderr).toMatch(expected);
  }, 120_000);
});
