/**
 * Image output: sample grids and single samples as PNG (pngjs), written atomically (temp file + rename). A grid can
 * carry a strip of column labels (class names) below it, rendered with sharp (Pango) in the DejaVu Sans shipped in
 * `assets/fonts/`.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { PNG } from "pngjs";
import { ConfigError, DataError, SadmError, errorMessage, fsError, isFsError } from "./errors.js";
import { loadSharp } from "./sharp.js";

/** Padding between grid cells, in pixels. */
export const GRID_PADDING = 2;
/**
 * The largest grid side written, in pixels: what image viewers and browsers (16384 px canvases) still open, and
 * with {@link MAX_GRID_PIXELS} what pngjs encodes in about 2 GB of memory.
 */
export const MAX_GRID_SIDE = 16384;
/** The largest grid written, in pixels (2^28: a 1 GiB RGBA buffer; pngjs's encode peaks at about twice that). */
export const MAX_GRID_PIXELS = 2 ** 28;

/** The font of the label strip (shipped with the package, with its licence next to it). */
export function labelFontFile(): string {
  return path.resolve(__dirname, "..", "assets", "fonts", "DejaVuSans.ttf");
}

/** Maps a value in [-1, 1] to a byte (clamped, rounded). */
export function toByte(v: number): number {
  if (!Number.isFinite(v)) return 0;
  const b = Math.round((v + 1) * 127.5);
  return b < 0 ? 0 : b > 255 ? 255 : b;
}

/** Font size (pixels per em) of a label strip under cells `cellWidth` wide: a quarter of the cell, 10–20 px. */
export function labelFontPx(cellWidth: number): number {
  return Math.min(20, Math.max(10, Math.round(cellWidth / 4)));
}

/** The text line of a label strip: DejaVu's accented capitals and descenders span about 1.3 em. */
function labelLineHeight(fontPx: number): number {
  return Math.ceil(1.4 * fontPx) + 1;
}

/** Pixel layout of a grid. */
export interface GridGeometry {
  /** PNG size, the label strip included. */
  width: number;
  height: number;
  /** Grid columns and rows of cells. */
  cols: number;
  rows: number;
  /** Height of the label strip below the cells (0 without labels). */
  stripHeight: number;
}

/**
 * The pixel size of a grid of `n` images `height`×`width` in `cols` columns, with a label strip when `labelled`.
 * @throws DataError on a non-positive count or size.
 */
export function gridGeometry(n: number, height: number, width: number, cols: number, labelled = false): GridGeometry {
  for (const [name, v] of [["n", n], ["height", height], ["width", width], ["cols", cols]] as const)
    if (!Number.isInteger(v) || v < 1) throw new DataError(`grid: ${name} must be an integer ≥ 1 (got ${v})`);
  const c = Math.min(cols, n);
  const rows = Math.ceil(n / c);
  const pad = GRID_PADDING;
  const stripHeight = labelled ? labelLineHeight(labelFontPx(width)) + pad : 0;
  return { width: c * (width + pad) + pad, height: rows * (height + pad) + pad + stripHeight, cols: c, rows, stripHeight };
}

/**
 * Refuses a grid larger than a PNG sadm writes ({@link MAX_GRID_SIDE} a side, {@link MAX_GRID_PIXELS} in all).
 * @throws ConfigError naming the grid, the limit and what to do instead.
 */
export function assertGridFits(g: GridGeometry, what = "grid"): void {
  if (g.width <= MAX_GRID_SIDE && g.height <= MAX_GRID_SIDE && g.width * g.height <= MAX_GRID_PIXELS) return;
  throw new ConfigError(
    what,
    `a grid of ${g.cols} columns × ${g.rows} rows is ${g.width}×${g.height} px, over the PNG limit of ` +
      `${MAX_GRID_SIDE} px a side and ${MAX_GRID_PIXELS} pixels; sample fewer images per grid, or write each image ` +
      `as its own PNG (sadm sample --out-dir DIR, sampleToDir)`,
  );
}

