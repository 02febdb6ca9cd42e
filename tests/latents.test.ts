/**
 * Latent datasets without a VAE: the safetensors reader/writer, the shards and index `sadm encode` writes, and the
 * Dataset that trains on them (DiT's fresh posterior sample and flip per step, deterministic per seed and position).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { tmpDir } from "./helpers";
import { SafetensorsFile, halfToFloat, writeSafetensors } from "../ts/io/safetensors";
import {
  LATENTS_FORMAT,
  LATENTS_VERSION,
  LatentDataset,
  readIndex,
  writeIndex,
  writeShard,
  type LatentIndex,
} from "../ts/data/latents";
import { findData } from "../ts/data/source";
import { BatchLoader } from "../ts/data/loader";
import { resolveConfig } from "../ts/config";

const C = 4;
const S = 2;
const PER = C * S * S;

/** A latent dataset of `n` images in shards of `shardSize`: mean = image index + element/100, logvar = −2 (flip: −4). */
function makeLatents(n: number, shardSize: number, opts: { complete?: boolean; classNames?: string[] } = {}): string {
  const dir = tmpDir("sadm-latents-");
  const shards = [];
  for (let k = 0, first = 0; first < n; k++, first += shardSize) {
    const m = Math.min(shardSize, n - first);
    const mean = new Float32Array(m * PER);
    const meanFlip = new Float32Array(m * PER);
    for (let i = 0; i < m; i++)
      for (let e = 0; e < PER; e++) {
        mean[i * PER + e] = first + i + e / 100;
        meanFlip[i * PER + e] = -(first + i + e / 100);
      }
    shards.push(
      writeShard(dir, k, [C, S, S], {
        mean,
        logvar: new Float32Array(m * PER).fill(-2),
        meanFlip,
        logvarFlip: new Float32Array(m * PER).fill(-4),
        labels: Int32Array.from({ length: m }, (_, i) => (first + i) % 3),
      }),
    );
  }
  const idx: LatentIndex = {
    format: LATENTS_FORMAT,
    version: LATENTS_VERSION,
    vae: {
      path: "/vae",
      sha256: "ab".repeat(32),
      scalingFactor: 0.5,
      latentShift: [0, 0, 0, 0],
      latentMultiplier: [0.5, 0.5, 0.5, 0.5],
      latentChannels: C,
      downsample: 8,
    },
    resolution: S * 8,
    latentSize: S,
    source: { description: "folder /imgs", fingerprint: "f".repeat(64), classNames: opts.classNames ?? ["a", "b", "c"], images: n },
    shardSize,
    shards,
    complete: opts.complete ?? true,
  };
  writeIndex(dir, idx);
  return dir;
}

describe("safetensors (TypeScript side)", () => {
  it("round-trips F32/I32/U8 with metadata, reads rows, and converts F16/BF16", () => {
    const dir = tmpDir("sadm-st-");
    const file = path.join(dir, "t.safetensors");
    const a = Float32Array.from({ length: 12 }, (_, i) => i * 0.25 - 1);
    writeSafetensors(file, {
      a: { dtype: "F32", shape: [3, 4], data: a },
      b: { dtype: "I32", shape: [2], data: Int32Array.of(-7, 9) },
      c: { dtype: "U8", shape: [3], data: Uint8Array.of(0, 128, 255) },
    }, { what: "test" });
    const f = SafetensorsFile.open(file);
    expect(f.header.metadata).toEqual({ what: "test" });
    expect(Array.from(f.read("a"))).toEqual(Array.from(a));
    expect(Array.from(f.readRows("a", 1, 2))).toEqual(Array.from(a.subarray(4, 12)));
    expect(Array.from(f.read("b"))).toEqual([-7, 9]);
    expect(Array.from(f.read("c"))).toEqual([0, 128, 255]);
    expect(() => f.readRows("a", 2, 2)).toThrow(/rows \[2, 4\) of 'a' are outside its 3/);
    expect(() => f.read("nope")).toThrow(/has no tensor 'nope' \(it has a, b, c\)/);
    f.close();
    // The header is 8-byte aligned as the Rust writer makes it.
    const len = Number(fs.readFileSync(file).readBigUInt64LE(0));
    expect(len % 8).toBe(0);
    // binary16 / bfloat16 of known values.
    expect([0x3c00, 0xc000, 0x3555, 0x0001, 0x7bff, 0x7c00].map(halfToFloat)).toEqual([1, -2, 0.333251953125, 2 ** -24, 65504, Infinity]);
    const raw = { h: { dtype: "F16", shape: [2], data_offsets: [0, 4] }, g: { dtype: "BF16", shape: [2], data_offsets: [4, 8] } };
    let json = Buffer.from(JSON.stringify(raw));
    json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
    const head = Buffer.alloc(8);
    head.writeBigUInt64LE(BigInt(json.length));
    const body = Buffer.alloc(8);
    body.writeUInt16LE(0x3c00, 0);
    body.writeUInt16LE(0xc400, 2);
    body.writeUInt16LE(0x3f80, 4);
    body.writeUInt16LE(0xc0a0, 6);
    fs.writeFileSync(path.join(dir, "h.safetensors"), Buffer.concat([head, json, body]));
    const h = SafetensorsFile.open(path.join(dir, "h.safetensors"));
    expect(Array.from(h.read("h"))).toEqual([1, -4]);
    expect(Array.from(h.read("g"))).toEqual([1, -5]);
    h.close();
  });

  it("refuses truncated and foreign files with the file's name", () => {
    const dir = tmpDir("sadm-st-");
    const file = path.join(dir, "t.safetensors");
    writeSafetensors(file, { a: { dtype: "F32", shape: [64], data: new Float32Array(64) } });
    const bytes = fs.readFileSync(file);
    fs.writeFileSync(path.join(dir, "cut.safetensors"), bytes.subarray(0, bytes.length - 10));
    expect(() => SafetensorsFile.open(path.join(dir, "cut.safetensors"))).toThrow(/cut\.safetensors is not a readable safetensors file: tensor 'a' lies outside the file \(truncated\?\)/);
    fs.writeFileSync(path.join(dir, "x.safetensors"), "hello, world: not a tensor file");
    expect(() => SafetensorsFile.open(path.join(dir, "x.safetensors"))).toThrow(/x\.safetensors is not a readable safetensors file: its header length/);
    // Nothing half-written is left next to a finished file.
    expect(fs.readdirSync(dir).filter((f) => f.includes(".tmp-"))).toEqual([]);
  });
});

