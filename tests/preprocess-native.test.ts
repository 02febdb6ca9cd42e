import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { loadNative } from "../ts/native";
import type { PreprocessOptions } from "../native/index";

/** The uint8 tensors (with their shapes) of a safetensors file. */
function readSafetensors(file: string): Map<string, { shape: number[]; data: Uint8Array }> {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const out = new Map<string, { shape: number[]; data: Uint8Array }>();
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [a, b] = t.data_offsets;
    out.set(name, { shape: t.shape, data: new Uint8Array(buf.subarray(8 + n + a, 8 + n + b)) });
  }
  return out;
}

const REFERENCE = path.join(__dirname, "..", "crates", "sadm-core", "testdata", "pillow_preprocess_reference.safetensors");
const opts = (o: Partial<PreprocessOptions>): PreprocessOptions => ({
  resolution: 8,
  resize: "crop",
  channels: 3,
  background: [12, 200, 77],
  ...o,
});

describe("preprocessImage (native)", () => {
  const native = loadNative();

  it("gives Pillow's bytes, HWC in and CHW out, for non-square grey and RGB images", async () => {
    const ref = readSafetensors(REFERENCE);
    const cases: [string, string, number, number][] = [
      ["photo_rgb_250x187", "crop", 28, 3],
      ["noise_rgb_40x200", "pad", 28, 1],
      ["grad_l_53x89", "stretch", 32, 1],
      ["edges_l_17x101", "pad", 8, 3],
    ];
    for (const [name, resize, resolution, channels] of cases) {
      const input = ref.get(`in.${name}`);
      const want = ref.get(`out.${name}.${resize}.${resolution}.${channels}`);
      if (!input || !want) throw new Error(`reference ${name} ${resize} ${resolution} ${channels} is missing`);
      const [h, w, c] = input.shape;
      const got = await native.preprocessImage(input.data, w, h, c, opts({ resize, resolution, channels }));
      expect(got).toBeInstanceOf(Uint8Array);
      expect(got.length).toBe(channels * resolution * resolution);
      expect(Buffer.from(got).equals(Buffer.from(want.data)), `${name} ${resize} ${resolution}`).toBe(true);
    }
  });

  it("rejects bad requests with one-line errors that name the problem", async () => {
    const px = new Uint8Array(4 * 3 * 3);
    const run = (o: Partial<PreprocessOptions>, pixels = px, w = 4, h = 3, c = 3) =>
      native.preprocessImage(pixels, w, h, c, opts(o));
    const cases: [() => Promise<Uint8Array>, string][] = [
      [() => run({ resize: "zoom" }), 'preprocessImage: resize must be "crop", "pad" or "stretch" (got "zoom")'],
      [() => run({ background: [1, 2] }), "preprocessImage: background must be [r, g, b] with each 0 to 255 (got [1, 2])"],
      [() => run({ background: [0, 256, 0] }), "(got [0, 256, 0])"],
      [() => run({ resolution: 0 }), "preprocessImage: the resolution must be between 1 and 8192 pixels (got 0)"],
      [() => run({ channels: 4 }), "preprocessImage: the output has 1 (grey) or 3 (RGB) channels (got 4)"],
      [() => run({}, px, 4, 3, 2), "preprocessImage: an image has 1 (grey) or 3 (RGB) channels (got 2)"],
      [() => run({}, px, 0, 3), "preprocessImage: an image needs at least one pixel (got 0×3)"],
      [() => run({}, px.subarray(1)), "preprocessImage: a 4×3 image with 3 channel(s) has 36 bytes, not 35"],
    ];
    for (const [call, msg] of cases) {
      const err = await call().then(
        () => new Error("resolved"),
        (e: unknown) => e as Error,
      );
      expect(err.message).toContain(msg);
      expect(err.message).not.toContain("\n");
    }
  });
});
