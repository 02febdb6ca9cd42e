import { describe, expect, it } from "vitest";
import { emaDecayAt, lambdaAt, lrAt } from "../ts/index";

describe("lambdaAt", () => {
  it("is 0 during the warm-up, ramps linearly, then stays at the max", () => {
    expect(lambdaAt(0, 0.1, 300, 100)).toBe(0);
    expect(lambdaAt(299, 0.1, 300, 100)).toBe(0);
    expect(lambdaAt(300, 0.1, 300, 100)).toBeCloseTo(0.001, 12);
    expect(lambdaAt(349, 0.1, 300, 100)).toBeCloseTo(0.05, 12);
    expect(lambdaAt(399, 0.1, 300, 100)).toBeCloseTo(0.1, 12);
    expect(lambdaAt(10_000, 0.1, 300, 100)).toBe(0.1);
  });
  it("jumps without a ramp and is always 0 for lambda 0", () => {
    expect(lambdaAt(5, 0.2, 5, 0)).toBe(0.2);
    expect(lambdaAt(4, 0.2, 5, 0)).toBe(0);
    expect(lambdaAt(1000, 0, 0, 0)).toBe(0);
  });
});

describe("lrAt", () => {
  it("warms up linearly then is constant", () => {
    expect(lrAt(0, 1e-3, 100)).toBeCloseTo(1e-5, 15);
    expect(lrAt(49, 1e-3, 100)).toBeCloseTo(5e-4, 15);
    expect(lrAt(99, 1e-3, 100)).toBeCloseTo(1e-3, 15);
    expect(lrAt(100, 1e-3, 100)).toBe(1e-3);
    expect(lrAt(0, 1e-4, 0)).toBe(1e-4);
  });
});

describe("emaDecayAt", () => {
  it("uses min(decay, (1+t)/(10+t)) with warm-up", () => {
    expect(emaDecayAt(0, 0.9999, true)).toBeCloseTo(0.1, 15);
    expect(emaDecayAt(10, 0.9999, true)).toBeCloseTo(11 / 20, 15);
    expect(emaDecayAt(1490, 0.9999, true)).toBeCloseTo(1491 / 1500, 15);
    expect(emaDecayAt(1e7, 0.9999, true)).toBe(0.9999);
    expect(emaDecayAt(0, 0.9999, false)).toBe(0.9999);
  });
});
