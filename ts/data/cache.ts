/**
 * The decoded cache: every image of a folder, decoded and preprocessed once (in parallel, with progress) into one
 * uint8 file per folder and preprocessing, so a second run or a resume starts at once. Its name carries a key over
 * the file list, sizes, mtimes and the preprocessing, so changing, adding or removing a file makes a new one (and
 * the old one of that folder is deleted). It is written under a temporary name and renamed into place, so a killed
 * decode never leaves a cache that looks whole.
 *
 * Layout: the images' C·H·W bytes back to back, one slot per file in path order (a slot of a file that would not
 * decode is zeros), then a JSON footer, its byte length (u32 LE) and the magic `SADMIMG1`. The footer at the end
 * lets slots be written in whatever order the parallel decodes finish.
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { DataError, errorMessage, isFsError, fsError } from "../errors.js";
import { TaskProgress } from "../logging.js";
import { processAlive } from "../process.js";
import { MemoryBytes, type ByteSource } from "./dataset.js";
import { DecodeError, decodeImage, imageBytes, type Preprocess } from "./decode.js";
import { comparePy, type ImageFile } from "./scan.js";

/** Bump when decoding or preprocessing changes what a cache holds: every old cache then misses. */
export const CACHE_VERSION = 2;
const MAGIC = Buffer.from("SADMIMG1", "latin1");
const TAIL = 4 + MAGIC.length;
const EXT = ".sadm-images";
/** Caches up to this size are read into memory; larger ones are read image by image from the file. */
export const IN_MEMORY_BYTES = 1 << 30;

/** A file the cache could not decode. */
export interface BadImage {
  /** Path relative to the folder. */
  rel: string;
  /** The decoder's message. */
  reason: string;
}

interface Footer {
  version: number;
  key: string;
  count: number;
  bytesPerImage: number;
  preprocess: Preprocess;
  /** The slots of files that did not decode, with why. */
  bad: Array<BadImage & { slot: number }>;
}

/** A decoded cache, open for reading. */
export interface ImageCache {
  /** The cache file. */
  file: string;
  /** The slot of each file (by relative path); files that did not decode are in `bad` instead. */
  slotOf: Map<string, number>;
  bad: BadImage[];
  bytes: ByteSource;
  /** Whether it was built by this call (false: found on disk). */
  built: boolean;
  /** Seconds spent decoding (0 when found). */
  seconds: number;
}

/** Options of {@link openCache}. */
export interface CacheOptions {
  /** What to do with a file that does not decode: skip and list it, or stop with a DataError naming it. */
  onBadImage: "skip" | "error";
  /** Decodes in flight (default: twice the CPU count). */
  concurrency?: number;
  /** Folder of the caches (default {@link cacheRoot}). */
  dir?: string;
  /** The start of the cache's file name (default: the folder's name). */
  name?: string;
  /** The npm package (`name@version`) the files come from, which keys the cache in place of their mtimes. */
  package?: string;
  /** Progress output. */
  quiet?: boolean;
  tty?: boolean;
  log?: (line: string) => void;
}

/** Where caches live: `$SADM_CACHE_DIR`, else `$XDG_CACHE_HOME/sadm`, else `~/.cache/sadm`. */
export function cacheRoot(): string {
  if (process.env.SADM_CACHE_DIR) return path.resolve(process.env.SADM_CACHE_DIR);
  const base = process.env.XDG_CACHE_HOME ? path.resolve(process.env.XDG_CACHE_HOME) : path.join(os.homedir(), ".cache");
  return path.join(base, "sadm");
}

function sha256(text: string): string {
  return crypto.createHash("sha256").update(text).digest("hex");
}

/** The files in slot order (by relative path). */
function slotOrder(files: readonly ImageFile[]): ImageFile[] {
  return [...files].sort((a, b) => comparePy(a.rel, b.rel));
}

