/**
 * Image folders through the real decoders (the native PNG/JPEG fast path, sharp for the rest) and the native
 * preprocessing: every format and mode and which decoder takes it, alpha, EXIF orientation, bad files, the decoded
 * cache, the whole path against Pillow, and MNIST written as PNG class folders read back bit for bit.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import sharp from "sharp";
import { beforeAll, describe, expect, it } from "vitest";
import { tmpDir } from "./helpers";
import {
  DataError,
  MnistDataset,
  scanEmoji,
  findData,
  loadNative,
  readImages,
  resolveConfig,
  type DataConfig,
  type OpenedData,
} from "../ts/index";
import { cacheKey } from "../ts/data/cache";
import { decodeRgb } from "../ts/data/decode";

const CACHE = tmpDir("sadm-cache-");
process.env.SADM_CACHE_DIR = CACHE;

/** A 32×32 RGB test card: red, green / blue, white quadrants (row-major, HWC). */
const S = 32;
const QUAD: Array<[number, number, number]> = [
  [230, 20, 20],
  [20, 200, 40],
  [30, 40, 220],
  [250, 250, 250],
];
/** Muted colours, inside the CMYK gamut (a CMYK round trip clips saturated ones). */
const MUTED: Array<[number, number, number]> = [
  [180, 90, 80],
  [90, 160, 100],
  [80, 100, 170],
  [230, 230, 230],
];
function card(w = S, h = S, colours = QUAD): Buffer {
  const b = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const q = (y < h / 2 ? 0 : 2) + (x < w / 2 ? 0 : 1);
      b.set(colours[q], (y * w + x) * 3);
    }
  return b;
}
const raw = (w = S, h = S, colours = QUAD) => sharp(card(w, h, colours), { raw: { width: w, height: h, channels: 3 } });

/** The mean colour of a quadrant of a CHW image (q: 0 TL, 1 TR, 2 BL, 3 BR). */
function quadrant(x: Float32Array, q: number, c = 3, size = S): number[] {
  const out: number[] = [];
  for (let ch = 0; ch < c; ch++) {
    let sum = 0;
    let n = 0;
    for (let y = 0; y < size / 2; y++)
      for (let xx = 0; xx < size / 2; xx++) {
        const yy = y + (q >= 2 ? size / 2 : 0);
        const xc = xx + (q % 2 === 1 ? size / 2 : 0);
        sum += (x[ch * size * size + yy * size + xc] + 1) * 127.5;
        n++;
      }
    out.push(sum / n);
  }
  return out;
}

function near(a: number[], b: number[], tol: number): boolean {
  return a.every((v, i) => Math.abs(v - b[i]) <= tol);
}

async function open(cfg: Partial<DataConfig> & { path: string }): Promise<OpenedData> {
  const data = resolveConfig({ data: { name: "folder", resolution: S, flip: false, ...cfg } }).data;
  return findData(data).open({ quiet: true });
}

