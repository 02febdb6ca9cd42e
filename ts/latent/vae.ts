/**
 * Stable Diffusion's VAE from TypeScript: loads it through the addon, names it by a digest of its files (so latents
 * and runs can check they use the same one), and decodes latents to images in bounded chunks.
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { DataError, NativeError } from "../errors.js";
import { loadNative, type NativeVae } from "../native.js";
import type { VaeIdentity } from "../data/latents.js";

/** What the core says of a loaded VAE. */
export interface VaeFacts {
  latentChannels: number;
  scalingFactor: number;
  downsample: number;
  latentShift: number[];
  latentMultiplier: number[];
  /** The files it was read from (config and weights). */
  files: string[];
}

/** A loaded VAE and its identity. */
export interface Vae {
  native: NativeVae;
  facts: VaeFacts;
  identity: VaeIdentity;
}

/** Images per native encode/decode call: bounds the activations of a 256² or 512² image batch. */
export const VAE_CHUNK = 4;

/** SHA-256 over the VAE's files, in order, each as its name, size and bytes. */
function digest(files: readonly string[]): string {
  const h = crypto.createHash("sha256");
  const buf = Buffer.alloc(1 << 20);
  for (const f of files) {
    h.update(`${path.basename(f)}\0${fs.statSync(f).size}\0`);
    const fd = fs.openSync(f, "r");
    try {
      for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
    } finally {
      fs.closeSync(fd);
    }
  }
  return h.digest("hex");
}

/**
 * Loads a VAE: a diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`) or a single weights file.
 * @throws DataError when the path is missing; NativeError with the core's message (no weights, another
 * architecture, a tensor that does not fit).
 */
export function loadVae(vaePath: string, device: string): Vae {
  const abs = path.resolve(vaePath);
  if (!fs.existsSync(abs))
    throw new DataError(`VAE ${abs} does not exist: give a diffusers VAE folder (config.json + diffusion_pytorch_model.safetensors) or a weights file`);
  let native: NativeVae;
  try {
    native = loadNative(device).NativeVae.load(abs, device);
  } catch (e) {
    throw NativeError.wrap(e, `cannot load the VAE ${abs}`);
  }
  const facts = JSON.parse(native.configJson()) as VaeFacts;
  const identity: VaeIdentity = {
    path: abs,
    sha256: digest(facts.files),
    scalingFactor: facts.scalingFactor,
    latentShift: facts.latentShift,
    latentMultiplier: facts.latentMultiplier,
    latentChannels: facts.latentChannels,
    downsample: facts.downsample,
  };
  return { native, facts, identity };
}

/**
 * Checks that `vae` is the one that made latents (or trained a run) recorded as `want`.
 * @throws DataError naming both and the fix.
 */
export function checkSameVae(vae: Vae, want: VaeIdentity, what: string): void {
  if (vae.identity.sha256 !== want.sha256)
    throw new DataError(
      `${what} was encoded with the VAE ${want.path} (sha256 ${want.sha256.slice(0, 12)}…), but ${vae.identity.path} is another ` +
        `(sha256 ${vae.identity.sha256.slice(0, 12)}…): decode with the same VAE (--vae ${want.path}), or encode the images again with this one`,
    );
}

/** Decodes scaled latents [n, C, h, w] (see {@link decodeLatents}) into one array of images [n, 3, h·f, w·f]. */
export async function decodeAll(
  vae: Vae,
  latents: Float32Array,
  shape: readonly [number, number, number, number],
): Promise<{ images: Float32Array; shape: [number, number, number, number] }> {
  const f = vae.facts.downsample;
  const out: [number, number, number, number] = [shape[0], 3, shape[2] * f, shape[3] * f];
  const per = out[1] * out[2] * out[3];
  const images = new Float32Array(out[0] * per);
  await decodeLatents(vae, latents, shape, (first, part) => images.set(part, first * per));
  return { images, shape: out };
}

/**
 * Decodes scaled latents [n, C, h, w] (what the DiT samples) to images [n, 3, h·f, w·f] in [-1, 1], chunk by chunk.
 * `onChunk` gets each chunk's first index and images as it is done.
 */
export async function decodeLatents(
  vae: Vae,
  latents: Float32Array,
  shape: readonly [number, number, number, number],
  onChunk: (first: number, images: Float32Array) => void | Promise<void>,
  chunk = VAE_CHUNK,
): Promise<void> {
  const [n, c, h, w] = shape;
  if (c !== vae.facts.latentChannels)
    throw new DataError(`the latents have ${c} channels but the VAE ${vae.identity.path} decodes ${vae.facts.latentChannels}`);
  const per = c * h * w;
  for (let first = 0; first < n; first += chunk) {
    const m = Math.min(chunk, n - first);
    let images: Float32Array;
    try {
      images = await vae.native.decode(latents.subarray(first * per, (first + m) * per), [m, c, h, w]);
    } catch (e) {
      throw NativeError.wrap(e, "VAE decoding failed");
    }
    await onChunk(first, images);
  }
}