/** Writes image `k` of `images` (NCHW, `channels` 1 or 3) into an RGBA buffer `stride` pixels wide at (ox, oy). */
function paint(
  data: Buffer,
  stride: number,
  ox: number,
  oy: number,
  images: Float32Array,
  k: number,
  channels: number,
  height: number,
  width: number,
): void {
  const plane = height * width;
  const base = k * channels * plane;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const p = ((oy + y) * stride + (ox + x)) * 4;
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

function checkChannels(channels: number): void {
  if (channels !== 1 && channels !== 3) throw new DataError(`saveGrid: channels must be 1 or 3 (got ${channels})`);
}

/**
 * A grid being filled: images arrive in chunks ({@link put}), so a grid needs the memory of its PNG and one chunk,
 * not of all its samples as floats. Row-major: image k goes to row ⌊k/cols⌋, column k mod cols, with
 * {@link GRID_PADDING} pixels of black around every cell; with `labelled`, a strip below for {@link drawColumnLabels}.
 */
export class GridCanvas {
  /** The layout. */
  readonly geometry: GridGeometry;
  private readonly png: PNG;

  /**
   * @param channels 1 (grey) or 3 (RGB).
   * @throws DataError on bad sizes; ConfigError when the grid is over the PNG limit ({@link assertGridFits}).
   */
  constructor(
    readonly n: number,
    readonly channels: number,
    readonly height: number,
    readonly width: number,
    cols: number,
    opts: { labelled?: boolean } = {},
  ) {
    checkChannels(channels);
    this.geometry = gridGeometry(n, height, width, cols, opts.labelled ?? false);
    assertGridFits(this.geometry);
    this.png = new PNG({ width: this.geometry.width, height: this.geometry.height, colorType: 6 });
    const data = this.png.data;
    data.fill(0);
    for (let i = 3; i < data.length; i += 4) data[i] = 255; // opaque black background
  }

  /** Paints images `first`, `first + 1`, … from NCHW values in [-1, 1]. */
  put(first: number, images: Float32Array): void {
    const per = this.channels * this.height * this.width;
    const m = images.length / per;
    if (!Number.isInteger(m) || !Number.isInteger(first) || first < 0 || first + m > this.n)
      throw new DataError(
        `saveGrid: ${images.length} values are not whole ${this.channels}×${this.height}×${this.width} images ` +
          `${first}… of ${this.n}`,
      );
    const { cols } = this.geometry;
    const pad = GRID_PADDING;
    for (let j = 0; j < m; j++) {
      const k = first + j;
      const ox = pad + (k % cols) * (this.width + pad);
      const oy = pad + Math.floor(k / cols) * (this.height + pad);
      paint(this.png.data, this.geometry.width, ox, oy, images, j, this.channels, this.height, this.width);
    }
  }

  /**
   * Writes `labels[c]` under column c in the strip, centred, in white; a label wider than the cell is cut with an
   * ellipsis. Needs a canvas made with `labelled`.
   * @throws DataError when the canvas has no strip or the label count is not the column count; SadmError when the
   * text cannot be rendered.
   */
  async drawColumnLabels(labels: ReadonlyArray<string>): Promise<void> {
    const g = this.geometry;
    if (g.stripHeight === 0) throw new DataError("drawColumnLabels: the grid was made without a label strip");
    if (labels.length !== g.cols)
      throw new DataError(`drawColumnLabels: ${labels.length} labels for ${g.cols} columns`);
    const fontPx = labelFontPx(this.width);
    const line = labelLineHeight(fontPx);
    const top = g.height - g.stripHeight;
    const texts = await Promise.all(labels.map((l) => fitLabel(l, this.width, fontPx)));
    texts.forEach((t, c) => {
      if (!t) return;
      const ox = GRID_PADDING + c * (this.width + GRID_PADDING) + Math.floor((this.width - t.width) / 2);
      const oy = top + Math.floor((line - t.height) / 2);
      const data = this.png.data;
      for (let y = Math.max(0, top - oy); y < t.height && oy + y < g.height; y++)
        for (let x = 0; x < t.width; x++) {
          const a = t.alpha[y * t.width + x];
          const p = ((oy + y) * g.width + ox + x) * 4;
          // White text on the black strip: the coverage is the grey level.
          data[p] = data[p + 1] = data[p + 2] = a;
        }
    });
  }

  /** The PNG file's bytes. */
  encode(): Buffer {
    return PNG.sync.write(this.png);
  }
}

/** A rendered label: its coverage (0–255), row-major. */
interface LabelBitmap {
  width: number;
  height: number;
  alpha: Uint8Array;
}

/** Escapes text for Pango markup. */
export function escapeMarkup(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}


/**
 * Renders one line of text in white, cropped left and right to its ink. An invisible "Å|" after the text gives
 * every label the same top and baseline (libvips crops its output to the ink, which would otherwise move a label
 * without capitals or descenders).
 */
async function renderText(text: string, fontPx: number): Promise<LabelBitmap | undefined> {
  const font = labelFontFile();
  if (!fs.existsSync(font)) throw new SadmError(`the label font ${font} is missing (reinstall sadm)`);
  const markup = `<span foreground="white">${escapeMarkup(text)}</span><span alpha="1">Å|</span>`;
  let raw: { data: Buffer; info: { width: number; height: number; channels: number } };
  try {
    raw = await loadSharp("to render the grid's labels")({ text: { text: markup, fontfile: font, font: `DejaVu Sans ${fontPx}`, dpi: 72, rgba: true } })
      .raw()
      .toBuffer({ resolveWithObject: true });
  } catch (e) {
    throw new SadmError(`cannot render the grid label "${text}": ${errorMessage(e)}`, { cause: e });
  }
  const { data, info } = raw;
  const ch = info.channels;
  let x0 = info.width;
  let x1 = -1;
  for (let y = 0; y < info.height; y++)
    for (let x = 0; x < info.width; x++)
      if (data[(y * info.width + x) * ch + ch - 1] > 0) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
      }
  if (x1 < x0) return undefined;
  const width = x1 - x0 + 1;
  const alpha = new Uint8Array(width * info.height);
  for (let y = 0; y < info.height; y++)
    for (let x = 0; x < width; x++) alpha[y * width + x] = data[(y * info.width + x0 + x) * ch + ch - 1];
  return { width, height: info.height, alpha };
}

