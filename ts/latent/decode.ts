/**
 * `sadm decode`: a safetensors file of latents (as a DiT samples them: scaled by the VAE's factor) → one PNG per
 * image, written as each chunk is decoded.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { ConfigError, DataError, fsError, isFsError } from "../errors.js";
import { SafetensorsFile } from "../io/safetensors.js";
import { encodeImage, writeFileAtomic } from "../image.js";
import { decodeLatents, loadVae } from "./vae.js";
import { sampleFileName } from "../sampler.js";

/** What to decode. */
export interface DecodeRequest {
  /** A safetensors file holding a [N, C, h, w] tensor of scaled latents. */
  latents: string;
  /** Its tensor (default: the file's only 4-D tensor, or one named `latents` or `samples`). */
  tensor?: string;
  /** A diffusers VAE folder or weights file. */
  vae: string;
  /** The folder for the PNGs (`00000000.png` …). */
  out: string;
  device?: string;
  /** Called after each chunk with the images done and the total. */
  onProgress?: (done: number, total: number) => void;
}

/** Which tensor of the file holds the latents. */
function pickTensor(f: SafetensorsFile, name: string | undefined): string {
  if (name !== undefined) {
    f.info(name);
    return name;
  }
  const four = [...f.header.tensors.entries()].filter(([, t]) => t.shape.length === 4).map(([n]) => n);
  if (four.length === 1) return four[0];
  const named = four.find((n) => n === "latents" || n === "samples");
  if (named) return named;
  throw new DataError(
    `${f.file} has ${four.length === 0 ? "no [N, C, h, w] tensor" : `several [N, C, h, w] tensors (${four.join(", ")})`}: name the latents with --tensor`,
  );
}

/**
 * Decodes every latent of the file into `out`, one PNG each. Nothing the folder already holds is overwritten.
 * @returns the PNGs written.
 * @throws DataError, ConfigError, NativeError
 */
export async function decodeFile(req: DecodeRequest): Promise<{ dir: string; count: number; shape: number[] }> {
  const f = SafetensorsFile.open(path.resolve(req.latents));
  try {
    const name = pickTensor(f, req.tensor);
    const t = f.info(name);
    if (t.shape.length !== 4) throw new DataError(`${f.file}: tensor '${name}' is [${t.shape}], not [N, C, h, w] latents`);
    if (t.dtype.startsWith("I") || t.dtype === "U8") throw new DataError(`${f.file}: tensor '${name}' holds integers (${t.dtype}), not latents`);
    const [n, c, h, w] = t.shape;
    const vae = loadVae(req.vae, req.device ?? "cpu");
    if (c !== vae.facts.latentChannels)
      throw new DataError(`${f.file}: '${name}' has ${c} channels, but the VAE ${vae.identity.path} decodes ${vae.facts.latentChannels}-channel latents`);
    const dir = path.resolve(req.out);
    try {
      fs.mkdirSync(dir, { recursive: true });
    } catch (e) {
      throw isFsError(e) ? fsError(e, `cannot create ${dir}`) : e;
    }
    const fileOf = (k: number): string => path.join(dir, sampleFileName(k, n));
    const clash = [0, n - 1].map(fileOf).find((p) => fs.existsSync(p));
    if (clash) throw new ConfigError("out", `${clash} exists: choose another folder, or remove the images there`);
    const side = h * vae.facts.downsample;
    const sideW = w * vae.facts.downsample;
    let count = 0;
    const per = c * h * w;
    // Read and decode a few latents at a time: the file may be larger than memory wants.
    const rows = 16;
    for (let first = 0; first < n; first += rows) {
      const m = Math.min(rows, n - first);
      const part = f.readRows(name, first, m) as Float32Array;
      await decodeLatents(vae, part.subarray(0, m * per), [m, c, h, w], (k, images) => {
        const done = images.length / (3 * side * sideW);
        for (let j = 0; j < done; j++) writeFileAtomic(fileOf(first + k + j), encodeImage(images, j, 3, side, sideW));
        count += done;
        req.onProgress?.(count, n);
      });
    }
    return { dir, count, shape: [n, 3, side, sideW] };
  } finally {
    f.close();
  }
}
