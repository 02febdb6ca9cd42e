/**
 * One image file → the model's CHW bytes. PNG and JPEG, the common cases, are decoded by the native addon
 * (`decodeImageFile`: the png crate, and libjpeg-turbo's code as MozJPEG ships it, the same decoder as sharp's) with
 * transparency composited onto the background exactly as Pillow's `alpha_composite` does, and preprocessed in the
 * same call. Everything else goes through sharp (libvips): WebP, GIF's first frame, TIFF, AVIF, CMYK, and the PNGs
 * and JPEGs whose pixels depend on their metadata, with the EXIF orientation applied, ICC profiles and CMYK
 * converted to sRGB, 16 bits scaled to 8, transparency flattened onto the background; then the native
 * preprocessing. The geometry is the native core's either way: a port of Pillow's resampler, so the pixels are the
 * ones DiT's PyTorch pipeline computes (sharp has no box filter, and its crop is not ADM's).
 */
import { errorMessage } from "../errors.js";
import { loadNative } from "../native.js";
import { loadSharp } from "../sharp.js";
import type { ResizeMode } from "./spec.js";

/** The preprocessing of every image of a dataset: part of its decoded cache's key. */
export interface Preprocess {
  resolution: number;
  channels: 1 | 3;
  resize: ResizeMode;
  /** Composited under transparent pixels, and the fill of `pad`. */
  background: [number, number, number];
}

/** Bytes per preprocessed image. */
export function imageBytes(p: Preprocess): number {
  return p.channels * p.resolution * p.resolution;
}

/** A file that could not be decoded, and the decoder's reason. */
export class DecodeError extends Error {
  constructor(
    readonly file: string,
    readonly reason: string,
  ) {
    super(`${file}: ${reason}`);
  }
}


/** The 8-bit sRGB pixels (HWC, 3 channels) of a file, upright and without alpha. @throws DecodeError */
export async function decodeRgb(file: string, background: [number, number, number]): Promise<{ data: Buffer; width: number; height: number }> {
  try {
    // failOn "warning": a truncated file decodes with a warning and grey fill, which must not pass as an image.
    const { data, info } = await loadSharp("to decode this file")(file, { failOn: "warning", pages: 1 })
      .autoOrient()
      .flatten({ background: { r: background[0], g: background[1], b: background[2] } })
      .toColourspace("srgb")
      .removeAlpha()
      .raw({ depth: "uchar" })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels, expected 3`);
    return { data, width: info.width, height: info.height };
  } catch (e) {
    throw new DecodeError(file, errorMessage(e).split("\n")[0].trim() || "cannot decode");
  }
}

/**
 * A file decoded and preprocessed: C×R×R bytes, CHW. The native decoder first; sharp for the files it leaves.
 * @throws DecodeError
 */
export async function decodeImage(file: string, p: Preprocess): Promise<Uint8Array> {
  const native = loadNative();
  const opts = { resolution: p.resolution, resize: p.resize, channels: p.channels, background: [...p.background] };
  let fast: Uint8Array | null;
  try {
    fast = await native.decodeImageFile(file, opts);
  } catch (e) {
    // A PNG or JPEG that does not decode: sharp would not decode it either.
    throw new DecodeError(file, errorMessage(e));
  }
  if (fast) return fast;
  const { data, width, height } = await decodeRgb(file, p.background);
  try {
    return await native.preprocessImage(data, width, height, 3, opts);
  } catch (e) {
    throw new DecodeError(file, errorMessage(e));
  }
}
