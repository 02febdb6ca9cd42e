/**
 * Shuffled, resumable mini-batches over a {@link Dataset}, with DiT's random horizontal flip.
 */
import { DataError } from "../errors.js";
import { hashSeed, permutation } from "../rng.js";
import type { Batch, Dataset } from "./dataset.js";

/** Where a {@link BatchLoader} is in its data order: the epoch and the next index in that epoch's permutation. */
export interface DataPosition {
  epoch: number;
  index: number;
}

/** A batch and the loader position right after it (what a checkpoint taken after this batch's step stores). */
export interface PositionedBatch extends Batch {
  after: DataPosition;
}

/** Options of {@link BatchLoader}. */
export interface LoaderOptions {
  /**
   * Flip each image horizontally with probability ½ (DiT's augmentation). The coin is a pure function of
   * (seed, epoch, index in the epoch), so it needs no state of its own and a resumed run flips the same images.
   */
  flip?: boolean;
}

/** The stream tag of the flip coins ("flip"). */
const FLIP_STREAM = 0x666c6970;
/** The stream tag of the items' noise keys ("nois"). */
const NOISE_STREAM = 0x6e6f6973;

/** Whether the image at `index` of `epoch`'s order is flipped. */
export function flipped(seed: number, epoch: number, index: number): boolean {
  return (hashSeed(seed, FLIP_STREAM, epoch, index) & 1) === 1;
}

/** Reverses every row of a CHW image in place. */
export function flipRows(x: Float32Array, offset: number, rows: number, width: number): void {
  for (let r = 0; r < rows; r++) {
    const row = x.subarray(offset + r * width, offset + (r + 1) * width);
    row.reverse();
  }
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
  private readonly flip: boolean;
  private epoch = 0;
  private index = 0;
  private order: Uint32Array;

  /** @throws DataError when the dataset holds fewer images than one batch. */
  constructor(dataset: Dataset, batchSize: number, seed: number, position?: DataPosition, opts: LoaderOptions = {}) {
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new DataError(`batch size must be ≥ 1 (got ${batchSize})`);
    if (dataset.length < batchSize)
      throw new DataError(
        `the dataset has ${dataset.length} image(s), fewer than one batch of ${batchSize}: lower the batch size or add data`,
      );
    this.dataset = dataset;
    this.batchSize = batchSize;
    this.seed = seed;
    this.flip = opts.flip ?? false;
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
  next(): PositionedBatch {
    if (this.index + this.batchSize > this.dataset.length) {
      this.epoch++;
      this.index = 0;
      this.order = permutation(this.dataset.length, this.seed, this.epoch);
    }
    const x = new Float32Array(this.batchSize * this.imageSize);
    const labels = new Int32Array(this.batchSize);
    const { channels, height, width } = this.dataset;
    for (let b = 0; b < this.batchSize; b++) {
      const offset = b * this.imageSize;
      const at = this.index + b;
      const flip = this.flip && flipped(this.seed, this.epoch, at);
      if (this.dataset.drawsItself) {
        const key = hashSeed(this.seed, NOISE_STREAM, this.epoch, at);
        labels[b] = this.dataset.read(this.order[at], x, offset, { flip, key });
      } else {
        labels[b] = this.dataset.read(this.order[at], x, offset);
        if (flip) flipRows(x, offset, channels * height, width);
      }
    }
    this.index += this.batchSize;
    return { x, labels, after: this.position };
  }
}
