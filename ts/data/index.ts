/**
 * sadm's data: the {@link Dataset} seam, the built-in digits and emoji, image folders (scan, decode, cache) and the
 * batch loader.
 */
import type { Dataset } from "./dataset.js";
import type { DataConfig } from "./spec.js";
import { findData, type OpenOptions } from "./source.js";

export {
  ByteDataset,
  MemoryBytes,
  readImages,
  interleaveByClass,
  inSplit,
  TEST_FRACTION,
  type Batch,
  type ByteLayout,
  type ByteSource,
  type Dataset,
  type DataSplit,
} from "./dataset.js";
export { MnistDataset, MNIST_CLASS_NAMES, type MnistOptions } from "./mnist.js";
export { BatchLoader, flipped, type DataPosition, type LoaderOptions, type PositionedBatch } from "./loader.js";
export {
  scanFolder,
  discoverClasses,
  describeIgnored,
  comparePy,
  IMAGE_EXTENSIONS,
  type ClassTable,
  type ImageFile,
  type Ignored,
  type LabelMode,
  type ScanResult,
} from "./scan.js";
export { scanEmoji, emojiClassNames, EMOJI_PACKAGE, EMOJI_VERSION } from "./emoji.js";
export { decodeImage, decodeRgb, DecodeError, imageBytes, type Preprocess } from "./decode.js";
export { openCache, cacheRoot, cacheKey, CACHE_VERSION, type BadImage, type CacheOptions, type ImageCache } from "./cache.js";
export { findData, preprocessOf, type DataSource, type OpenOptions, type OpenedData } from "./source.js";
export {
  dataFacts,
  classLabels,
  classIndices,
  listNames,
  type ClassLookup,
  isImageFiles,
  parseColour,
  IMAGE_DEFAULTS,
  type DataConfig,
  type DataFacts,
  type ResizeMode,
} from "./spec.js";

/** Finds and opens the dataset a (resolved) data config names, decoding image files on first use. @throws DataError */
export async function openDataset(cfg: DataConfig, opts?: OpenOptions): Promise<Dataset> {
  return (await findData(cfg).open(opts)).dataset;
}
