import { describe, expect, it } from "vitest";
import { Rng, permutation } from "../ts/index";

describe("Rng", () => {
  it("is deterministic for a seed and differs across seeds", () => {
    const a = new Rng(42);
    const b = new Rng(42);
    const c = new Rng(43);
    const xa = Array.from({ length: 16 }, () => a.nextU32());
    const xb = Array.from({ length: 16 }, () => b.nextU32());
    const xc = Array.from({ length: 16 }, () => c.nextU32());
    expect(xa).toEqual(xb);
    expect(xa).not.toEqual(xc);
    for (const v of xa) expect(Number.isInteger(v) && v >= 0 && v < 2 ** 32).toBe(true);
  });

  it("pins the stream (the data order must not change between versions)", () => {
    const r = new Rng(0);
    expect(Array.from({ length: 4 }, () => r.nextU32())).toMatchInlineSnapshot(`
      [
        1029745004,
        3344674226,
        4246215423,
        3237445908,
      ]
    `);
  });

  it("gives roughly uniform floats and bounded ints", () => {
    const r = new Rng(1);
    let sum = 0;
    for (let i = 0; i < 10_000; i++) {
      const f = r.nextFloat();
      expect(f >= 0 && f < 1).toBe(true);
      sum += f;
      const k = r.nextInt(7);
      expect(k >= 0 && k < 7 && Number.isInteger(k)).toBe(true);
    }
    expect(sum / 10_000).toBeGreaterThan(0.48);
    expect(sum / 10_000).toBeLessThan(0.52);
  });
});

describe("permutation", () => {
  it("is a permutation, deterministic in (seed, epoch), different across epochs", () => {
    const p = permutation(1000, 5, 0);
    expect([...p].sort((x, y) => x - y)).toEqual(Array.from({ length: 1000 }, (_, i) => i));
    expect(permutation(1000, 5, 0)).toEqual(p);
    expect(permutation(1000, 5, 1)).not.toEqual(p);
    expect(permutation(1000, 6, 0)).not.toEqual(p);
    expect(permutation(0, 1, 0)).toHaveLength(0);
  });
});