describe("image folders through the decoder", () => {
  let dir = "";
  beforeAll(async () => {
    dir = tmpDir("sadm-formats-");
    const put = async (name: string, img: sharp.Sharp): Promise<void> => {
      fs.mkdirSync(path.join(dir, "all"), { recursive: true });
      await img.toFile(path.join(dir, "all", name));
    };
    await put("png8.png", raw().png());
    await put("png16.png", raw().toColourspace("rgb16").png());
    await put("palette.png", raw().png({ palette: true, colours: 4, dither: 0 }));
    await put("webp.webp", raw().webp({ lossless: true }));
    await put("tiff.tiff", raw().tiff({ compression: "lzw" }));
    await put("gif.gif", raw().gif({ colours: 4, dither: 0 }));
    await put("jpeg.jpg", raw().jpeg({ quality: 100, chromaSubsampling: "4:4:4" }));
    await put("cmyk.jpg", raw(S, S, MUTED).toColourspace("cmyk").jpeg({ quality: 100 }));
    // Stored rotated a quarter turn anticlockwise, with EXIF orientation 6 (display rotated 90° clockwise).
    await put("exif6.jpg", raw().rotate(-90).withMetadata({ orientation: 6 }).jpeg({ quality: 100, chromaSubsampling: "4:4:4" }));
    await put("avif.avif", raw().avif({ lossless: true }));
  }, 120_000);

  const WHITE: [number, number, number] = [255, 255, 255];
  const crop = (background: [number, number, number]) => ({ resolution: S, resize: "crop", channels: 3, background });
  /** The native fast path's bytes for a file, or null where it leaves the file to sharp. */
  const fast = (file: string, background = WHITE): Promise<Uint8Array | null> =>
    loadNative().decodeImageFile(file, crop(background));
  /** The same through sharp and the native preprocessing, as files the fast path leaves are decoded. */
  const viaSharp = async (file: string, background = WHITE): Promise<Uint8Array> => {
    const { data, width, height } = await decodeRgb(file, background);
    return loadNative().preprocessImage(data, width, height, 3, crop(background));
  };

  it("reads PNG 8/16 bit, palette, WebP, TIFF, GIF, JPEG, CMYK, AVIF and applies the EXIF orientation", async () => {
    const d = await open({ path: dir, labels: "none" });
    expect(d.bad).toEqual([]);
    expect(d.dataset.length).toBe(10);
    // Files are in path order: avif, cmyk, exif6, gif, jpeg, palette, png16, png8, tiff, webp.
    const names = ["avif", "cmyk", "exif6", "gif", "jpeg", "palette", "png16", "png8", "tiff", "webp"];
    const { x } = readImages(d.dataset);
    const img = (name: string): Float32Array => {
      const i = names.indexOf(name);
      return x.subarray(i * 3 * S * S, (i + 1) * 3 * S * S);
    };
    // Lossless formats give the card back exactly (resolution = size: no resampling).
    const exact = Float32Array.from(
      { length: 3 * S * S },
      (_, k) => card()[((k % (S * S)) * 3) + Math.floor(k / (S * S))] / 127.5 - 1,
    );
    for (const name of ["png8", "png16", "palette", "webp", "tiff", "gif"]) expect(Array.from(img(name)), name).toEqual(Array.from(exact));
    for (let q = 0; q < 4; q++) {
      expect(near(quadrant(img("jpeg"), q), QUAD[q], 6), `jpeg q${q}: ${quadrant(img("jpeg"), q)}`).toBe(true);
      expect(near(quadrant(img("avif"), q), QUAD[q], 6), `avif q${q}: ${quadrant(img("avif"), q)}`).toBe(true);
      // CMYK goes through a profile both ways: close, not exact.
      expect(near(quadrant(img("cmyk"), q), MUTED[q], 25), `cmyk q${q}: ${quadrant(img("cmyk"), q)}`).toBe(true);
      // Displayed upright: the card as it was before the stored rotation.
      expect(near(quadrant(img("exif6"), q), QUAD[q], 8), `exif6 q${q}: ${quadrant(img("exif6"), q)}`).toBe(true);
    }
  });

  it("decodes PNG and plain JPEG natively, exactly as sharp does, and leaves every other file to sharp", async () => {
    const extra = tmpDir("sadm-paths-");
    const put = (name: string, img: sharp.Sharp): Promise<unknown> => img.toFile(path.join(extra, name));
    await put("interlaced.png", raw().png({ progressive: true }));
    await put("grey.png", raw().greyscale().png());
    await put("grey16.png", raw().greyscale().toColourspace("grey16").png());
    await put("progressive.jpg", raw().jpeg({ quality: 90, progressive: true }));
    await put("420.jpg", raw().jpeg({ quality: 80, chromaSubsampling: "4:2:0" }));
    await put("grey.jpg", raw().greyscale().jpeg({ quality: 90 }));
    // An embedded ICC profile: sharp converts it to sRGB, so the fast path must not read the file.
    await put("icc.png", raw().withIccProfile("p3").png());
    await put("icc.jpg", raw().withIccProfile("p3").jpeg());
    const files = [
      ...["png8.png", "png16.png", "palette.png", "jpeg.jpg", "cmyk.jpg", "exif6.jpg", "webp.webp", "tiff.tiff"]
        .concat(["gif.gif", "avif.avif"])
        .map((f) => path.join(dir, "all", f)),
      ...fs.readdirSync(extra).map((f) => path.join(extra, f)),
    ];
    const native = ["png8.png", "png16.png", "palette.png", "jpeg.jpg", "interlaced.png", "grey.png", "grey16.png"]
      .concat(["progressive.jpg", "420.jpg", "grey.jpg"]);
    const taken: string[] = [];
    for (const file of files) {
      const name = path.basename(file);
      const ours = await fast(file);
      if (ours === null) continue;
      taken.push(name);
      // Opaque images: the same JPEG code and a lossless PNG, so the two decoders agree byte for byte.
      expect(Buffer.from(ours).equals(Buffer.from(await viaSharp(file))), name).toBe(true);
    }
    expect(taken.sort()).toEqual(native.sort());
    // cmyk.jpg, exif6.jpg, webp, tiff, gif, avif, icc.png, icc.jpg.
    expect(files.length - taken.length).toBe(8);
  });

  it("composites transparency onto the background, takes GIF's first frame, and converts to grey as Pillow does", async () => {
    const d = tmpDir("sadm-alpha-");
    fs.mkdirSync(path.join(d, "x"));
    const rgba = Buffer.alloc(S * S * 4);
    for (let i = 0; i < S * S; i++) rgba.set([200, 100, 50, i < (S * S) / 2 ? 0 : i < (3 * S * S) / 4 ? 128 : 255], i * 4);
    await sharp(rgba, { raw: { width: S, height: S, channels: 4 } }).png().toFile(path.join(d, "x", "rgba.png"));
    const ga = Buffer.alloc(S * S * 2);
    for (let i = 0; i < S * S; i++) ga.set([90, i < (S * S) / 2 ? 0 : 255], i * 2);
    await sharp(ga, { raw: { width: S, height: S, channels: 2 } }).png().toFile(path.join(d, "x", "ga.png"));
    // Two frames: red, then green.
    const frames = Buffer.concat([Buffer.alloc(S * S * 3, 0), Buffer.alloc(S * S * 3, 0)]);
    for (let i = 0; i < S * S; i++) {
      frames.set([255, 0, 0], i * 3);
      frames.set([0, 255, 0], S * S * 3 + i * 3);
    }
    await sharp(frames, { raw: { width: S, height: S * 2, channels: 3, pageHeight: S } }).gif().toFile(path.join(d, "x", "anim.gif"));

    const white = await open({ path: d, labels: "none" });
    const { x } = readImages(white.dataset);
    const px = (img: number, c: number, i: number): number => Math.round((x[img * 3 * S * S + c * S * S + i] + 1) * 127.5);
    // Files: anim.gif, ga.png, rgba.png.
    expect([px(0, 0, 0), px(0, 1, 0), px(0, 2, 0)]).toEqual([255, 0, 0]);
    expect([px(1, 0, 0), px(1, 0, S * S - 1)]).toEqual([255, 90]);
    expect([px(2, 0, 0), px(2, 1, 0), px(2, 2, 0)]).toEqual([255, 255, 255]);
    expect([px(2, 0, S * S - 1), px(2, 1, S * S - 1), px(2, 2, S * S - 1)]).toEqual([200, 100, 50]);
    const half = [px(2, 0, (5 * S * S) / 8), px(2, 1, (5 * S * S) / 8), px(2, 2, (5 * S * S) / 8)];
    // Pillow's alpha_composite (sharp's flatten is only within a level of it): on an opaque background its integer
    // steps come to (colour·α + background·(255 − α)) / 255 rounded to nearest (checked for every case in the core).
    const over = (c: number, a: number, bg: number): number => Math.round((c * a + bg * (255 - a)) / 255);
    expect(half).toEqual([over(200, 128, 255), over(100, 128, 255), over(50, 128, 255)]);
    expect(half).toEqual([227, 177, 152]);
    for (const f of ["rgba.png", "ga.png"]) expect(await fast(path.join(d, "x", f)), f).not.toBeNull();
    expect(await fast(path.join(d, "x", "anim.gif"))).toBeNull();
    const black = readImages((await open({ path: d, labels: "none", background: "black" })).dataset).x;
    expect(Math.round((black[2 * 3 * S * S] + 1) * 127.5)).toBe(0);

    const grey = readImages((await open({ path: d, labels: "none", channels: 1 })).dataset).x;
    // Pillow's L: (r·19595 + g·38470 + b·7471 + 2^15) >> 16 of the composited (200, 100, 50).
    const L = (200 * 19595 + 100 * 38470 + 50 * 7471 + 0x8000) >> 16;
    expect(Math.round((grey[2 * S * S + S * S - 1] + 1) * 127.5)).toBe(L);
    expect(grey.length).toBe(3 * S * S);
  });

  it("skips, counts and lists files that do not decode; onBadImage error makes them fatal", async () => {
    const d = tmpDir("sadm-bad-");
    fs.mkdirSync(path.join(d, "ok"));
    fs.mkdirSync(path.join(d, "bad"));
    await raw().png().toFile(path.join(d, "ok", "good.png"));
    await raw().png().toFile(path.join(d, "bad", "good-too.png"));
    const png = await raw().png().toBuffer();
    const jpg = await raw().jpeg().toBuffer();
    fs.writeFileSync(path.join(d, "bad", "empty.png"), "");
    fs.writeFileSync(path.join(d, "bad", "text.png"), "this is not an image\n");
    fs.writeFileSync(path.join(d, "bad", "truncated.png"), png.subarray(0, Math.floor(png.length / 2)));
    fs.writeFileSync(path.join(d, "bad", "truncated.jpg"), jpg.subarray(0, Math.floor(jpg.length / 2)));
    const corrupt = Buffer.from(png);
    for (let i = 60; i < corrupt.length - 20; i += 7) corrupt[i] ^= 0x5a;
    fs.writeFileSync(path.join(d, "bad", "corrupt.png"), corrupt);

    // The fast path reports the broken PNGs and JPEGs itself (not a silent fall back to sharp); files that are no
    // PNG or JPEG go to sharp, which refuses them.
    for (const f of ["truncated.png", "truncated.jpg", "corrupt.png"]) {
      await expect(fast(path.join(d, "bad", f)), f).rejects.toThrow(/(corrupt|truncated) (PNG|JPEG)/);
    }
    for (const f of ["empty.png", "text.png"]) expect(await fast(path.join(d, "bad", f)), f).toBeNull();
    await expect(fast(path.join(d, "bad", "missing.png"))).rejects.toThrow(/^cannot read the file: No such file/);
    const good = path.join(d, "ok", "good.png");
    await expect(fast(good, [0, 0, 256])).rejects.toThrow(/^decodeImageFile: background must be \[r, g, b\] with each 0/);
    const r = await open({ path: d });
    expect(r.dataset.length).toBe(2);
    expect(r.bad.map((b) => b.rel).sort()).toEqual(["bad/corrupt.png", "bad/empty.png", "bad/text.png", "bad/truncated.jpg", "bad/truncated.png"]);
    for (const b of r.bad) expect(b.reason.length, b.rel).toBeGreaterThan(5);
    // The cache remembers them: a second open lists the same files without decoding again.
    const again = await open({ path: d });
    expect(again.summary).toContain("from the decoded cache");
    expect(again.bad.map((b) => b.rel).sort()).toEqual(r.bad.map((b) => b.rel).sort());
    await expect(open({ path: d, onBadImage: "error" })).rejects.toThrow(DataError);
    await expect(open({ path: d, onBadImage: "error" })).rejects.toThrow(/cannot decode bad\/\w+\.(png|jpg): .*onBadImage is "error"/);
  });

  it("decodes once into a cache keyed by the files; changing a file makes a new one", async () => {
    const d = tmpDir("sadm-cached-");
    for (const k of ["a", "b"]) {
      fs.mkdirSync(path.join(d, k));
      await raw().png().toFile(path.join(d, k, "1.png"));
    }
    const first = await open({ path: d });
    expect(first.summary).toMatch(/decoded in/);
    const second = await open({ path: d });
    expect(second.summary).toContain("from the decoded cache");
    expect(Array.from(readImages(second.dataset).x)).toEqual(Array.from(readImages(first.dataset).x));
    expect(second.info.fingerprint).toBe(first.info.fingerprint);
    const caches = (): string[] => fs.readdirSync(path.join(CACHE, "images")).filter((f) => f.includes(path.basename(d)));
    expect(caches()).toHaveLength(1);
    // Another picture under the same name and size: the mtime changes the key.
    await raw().flop().png().toFile(path.join(d, "b", "1.png"));
    fs.utimesSync(path.join(d, "b", "1.png"), new Date(), new Date(Date.now() + 5000));
    const third = await open({ path: d });
    expect(third.summary).toMatch(/decoded in/);
    expect(third.info.fingerprint).not.toBe(first.info.fingerprint);
    expect(caches()).toHaveLength(1);
    // Another preprocessing is another cache, next to the first.
    await open({ path: d, resize: "stretch" });
    expect(caches()).toHaveLength(2);
  });

  it("identifies the built-in emoji by the package's version, not by its files' mtimes (a reinstall stamps new ones)", () => {
    const scan = scanEmoji();
    const pkg = JSON.parse(fs.readFileSync(path.join(scan.root, "..", "..", "..", "package.json"), "utf8")) as { name: string; version: string };
    expect(scan.package).toBe(`${pkg.name}@${pkg.version}`);
    const cfg = resolveConfig({ data: { name: "emoji" } }).data;
    const before = findData(cfg).fingerprint;
    // As `npm ci` leaves it: the same files with the time of the install.
    const file = scan.files[0].abs;
    const { atime, mtime } = fs.statSync(file);
    try {
      fs.utimesSync(file, atime, new Date(mtime.getTime() + 86_400_000));
      expect(findData(cfg).fingerprint).toBe(before);
    } finally {
      fs.utimesSync(file, atime, mtime);
    }
    // The version keys the decoded cache and so the fingerprint: another release of the images is other data.
    const pre = { resolution: 32, channels: 3 as const, resize: "crop" as const, background: [255, 255, 255] as [number, number, number] };
    expect(cacheKey(scan.files, pre, "emoji-datasource-google@17.0.0")).not.toBe(cacheKey(scan.files, pre, scan.package));
  });

  it("matches Pillow's DiT pipeline (convert, ADM centre crop) bit for bit: PNG, JPEG and transparent emoji", async () => {
    const refDir = path.join(__dirname, "data", "pillow-folder");
    const ref = JSON.parse(fs.readFileSync(path.join(refDir, "reference.json"), "utf8")) as {
      cases: Array<{ input: string; resolution: number; channels: 1 | 3; output: string }>;
    };
    expect(ref.cases.length).toBe(60);
    const report: string[] = [];
    for (const c of ref.cases) {
      const d = tmpDir("sadm-pillow-");
      fs.copyFileSync(path.join(__dirname, "..", c.input), path.join(d, path.basename(c.input)));
      const data = await open({ path: d, labels: "none", resolution: c.resolution, channels: c.channels });
      const ours = Uint8Array.from(readImages(data.dataset).x, (v) => Math.round((v + 1) * 127.5));
      const theirs = fs.readFileSync(path.join(refDir, c.output));
      expect(ours.length).toBe(theirs.length);
      let maxDiff = 0;
      let differ = 0;
      for (let i = 0; i < ours.length; i++) {
        const diff = Math.abs(ours[i] - theirs[i]);
        if (diff > 0) differ++;
        maxDiff = Math.max(maxDiff, diff);
      }
      report.push(`${c.output}: max ${maxDiff}, ${differ} of ${ours.length} differ`);
      // libjpeg-turbo's code, lossless PNGs, Pillow's compositing and Pillow's resampler: nothing may differ.
      expect(differ, `${c.output}: ${differ} bytes differ, by up to ${maxDiff}`).toBe(0);
    }
    console.log(report.join("\n"));
  }, 120_000);

  it("reads MNIST written as PNG class folders back as exactly the built-in dataset's tensors", async () => {
    const builtin = new MnistDataset();
    const d = tmpDir("sadm-mnist-png-");
    const { x, labels } = readImages(builtin);
    const count = new Array<number>(10).fill(0);
    const writes: Array<Promise<unknown>> = [];
    for (let i = 0; i < labels.length; i++) {
      const k = labels[i];
      const bytes = Buffer.from(Uint8Array.from(x.subarray(i * 784, (i + 1) * 784), (v) => Math.round((v + 1) * 127.5)));
      fs.mkdirSync(path.join(d, String(k)), { recursive: true });
      const name = `${String(count[k]++).padStart(5, "0")}.png`;
      writes.push(sharp(bytes, { raw: { width: 28, height: 28, channels: 1 } }).png().toFile(path.join(d, String(k), name)));
      if (writes.length >= 64) await Promise.all(writes.splice(0));
    }
    await Promise.all(writes);
    const folder = await open({ path: d, resolution: 28, channels: 1 });
    expect(folder.info.classNames).toEqual(["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    const back = readImages(folder.dataset);
    expect(back.labels.length).toBe(10_000);
    expect(Array.from(back.labels)).toEqual(Array.from(labels));
    expect(Buffer.from(back.x.buffer).equals(Buffer.from(x.buffer))).toBe(true);
  }, 120_000);
});
