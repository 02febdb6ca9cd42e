/**
 * `sadm encode`: images → VAE latents, as DiT's training reads them. Every image of the source is encoded twice
 * (its centre crop and the crop's mirror image), and both posteriors (mean and log-variance) are stored, so
 * training can draw DiT's fresh sample and flip every step. Shards are written one at a time and the index after
 * each, so an interrupted encode resumes where it stopped and never leaves a shard that looks whole but is not.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { DataError, NativeError, fsError, isFsError } from "../errors.js";
import { resolveDataConfig, type DataConfig, type DeepPartial } from "../config.js";
import { findData, type OpenOptions } from "../data/source.js";
import { flipRows } from "../data/loader.js";
import {
  INDEX_FILE,
  LATENTS_FORMAT,
  LATENTS_VERSION,
  encodedCount,
  readIndex,
  writeIndex,
  writeShard,
  type LatentIndex,
  type ShardData,
} from "../data/latents.js";
import { loadVae, VAE_CHUNK, type Vae } from "./vae.js";

/** What to encode. */
export interface EncodeRequest {
  /** The images: a folder or the emoji set, with its preprocessing (`resolution` is the VAE's input side). */
  data: DeepPartial<DataConfig>;
  /** A diffusers VAE folder or weights file. */
  vae: string;
  /** The latent dataset folder to write (or finish). */
  out: string;
  /** `cpu` (default) or `cuda:N`. */
  device?: string;
  /** Images per shard (default 256: 16 MiB of f32 moments at 256², 4 latent channels). */
  shardSize?: number;
  /** Called after each shard with the images done and the total. */
  onProgress?: (done: number, total: number) => void;
  /** Progress output of decoding the images into their cache (the cache's options). */
  decode?: OpenOptions;
}

/** What an encode did. */
export interface EncodeResult {
  dir: string;
  index: LatentIndex;
  /** Images encoded by this call (0 when the folder was already complete). */
  encoded: number;
  /** Images already there from an earlier, interrupted call. */
  resumed: number;
  seconds: number;
  /** Files of the source that did not decode (skipped). */
  badImages: number;
}

const DEFAULT_SHARD = 256;

/** The index of a fresh encode, or the existing one when it is an interrupted encode of the same thing. */
function startIndex(dir: string, fresh: LatentIndex): LatentIndex {
  if (!fs.existsSync(path.join(dir, INDEX_FILE))) {
    const entries = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => !f.startsWith(".")) : [];
    if (entries.length > 0)
      throw new DataError(`${dir} is not empty and holds no latent index: give sadm encode an empty or new --out folder`);
    return fresh;
  }
  const old = readIndex(dir);
  // The images' fingerprint covers their preprocessing, so it is named only when the resolution is the same.
  const differs = [
    old.resolution !== fresh.resolution && `the resolution (${old.resolution} then, ${fresh.resolution} now)`,
    old.resolution === fresh.resolution &&
      old.source.fingerprint !== fresh.source.fingerprint &&
      "the images (the folder changed, or other preprocessing)",
    old.vae.sha256 !== fresh.vae.sha256 && `the VAE (${old.vae.path} then, ${fresh.vae.path} now)`,
    old.shardSize !== fresh.shardSize && `the shard size (${old.shardSize} then, ${fresh.shardSize} now)`,
  ].filter((d): d is string => typeof d === "string");
  if (differs.length > 0)
    throw new DataError(`${dir} holds latents of something else: ${differs.join("; ")}: use another --out folder, or delete ${dir} to encode again`);
  return old;
}

/**
 * Encodes a folder (or the emoji set) into a latent dataset; finishes an interrupted encode of the same images,
 * VAE and resolution.
 * @throws ConfigError, DataError, NativeError
 */
