/**
 * The one seam between data and training: a {@link Dataset} is random access to CHW float images in [-1, 1] (or
 * VAE latents) with an integer label. MNIST, image folders and latent shards implement it; the trainer never knows
 * which.
 */
import { DataError } from "../errors.js";

/**
 * The random choices the loader makes for one item of one batch, as pure functions of the seed, the epoch and the
 * position in it (so a resumed run makes the same ones).
 */
export interface Draw {
  /** Flip this item horizontally. */
  flip: boolean;
  /** A 32-bit key for any noise the item needs (a latent's posterior sample). */
  key: number;
}

/** A random-access image dataset. */
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
  /** Class names by label (`classNames[k]` names label k), when the data has named classes. */
  readonly classNames?: readonly string[];
  /**
   * Set when the dataset applies the loader's {@link Draw} itself, because flipping what it reads would be wrong
   * (latents: the flipped crop has its own stored posterior); otherwise the loader flips the rows it read.
   */
  readonly drawsItself?: boolean;
  /**
   * Writes image `index` (CHW, values in [-1, 1], or latents) into `out` starting at `offset` and returns its label.
   * `draw` is given to a dataset that {@link drawsItself} while training; without it the read is the item itself
   * (a latent's posterior mean, unflipped).
   * @throws DataError for an index out of range.
   */
  read(index: number, out: Float32Array, offset: number, draw?: Draw): number;
}

/** One mini-batch: NCHW images in [-1, 1] and their labels. */
export interface Batch {
  x: Float32Array;
  labels: Int32Array;
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

/** 8-bit pixel value → [-1, 1], as DiT's `x / 127.5 - 1` (computed in f64, stored as f32). */
const BYTE_TO_UNIT = Float32Array.from({ length: 256 }, (_, b) => b / 127.5 - 1);

/** Where the bytes of image i are: all images in one array, or read on demand (a cache too large to hold). */
export interface ByteSource {
  /** Copies the C·H·W bytes of image `slot` into `out`. */
  read(slot: number, out: Uint8Array): void;
}

/** A byte source over one in-memory array of images stored back to back. */
export class MemoryBytes implements ByteSource {
  constructor(
    private readonly bytes: Uint8Array,
    private readonly per: number,
  ) {}

  read(slot: number, out: Uint8Array): void {
    out.set(this.bytes.subarray(slot * this.per, (slot + 1) * this.per));
  }
}

/** Shape and classes of a {@link ByteDataset}. */
export interface ByteLayout {
  channels: number;
  height: number;
  width: number;
  numClasses: number;
  classNames?: readonly string[];
}

/**
 * Images stored as 8-bit CHW bytes (MNIST, the decoded image cache): image i is slot `slots[i]` of the byte source
 * with label `labels[i]`, read as `byte / 127.5 − 1`.
 */
export class ByteDataset implements Dataset {
  readonly length: number;
  readonly channels: number;
  readonly height: number;
  readonly width: number;
  readonly numClasses: number;
  readonly classNames?: readonly string[];
  private readonly scratch: Uint8Array;

  constructor(
    private readonly source: ByteSource,
    private readonly slots: Uint32Array,
    private readonly labels: Int32Array,
    layout: ByteLayout,
    private readonly what: string,
  ) {
    if (slots.length !== labels.length) throw new DataError(`${what}: ${slots.length} slots but ${labels.length} labels`);
    this.length = slots.length;
    this.channels = layout.channels;
    this.height = layout.height;
    this.width = layout.width;
    this.numClasses = layout.numClasses;
    if (layout.classNames) this.classNames = layout.classNames;
    this.scratch = new Uint8Array(layout.channels * layout.height * layout.width);
  }

  read(index: number, out: Float32Array, offset: number): number {
    if (!Number.isInteger(index) || index < 0 || index >= this.length)
      throw new DataError(`${this.what}: index ${index} out of range [0, ${this.length})`);
    const px = this.scratch;
    this.source.read(this.slots[index], px);
    for (let i = 0; i < px.length; i++) out[offset + i] = BYTE_TO_UNIT[px[i]];
    return this.labels[index];
  }
}

/**
 * Orders items class-interleaved (the first of every class, then the second of every class, …; classes in label
 * order, items in their given order), so that any prefix — a `limit`, the real images of an evaluation — keeps the
 * classes as balanced as the data allows.
 * @returns the item indices in the new order.
 */
export function interleaveByClass(labels: ArrayLike<number>): number[] {
  const byClass = new Map<number, number[]>();
  for (let i = 0; i < labels.length; i++) {
    const list = byClass.get(labels[i]);
    if (list) list.push(i);
    else byClass.set(labels[i], [i]);
  }
  const lists = [...byClass.entries()].sort((a, b) => a[0] - b[0]).map(([, l]) => l);
  const out: number[] = [];
  for (let round = 0; out.length < labels.length; round++)
    for (const l of lists) if (round < l.length) out.push(l[round]);
  return out;
}

/** Share of each class held out as the `test` split. */
export const TEST_FRACTION = 0.1;

/** A fixed partition of a dataset: everything, or the first 90 % / the last 10 % of every class. */
export type DataSplit = "all" | "train" | "test";

/** Whether item `rank` (its position within its class) of a class of `count` items belongs to `split`. */
export function inSplit(split: DataSplit, rank: number, count: number): boolean {
  if (split === "all") return true;
  const cut = count - Math.round(TEST_FRACTION * count);
  return split === "train" ? rank < cut : rank >= cut;
}
