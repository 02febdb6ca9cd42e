import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { PNG } from "pngjs";
import { ConfigError, DataError, saveGrid } from "../ts/index";
import {
  GRID_PADDING as GRID_PADDING_FOR_TESTS,
  GridCanvas,
  MAX_GRID_PIXELS,
  MAX_GRID_SIDE,
  assertGridFits,
  encodeGrid,
  encodeImage,
  encodeLabelledGrid,
  gridGeometry,
  saveLabelledGrid,
} from "../ts/image";
import { tmpDir } from "./helpers";

describe("saveGrid", () => {
  it("writes a decodable grey PNG of the right size with the right pixels", () => {
    const n = 5;
    const [c, h, w] = [1, 4, 3];
    const images = new Float32Array(n * c * h * w);
    for (let k = 0; k < n; k++) images.fill(k === 0 ? -1 : k === 1 ? 1 : 0, k * h * w, (k + 1) * h * w);
    const file = path.join(tmpDir(), "sub", "grid.png");
    saveGrid(file, images, n, c, h, w, 2);
    const png = PNG.sync.read(fs.readFileSync(file));
    const pad = GRID_PADDING_FOR_TESTS;
    expect(png.width).toBe(2 * (w + pad) + pad);
    expect(png.height).toBe(3 * (h + pad) + pad);
    const px = (x: number, y: number): number[] => {
      const i = (y * png.width + x) * 4;
      return Array.from(png.data.subarray(i, i + 4));
    };
    expect(px(pad, pad)).toEqual([0, 0, 0, 255]); // image 0: -1 → 0
    expect(px(pad + w + pad, pad)).toEqual([255, 255, 255, 255]); // image 1: 1 → 255
    expect(px(pad, pad + h + pad)).toEqual([128, 128, 128, 255]); // image 2: 0 → 128
    expect(fs.readdirSync(path.dirname(file))).toEqual(["grid.png"]); // no temp file left
  });

  it("writes RGB images and clamps out-of-range values", () => {
    const [h, w] = [2, 2];
    const images = new Float32Array(3 * h * w);
    images.fill(2, 0, 4); // R clamps to 255
    images.fill(-3, 4, 8); // G clamps to 0
    images.fill(0, 8, 12);
    const file = path.join(tmpDir(), "rgb.png");
    saveGrid(file, images, 1, 3, h, w, 8);
    const png = PNG.sync.read(fs.readFileSync(file));
    expect(png.width).toBe(w + 2 * GRID_PADDING_FOR_TESTS);
    const i = (GRID_PADDING_FOR_TESTS * png.width + GRID_PADDING_FOR_TESTS) * 4;
    expect(Array.from(png.data.subarray(i, i + 3))).toEqual([255, 0, 128]);
  });

  it("rejects a size mismatch", () => {
    expect(() => saveGrid(path.join(tmpDir(), "x.png"), new Float32Array(10), 1, 1, 3, 3, 1)).toThrow(DataError);
  });
});

/** A grid of `n` h×w grey images whose pixels are all 0 (mid grey), decoded back. */
function greyImages(n: number, h: number, w: number): Float32Array {
  return new Float32Array(n * h * w);
}

