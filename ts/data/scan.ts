/**
 * Finding the images of a folder and their labels, as torchvision's `ImageFolder` (one class per sub-folder, classes
 * sorted by name as strings) or Hugging Face's `imagefolder` (a `metadata.jsonl` / `metadata.csv` with `file_name` and
 * `label`) do, or without labels. Nothing is decoded here: this is the cheap part that tells the class table and
 * the file list (with sizes and mtimes, which key the decoded cache).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { parse as parseCsv } from "csv-parse/sync";
import { DataError, errorMessage, isFsError } from "../errors.js";

/** How labels are found: a metadata file if there is one, else sub-folders if there are any, else none. */
export type LabelMode = "auto" | "folders" | "metadata" | "none";

/** File extensions read as images (the formats sadm's decoder, libvips through sharp, reads). */
export const IMAGE_EXTENSIONS: readonly string[] = [
  ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".tif", ".tiff", ".avif",
];

const METADATA_FILES = ["metadata.jsonl", "metadata.csv"] as const;

/** One image file found by a scan. */
export interface ImageFile {
  /** Path relative to the folder, with `/` separators. */
  rel: string;
  /** Absolute path. */
  abs: string;
  size: number;
  /** Modification time; 0 for the files of a versioned package, which {@link ScanResult.package} identifies instead. */
  mtimeMs: number;
  /** Class index (0 when the data has no labels). */
  label: number;
}

/** Files a scan passed over, reported so that nothing vanishes silently. */
export interface Ignored {
  /** Files whose extension is not an image format (e.g. notes.txt). */
  notImages: string[];
  /** Images directly in a class-folder dataset's root, outside every class folder. */
  outsideClasses: string[];
  /** Images not listed in the metadata file. */
  notInMetadata: string[];
  /** Symbolic links whose target does not exist. */
  brokenLinks: string[];
}

/** What a scan found. */
export interface ScanResult {
  /** The folder, absolute. */
  root: string;
  /** How the labels were found. */
  mode: Exclude<LabelMode, "auto">;
  /** Class names by label; undefined without labels. */
  classNames: string[] | undefined;
  /** The images, by label, then by path. */
  files: ImageFile[];
  ignored: Ignored;
  /**
   * `name@version` when the files come from an npm package: that identifies their content, where their mtimes do
   * not (npm stamps each file with the time of the install, so a reinstall would look like new data).
   */
  package?: string;
}

