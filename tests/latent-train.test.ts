/**
 * The paper's pipeline scaled down, end to end through the real addon: images → `sadm encode` (a tiny VAE of SD's
 * layout, tests/data/tiny-vae) → training a small DiT on the latents, its grids decoded → exact resume → fine-tuning
 * a DiT from a `torch.save` file of the reference implementation → sampling that file as DiT's sample.py does →
 * `sadm decode`. The VAE's and the .pt reader's numerics are proved in the Rust tests; here the moments sadm encode
 * stores are checked against diffusers' (tests/data/tiny_vae.py).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { PNG } from "pngjs";
import { ROOT, runCliAsync, runNodeAsync, tmpDir } from "./helpers";
import { SafetensorsFile } from "../ts/io/safetensors";
import { readIndex, type LatentIndex } from "../ts/data/latents";
import { gridGeometry, readState } from "../ts/index";

const CACHE = tmpDir("sadm-latent-cache-");
const ENV = { SADM_CACHE_DIR: CACHE, RAYON_NUM_THREADS: "2" };
const VAE = path.join(ROOT, "tests", "data", "tiny-vae");
const REFERENCE = path.join(ROOT, "tests", "data", "tiny-vae-reference.safetensors");
const PATTERN = path.join(ROOT, "tests", "data", "tiny-vae-images");
const DIT_PT = path.join(ROOT, "crates", "sadm-core", "testdata", "pth_dit_small.pt");
/** Tiny networks on 8×8×4 latents (64² images). */
const NETS = [
  "--batch-size", "8", "--set", "model.hiddenSize=32", "--set", "model.depth=1", "--set", "model.numHeads=2",
  "--set", "discriminator.width=32", "--set", "discriminator.depth=1", "--set", "discriminator.numHeads=2",
  "--set", "discriminator.projDim=16", "--set", "sampleSteps=3", "--set", "samplesPerClass=1",
  "--lambda", "0.1", "--adv-warmup", "1", "--adv-ramp", "1",
];

