/**
 * One image file → the model's CHW bytes. sharp (libvips) decodes: every format and mode users have (JPEG, PNG 8/16
 * bit, WebP, GIF's first frame, TIFF, AVIF; grey, palette, CMYK, with alpha), the EXIF orientation applied, ICC
 * profiles and CMYK converted to sRGB, 16 bits scaled to 8, transparency composited onto the background. The
 * geometry is the native core's: a port of Pillow's resampler, so the pixels are the ones DiT's PyTorch pipeline
 * computes (sharp has no box filter, and its crop is not ADM's).
 */
import sharp from "sharp";
import { errorMessage } from "../errors.js";
import { loadNative } from "../native.js";
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
    const { data, info } = await sharp(file, { failOn: "warning", pages: 1 })
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

/** A file decoded and preprocessed: C×R×R bytes, CHW. @throws DecodeError */
export async function decodeImage(file: string, p: Preprocess): Promise<Uint8Array> {
  const { data, width, height } = await decodeRgb(file, p.background);
  try {
    return await loadNative().preprocessImage(data, width, height, 3, {
      resolution: p.resolution,
      resize: p.resize,
      channels: p.channels,
      background: [...p.background],
    });
  } catch (e) {
    throw new DecodeError(file, errorMessage(e));
  }
}