/** Python's string order (by code point), which `sorted()` and so torchvision use; JS's `<` compares UTF-16 units. */
export function comparePy(a: string, b: string): number {
  const x = [...a];
  const y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = (x[i].codePointAt(0) ?? 0) - (y[i].codePointAt(0) ?? 0);
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

function isHidden(name: string): boolean {
  return name.startsWith(".");
}

function isImageName(name: string): boolean {
  return IMAGE_EXTENSIONS.includes(path.extname(name).toLowerCase());
}

/** One directory entry of the walk, with symbolic links resolved. */
interface Entry {
  rel: string;
  abs: string;
  stat: fs.Stats;
}

function readDir(dir: string): fs.Dirent[] {
  try {
    return fs.readdirSync(dir, { withFileTypes: true });
  } catch (e) {
    const why = isFsError(e) && (e.code === "EACCES" || e.code === "EPERM") ? "permission denied" : errorMessage(e);
    throw new DataError(`cannot read the folder ${dir}: ${why}; fix its permissions or move it out of the data`, {
      cause: e,
    });
  }
}

/**
 * Every non-hidden file under `dir` (following symbolic links, as torchvision does), with its stat. A link back to
 * a folder the walk is inside is a loop and an error; a link to nothing is reported.
 */
function walk(root: string, dir: string, ancestors: string[], files: Entry[], ignored: Ignored): void {
  for (const d of readDir(dir)) {
    if (isHidden(d.name)) continue;
    const abs = path.join(dir, d.name);
    const rel = path.relative(root, abs).split(path.sep).join("/");
    let stat: fs.Stats;
    try {
      stat = fs.statSync(abs);
    } catch (e) {
      if (d.isSymbolicLink()) {
        ignored.brokenLinks.push(rel);
        continue;
      }
      throw new DataError(`cannot read ${abs}: ${errorMessage(e)}`, { cause: e });
    }
    if (stat.isDirectory()) {
      const real = fs.realpathSync(abs);
      if (ancestors.includes(real))
        throw new DataError(
          `symlink loop: ${abs} leads back to ${real}, a folder it is inside; remove the link or point it elsewhere`,
        );
      walk(root, abs, [...ancestors, real], files, ignored);
    } else if (stat.isFile()) files.push({ rel, abs, stat });
  }
}

/** The image files among a walk's entries, each with its label; other files go to `ignored.notImages`. */
function images(entries: Entry[], label: (e: Entry) => number, ignored: Ignored): ImageFile[] {
  const out: ImageFile[] = [];
  for (const e of entries) {
    if (!isImageName(e.rel)) ignored.notImages.push(e.rel);
    else out.push({ rel: e.rel, abs: e.abs, size: e.stat.size, mtimeMs: e.stat.mtimeMs, label: label(e) });
  }
  return out;
}

/** Labels read from a metadata file: per relative path, the label value as written. */
interface Metadata {
  file: string;
  labels: Map<string, string | number | undefined>;
}

function metadataRows(file: string): Array<Record<string, unknown>> {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    throw new DataError(`cannot read ${file}: ${errorMessage(e)}`, { cause: e });
  }
  if (file.endsWith(".csv")) {
    try {
      return parseCsv(text, { columns: true, skip_empty_lines: true, trim: true }) as Array<Record<string, unknown>>;
    } catch (e) {
      throw new DataError(`${file} is not valid CSV: ${errorMessage(e)}`, { cause: e });
    }
  }
  const rows: Array<Record<string, unknown>> = [];
  text.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw new DataError(`${file}, line ${i + 1}: not valid JSON (${errorMessage(e)})`, { cause: e });
    }
    if (typeof v !== "object" || v === null || Array.isArray(v))
      throw new DataError(`${file}, line ${i + 1}: expected an object such as {"file_name": "a.png", "label": "cat"}`);
    rows.push(v as Record<string, unknown>);
  });
  return rows;
}

function readMetadata(file: string): Metadata {
  const labels = new Map<string, string | number | undefined>();
  metadataRows(file).forEach((row, i) => {
    const name = row.file_name;
    const where = `${file}, entry ${i + 1}`;
    if (typeof name !== "string" || name.length === 0) throw new DataError(`${where}: no file_name`);
    const label = row.label;
    if (label !== undefined && typeof label !== "string" && typeof label !== "number")
      throw new DataError(`${where}: label must be a string or a number (got ${JSON.stringify(label)})`);
    const rel = path.posix.normalize(name.split(path.sep).join("/"));
    if (labels.has(rel)) throw new DataError(`${where}: ${name} is listed twice`);
    labels.set(rel, label);
  });
  if (labels.size === 0) throw new DataError(`${file} lists no files`);
  return { file, labels };
}

/**
 * The class table of metadata labels: integer labels (JSON numbers, or digit strings in a CSV) are class indices
 * 0..max, named by their number; any other label set is sorted by name as strings.
 */
function metadataClasses(values: Array<string | number>): { names: string[]; index: (v: string | number) => number } {
  const isInt = (v: string | number): boolean => (typeof v === "number" ? Number.isInteger(v) && v >= 0 : /^\d+$/.test(v));
  if (values.every(isInt)) {
    const max = Math.max(...values.map(Number));
    if (max > 1_000_000) throw new DataError(`a metadata label of ${max} is too large for a class index`);
    return { names: Array.from({ length: max + 1 }, (_, k) => String(k)), index: (v) => Number(v) };
  }
  const names = [...new Set(values.map(String))].sort(comparePy);
  const at = new Map(names.map((n, k) => [n, k]));
  return { names, index: (v) => at.get(String(v)) ?? -1 };
}