describe("latent datasets", () => {
  it("reads the posterior mean without a draw, the flipped crop's with one, and a fresh sample per key", () => {
    const dir = makeLatents(10, 4);
    const ds = new LatentDataset(dir, readIndex(dir));
    expect([ds.length, ds.channels, ds.height, ds.width, ds.numClasses]).toEqual([10, C, S, S, 3]);
    const out = new Float32Array(PER);
    expect(ds.read(5, out, 0)).toBe(2);
    // mean × scale (0.5), from shard 1 row 1.
    expect(out[0]).toBeCloseTo(2.5, 6);
    expect(out[3]).toBeCloseTo((5 + 0.03) * 0.5, 6);
    // A flip reads the flipped crop's moments; the sample is (mean + e^(logvar/2)·ε)·scale.
    const n = 4000;
    const sums = new Float64Array(2);
    for (let k = 0; k < n; k++) {
      ds.read(5, out, 0, { flip: true, key: k });
      const z = out[0] / 0.5 + 5; // ε·e^(−2)
      sums[0] += z;
      sums[1] += z * z;
    }
    const mean = sums[0] / n;
    const std = Math.sqrt(sums[1] / n - mean * mean);
    expect(Math.abs(mean)).toBeLessThan(4 * Math.exp(-2) / Math.sqrt(n));
    expect(std).toBeGreaterThan(Math.exp(-2) * 0.95);
    expect(std).toBeLessThan(Math.exp(-2) * 1.05);
    // Same key, same sample; another key, another.
    const a = new Float32Array(PER);
    const b = new Float32Array(PER);
    ds.read(1, a, 0, { flip: false, key: 7 });
    ds.read(1, b, 0, { flip: false, key: 7 });
    expect(Array.from(a)).toEqual(Array.from(b));
    ds.read(1, b, 0, { flip: false, key: 8 });
    expect(Array.from(a)).not.toEqual(Array.from(b));
  });

  it("is a data source: config, classes, filters, fingerprint, and batches that repeat exactly", async () => {
    const dir = makeLatents(12, 5);
    const cfg = resolveConfig({ data: { name: "latents", path: dir, classes: ["b", "c"] } });
    expect(cfg.preset).toBe("latent-tiny");
    expect([cfg.model.inputSize, cfg.model.inChannels, cfg.model.numClasses]).toEqual([S, C, 3]);
    expect(cfg.data.flip).toBe(true);
    const src = findData(cfg.data);
    expect(src.classNames).toEqual(["a", "b", "c"]);
    const { dataset, summary } = await src.open();
    expect(dataset.length).toBe(8);
    expect(summary).toMatch(/^8 latents, 3 classes, 4×2×2 \(16×16 images of folder \/imgs, VAE \/vae\)$/);
    const l1 = new BatchLoader(dataset, 4, 3, undefined, { flip: true });
    const l2 = new BatchLoader(dataset, 4, 3, undefined, { flip: true });
    const b1 = [l1.next(), l1.next(), l1.next()];
    const b2 = [l2.next(), l2.next()];
    l2.restore(b2[1].after);
    b2.push(l2.next());
    for (let i = 0; i < 3; i++) expect(Array.from(b2[i].x)).toEqual(Array.from(b1[i].x));
    expect(Array.from(b1[0].labels).every((l) => l === 1 || l === 2)).toBe(true);
    // A changed shard is another dataset.
    const before = src.fingerprint;
    const shard = path.join(dir, "shard-00000.safetensors");
    const t = new Date(Date.now() + 5000);
    fs.utimesSync(shard, t, t);
    expect(findData(cfg.data).fingerprint).not.toBe(before);
  });

  it("refuses an unfinished encode, a damaged shard and a folder that is not latents, naming the fix", () => {
    const part = makeLatents(6, 4, { complete: false });
    expect(() => new LatentDataset(part, readIndex(part))).toThrow(/unfinished encode \(6 of 6 images\): run the same sadm encode again/);
    const dir = makeLatents(6, 4);
    fs.truncateSync(path.join(dir, "shard-00001.safetensors"), 100);
    expect(() => new LatentDataset(dir, readIndex(dir))).toThrow(/shard-00001\.safetensors is not a readable safetensors file.*encode it again/);
    const empty = tmpDir("sadm-nolatents-");
    expect(() => readIndex(empty)).toThrow(/has no index\.json, so it is not a latent dataset: make one with sadm encode/);
  });
});
