/**
 * A data source: what a config's `data` names, found but not yet decoded. Planning a run looks at it (class names, a
 * fingerprint to check a resumed run against); training opens it into a {@link Dataset}.
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { DataError } from "../errors.js";
import type { DatasetInfo } from "../checkpoint.js";
import { interleaveByClass, inSplit, ByteDataset, type Dataset, type DataSplit } from "./dataset.js";
import { MnistDataset } from "./mnist.js";
import { IMAGE_EXTENSIONS, describeIgnored, scanFolder, type ImageFile, type ScanResult } from "./scan.js";
import { scanEmoji } from "./emoji.js";
import { cacheKey, openCache, type BadImage, type CacheOptions } from "./cache.js";
import { IMAGE_DEFAULTS, classLabels, parseColour, type DataConfig } from "./spec.js";
import type { Preprocess } from "./decode.js";
import { LatentDataset, readIndex } from "./latents.js";

/** Progress and cache settings of {@link DataSource.open}. */
export type OpenOptions = Omit<CacheOptions, "onBadImage">;

/** An opened data source. */
export interface OpenedData {
  dataset: Dataset;
  /** What the run records of its data (state.json's `extra.dataset`). */
  info: DatasetInfo;
  /** Files that did not decode (skipped), with the decoder's message. */
  bad: BadImage[];
  /** One line on what was read: images, classes, shape, cache. */
  summary: string;
}

/** The data a config names, found but not decoded. */
export interface DataSource {
  /** `mnist`, `emoji`, or `folder <absolute path>`. */
  readonly description: string;
  /** Class names by label, if the classes are named. */
  readonly classNames: string[] | undefined;
  /** Digest of everything that decides the images and labels the run reads. */
  readonly fingerprint: string;
  /** Lines about files passed over (not images, outside the classes, …). */
  readonly notes: string[];
  /** Decodes (or finds the decoded cache) and returns the dataset. @throws DataError */
  open(opts?: OpenOptions): Promise<OpenedData>;
}

function sha256(v: unknown): string {
  return crypto.createHash("sha256").update(JSON.stringify(v)).digest("hex");
}

/**
 * Finds the data a (resolved) data config names: lists the folder or package, reads the labels, and fingerprints
 * them. Nothing is decoded.
 * @throws DataError
 */
export function findData(cfg: DataConfig): DataSource {
  switch (cfg.name) {
    case "mnist":
      return mnistSource(cfg);
    case "folder": {
      if (cfg.path === undefined) throw new DataError("folder data needs a path (--data DIR, data.path)");
      const scan = scanFolder(cfg.path, cfg.labels ?? IMAGE_DEFAULTS.labels);
      return imageSource(cfg, `folder ${scan.root}`, scan);
    }
    case "emoji":
      return imageSource(cfg, "emoji", scanEmoji());
    case "latents":
      return latentSource(cfg);
    default: {
      const name: never = cfg.name;
      throw new DataError(`unknown dataset "${String(name)}"`);
    }
  }
}

function mnistSource(cfg: DataConfig): DataSource {
  const classes = classLabels(cfg);
  const view = { classes, limit: cfg.limit, split: cfg.split ?? "all" };
  const fingerprint = sha256({ mnist: 1, ...view });
  return {
    description: "mnist",
    classNames: Array.from({ length: 10 }, (_, k) => String(k)),
    fingerprint,
    notes: [],
    open: () => {
      const dataset = new MnistDataset({ classes, limit: cfg.limit, split: view.split });
      const info: DatasetInfo = { source: "mnist", classNames: [...(dataset.classNames ?? [])], fingerprint, images: dataset.length };
      return Promise.resolve({ dataset, info, bad: [], summary: `${dataset.length} MNIST digits (28×28 grey)` });
    },
  };
}

/** The preprocessing a resolved image-data config asks for. */
export function preprocessOf(cfg: DataConfig): Preprocess {
  return {
    resolution: cfg.resolution ?? IMAGE_DEFAULTS.resolution,
    channels: cfg.channels ?? IMAGE_DEFAULTS.channels,
    resize: cfg.resize ?? IMAGE_DEFAULTS.resize,
    background: parseColour(cfg.background ?? IMAGE_DEFAULTS.background),
  };
}

/** The items a view keeps, in dataset order: class filter, split per class, class-interleaved, limit. */
function select<T extends { label: number }>(files: readonly T[], classes: number[] | undefined, split: DataSplit, limit: number | undefined): T[] {
  const keep = classes ? new Set(classes) : undefined;
  const kept = files.filter((f) => !keep || keep.has(f.label));
  const counts = new Map<number, number>();
  for (const f of kept) counts.set(f.label, (counts.get(f.label) ?? 0) + 1);
  const rank = new Map<number, number>();
  const inPart = kept.filter((f) => {
    const r = rank.get(f.label) ?? 0;
    rank.set(f.label, r + 1);
    return inSplit(split, r, counts.get(f.label) ?? 0);
  });
  const order = interleaveByClass(inPart.map((f) => f.label));
  return order.slice(0, limit ?? order.length).map((i) => inPart[i]);
}

