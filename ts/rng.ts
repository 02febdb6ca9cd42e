/**
 * A tiny seeded PRNG (splitmix32 for seeding, xoshiro128** for the stream) used for the data order.
 * Deterministic across platforms: only 32-bit integer arithmetic.
 */

/** One splitmix32 step: returns the next state and a well-mixed 32-bit output. */
export function splitmix32(state: number): { state: number; value: number } {
  const s = (state + 0x9e3779b9) >>> 0;
  let z = s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  z = (z ^ (z >>> 16)) >>> 0;
  return { state: s, value: z };
}

/** Mixes any number of 32-bit integers into one well-distributed 32-bit seed. */
export function hashSeed(...parts: number[]): number {
  let h = 0x243f6a88;
  for (const p of parts) {
    // Fold in both 32-bit halves so seeds up to 2^53 contribute fully.
    const lo = p >>> 0;
    const hi = Math.floor(p / 4294967296) >>> 0;
    h = splitmix32((h ^ lo) >>> 0).value;
    h = splitmix32((h ^ hi) >>> 0).value;
  }
  return h >>> 0;
}

/** xoshiro128** generator seeded through splitmix32. */
export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /** Creates a generator from a seed (any safe integer; further integers are mixed in). */
  constructor(seed: number, ...streams: number[]) {
    let st = hashSeed(seed, ...streams);
    const next = (): number => {
      const r = splitmix32(st);
      st = r.state;
      return r.value;
    };
    this.s0 = next();
    this.s1 = next();
    this.s2 = next();
    this.s3 = next();
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** Next uniform 32-bit unsigned integer. */
  nextU32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.s1 << 9) >>> 0;
    this.s2 = (this.s2 ^ this.s0) >>> 0;
    this.s3 = (this.s3 ^ this.s1) >>> 0;
    this.s1 = (this.s1 ^ this.s2) >>> 0;
    this.s0 = (this.s0 ^ this.s3) >>> 0;
    this.s2 = (this.s2 ^ t) >>> 0;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform float in [0, 1). */
  nextFloat(): number {
    return this.nextU32() / 4294967296;
  }

  /** Uniform integer in [0, n) without modulo bias (n ≤ 2^32). */
  nextInt(n: number): number {
    if (!Number.isInteger(n) || n <= 0 || n > 4294967296) throw new RangeError(`nextInt: n must be in [1, 2^32] (got ${n})`);
    const limit = 4294967296 - (4294967296 % n);
    for (;;) {
      const v = this.nextU32();
      if (v < limit) return v % n;
    }
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** A deterministic permutation of [0, n) for (seed, epoch): Fisher–Yates driven by {@link Rng}. */
export function permutation(n: number, seed: number, epoch: number): Uint32Array {
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = i;
  const rng = new Rng(seed, 0x64617461 /* "data" */, epoch);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.nextInt(i + 1);
    const tmp = out[i];
    out[i] = out[j];
    out[j] = tmp;
  }
  return out;
}