/** The key of a cache: the files (path, size, mtime), the package they come from if any, and the preprocessing. */
export function cacheKey(files: readonly ImageFile[], p: Preprocess, pkg?: string): string {
  const list = slotOrder(files).map((f) => [f.rel, f.size, f.mtimeMs]);
  return sha256(JSON.stringify({ v: CACHE_VERSION, p, list, ...(pkg === undefined ? {} : { pkg }) }));
}

/** The name shared by every cache of one folder and preprocessing; the key follows it. */
function cachePrefix(root: string, p: Preprocess, name = path.basename(root)): string {
  const slug = name.replace(/[^A-Za-z0-9._-]+/g, "_").slice(0, 40) || "data";
  const where = sha256(path.resolve(root)).slice(0, 8);
  return `${slug}-${where}-${p.resolution}px-${p.channels}ch-${p.resize}-${p.background.join("_")}-`;
}

function readFooter(file: string): { footer: Footer; size: number } | undefined {
  let fd: number;
  try {
    fd = fs.openSync(file, "r");
  } catch {
    return undefined;
  }
  try {
    const size = fs.fstatSync(fd).size;
    if (size < TAIL) return undefined;
    const tail = Buffer.alloc(TAIL);
    fs.readSync(fd, tail, 0, TAIL, size - TAIL);
    if (!tail.subarray(4).equals(MAGIC)) return undefined;
    const len = tail.readUInt32LE(0);
    if (len > size - TAIL) return undefined;
    const json = Buffer.alloc(len);
    fs.readSync(fd, json, 0, len, size - TAIL - len);
    const footer = JSON.parse(json.toString("utf8")) as Footer;
    if (size !== footer.count * footer.bytesPerImage + len + TAIL) return undefined;
    return { footer, size };
  } catch {
    return undefined;
  } finally {
    fs.closeSync(fd);
  }
}

/** Image bytes read from the cache file on demand (a cache too large to hold in memory). */
class FileBytes implements ByteSource {
  constructor(
    private readonly fd: number,
    private readonly per: number,
  ) {}

  read(slot: number, out: Uint8Array): void {
    const n = fs.readSync(this.fd, out, 0, this.per, slot * this.per);
    if (n !== this.per) throw new DataError(`the image cache ended early at slot ${slot}: delete it to rebuild it`);
  }
}

function openBytes(file: string, footer: Footer): ByteSource {
  const total = footer.count * footer.bytesPerImage;
  if (total <= IN_MEMORY_BYTES) {
    const buf = fs.readFileSync(file);
    return new MemoryBytes(buf.subarray(0, total), footer.bytesPerImage);
  }
  return new FileBytes(fs.openSync(file, "r"), footer.bytesPerImage);
}

function slotsOf(files: readonly ImageFile[], bad: ReadonlyArray<{ slot: number }>): Map<string, number> {
  const skip = new Set(bad.map((b) => b.slot));
  const out = new Map<string, number>();
  slotOrder(files).forEach((f, slot) => {
    if (!skip.has(slot)) out.set(f.rel, slot);
  });
  return out;
}

/** Deletes the other caches of this folder and preprocessing, and temporaries that dead processes left. */
function prune(dir: string, prefix: string, keep: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const tmp = /\.tmp-(\d+)-\d+$/.exec(name);
    const stale = tmp ? !processAlive(Number(tmp[1])) : name.endsWith(EXT) && name !== keep;
    if (stale) fs.rmSync(path.join(dir, name), { force: true });
  }
}

/**
 * Opens the decoded cache of `files` with preprocessing `p`, decoding every file first when there is none.
 * @throws DataError for a file that does not decode under `onBadImage: "error"`, or a cache folder that cannot be written.
 */