const cli = (args: string[], timeoutMs = 300_000) => runCliAsync(args, { env: ENV, timeoutMs });

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe("latent diffusion end to end (tiny VAE, real addon)", () => {
  let dir = "";
  let emoji = "";
  let latents = "";
  beforeAll(async () => {
    dir = tmpDir("sadm-latent-");
    emoji = path.join(dir, "emoji");
    const r = await runNodeAsync([path.join(ROOT, "scripts", "emoji-folder.js"), emoji, "--limit", "3"]);
    expect(r.status, r.stderr).toBe(0);
    latents = path.join(dir, "latents");
    const e = await cli(["encode", "--data", emoji, "--resolution", "64", "--vae", VAE, "--out", latents, "--shard-size", "8"]);
    expect(e.status, e.stderr).toBe(0);
    expect(e.stdout).toMatch(/encoded in [\d.]+s \([\d.]+ images\/s\)/);
  }, 300_000);

  it("stores diffusers' posterior of each image and of its mirror image", async () => {
    const out = path.join(dir, "pattern-latents");
    const r = await cli(["encode", "--data", PATTERN, "--resolution", "64", "--vae", VAE, "--out", out]);
    expect(r.status, r.stderr).toBe(0);
    const idx = readIndex(out);
    expect(idx.latentSize).toBe(8);
    expect(idx.vae.scalingFactor).toBeCloseTo(0.18215, 6);
    const shard = SafetensorsFile.open(path.join(out, idx.shards[0].file));
    const ref = SafetensorsFile.open(REFERENCE);
    for (const name of ["mean", "logvar", "mean_flip", "logvar_flip"]) {
      const want = ref.read(name);
      const scale = Math.max(...Array.from(want, Math.abs));
      expect(maxDiff(shard.read(name), want) / scale, name).toBeLessThan(1e-4);
    }
  });

  it("reads a VAE folder that holds the PyTorch pickle (diffusion_pytorch_model.bin) as the same VAE", async () => {
    const out = path.join(dir, "pattern-latents-bin");
    const r = await cli(["encode", "--data", PATTERN, "--resolution", "64", "--vae", `${VAE}-bin`, "--out", out]);
    expect(r.status, r.stderr).toBe(0);
    const idx = readIndex(out);
    expect(idx.vae.path).toBe(`${VAE}-bin`);
    const fromBin = SafetensorsFile.open(path.join(out, idx.shards[0].file));
    const fromSafetensors = SafetensorsFile.open(path.join(dir, "pattern-latents", readIndex(path.join(dir, "pattern-latents")).shards[0].file));
    for (const name of ["mean", "logvar", "mean_flip", "logvar_flip"]) expect(fromBin.read(name), name).toEqual(fromSafetensors.read(name));
  });

  it("writes an index that names the VAE, the resolution and the source, in shards of the asked size", () => {
    const idx: LatentIndex = readIndex(latents);
    expect(idx.complete).toBe(true);
    expect(idx.source.description).toBe(`folder ${emoji}`);
    expect(idx.source.classNames?.length).toBe(10);
    expect(idx.shards.map((s) => s.count).reduce((a, b) => a + b)).toBe(idx.source.images);
    expect(idx.shards.every((s) => s.count <= 8)).toBe(true);
    expect(idx.vae.sha256).toMatch(/^[0-9a-f]{64}$/);
  });

  it("finishes an interrupted encode where it stopped, with the same bytes", async () => {
    const copy = path.join(dir, "cut");
    fs.cpSync(latents, copy, { recursive: true });
    const idx = readIndex(copy);
    const dropped = idx.shards.pop();
    if (!dropped) throw new Error("no shards");
    idx.complete = false;
    fs.writeFileSync(path.join(copy, "index.json"), JSON.stringify(idx));
    fs.rmSync(path.join(copy, dropped.file));
    const r = await cli(["encode", "--data", emoji, "--resolution", "64", "--vae", VAE, "--out", copy, "--shard-size", "8"]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/resuming the encode at image \d+ of \d+/);
    expect(fs.readFileSync(path.join(copy, dropped.file))).toEqual(fs.readFileSync(path.join(latents, dropped.file)));
  });

  it("trains on the latents without a VAE in the loop, decodes its grids, and resumes exactly", async () => {
    const straight = path.join(dir, "straight");
    const split = path.join(dir, "split");
    const base = ["train", "--data", latents, ...NETS, "--checkpoint-every", "2", "--set", "sampleEvery=4"];
    const a = await cli([...base, "--steps", "4", "--out", straight]);
    expect(a.status, a.stderr).toBe(0);
    expect(a.stdout).toMatch(/sadm: training latent-tiny/);
    expect(a.stdout).toMatch(/sadm: data: \d+ latents, 10 classes, 4×8×8 \(64×64 images of folder/);
    const grid = PNG.sync.read(fs.readFileSync(path.join(straight, "samples", "step-00000004.png")));
    const g = gridGeometry(10, 64, 64, 10, true);
    expect([grid.width, grid.height]).toEqual([g.width, g.height]);
    const ds = readState(path.join(straight, "checkpoints", "step-00000004")).extra.dataset;
    expect(ds?.vae?.sha256).toBe(readIndex(latents).vae.sha256);

    expect((await cli([...base, "--steps", "2", "--out", split])).status).toBe(0);
    const r = await cli([...base, "--steps", "4", "--out", split, "--resume"]);
    expect(r.status, r.stderr).toBe(0);
    for (const f of ["model", "ema", "discriminator", "optimizer"])
      expect(fs.readFileSync(path.join(split, "checkpoints", "step-00000004", `${f}.safetensors`)), f).toEqual(
        fs.readFileSync(path.join(straight, "checkpoints", "step-00000004", `${f}.safetensors`)),
      );

    const png = path.join(dir, "s.png");
    const s = await cli(["sample", "-k", straight, "--classes", "Flags,Symbols", "--per-class", "1", "--steps", "2", "--out", png]);
    expect(s.status, s.stderr).toBe(0);
    expect(PNG.sync.read(fs.readFileSync(png)).width).toBe(gridGeometry(2, 64, 64, 2, true).width);
  });

  it("fine-tunes a DiT saved by torch.save into the latents' classes, its architecture read from the tensors", async () => {
    const out = path.join(dir, "ft");
    const r = await cli(["finetune", "--from", DIT_PT, "--data", latents, "--classes-from", emoji, "--steps", "2", "--batch-size", "4",
      "--set", "sampleEvery=0", "--set", "model.numHeads=4", "--set", "discriminator.width=32", "--set", "discriminator.numHeads=2", "--set", "discriminator.projDim=16",
      "--lambda", "0.1", "--adv-warmup", "1", "--adv-ramp", "1", "--out", out]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/fine-tuning .*pth_dit_small\.pt/);
    expect(r.stdout).toMatch(/sadm: done at step 2/);
    const cfg = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8")) as { model: Record<string, unknown> };
    expect(cfg.model).toMatchObject({ inputSize: 8, inChannels: 4, learnSigma: true, numClasses: 10 });
  });

  it("samples a torch.save DiT as DiT's sample.py does, through the VAE", async () => {
    const png = path.join(dir, "pt.png");
    const r = await cli(["sample", "-k", DIT_PT, "--vae", VAE, "--classes", "1,2", "--per-class", "1", "--steps", "3", "--num-heads", "4", "--out", png]);
    expect(r.status, r.stderr).toBe(0);
    expect(PNG.sync.read(fs.readFileSync(png)).width).toBe(gridGeometry(2, 64, 64, 2, true).width);
  });

  it("decodes a latents file to PNGs as diffusers does", async () => {
    const out = path.join(dir, "decoded");
    const r = await cli(["decode", "--latents", REFERENCE, "--tensor", "latents", "--vae", VAE, "--out", out]);
    expect(r.status, r.stderr).toBe(0);
    const png = PNG.sync.read(fs.readFileSync(path.join(out, "00000000.png")));
    const want = SafetensorsFile.open(REFERENCE).read("decoded");
    // Within one level of diffusers' output, quantised as sadm writes images.
    let worst = 0;
    for (let c = 0; c < 3; c++)
      for (let i = 0; i < 64 * 64; i++) {
        const v = Math.round(Math.min(1, Math.max(-1, want[c * 4096 + i])) * 127.5 + 127.5);
        worst = Math.max(worst, Math.abs(png.data[i * 4 + c] - v));
      }
    expect(worst).toBeLessThanOrEqual(1);
  });
});
