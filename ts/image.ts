/**
 * Image output: sample grids as PNG (pngjs), written atomically (temp file + rename).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { PNG } from "pngjs";
import { DataError, fsError, isFsError } from "./errors.js";

/** Padding between grid cells, in pixels. */
export const GRID_PADDING = 2;

/** Maps a value in [-1, 1] to a byte (clamped, rounded). */
export function toByte(v: number): number {
  if (!Number.isFinite(v)) return 0;
  const b = Math.round((v + 1) * 127.5);
  return b < 0 ? 0 : b > 255 ? 255 : b;
}

/**
 * Encodes NCHW images in [-1, 1] as an RGBA PNG grid (row-major: image k goes to row ⌊k/cols⌋, column k mod cols),
 * with {@link GRID_PADDING} pixels of black padding around every cell.
 * @param channels 1 (grey) or 3 (RGB).
 */
export function encodeGrid(
  images: Float32Array,
  n: number,
  channels: number,
  height: number,
  width: number,
  cols: number,
): Buffer {
  if (channels !== 1 && channels !== 3) throw new DataError(`saveGrid: channels must be 1 or 3 (got ${channels})`);
  if (n < 1 || cols < 1) throw new DataError(`saveGrid: need n ≥ 1 and cols ≥ 1 (got n=${n}, cols=${cols})`);
  if (images.length !== n * channels * height * width)
    throw new DataError(
      `saveGrid: expected ${n}×${channels}×${height}×${width} = ${n * channels * height * width} values, got ${images.length}`,
    );
  const c = Math.min(cols, n);
  const rows = Math.ceil(n / c);
  const pad = GRID_PADDING;
  const W = c * (width + pad) + pad;
  const H = rows * (height + pad) + pad;
  const png = new PNG({ width: W, height: H, colorType: 6 });
  const data = png.data;
  for (let i = 3; i < data.length; i += 4) data[i] = 255; // opaque black background
  const plane = height * width;
  for (let k = 0; k < n; k++) {
    const ox = pad + (k % c) * (width + pad);
    const oy = pad + Math.floor(k / c) * (height + pad);
    const base = k * channels * plane;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const p = ((oy + y) * W + (ox + x)) * 4;
        const q = base + y * width + x;
        if (channels === 1) {
          const v = toByte(images[q]);
          data[p] = v;
          data[p + 1] = v;
          data[p + 2] = v;
        } else {
          data[p] = toByte(images[q]);
          data[p + 1] = toByte(images[q + plane]);
          data[p + 2] = toByte(images[q + 2 * plane]);
        }
      }
    }
  }
  return PNG.sync.write(png);
}

/**
 * Writes NCHW images in [-1, 1] as a PNG grid to `file` (creating its directory), atomically.
 * @returns the path written.
 */
export function saveGrid(
  file: string,
  images: Float32Array,
  n: number,
  channels: number,
  height: number,
  width: number,
  cols: number,
): string {
  const buf = encodeGrid(images, n, channels, height, width, cols);
  writeFileAtomic(file, buf);
  return file;
}

/** Writes a file via a temp file in the same directory and a rename. */
export function writeFileAtomic(file: string, data: string | Buffer): void {
  const tmp = `${file}.tmp-${process.pid}-${Date.now()}`;
  try {
    fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, file);
  } catch (e) {
    try {
      fs.rmSync(tmp, { force: true });
    } catch {
      // The path itself is unusable (the error below says why): there is nothing to clean up.
    }
    throw isFsError(e) ? fsError(e, `cannot write ${file}`) : e;
  }
}
