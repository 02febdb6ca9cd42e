import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { PNG } from "pngjs";
import { DataError, saveGrid } from "../ts/index";
import { GRID_PADDING as GRID_PADDING_FOR_TESTS } from "../ts/image";
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
