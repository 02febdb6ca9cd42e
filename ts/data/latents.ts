/**
 * Latent datasets: what `sadm encode` writes (a folder of safetensors shards and an `index.json`) and the
 * {@link Dataset} that trains on them without a VAE.
 *
 * Each image is stored as DiT trains from it: the VAE posterior's mean and log-variance of the centre crop and of
 * its horizontal flip. Every step the loader's {@link Draw} picks the crop (DiT's random flip) and a fresh posterior
 * sample, mean + exp(½·logvar)·ε with ε from the draw's key, times the VAE's scale factor. fast-DiT instead freezes
 * one sample and flip per image; storing both posteriors is what lets sadm do DiT's.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { DataError } from "../errors.js";
import { Rng } from "../rng.js";
import { SafetensorsFile, SafetensorsError, writeSafetensors } from "../io/safetensors.js";
import type { Dataset, Draw } from "./dataset.js";

/** `index.json`'s `format`. */
export const LATENTS_FORMAT = "sadm-latents";
/** `index.json`'s `version`: readers refuse others. */
export const LATENTS_VERSION = 1;
/** The index file of a latent dataset. */
export const INDEX_FILE = "index.json";

/** The tensors of every shard, by name: [n, C, h, w] floats for the four, [n] int32 for the labels. */
export const SHARD_TENSORS = { mean: "mean", logvar: "logvar", meanFlip: "mean_flip", logvarFlip: "logvar_flip", label: "label" } as const;

/** The VAE that made the latents: what sampling and evaluation need to decode them, and to check a VAE is that one. */
export interface VaeIdentity {
  /** Where it was loaded from when encoding (a diffusers folder or a file). */
  path: string;
  /** SHA-256 over its config and weight files. */
  sha256: string;
  /** The latents are `sample × scalingFactor` (with a per-channel shift and multiplier for VAEs that have them). */
  scalingFactor: number;
  /** Per channel: the diffusion model's latent is `(z − latentShift[c]) · latentMultiplier[c]` (SD's VAE: 0, 0.18215). */
  latentShift: number[];
  latentMultiplier: number[];
  latentChannels: number;
  /** Image pixels per latent pixel (8 for SD's VAE). */
  downsample: number;
}

/** One shard of a latent dataset. */
export interface ShardInfo {
  file: string;
  /** Images in it. */
  count: number;
}

/** `index.json`: everything that says what the latents are. */
export interface LatentIndex {
  format: typeof LATENTS_FORMAT;
  version: number;
  vae: VaeIdentity;
  /** Image side the VAE saw. */
  resolution: number;
  /** Latent side (resolution / downsample). */
  latentSize: number;
  /** The image data they were encoded from. */
  source: {
    description: string;
    fingerprint: string;
    classNames?: string[];
    images: number;
    /** The resolved data config the images were read with (so evaluation can read them again the same way). */
    data?: Record<string, unknown>;
  };
  /** Images per full shard. */
  shardSize: number;
  shards: ShardInfo[];
  /** Set when every image of the source is encoded. */
  complete: boolean;
}

/** Reads and checks a latent dataset's index. @throws DataError naming the folder and the fix. */
export function readIndex(dir: string): LatentIndex {
  const file = path.join(dir, INDEX_FILE);
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code === "ENOENT" ? "has no index.json" : "has an index.json that is not JSON";
    throw new DataError(`${dir} ${why}, so it is not a latent dataset: make one with sadm encode --data IMAGES --vae VAE --out ${dir}`);
  }
  const idx = raw as Partial<LatentIndex>;
  if (idx.format !== LATENTS_FORMAT || typeof idx.version !== "number")
    throw new DataError(`${file} is not a sadm latent index (format ${String(idx.format)}): make one with sadm encode`);
  if (idx.version !== LATENTS_VERSION)
    throw new DataError(`${file} is version ${idx.version} of the latent format; this sadm reads version ${LATENTS_VERSION}: encode again`);
  return idx as LatentIndex;
}

/** Writes `index.json` atomically (a temporary file renamed into place): it is the encode's commit record. */
export function writeIndex(dir: string, idx: LatentIndex): void {
  const file = path.join(dir, INDEX_FILE);
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(idx, null, 2) + "\n");
  fs.renameSync(tmp, file);
}