export async function openCache(root: string, files: readonly ImageFile[], p: Preprocess, opts: CacheOptions): Promise<ImageCache> {
  const dir = path.join(opts.dir ?? cacheRoot(), "images");
  const key = cacheKey(files, p, opts.package);
  const prefix = cachePrefix(root, p, opts.name);
  const name = `${prefix}${key.slice(0, 16)}${EXT}`;
  const file = path.join(dir, name);
  const found = readFooter(file);
  if (found && found.footer.key === key && found.footer.version === CACHE_VERSION) {
    const { footer } = found;
    if (opts.onBadImage === "error" && footer.bad.length > 0) throw badImageError(footer.bad[0]);
    return { file, slotOf: slotsOf(files, footer.bad), bad: footer.bad, bytes: openBytes(file, footer), built: false, seconds: 0 };
  }
  try {
    fs.mkdirSync(dir, { recursive: true });
  } catch (e) {
    throw isFsError(e) ? fsError(e, `cannot create the image cache folder ${dir} (set SADM_CACHE_DIR to another)`) : e;
  }
  prune(dir, prefix, name);
  const { footer, seconds } = await build(file, files, p, key, opts);
  prune(dir, prefix, name);
  return { file, slotOf: slotsOf(files, footer.bad), bad: footer.bad, bytes: openBytes(file, footer), built: true, seconds };
}

function badImageError(b: BadImage): DataError {
  return new DataError(
    `cannot decode ${b.rel}: ${b.reason} (data.onBadImage is "error"; fix or remove the file, or set it to "skip")`,
  );
}

async function build(
  file: string,
  files: readonly ImageFile[],
  p: Preprocess,
  key: string,
  opts: CacheOptions,
): Promise<{ footer: Footer; seconds: number }> {
  const order = slotOrder(files);
  const per = imageBytes(p);
  const tmp = `${file}.tmp-${process.pid}-${Date.now()}`;
  const log = opts.log ?? ((line: string) => process.stdout.write(line + "\n"));
  if (!opts.quiet) log(`sadm: decoding ${order.length} images into ${file}`);
  const progress = new TaskProgress({ unit: "files", total: order.length, quiet: opts.quiet, tty: opts.tty, write: opts.log });
  let fh: fs.promises.FileHandle | undefined;
  try {
    fh = await fs.promises.open(tmp, "w");
    const handle = fh;
    const bad: Footer["bad"] = [];
    let next = 0;
    let failed = false;
    const worker = async (): Promise<void> => {
      while (!failed && next < order.length) {
        const slot = next++;
        const f = order[slot];
        try {
          const bytes = await decodeImage(f.abs, p);
          await handle.write(bytes, 0, per, slot * per);
        } catch (e) {
          const b = e instanceof DecodeError ? { slot, rel: f.rel, reason: e.reason } : undefined;
          if (!b || opts.onBadImage === "error") {
            failed = true;
            throw b ? badImageError(b) : e;
          }
          bad.push(b);
        }
        progress.tick();
      }
    };
    const concurrency = Math.max(1, opts.concurrency ?? 2 * os.availableParallelism());
    await Promise.all(Array.from({ length: Math.min(concurrency, order.length) }, worker));
    bad.sort((a, b) => a.slot - b.slot);
    const footer: Footer = { version: CACHE_VERSION, key, count: order.length, bytesPerImage: per, preprocess: p, bad };
    const json = Buffer.from(JSON.stringify(footer), "utf8");
    const tail = Buffer.alloc(TAIL);
    tail.writeUInt32LE(json.length, 0);
    MAGIC.copy(tail, 4);
    // Slots of files that did not decode at the end were never written: the footer's position fixes the size.
    await handle.write(Buffer.concat([json, tail]), 0, json.length + TAIL, order.length * per);
    await handle.sync();
    await handle.close();
    fh = undefined;
    fs.renameSync(tmp, file);
    return { footer, seconds: progress.stop() };
  } catch (e) {
    progress.stop();
    await fh?.close().catch(() => undefined);
    fs.rmSync(tmp, { force: true });
    if (isFsError(e)) throw fsError(e, `cannot write the image cache ${file} (set SADM_CACHE_DIR to a writable folder)`);
    throw e instanceof DataError ? e : new DataError(`decoding the images failed: ${errorMessage(e)}`, { cause: e });
  }
}
