/**
 * The second built-in data source: the 3,786 64×64 RGBA PNGs of Google's Noto emoji (Apache-2.0) in the npm package
 * `emoji-datasource-google`, labelled by their category in its `emoji.json` ("Animals & Nature", "Food & Drink", …;
 * skin-tone variants share their emoji's category). The package is 74 MB, so it is an optional peer dependency that
 * a user installs; nothing is fetched at run time.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { DataError } from "../errors.js";
import { comparePy, type ImageFile, type ScanResult } from "./scan.js";

/** The package and the major version sadm is tested with. */
export const EMOJI_PACKAGE = "emoji-datasource-google";
export const EMOJI_VERSION = "16";

interface EmojiEntry {
  image?: unknown;
  category?: unknown;
  has_img_google?: unknown;
  skin_variations?: Record<string, { image?: unknown; has_img_google?: unknown }>;
}

function packageDir(): string {
  try {
    return path.dirname(require.resolve(`${EMOJI_PACKAGE}/package.json`));
  } catch (e) {
    throw new DataError(
      `the emoji data set is an optional package that is not installed: npm install ${EMOJI_PACKAGE}@${EMOJI_VERSION}`,
      { cause: e },
    );
  }
}

/** The installed package's version: with the file list and sizes, it identifies the images. */
function packageVersion(): string {
  const file = path.join(packageDir(), "package.json");
  try {
    const v = (JSON.parse(fs.readFileSync(file, "utf8")) as { version?: unknown }).version;
    if (typeof v === "string") return v;
  } catch (e) {
    throw new DataError(`cannot read ${file}: reinstall ${EMOJI_PACKAGE}`, { cause: e });
  }
  throw new DataError(`${file} names no version: reinstall ${EMOJI_PACKAGE}`);
}

let entries: Array<{ image: string; category: string }> | undefined;

/** (image file, category) for every emoji the package has a Google image of. */
function emojiImages(): Array<{ image: string; category: string }> {
  if (entries) return entries;
  const file = path.join(packageDir(), "emoji.json");
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    throw new DataError(`cannot read ${file}: reinstall ${EMOJI_PACKAGE}`, { cause: e });
  }
  if (!Array.isArray(raw)) throw new DataError(`${file} is not the emoji list sadm expects (a JSON array)`);
  const out: Array<{ image: string; category: string }> = [];
  const seen = new Set<string>();
  const add = (image: unknown, category: string, has: unknown): void => {
    if (has !== true || typeof image !== "string" || seen.has(image)) return;
    seen.add(image);
    out.push({ image, category });
  };
  for (const e of raw as EmojiEntry[]) {
    if (typeof e.category !== "string") continue;
    add(e.image, e.category, e.has_img_google);
    for (const v of Object.values(e.skin_variations ?? {})) add(v.image, e.category, v.has_img_google);
  }
  if (out.length === 0) throw new DataError(`${file} lists no emoji with a Google image`);
  entries = out;
  return out;
}

/** The emoji categories, sorted by name: the class table of `--data emoji`. */
export function emojiClassNames(): string[] {
  return [...new Set(emojiImages().map((e) => e.category))].sort(comparePy);
}

/** The emoji images as a scanned folder: files in the package's `img/google/64/`, labelled by category. */
export function scanEmoji(): ScanResult {
  const root = path.join(packageDir(), "img", "google", "64");
  const names = emojiClassNames();
  const at = new Map(names.map((n, k) => [n, k]));
  const files: ImageFile[] = [];
  const missing: string[] = [];
  for (const { image, category } of emojiImages()) {
    const abs = path.join(root, image);
    let stat: fs.Stats;
    try {
      stat = fs.statSync(abs);
    } catch {
      missing.push(image);
      continue;
    }
    files.push({ rel: image, abs, size: stat.size, mtimeMs: 0, label: at.get(category) ?? 0 });
  }
  if (missing.length > 0)
    throw new DataError(`${EMOJI_PACKAGE} is incomplete: ${missing.length} image(s) such as ${missing[0]} are missing; reinstall it`);
  files.sort((a, b) => a.label - b.label || comparePy(a.rel, b.rel));
  return {
    root,
    mode: "folders",
    classNames: names,
    files,
    ignored: { notImages: [], outsideClasses: [], notInMetadata: [], brokenLinks: [] },
    package: `${EMOJI_PACKAGE}@${packageVersion()}`,
  };
}
