/**
 * sharp (libvips), loaded on first use: it is large, and neither a folder of plain PNGs and JPEGs (decoded in the
 * native core) nor a grid without labels needs it.
 */
import { SadmError, errorMessage } from "./errors.js";

type SharpFactory = typeof import("sharp");
let sharpModule: SharpFactory | undefined;

/** sharp, for `purpose` (named in the error when it cannot load, e.g. "to render the grid's labels"). @throws SadmError */
export function loadSharp(purpose: string): SharpFactory {
  if (!sharpModule) {
    try {
      sharpModule = require("sharp") as SharpFactory;
    } catch (e) {
      throw new SadmError(`cannot load sharp ${purpose}: ${errorMessage(e).split("\n")[0]}`, { cause: e });
    }
  }
  return sharpModule;
}