/** The posterior moments of a run of images, [n, C, h, w] each, and their labels. */
export interface ShardData {
  mean: Float32Array;
  logvar: Float32Array;
  meanFlip: Float32Array;
  logvarFlip: Float32Array;
  labels: Int32Array;
}

/** The file name of shard `k`. */
export function shardName(k: number): string {
  return `shard-${String(k).padStart(5, "0")}.safetensors`;
}

/** Writes shard `k` of `dir` (atomically) and returns its index entry. */
export function writeShard(dir: string, k: number, shape: readonly [number, number, number], d: ShardData): ShardInfo {
  const n = d.labels.length;
  const dims = [n, ...shape];
  const f32 = (data: Float32Array) => ({ dtype: "F32" as const, shape: dims, data });
  const file = shardName(k);
  writeSafetensors(path.join(dir, file), {
    [SHARD_TENSORS.mean]: f32(d.mean),
    [SHARD_TENSORS.logvar]: f32(d.logvar),
    [SHARD_TENSORS.meanFlip]: f32(d.meanFlip),
    [SHARD_TENSORS.logvarFlip]: f32(d.logvarFlip),
    [SHARD_TENSORS.label]: { dtype: "I32", shape: [n], data: d.labels },
  });
  return { file, count: n };
}

/** Images in all shards. */
export function encodedCount(idx: LatentIndex): number {
  return idx.shards.reduce((a, s) => a + s.count, 0);
}

