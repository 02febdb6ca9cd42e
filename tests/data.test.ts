import { describe, expect, it } from "vitest";
import { BatchLoader, DataError, MnistDataset, readImages, type Dataset } from "../ts/index";

/** A tiny in-memory dataset: image i is filled with the value i, label i % 10. */
class CountingDataset implements Dataset {
  readonly channels = 1;
  readonly height = 2;
  readonly width = 2;
  readonly numClasses = 10;
  constructor(readonly length: number) {}
  read(index: number, out: Float32Array, offset: number): number {
    out.fill(index, offset, offset + 4);
    return index % 10;
  }
}

function ids(batch: { x: Float32Array }): number[] {
  const out: number[] = [];
  for (let i = 0; i < batch.x.length; i += 4) out.push(batch.x[i]);
  return out;
}

describe("MnistDataset", () => {
  const ds = new MnistDataset();

  it("splits every digit 90/10 into disjoint train and test sets", () => {
    const train = readImages(new MnistDataset({ split: "train" }));
    const test = readImages(new MnistDataset({ split: "test" }));
    expect(train.labels.length + test.labels.length).toBe(10_000);
    expect(test.labels.length).toBeGreaterThan(950);
    expect(test.labels.length).toBeLessThan(1050);
    for (let k = 0; k < 10; k++) expect(test.labels.filter((l) => l === k).length).toBeGreaterThan(80);
    // No test image appears in the training split.
    const key = (x: Float32Array, i: number): string => Array.from(x.subarray(i * 784, (i + 1) * 784)).join(",");
    const seen = new Set(Array.from({ length: train.labels.length }, (_, i) => key(train.x, i)));
    let shared = 0;
    for (let i = 0; i < test.labels.length; i++) if (seen.has(key(test.x, i))) shared++;
    expect(shared).toBeLessThan(5); // MNIST has a handful of exact duplicate digits
  });

  it("loads 10,000 28×28 digits in [-1, 1] with labels 0..9", () => {
    expect(ds.length).toBe(10_000);
    expect([ds.channels, ds.height, ds.width, ds.numClasses]).toEqual([1, 28, 28, 10]);
    const buf = new Float32Array(784);
    const counts = new Array<number>(10).fill(0);
    let min = Infinity;
    let max = -Infinity;
    for (let i = 0; i < ds.length; i++) {
      const label = ds.read(i, buf, 0);
      expect(Number.isInteger(label) && label >= 0 && label <= 9).toBe(true);
      counts[label]++;
      if (i % 97 === 0)
        for (const v of buf) {
          if (v < min) min = v;
          if (v > max) max = v;
        }
    }
    expect(min).toBe(-1);
    expect(max).toBe(1);
    expect(counts.reduce((a, b) => a + b, 0)).toBe(10_000);
    for (const c of counts) expect(c).toBeGreaterThan(800);
  });

  it("looks like a digit: dark border, bright strokes", () => {
    const buf = new Float32Array(784);
    ds.read(0, buf, 0);
    expect(buf[0]).toBe(-1);
    expect(buf.filter((v) => v > 0.5).length).toBeGreaterThan(30);
  });

  it("filters classes and applies a balanced limit", () => {
    const f = new MnistDataset({ classes: [3, 7] });
    const buf = new Float32Array(784);
    const seen = new Set<number>();
    for (let i = 0; i < f.length; i++) seen.add(f.read(i, buf, 0));
    expect([...seen].sort()).toEqual([3, 7]);
    expect(f.length).toBe(1032 + 1070);
    const l = new MnistDataset({ limit: 100 });
    expect(l.length).toBe(100);
    const counts = new Array<number>(10).fill(0);
    for (let i = 0; i < l.length; i++) counts[l.read(i, buf, 0)]++;
    expect(counts).toEqual(new Array<number>(10).fill(10));
  });

  it("rejects bad indices and classes with DataError", () => {
    expect(() => ds.read(10_000, new Float32Array(784), 0)).toThrow(DataError);
    expect(() => new MnistDataset({ classes: [10] })).toThrow(DataError);
  });
});

describe("BatchLoader", () => {
  it("yields full shuffled batches with deterministic order", () => {
    const ds = new CountingDataset(10);
    const a = new BatchLoader(ds, 4, 1);
    const b = new BatchLoader(ds, 4, 1);
    const ba = a.next();
    expect(ba.x).toHaveLength(16);
    expect(ba.labels).toHaveLength(4);
    expect(ids(ba)).toEqual(ids(b.next()));
    expect(Array.from(ba.labels)).toEqual(ids(ba).map((i) => i % 10));
    const c = new BatchLoader(ds, 4, 2);
    const seqA = [ids(ba), ...Array.from({ length: 5 }, () => ids(a.next()))];
    const seqC = Array.from({ length: 6 }, () => ids(c.next()));
    expect(seqA).not.toEqual(seqC);
  });

  it("drops the last partial batch and covers each epoch without repeats", () => {
    const ds = new CountingDataset(10);
    const l = new BatchLoader(ds, 4, 3);
    expect(l.batchesPerEpoch).toBe(2);
    const e0 = [...ids(l.next()), ...ids(l.next())];
    expect(new Set(e0).size).toBe(8);
    expect(l.position).toEqual({ epoch: 0, index: 8 });
    const e1 = ids(l.next());
    expect(l.position).toEqual({ epoch: 1, index: 4 });
    expect(new Set(e1).size).toBe(4);
  });

  it("resumes from a saved position with the same sequence", () => {
    const ds = new CountingDataset(23);
    const straight = new BatchLoader(ds, 5, 9);
    const all = Array.from({ length: 12 }, () => ids(straight.next()));
    const first = new BatchLoader(ds, 5, 9);
    for (let i = 0; i < 7; i++) first.next();
    const pos = JSON.parse(JSON.stringify(first.position)) as { epoch: number; index: number };
    const resumed = new BatchLoader(ds, 5, 9, pos);
    const rest = Array.from({ length: 5 }, () => ids(resumed.next()));
    expect(rest).toEqual(all.slice(7));
  });

  it("rejects a dataset smaller than one batch", () => {
    expect(() => new BatchLoader(new CountingDataset(3), 4, 0)).toThrow(DataError);
    expect(() => new BatchLoader(new CountingDataset(3), 4, 0)).toThrow(/fewer than one batch/);
    expect(() => new BatchLoader(new CountingDataset(4), 4, 0)).not.toThrow();
  });

  it("rejects invalid positions", () => {
    const l = new BatchLoader(new CountingDataset(10), 4, 0);
    expect(() => l.restore({ epoch: -1, index: 0 })).toThrow(DataError);
    expect(() => l.restore({ epoch: 0, index: 11 })).toThrow(DataError);
  });
});