describe("labelled grids", () => {
  const pad = GRID_PADDING_FOR_TESTS;

  it("without labels, encodeLabelledGrid is encodeGrid", async () => {
    const images = greyImages(4, 5, 6);
    const a = await encodeLabelledGrid(images, 4, 1, 5, 6, 2);
    expect(a.equals(encodeGrid(images, 4, 1, 5, 6, 2))).toBe(true);
  });

  it("grows by a strip below the grid with ink under every column, and keeps the grid's pixels", async () => {
    const [n, h, w, cols] = [6, 28, 28, 3];
    const images = new Float32Array(n * h * w);
    for (let i = 0; i < images.length; i++) images[i] = Math.sin(i);
    const plain = PNG.sync.read(encodeGrid(images, n, 1, h, w, cols));
    const file = path.join(tmpDir(), "labelled.png");
    await saveLabelledGrid(file, images, n, 1, h, w, cols, ["cat", "Animals & Nature", "<b>"]);
    const png = PNG.sync.read(fs.readFileSync(file));
    const g = gridGeometry(n, h, w, cols, true);
    expect(g.stripHeight).toBeGreaterThan(10);
    expect(png.width).toBe(plain.width);
    expect(png.height).toBe(plain.height + g.stripHeight);
    expect(png.height).toBe(g.height);
    // The cells are untouched.
    expect(png.data.subarray(0, plain.data.length).equals(plain.data)).toBe(true);
    // Ink in the strip: every column has some, and none falls outside its cell (the long name is cut to fit).
    const inkAt = (x: number): boolean => {
      for (let y = plain.height; y < png.height; y++) if (png.data[(y * png.width + x) * 4] > 0) return true;
      return false;
    };
    for (let c = 0; c < cols; c++) {
      const x0 = pad + c * (w + pad);
      let ink = 0;
      for (let x = x0; x < x0 + w; x++) if (inkAt(x)) ink++;
      expect(ink, `column ${c}`).toBeGreaterThan(3);
    }
    for (let x = 0; x < png.width; x++) {
      const inCell = (x - pad) % (w + pad) < w && x >= pad;
      if (!inCell) expect(inkAt(x), `x=${x} is padding`).toBe(false);
    }
    // The strip is opaque and grey-on-black (text colour = coverage).
    for (let y = plain.height; y < png.height; y++)
      for (let x = 0; x < png.width; x++) {
        const p = (y * png.width + x) * 4;
        expect(png.data[p + 3]).toBe(255);
        expect(png.data[p]).toBe(png.data[p + 1]);
      }
  });

  it("a cut label is the same ink whichever long tail it had; a short one is drawn whole", async () => {
    const strip = async (label: string): Promise<Buffer> => {
      const png = PNG.sync.read(await encodeLabelledGrid(greyImages(1, 28, 28), 1, 1, 28, 28, 1, [label]));
      return png.data.subarray(32 * png.width * 4);
    };
    expect((await strip("Animals & Nature")).equals(await strip("Animals & Whatever"))).toBe(true);
    expect((await strip("cat")).equals(await strip("cot"))).toBe(false);
  });

  it("refuses a label count that is not the column count", async () => {
    await expect(encodeLabelledGrid(greyImages(4, 4, 4), 4, 1, 4, 4, 2, ["a"])).rejects.toThrow(DataError);
  });

  it("fills a canvas chunk by chunk into the same PNG as at once", () => {
    const [n, h, w] = [5, 3, 4];
    const images = new Float32Array(n * 3 * h * w).map((_, i) => Math.cos(i));
    const canvas = new GridCanvas(n, 3, h, w, 2);
    canvas.put(3, images.subarray(3 * 3 * h * w));
    canvas.put(0, images.subarray(0, 3 * 3 * h * w));
    expect(canvas.encode().equals(encodeGrid(images, n, 3, h, w, 2))).toBe(true);
    expect(() => canvas.put(4, images.subarray(0, 2 * 3 * h * w))).toThrow(DataError);
  });
});

describe("grid size limit", () => {
  it("refuses a grid over 16384 px a side or 2^28 pixels, naming the limit", () => {
    expect(MAX_GRID_SIDE).toBe(16384);
    expect(MAX_GRID_PIXELS).toBe(2 ** 28);
    const tall = gridGeometry(10 * 100_000, 28, 28, 10, true);
    expect(() => assertGridFits(tall)).toThrow(ConfigError);
    expect(() => assertGridFits(tall)).toThrow(/16384 px a side .*--out-dir/);
    expect(() => new GridCanvas(10 * 100_000, 1, 28, 28, 10)).toThrow(/16384 px a side/);
    // 16384×16384 fits exactly; one more pixel a side does not.
    const side = (MAX_GRID_SIDE - GRID_PADDING_FOR_TESTS) / 2 - GRID_PADDING_FOR_TESTS;
    expect(() => assertGridFits(gridGeometry(4, side, side, 2))).not.toThrow();
    expect(() => assertGridFits(gridGeometry(4, side + 1, side, 2))).toThrow(ConfigError);
  });
});

describe("encodeImage", () => {
  it("writes one grey or RGB image without padding", () => {
    const [h, w] = [2, 3];
    const grey = Float32Array.from([-1, 0, 1, 0.5, -0.5, 2, /* image 1 */ 1, 1, 1, 1, 1, 1]);
    const g = PNG.sync.read(encodeImage(grey, 0, 1, h, w));
    expect([g.width, g.height]).toEqual([w, h]);
    expect(Array.from({ length: 6 }, (_, i) => g.data[i * 4])).toEqual([0, 128, 255, 191, 64, 255]);
    const rgb = new Float32Array(3 * h * w);
    rgb.fill(1, 0, 6);
    rgb.fill(-1, 6, 12);
    rgb.fill(0, 12, 18);
    const c = PNG.sync.read(encodeImage(rgb, 0, 3, h, w));
    expect(Array.from(c.data.subarray(0, 4))).toEqual([255, 0, 128, 255]);
    expect(() => encodeImage(grey, 2, 1, h, w)).toThrow(DataError);
  });
});
