/**
 * Training on image folders end to end (real addon, real data): the emoji of the emoji-datasource-google package laid
 * out as class folders by scripts/emoji-folder.js, the built-in `--data emoji`, exact resume with flips, a changed
 * folder refused on resume, sampling by class name, and evaluation against a folder with cached reference features.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import sharp from "sharp";
import { beforeAll, describe, expect, it } from "vitest";
import { PNG } from "pngjs";
import { ROOT, runCliAsync, runNodeAsync, tmpDir } from "./helpers";
import { MnistDataset, gridGeometry, readImages, readState, type DatasetInfo } from "../ts/index";

const CACHE = tmpDir("sadm-train-cache-");
const ENV = { SADM_CACHE_DIR: CACHE, RAYON_NUM_THREADS: "2" };
/** Tiny networks on 16×16 RGB images (patch 4: 16 tokens). */
const NETS = [
  "--resolution", "16", "--batch-size", "8", "--set", "model.hiddenSize=32", "--set", "model.depth=1", "--set", "model.numHeads=2",
  "--set", "model.patchSize=4", "--set", "discriminator.patchSize=4", "--set", "discriminator.width=32", "--set", "discriminator.depth=1",
  "--set", "discriminator.numHeads=2", "--set", "discriminator.projDim=16", "--set", "sampleSteps=3", "--set", "samplesPerClass=1",
  "--lambda", "0.1", "--adv-warmup", "1", "--adv-ramp", "1",
];
const CATEGORIES = [
  "Activities", "Animals & Nature", "Component", "Flags", "Food & Drink", "Objects", "People & Body", "Smileys & Emotion",
  "Symbols", "Travel & Places",
];

const cli = (args: string[], timeoutMs = 300_000) => runCliAsync(args, { env: ENV, timeoutMs });

function weights(ck: string): Buffer[] {
  return ["model", "ema", "discriminator", "optimizer"].map((f) => fs.readFileSync(path.join(ck, `${f}.safetensors`)));
}

describe("training on an image folder (emoji, real addon)", () => {
  let emoji = "";
  let dir = "";
  beforeAll(async () => {
    dir = tmpDir("sadm-folder-train-");
    emoji = path.join(dir, "emoji");
    const r = await runNodeAsync([path.join(ROOT, "scripts", "emoji-folder.js"), emoji, "--limit", "12"]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^113 emoji in 10 class folders/);
  }, 120_000);

  it("trains, records the data and its class names, labels its grids and samples by class name", async () => {
    const out = path.join(dir, "run");
    const r = await cli(["train", "--data", emoji, ...NETS, "--steps", "4", "--checkpoint-every", "2", "--out", out]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/sadm: data: 113 images, 10 classes, 16×16 RGB, crop; decoded in/);
    const state = readState(path.join(out, "checkpoints", "step-00000004"));
    const ds = state.extra.dataset as DatasetInfo;
    expect(ds.source).toBe(`folder ${emoji}`);
    expect(ds.classNames).toEqual(CATEGORIES);
    expect(ds.images).toBe(113);
    expect(ds.fingerprint).toMatch(/^[0-9a-f]{64}$/);
    const config = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8")) as { preset: string; data: Record<string, unknown> };
    expect(config.preset).toBe("rgb-32");
    expect(config.data).toMatchObject({ name: "folder", path: emoji, resolution: 16, channels: 3, flip: true, classNames: CATEGORIES });
    expect(fs.existsSync(path.join(out, "bad-images.txt"))).toBe(false);
    const grid = PNG.sync.read(fs.readFileSync(path.join(out, "samples", "step-00000004.png")));
    const g = gridGeometry(10, 16, 16, 10, true);
    expect([grid.width, grid.height]).toEqual([g.width, g.height]);

    const info = await cli(["info", "--checkpoint", out]);
    expect(info.status, info.stderr).toBe(0);
    expect(info.stdout).toContain("1: Animals & Nature");
    const png = path.join(dir, "g.png");
    const s = await cli(["sample", "-k", out, "--classes", "Flags,Animals & Nature", "--per-class", "2", "--steps", "2", "--out", png]);
    expect(s.status, s.stderr).toBe(0);
    expect(PNG.sync.read(fs.readFileSync(png)).width).toBe(gridGeometry(4, 16, 16, 2, true).width);
  });

  it("resumes exactly, flips included: 6 steps straight equal 4 and a resumed 2", async () => {
    const straight = path.join(dir, "straight");
    const split = path.join(dir, "split");
    const base = ["train", "--data", emoji, ...NETS, "--set", "sampleEvery=0", "--checkpoint-every", "2"];
    expect((await cli([...base, "--steps", "6", "--out", straight])).status).toBe(0);
    expect((await cli([...base, "--steps", "4", "--out", split])).status).toBe(0);
    const resumed = await cli([...base, "--steps", "6", "--out", split, "--resume"]);
    expect(resumed.status, resumed.stderr).toBe(0);
    const a = weights(path.join(straight, "checkpoints", "step-00000006"));
    const b = weights(path.join(split, "checkpoints", "step-00000006"));
    a.forEach((w, i) => expect(w.equals(b[i]), `file ${i}`).toBe(true));
  });

  it("refuses to resume on a changed folder unless --force-data", async () => {
    const folder = path.join(dir, "changing");
    fs.cpSync(emoji, folder, { recursive: true });
    const out = path.join(dir, "run-changing");
    const args = ["train", "--data", folder, ...NETS, "--set", "sampleEvery=0", "--out", out];
    expect((await cli([...args, "--steps", "2"])).status).toBe(0);
    await sharp(Buffer.alloc(64 * 64 * 3, 90), { raw: { width: 64, height: 64, channels: 3 } })
      .png()
      .toFile(path.join(folder, "Flags", "new.png"));
    const refused = await cli([...args, "--steps", "3", "--resume"]);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(
      /^error: the data differs from the checkpoint being resumed .*: folder .*changing changed \(files added, removed or modified, or other preprocessing\)\. Resume with --force-data/,
    );
    const forced = await cli([...args, "--steps", "3", "--resume", "--force-data"]);
    expect(forced.status, forced.stderr).toBe(0);
    expect(forced.stdout).toContain("sadm: note: resuming on changed data (--force-data)");
    expect(readState(path.join(out, "checkpoints", "step-00000003")).extra.dataset?.images).toBe(114);
  });

  it("trains on the built-in emoji set (--data emoji: 3,786 images by category)", async () => {
    const out = path.join(dir, "run-builtin");
    const r = await cli(["train", "--data", "emoji", ...NETS, "--resolution", "8", "--set", "model.patchSize=2", "--set", "discriminator.patchSize=2",
      "--steps", "2", "--set", "sampleEvery=0", "--out", out]);
    expect(r.status, r.stderr).toBe(0);
    const ds = readState(path.join(out, "checkpoints", "step-00000002")).extra.dataset as DatasetInfo;
    expect([ds.source, ds.images, ds.classNames]).toEqual(["emoji", 3786, CATEGORIES]);
    // A flag given twice takes its last value (--resolution 16 … 8), while every --set applies.
    const config = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8")) as {
      data: { resolution: number };
      model: { patchSize: number; hiddenSize: number; depth: number };
    };
    expect([config.data.resolution, config.model.patchSize, config.model.hiddenSize, config.model.depth]).toEqual([8, 2, 32, 1]);
  });
});