function scanMetadata(root: string, meta: Metadata, entries: Entry[], ignored: Ignored): ScanResult {
  const byRel = new Map(entries.map((e) => [e.rel, e]));
  const missing = [...meta.labels.keys()].filter((rel) => !byRel.has(rel));
  if (missing.length > 0)
    throw new DataError(
      `${meta.file} lists ${missing.length} file(s) that are not in ${root}, e.g. ${missing[0]}: fix or remove those entries`,
    );
  const labelled = [...meta.labels.values()].filter((v): v is string | number => v !== undefined);
  const classes = labelled.length > 0 ? metadataClasses(labelled) : undefined;
  const listed = entries.filter((e) => meta.labels.has(e.rel));
  for (const e of entries)
    if (!meta.labels.has(e.rel) && isImageName(e.rel)) ignored.notInMetadata.push(e.rel);
  const files = images(listed, (e) => {
    const v = meta.labels.get(e.rel);
    return classes && v !== undefined ? classes.index(v) : 0;
  }, ignored);
  return { root, mode: "metadata", classNames: classes?.names, files: sortFiles(files), ignored };
}

function scanFolders(root: string, entries: Entry[], classDirs: string[], ignored: Ignored): ScanResult {
  const names = [...classDirs].sort(comparePy);
  const at = new Map(names.map((n, k) => [n, k]));
  const inClass: Entry[] = [];
  for (const e of entries) {
    const slash = e.rel.indexOf("/");
    if (slash < 0) {
      if (isImageName(e.rel)) ignored.outsideClasses.push(e.rel);
      else ignored.notImages.push(e.rel);
    } else inClass.push(e);
  }
  const files = images(inClass, (e) => at.get(e.rel.slice(0, e.rel.indexOf("/"))) ?? -1, ignored);
  const counts = new Array<number>(names.length).fill(0);
  for (const f of files) counts[f.label]++;
  const empty = names.filter((_, k) => counts[k] === 0);
  if (empty.length > 0)
    throw new DataError(
      `the class folder ${path.join(root, empty[0])} holds no images` +
        (empty.length > 1 ? ` (nor do ${empty.length - 1} other class folders)` : "") +
        ": add images to it or remove it (every sub-folder of the data folder is a class)",
    );
  return { root, mode: "folders", classNames: names, files: sortFiles(files), ignored };
}

function sortFiles(files: ImageFile[]): ImageFile[] {
  return files.sort((a, b) => a.label - b.label || comparePy(a.rel, b.rel));
}

/** How a folder is labelled, found without walking it: the top level and, with labels from a metadata file, that file. */
export interface ClassTable {
  /** The folder, absolute. */
  root: string;
  mode: Exclude<LabelMode, "auto">;
  /** Class names by label; undefined without labels. */
  classNames: string[] | undefined;
  /** The metadata file's labels (mode `metadata`). */
  metadata?: Metadata;
  /** The class folders' names (mode `folders`). */
  classDirs: string[];
}

/**
 * The label mode and class table of an image folder: cheap (the top level, and the metadata file if labels come
 * from one), so a config can size its class table before the folder is walked.
 * @throws DataError for a folder that does not exist, is empty or cannot be read, or for bad metadata.
 */