/** Fills out[offset … offset + n) with N(0, 1) values from `key` (Box–Muller over the seeded xoshiro stream). */
export function gaussians(out: Float32Array, offset: number, n: number, key: number): void {
  const rng = new Rng(key, 0x706f7374 /* "post" */);
  for (let i = 0; i < n; i += 2) {
    const u1 = (rng.nextU32() + 1) / 4294967297;
    const u2 = rng.nextU32() / 4294967296;
    const r = Math.sqrt(-2 * Math.log(u1));
    out[offset + i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < n) out[offset + i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
}

/** Posterior moments kept in memory up to this many bytes; larger datasets are read item by item from the shards. */
const IN_MEMORY_BYTES = 2 ** 30;

/** Where item i's moments are: a shard and a row. */
interface Row {
  shard: number;
  row: number;
}

/** The latents of a finished `sadm encode`, as a {@link Dataset}. */
export class LatentDataset implements Dataset {
  readonly length: number;
  readonly channels: number;
  readonly height: number;
  readonly width: number;
  readonly numClasses: number;
  readonly classNames?: readonly string[];
  readonly drawsItself = true;
  private readonly shift: number[];
  private readonly multiplier: number[];
  private readonly files: SafetensorsFile[];
  private readonly rows: Row[];
  private readonly labels: Int32Array;
  private readonly per: number;
  /** [mean, logvar, meanFlip, logvarFlip] per shard, when held in memory. */
  private readonly memory: Float32Array[][] | undefined;
  private readonly noise: Float32Array;

  /**
   * @param items which encoded images, in dataset order (indices into the shards' concatenation); default all.
   * @throws DataError for an unfinished encode or a shard that does not match its index.
   */
  constructor(
    readonly dir: string,
    readonly index: LatentIndex,
    items?: readonly number[],
  ) {
    if (!index.complete)
      throw new DataError(`${dir} is an unfinished encode (${encodedCount(index)} of ${index.source.images} images): run the same sadm encode again to finish it`);
    const lc = index.vae.latentChannels;
    this.channels = lc;
    this.height = this.width = index.latentSize;
    this.per = lc * index.latentSize * index.latentSize;
    this.shift = index.vae.latentShift;
    this.multiplier = index.vae.latentMultiplier;
    if (this.shift.length !== lc || this.multiplier.length !== lc)
      throw new DataError(`${dir}: its index has ${this.shift.length} latent shifts for ${lc} channels: encode it again`);
    this.numClasses = index.source.classNames?.length ?? 0;
    if (index.source.classNames) this.classNames = index.source.classNames;
    this.files = index.shards.map((s) => openShard(dir, s, [s.count, lc, index.latentSize, index.latentSize]));
    const all: Row[] = [];
    const labels: number[] = [];
    this.files.forEach((f, shard) => {
      const l = f.read(SHARD_TENSORS.label);
      for (let row = 0; row < l.length; row++) {
        all.push({ shard, row });
        labels.push(l[row]);
      }
    });
    const chosen = items ?? all.map((_, i) => i);
    this.rows = chosen.map((i) => all[i]);
    this.labels = Int32Array.from(chosen, (i) => labels[i]);
    this.length = this.rows.length;
    this.memory =
      all.length * this.per * 4 * 4 <= IN_MEMORY_BYTES
        ? this.files.map((f) => [SHARD_TENSORS.mean, SHARD_TENSORS.logvar, SHARD_TENSORS.meanFlip, SHARD_TENSORS.logvarFlip].map((n) => f.read(n) as Float32Array))
        : undefined;
    this.noise = new Float32Array(this.per);
  }

  /** The label of every encoded image, in shard order (for class filters and splits before choosing items). */
  static labelsOf(dir: string, index: LatentIndex): Int32Array {
    const out: number[] = [];
    for (const s of index.shards) {
      const f = openShard(dir, s, undefined);
      try {
        out.push(...f.read(SHARD_TENSORS.label));
      } finally {
        f.close();
      }
    }
    return Int32Array.from(out);
  }

  read(index: number, out: Float32Array, offset: number, draw?: Draw): number {
    if (!Number.isInteger(index) || index < 0 || index >= this.length)
      throw new DataError(`latents ${this.dir}: index ${index} out of range [0, ${this.length})`);
    const { shard, row } = this.rows[index];
    const flip = draw?.flip ?? false;
    const mean = this.moment(shard, row, flip ? 2 : 0);
    const plane = this.per / this.channels;
    if (!draw) {
      for (let i = 0; i < this.per; i++) {
        const c = Math.floor(i / plane);
        out[offset + i] = (mean[i] - this.shift[c]) * this.multiplier[c];
      }
    } else {
      const logvar = this.moment(shard, row, flip ? 3 : 1);
      gaussians(this.noise, 0, this.per, draw.key);
      // diffusers' DiagonalGaussianDistribution clamps the log-variance the same way.
      for (let i = 0; i < this.per; i++) {
        const c = Math.floor(i / plane);
        const lv = Math.min(20, Math.max(-30, logvar[i]));
        out[offset + i] = (mean[i] + Math.exp(0.5 * lv) * this.noise[i] - this.shift[c]) * this.multiplier[c];
      }
    }
    return this.labels[index];
  }

  private moment(shard: number, row: number, which: number): Float32Array {
    if (this.memory) return this.memory[shard][which].subarray(row * this.per, (row + 1) * this.per);
    const name = [SHARD_TENSORS.mean, SHARD_TENSORS.logvar, SHARD_TENSORS.meanFlip, SHARD_TENSORS.logvarFlip][which];
    return this.files[shard].readRows(name, row, 1) as Float32Array;
  }
}

/** Opens a shard and checks it holds what its index says. */
function openShard(dir: string, s: ShardInfo, shape: number[] | undefined): SafetensorsFile {
  const file = path.join(dir, s.file);
  let f: SafetensorsFile;
  try {
    f = SafetensorsFile.open(file);
  } catch (e) {
    const why = e instanceof SafetensorsError ? e.message : `${file} cannot be read (${(e as Error).message})`;
    throw new DataError(`${why}: the latent dataset ${dir} is damaged; encode it again`);
  }
  const want = [SHARD_TENSORS.mean, SHARD_TENSORS.logvar, SHARD_TENSORS.meanFlip, SHARD_TENSORS.logvarFlip];
  for (const name of want) {
    const t = f.header.tensors.get(name);
    const ok = t && (shape ? t.shape.join() === shape.join() : t.shape[0] === s.count);
    if (!ok) {
      f.close();
      throw new DataError(`${file}: tensor '${name}' is ${t ? `[${t.shape}]` : "missing"} where the index says [${shape ?? s.count}]: the latent dataset ${dir} is damaged; encode it again`);
    }
  }
  const l = f.header.tensors.get(SHARD_TENSORS.label);
  if (!l || l.shape.join() !== String(s.count)) {
    f.close();
    throw new DataError(`${file}: its labels do not match the index: the latent dataset ${dir} is damaged; encode it again`);
  }
  return f;
}