describe("evaluating against a folder (LeNet on grey digits)", () => {
  it("compares with the run's folder or another (--real), computing the real features once", async () => {
    const dir = tmpDir("sadm-folder-eval-");
    const digits = readImages(new MnistDataset({ limit: 300 }));
    const writeDigits = async (root: string, from: number, to: number): Promise<void> => {
      for (let i = from; i < to; i++) {
        const k = digits.labels[i];
        fs.mkdirSync(path.join(root, String(k)), { recursive: true });
        const bytes = Buffer.from(Uint8Array.from(digits.x.subarray(i * 784, (i + 1) * 784), (v) => Math.round((v + 1) * 127.5)));
        await sharp(bytes, { raw: { width: 28, height: 28, channels: 1 } }).png().toFile(path.join(root, String(k), `${i}.png`));
      }
    };
    const train = path.join(dir, "train");
    const other = path.join(dir, "other");
    await writeDigits(train, 0, 200);
    await writeDigits(other, 200, 300);
    const out = path.join(dir, "run");
    const t = await cli(["train", "--data", train, "--resolution", "28", "--channels", "1", "--no-flip", "--steps", "2", "--batch-size", "8",
      "--set", "model.hiddenSize=32", "--set", "model.depth=1", "--set", "model.numHeads=2", "--set", "sampleEvery=0", "--lambda", "0", "--out", out]);
    expect(t.status, t.stderr).toBe(0);
    const stats = (): string[] => (fs.existsSync(path.join(CACHE, "stats")) ? fs.readdirSync(path.join(CACHE, "stats")) : []);
    const before = stats().length;
    const evalArgs = ["eval", "-k", out, "--samples", "40", "--steps", "2", "--json", "--no-append"];
    const first = await cli(evalArgs);
    expect(first.status, first.stderr).toBe(0);
    expect(stats().length).toBe(before + 1);
    const again = await cli(evalArgs);
    expect(stats().length).toBe(before + 1);
    const [m1, m2] = [first, again].map((r) => JSON.parse(r.stdout) as { fd: number; realImages: number; realAccuracy: number });
    expect(m2.fd).toBe(m1.fd);
    expect(m1.realImages).toBe(40);
    expect(m1.realAccuracy).toBeGreaterThan(0.8);
    const vs = await cli([...evalArgs, "--real", other]);
    expect(vs.status, vs.stderr).toBe(0);
    expect(stats().length).toBe(before + 2);
    const m3 = JSON.parse(vs.stdout) as { fd: number; realImages: number };
    expect(m3.realImages).toBe(40);
    expect(m3.fd).not.toBe(m1.fd);
  });
});