/**
 * The longest form of `label` that fits in `maxWidth` pixels: the label, or a prefix of it with "…", or nothing
 * when not even "…" fits. Widths grow with the prefix, so the search starts at the proportional guess and walks.
 */
async function fitLabel(label: string, maxWidth: number, fontPx: number): Promise<LabelBitmap | undefined> {
  const full = await renderText(label, fontPx);
  if (!full || full.width <= maxWidth) return full;
  const chars = Array.from(label);
  const cut = (k: number): Promise<LabelBitmap | undefined> => renderText(chars.slice(0, k).join("").trimEnd() + "…", fontPx);
  const fits = (b: LabelBitmap | undefined): boolean => b !== undefined && b.width <= maxWidth;
  let k = Math.max(0, Math.min(chars.length - 1, Math.floor((chars.length * maxWidth) / full.width)));
  let best = await cut(k);
  while (!fits(best) && k > 0) best = await cut(--k);
  if (!fits(best)) return undefined;
  while (k + 1 < chars.length) {
    const next = await cut(k + 1);
    if (!fits(next)) break;
    best = next;
    k++;
  }
  return best;
}

function checkValues(images: Float32Array, n: number, channels: number, height: number, width: number): void {
  checkChannels(channels);
  if (n < 1) throw new DataError(`saveGrid: need n ≥ 1 and cols ≥ 1 (got n=${n})`);
  if (images.length !== n * channels * height * width)
    throw new DataError(
      `saveGrid: expected ${n}×${channels}×${height}×${width} = ${n * channels * height * width} values, got ${images.length}`,
    );
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
  checkValues(images, n, channels, height, width);
  if (cols < 1) throw new DataError(`saveGrid: need n ≥ 1 and cols ≥ 1 (got n=${n}, cols=${cols})`);
  const canvas = new GridCanvas(n, channels, height, width, cols);
  canvas.put(0, images);
  return canvas.encode();
}

/**
 * {@link encodeGrid} with `columnLabels[c]` written under column c (a strip below the grid; see
 * {@link GridCanvas.drawColumnLabels}). Without labels it is encodeGrid's PNG.
 */
export async function encodeLabelledGrid(
  images: Float32Array,
  n: number,
  channels: number,
  height: number,
  width: number,
  cols: number,
  columnLabels?: ReadonlyArray<string>,
): Promise<Buffer> {
  if (!columnLabels) return encodeGrid(images, n, channels, height, width, cols);
  checkValues(images, n, channels, height, width);
  const canvas = new GridCanvas(n, channels, height, width, cols, { labelled: true });
  canvas.put(0, images);
  await canvas.drawColumnLabels(columnLabels);
  return canvas.encode();
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

/**
 * {@link saveGrid} with the column labels of {@link encodeLabelledGrid} (e.g. the class names of the columns).
 * @returns the path written.
 */
export async function saveLabelledGrid(
  file: string,
  images: Float32Array,
  n: number,
  channels: number,
  height: number,
  width: number,
  cols: number,
  columnLabels?: ReadonlyArray<string>,
): Promise<string> {
  writeFileAtomic(file, await encodeLabelledGrid(images, n, channels, height, width, cols, columnLabels));
  return file;
}

/**
 * Encodes image `k` of NCHW values in [-1, 1] as a PNG of its own (grey or RGB, no padding).
 * @param channels 1 (grey) or 3 (RGB).
 */
export function encodeImage(images: Float32Array, k: number, channels: number, height: number, width: number): Buffer {
  checkChannels(channels);
  if ((k + 1) * channels * height * width > images.length)
    throw new DataError(`encodeImage: image ${k} of ${channels}×${height}×${width} is past the ${images.length} values`);
  const png = new PNG({ width, height, colorType: channels === 1 ? 0 : 2 });
  png.data.fill(255); // the alpha channel pngjs reads its input from
  paint(png.data, width, 0, 0, images, k, channels, height, width);
  return PNG.sync.write(png, { colorType: channels === 1 ? 0 : 2 });
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