export function discoverClasses(folder: string, labels: LabelMode = "auto"): ClassTable {
  const root = path.resolve(folder);
  let stat: fs.Stats;
  try {
    stat = fs.statSync(root);
  } catch {
    throw new DataError(`the image folder ${root} does not exist: check the path (--data / data.path)`);
  }
  if (!stat.isDirectory()) throw new DataError(`${root} is not a folder: give the folder that holds the images (--data / data.path)`);
  const top = readDir(root).filter((d) => !isHidden(d.name));
  if (top.length === 0)
    throw new DataError(`the image folder ${root} is empty: put the images in it, or in one sub-folder per class`);
  const isDir = (name: string): boolean => {
    try {
      return fs.statSync(path.join(root, name)).isDirectory();
    } catch {
      return false;
    }
  };
  const classDirs = top.filter((d) => isDir(d.name)).map((d) => d.name).sort(comparePy);
  const metaFiles = METADATA_FILES.filter((m) => top.some((d) => d.name === m && !isDir(m)));
  const mode = labels !== "auto" ? labels : metaFiles.length > 0 ? "metadata" : classDirs.length > 0 ? "folders" : "none";
  if (mode === "metadata") {
    if (metaFiles.length === 0)
      throw new DataError(`${root} has no metadata.jsonl or metadata.csv (with file_name and label) for labels: "metadata"`);
    if (metaFiles.length > 1)
      throw new DataError(`${root} has both metadata.jsonl and metadata.csv: keep the one that holds the labels`);
    const metadata = readMetadata(path.join(root, metaFiles[0]));
    const values = [...metadata.labels.values()];
    const labelled = values.filter((v): v is string | number => v !== undefined);
    if (labelled.length > 0 && labelled.length < values.length)
      throw new DataError(`${metadata.file}: ${values.length - labelled.length} entries have no label; label every file or none`);
    const classNames = labelled.length > 0 ? metadataClasses(labelled).names : undefined;
    return { root, mode, classNames, metadata, classDirs };
  }
  if (mode === "folders") {
    if (classDirs.length === 0)
      throw new DataError(
        `${root} has no sub-folders to take classes from: put each class's images in a sub-folder of its own, ` +
          'or train without labels (--unconditional, data.labels: "none")',
      );
    return { root, mode, classNames: classDirs, classDirs };
  }
  return { root, mode, classNames: undefined, classDirs };
}

/**
 * Scans an image folder: its class table ({@link discoverClasses}) and every image file with its label.
 * @throws DataError for a folder that does not exist, is empty, holds no images, has an empty class folder, cannot be
 * read, or contains a symlink loop — each naming the path and the fix.
 */
export function scanFolder(folder: string, labels: LabelMode = "auto"): ScanResult {
  const table = discoverClasses(folder, labels);
  const { root } = table;
  const ignored: Ignored = { notImages: [], outsideClasses: [], notInMetadata: [], brokenLinks: [] };
  const entries: Entry[] = [];
  walk(root, root, [fs.realpathSync(root)], entries, ignored);
  const rest = entries.filter((e) => !METADATA_FILES.some((m) => e.rel === m));
  const result: ScanResult = table.metadata
    ? scanMetadata(root, table.metadata, rest, ignored)
    : table.mode === "folders"
      ? scanFolders(root, rest, table.classDirs, ignored)
      : { root, mode: "none", classNames: undefined, files: sortFiles(images(rest, () => 0, ignored)), ignored };
  if (result.files.length === 0) {
    const other = ignored.notImages;
    throw new DataError(
      `the image folder ${root} holds no image files (${IMAGE_EXTENSIONS.join(", ")})` +
        (other.length > 0 ? `; it has ${other.length} other file(s), e.g. ${other[0]}` : "") +
        (ignored.outsideClasses.length > 0 ? `; ${ignored.outsideClasses.length} image(s) lie outside every class folder` : ""),
    );
  }
  return result;
}

/** One line on what a scan passed over, or undefined when it passed over nothing. */
export function describeIgnored(ig: Ignored): string | undefined {
  const parts: string[] = [];
  const some = (list: string[]): string => `${list.slice(0, 3).join(", ")}${list.length > 3 ? ", …" : ""}`;
  if (ig.notImages.length > 0) parts.push(`${ig.notImages.length} file(s) that are not images by extension (${some(ig.notImages)})`);
  if (ig.outsideClasses.length > 0)
    parts.push(`${ig.outsideClasses.length} image(s) outside every class folder (${some(ig.outsideClasses)})`);
  if (ig.notInMetadata.length > 0)
    parts.push(`${ig.notInMetadata.length} image(s) not listed in the metadata file (${some(ig.notInMetadata)})`);
  if (ig.brokenLinks.length > 0) parts.push(`${ig.brokenLinks.length} broken symbolic link(s) (${some(ig.brokenLinks)})`);
  return parts.length > 0 ? `ignored ${parts.join("; ")}` : undefined;
}
