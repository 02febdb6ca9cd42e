/**
 * What a config says about its data ({@link DataConfig}), and the facts about that data the config needs before
 * anything is decoded: the image shape and the class table ({@link dataFacts}).
 */
import { ConfigError, DataError } from "../errors.js";
import type { DataSplit } from "./dataset.js";
import { MNIST_CLASS_NAMES } from "./mnist.js";
import { discoverClasses, type LabelMode } from "./scan.js";
import { emojiClassNames } from "./emoji.js";
import { readIndex } from "./latents.js";

/** How an image is brought to the model's square: ADM's centre crop, letterboxing, or a plain resize. */
export type ResizeMode = "crop" | "pad" | "stretch";

/** Which data to train on. */
export interface DataConfig {
  /**
   * `mnist`: the built-in digits; `folder`: your images (`path`); `emoji`: Google's Noto emoji by category (the
   * optional package `emoji-datasource-google`); `latents`: what `sadm encode` wrote (`path`), VAE latents of images.
   */
  name: "mnist" | "folder" | "emoji" | "latents";
  /**
   * folder: the folder holding the images (one sub-folder per class, a metadata file, or just images); latents: the
   * folder `sadm encode` wrote.
   */
  path?: string;
  /** folder, emoji: side of the square images the model sees, in pixels. */
  resolution?: number;
  /** folder, emoji: 3 (RGB) or 1 (grey, ITU-R 601 luma as Pillow's `convert("L")`). */
  channels?: 1 | 3;
  /**
   * folder, emoji: `crop` (default) is ADM's `center_crop_arr` as DiT trains: halve with a box filter while the short
   * side is ≥ 2× the target, bicubic to the target short side, centre crop; `pad` fits the long side and fills the
   * rest with `background`; `stretch` resizes to the square ignoring the aspect ratio.
   */
  resize?: ResizeMode;
  /**
   * Random horizontal flips (DiT's augmentation; default on for folder, emoji and latent data, off for digits). For
   * latents a flip picks the flipped crop's stored posterior.
   */
  flip?: boolean;
  /** folder, emoji: colour that transparent pixels are composited onto (and `pad` fills with): `#rrggbb`, `white`, `black`. */
  background?: string;
  /**
   * folder: where labels come from: `auto` (default: a metadata.jsonl/metadata.csv if there is one, else sub-folders
   * if there are any, else none), `folders`, `metadata`, or `none` (unlabelled).
   */
  labels?: LabelMode;
  /** folder, emoji: a file that cannot be decoded is skipped and listed (`skip`, default) or stops the run (`error`). */
  onBadImage?: "skip" | "error";
  /** Keep only these classes (labels keep their values): label numbers, or class names for named classes. */
  classes?: Array<number | string>;
  /** Use at most this many images (after the class filter; class-interleaved, so the classes stay balanced). */
  limit?: number;
  /** `all` (default), or the `train` (first 90 %) / `test` (last 10 %) part of every class. */
  split?: DataSplit;
  /**
   * folder, emoji: the name of each label, as the data has them (sub-folders, metadata labels or categories). Filled
   * in by sadm, so a run's config.json says which label is which class; a config that gives it must match the data.
   */
  classNames?: string[];
}

/** The data sources that are images decoded from files. */
export function isImageFiles(cfg: Pick<DataConfig, "name">): boolean {
  return cfg.name === "folder" || cfg.name === "emoji";
}

/** Defaults of the image-file options. */
export const IMAGE_DEFAULTS = {
  resolution: 32,
  channels: 3,
  resize: "crop",
  flip: true,
  background: "white",
  labels: "auto",
  onBadImage: "skip",
} as const satisfies Partial<DataConfig>;

/** What a config needs to know of its data before decoding it. */
export interface DataFacts {
  /** Side of the square images. */
  size: number;
  channels: number;
  /** Classes (0 = unlabelled). */
  numClasses: number;
  /** Class names by label, if the classes are named. */
  classNames: string[] | undefined;
}

/**
 * The shape and class table of the data a config names. Cheap: it reads no image, only folder names or the
 * metadata file (folder) or the category list (emoji).
 * @throws DataError when the folder or package is missing.
 */