export async function encode(req: EncodeRequest): Promise<EncodeResult> {
  const t0 = Date.now();
  const data = resolveDataConfig({ ...req.data, flip: false });
  if (data.name !== "folder" && data.name !== "emoji")
    throw new DataError(`sadm encode reads image folders (--data DIR) or the emoji set, not ${data.name} data`);
  if (data.channels !== 3) throw new DataError(`the VAE encodes RGB images: use channels 3 (got ${data.channels})`);
  const device = req.device ?? "cpu";
  const vae = loadVae(req.vae, device);
  const resolution = data.resolution ?? 256;
  if (resolution % vae.facts.downsample !== 0)
    throw new DataError(`--resolution ${resolution} is not a multiple of the VAE's downsampling factor ${vae.facts.downsample}`);
  const shardSize = req.shardSize ?? DEFAULT_SHARD;
  const source = findData(data);
  const opened = await source.open(req.decode);
  const ds = opened.dataset;
  const dir = path.resolve(req.out);
  const latentSize = resolution / vae.facts.downsample;
  const fresh: LatentIndex = {
    format: LATENTS_FORMAT,
    version: LATENTS_VERSION,
    vae: vae.identity,
    resolution,
    latentSize,
    source: {
      description: source.description,
      fingerprint: source.fingerprint,
      ...(source.classNames ? { classNames: source.classNames } : {}),
      images: ds.length,
      data: { ...data },
    },
    shardSize,
    shards: [],
    complete: false,
  };
  const idx = startIndex(dir, fresh);
  try {
    fs.mkdirSync(dir, { recursive: true });
  } catch (e) {
    if (isFsError(e)) throw fsError(e, `cannot create the latent folder ${dir}`);
    throw e;
  }
  const resumed = encodedCount(idx);
  let done = resumed;
  req.onProgress?.(done, ds.length);
  while (done < ds.length) {
    const n = Math.min(shardSize, ds.length - done);
    const shard = await encodeRange(vae, ds, done, n, latentSize);
    idx.shards.push(writeShard(dir, idx.shards.length, [vae.facts.latentChannels, latentSize, latentSize], shard));
    done += n;
    idx.complete = done === ds.length;
    writeIndex(dir, idx);
    req.onProgress?.(done, ds.length);
  }
  if (!idx.complete) {
    idx.complete = true;
    writeIndex(dir, idx);
  }
  return { dir, index: idx, encoded: done - resumed, resumed, seconds: (Date.now() - t0) / 1000, badImages: opened.bad.length };
}

/** Encodes images [first, first + n) and their mirror images, VAE_CHUNK at a time. */
async function encodeRange(
  vae: Vae,
  ds: { channels: number; height: number; read(i: number, out: Float32Array, offset: number): number },
  first: number,
  n: number,
  latentSize: number,
): Promise<ShardData> {
  const c = vae.facts.latentChannels;
  const per = c * latentSize * latentSize;
  const out: ShardData = {
    mean: new Float32Array(n * per),
    logvar: new Float32Array(n * per),
    meanFlip: new Float32Array(n * per),
    logvarFlip: new Float32Array(n * per),
    labels: new Int32Array(n),
  };
  const size = ds.height;
  const pix = ds.channels * size * size;
  // Each call holds VAE_CHUNK images: half of them crops, half their mirrors.
  const step = Math.max(1, Math.floor(VAE_CHUNK / 2));
  for (let i = 0; i < n; i += step) {
    const m = Math.min(step, n - i);
    const batch = new Float32Array(2 * m * pix);
    for (let j = 0; j < m; j++) {
      const img = new Float32Array(pix);
      out.labels[i + j] = ds.read(first + i + j, img, 0);
      batch.set(img, j * pix);
      batch.set(img, (m + j) * pix);
      flipRows(batch, (m + j) * pix, ds.channels * size, size);
    }
    let moments: Float32Array;
    try {
      moments = await vae.native.encode(batch, [2 * m, ds.channels, size, size]);
    } catch (e) {
      throw NativeError.wrap(e, "VAE encoding failed");
    }
    if (moments.length !== 2 * m * 2 * per) throw new NativeError(`the VAE returned ${moments.length} values for ${2 * m} images`);
    for (let j = 0; j < m; j++) {
      const at = (i + j) * per;
      const crop = j * 2 * per;
      const flip = (m + j) * 2 * per;
      out.mean.set(moments.subarray(crop, crop + per), at);
      out.logvar.set(moments.subarray(crop + per, crop + 2 * per), at);
      out.meanFlip.set(moments.subarray(flip, flip + per), at);
      out.logvarFlip.set(moments.subarray(flip + per, flip + 2 * per), at);
    }
  }
  return out;
}