function imageSource(cfg: DataConfig, description: string, scan: ScanResult): DataSource {
  const pre = preprocessOf(cfg);
  const classes = classLabels(cfg);
  const split = cfg.split ?? "all";
  const onBadImage = cfg.onBadImage ?? IMAGE_DEFAULTS.onBadImage;
  const fingerprint = sha256({
    images: cacheKey(scan.files, pre, scan.package),
    labels: scan.files.map((f) => [f.rel, f.label]),
    classNames: scan.classNames ?? null,
    view: { classes: classes ?? null, split, limit: cfg.limit ?? null },
  });
  const ignored = describeIgnored(scan.ignored);
  return {
    description,
    classNames: scan.classNames,
    fingerprint,
    notes: ignored ? [ignored] : [],
    open: async (opts = {}) => {
      const cache = await openCache(scan.root, scan.files, pre, { name: cfg.name === "emoji" ? "emoji" : undefined, package: scan.package, ...opts, onBadImage });
      const good = scan.files.filter((f) => cache.slotOf.has(f.rel));
      if (good.length === 0)
        throw new DataError(
          `none of the ${scan.files.length} image file(s) of ${description} could be decoded ` +
            `(e.g. ${cache.bad[0]?.rel}: ${cache.bad[0]?.reason}): check that they are images sadm reads (${IMAGE_EXTENSIONS.join(", ")})`,
        );
      const chosen = select(good, classes, split, cfg.limit);
      if (chosen.length === 0)
        throw new DataError(`${description}: no images are left after the class filter, split and limit`);
      const dataset = new ByteDataset(
        cache.bytes,
        Uint32Array.from(chosen, (f) => cache.slotOf.get(f.rel) ?? 0),
        Int32Array.from(chosen, (f) => f.label),
        {
          channels: pre.channels,
          height: pre.resolution,
          width: pre.resolution,
          numClasses: scan.classNames?.length ?? 0,
          ...(scan.classNames ? { classNames: scan.classNames } : {}),
        },
        description,
      );
      const info: DatasetInfo = {
        source: description,
        ...(scan.classNames ? { classNames: [...scan.classNames] } : {}),
        fingerprint,
        images: dataset.length,
      };
      const shape = `${pre.resolution}×${pre.resolution} ${pre.channels === 3 ? "RGB" : "grey"}, ${pre.resize}`;
      const classText = scan.classNames ? `${scan.classNames.length} classes` : "no labels";
      const how = cache.built
        ? `decoded in ${cache.seconds.toFixed(1)}s (${(scan.files.length / Math.max(cache.seconds, 1e-3)).toFixed(0)} files/s)`
        : "from the decoded cache";
      const summary = `${dataset.length} images, ${classText}, ${shape}; ${how} (${cache.file})`;
      return { dataset, info, bad: cache.bad, summary };
    },
  };
}

/**
 * A latent dataset (`sadm encode`'s output). Its fingerprint covers the source images' fingerprint, the VAE, the
 * resolution and the shard files, so a run resumed on latents encoded again (another VAE, resolution or folder) is
 * refused as a changed dataset.
 */
function latentSource(cfg: DataConfig): DataSource {
  const dir = cfg.path ?? "";
  const idx = readIndex(dir);
  const classes = classLabels(cfg);
  const split = cfg.split ?? "all";
  const shards = idx.shards.map((s) => {
    const st = fs.statSync(path.join(dir, s.file), { throwIfNoEntry: false });
    return [s.file, s.count, st?.size ?? -1, st?.mtimeMs ?? -1];
  });
  const fingerprint = sha256({
    latents: { source: idx.source.fingerprint, vae: idx.vae.sha256, resolution: idx.resolution, shards },
    view: { classes: classes ?? null, split, limit: cfg.limit ?? null },
  });
  const description = `latents ${path.resolve(dir)}`;
  return {
    description,
    classNames: idx.source.classNames,
    fingerprint,
    notes: [],
    open: () => {
      const labels = LatentDataset.labelsOf(dir, idx);
      const chosen = select(Array.from(labels, (label, i) => ({ label, i })), classes, split, cfg.limit);
      if (chosen.length === 0) throw new DataError(`${description}: no latents are left after the class filter, split and limit`);
      const dataset = new LatentDataset(dir, idx, chosen.map((c) => c.i));
      const info: DatasetInfo = {
        source: description,
        ...(idx.source.classNames ? { classNames: [...idx.source.classNames] } : {}),
        fingerprint,
        images: dataset.length,
        vae: idx.vae,
      };
      const classText = idx.source.classNames ? `${idx.source.classNames.length} classes` : "no labels";
      const summary =
        `${dataset.length} latents, ${classText}, ${idx.vae.latentChannels}×${idx.latentSize}×${idx.latentSize} ` +
        `(${idx.resolution}×${idx.resolution} images of ${idx.source.description}, VAE ${idx.vae.path})`;
      return Promise.resolve({ dataset, info, bad: [], summary });
    },
  };
}