export function dataFacts(cfg: DataConfig): DataFacts {
  switch (cfg.name) {
    case "mnist":
      return { size: 28, channels: 1, numClasses: 10, classNames: [...MNIST_CLASS_NAMES] };
    case "folder": {
      if (cfg.path === undefined) throw new DataError('folder data needs a path (--data DIR, data.path)');
      const { classNames } = discoverClasses(cfg.path, cfg.labels ?? IMAGE_DEFAULTS.labels);
      return imageFacts(cfg, classNames);
    }
    case "emoji":
      return imageFacts(cfg, emojiClassNames());
    case "latents": {
      if (cfg.path === undefined) throw new DataError("latent data needs a path (--data DIR, data.path): the folder sadm encode wrote");
      const idx = readIndex(cfg.path);
      return {
        size: idx.latentSize,
        channels: idx.vae.latentChannels,
        numClasses: idx.source.classNames?.length ?? 0,
        classNames: idx.source.classNames,
      };
    }
    default: {
      const name: never = cfg.name;
      throw new DataError(`unknown dataset "${String(name)}"`);
    }
  }
}

function imageFacts(cfg: DataConfig, classNames: string[] | undefined): DataFacts {
  return {
    size: cfg.resolution ?? IMAGE_DEFAULTS.resolution,
    channels: cfg.channels ?? IMAGE_DEFAULTS.channels,
    numClasses: classNames?.length ?? 0,
    classNames,
  };
}

/** `#rrggbb`, `#rgb`, `white` or `black` → [r, g, b]. @throws DataError for anything else. */
export function parseColour(text: string): [number, number, number] {
  const named: Record<string, [number, number, number]> = { white: [255, 255, 255], black: [0, 0, 0] };
  const hit = named[text.toLowerCase()];
  if (hit) return hit;
  const m = /^#([0-9a-f]{3}|[0-9a-f]{6})$/i.exec(text);
  if (!m) throw new DataError(`"${text}" is not a colour: use #rrggbb, #rgb, white or black`);
  const hex = m[1].length === 3 ? [...m[1]].map((c) => c + c).join("") : m[1];
  return [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16)) as [number, number, number];
}

/**
 * The class filter of a resolved config as labels (resolving a config turns class names into their labels).
 * @throws DataError for a name left unresolved.
 */
export function classLabels(cfg: Pick<DataConfig, "classes">): number[] | undefined {
  if (!cfg.classes) return undefined;
  return cfg.classes.map((k) => {
    if (typeof k !== "number") throw new DataError(`class "${k}" was not resolved to a label (resolve the config first)`);
    return k;
  });
}

/** Names for a message: quoted, the first `max`, then how many more. */
export function listNames(names: ReadonlyArray<string>, max = 20): string {
  const shown = names.slice(0, max).map((s) => JSON.stringify(s)).join(", ");
  return names.length > max ? `${shown} … (${names.length - max} more)` : shown;
}

/** Options of {@link classIndices}. */
export interface ClassLookup {
  numClasses: number;
  classNames?: ReadonlyArray<string>;
  /** The field of entry i, for the ConfigError (e.g. `config.data.classes[i]`). */
  field: (i: number) => string;
  /** What has the classes, for the messages ("the mnist data", "this checkpoint"). */
  owner: string;
  /** Refuse a class given twice. */
  unique?: boolean;
  /** The data set's name for the range message ("must be a mnist class between …"). */
  kind?: string;
}

/**
 * Classes given by label or by name → labels. A number is a label; a string is the class of that name, else (all
 * digits) a label, so a class named "10" is found by its name even where label 10 exists too.
 * @throws ConfigError naming the entry, with the known names.
 */
export function classIndices(classes: ReadonlyArray<number | string>, o: ClassLookup): number[] {
  const byName = new Map<string, number>();
  o.classNames?.forEach((name, k) => {
    if (k < o.numClasses && !byName.has(name)) byName.set(name, k);
  });
  const seen = new Set<number>();
  return classes.map((c, i) => {
    let k: number;
    if (typeof c === "number") k = c;
    else {
      const s = c.trim();
      const named = byName.get(s);
      if (named !== undefined) k = named;
      else if (/^\d+$/.test(s)) k = Number(s);
      else
        throw new ConfigError(
          o.field(i),
          byName.size > 0
            ? `"${s}" is not a class of ${o.owner} (its classes: ${listNames([...byName.keys()])})`
            : `"${s}" is not a class label: the classes of ${o.owner} have no names, use labels 0 to ${o.numClasses - 1}`,
        );
    }
    if (!Number.isInteger(k) || k < 0 || k >= o.numClasses)
      throw new ConfigError(o.field(i), `must be a ${o.kind ? `${o.kind} ` : ""}class between 0 and ${o.numClasses - 1} (got ${c})`);
    if (o.unique && seen.has(k)) throw new ConfigError(o.field(i), `duplicate class ${c}`);
    seen.add(k);
    return k;
  });
}
