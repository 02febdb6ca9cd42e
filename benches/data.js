#!/usr/bin/env node
// The data-pipeline benchmark: sadm's image-folder path (scan, sharp decode, the native Pillow-exact ADM centre crop,
// the decoded cache, the batch loader) against DiT's PyTorch pipeline (ImageFolder + center_crop_arr + flip +
// ToTensor + Normalize through a DataLoader) on the same folders and the same cores, and the step stall of a
// training run on an image folder. Run it through benches/data.sh (`npm run bench:data`), which builds dist/ and
// provides the PyTorch venv; directly: `SADM_BENCH_PYTHON=…/bin/python node benches/data.js`.
//
// Folders (made once under $SADM_BENCH_DATA, default ~/.cache/sadm-bench-data):
//   A  the 3,786 64×64 RGBA emoji PNGs of emoji-datasource-google as 10 class folders, trained at 32×32 (rgb-32);
//   B  PHOTOS (default 1536) photo-sized JPEGs (500×375, 375×500, 512×512; quality 90) composited from the emoji
//      over shaded, grainy backgrounds, taken to 64×64 (box halvings then bicubic, as DiT's ADM crop does).
// Every figure is measured in a fresh process (libvips caches what it decoded; a fresh process starts cold), with
// the files already in the page cache (read once first), so both sides pay decoding, not the disk. sadm and
// PyTorch run back to back per folder, REPEAT times (default 2, medians). Besides wall-clock images/s, each side's
// CPU time (every thread, every DataLoader worker) is counted: on a shared machine the scheduler gives the side with
// more runnable threads more of the cores, so images per CPU-second is the steadier comparison of the work done.
//
// Environment: REPEAT, PHOTOS, PRESET_STEPS (steps of the rgb-32 stall run, default 10: seconds each on 2 cores),
// STEPS (steps of the small-DiT stall run, default 100), SWEEP=0 (skip the concurrency sweep), THREADS (default
// nproc: PyTorch's threads and DataLoader workers).
"use strict";
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { execFileSync, spawnSync } = require("node:child_process");

const ROOT = path.join(__dirname, "..");
const BATCH = 64;

// ------------------------------------------------------------------------------------------------------------
// Children: each figure in a process of its own, printing one JSON line.
// ------------------------------------------------------------------------------------------------------------

function folderConfig(o) {
  return { name: "folder", path: o.folder, resolution: o.resolution };
}

function cacheBytes(dir) {
  const images = path.join(dir, "images");
  if (!fs.existsSync(images)) return 0;
  return fs.readdirSync(images).reduce((s, n) => s + fs.statSync(path.join(images, n)).size, 0);
}

/** Scan + decode into a cache (or find it) + one epoch of shuffled, flipped batches, each timed. */
async function childOpen(o) {
  const sharp = require("sharp");
  if (o.sharpConcurrency) sharp.concurrency(o.sharpConcurrency);
  const { findData, BatchLoader, loadNative } = require("../dist/index.js");
  loadNative("cpu"); // loading the addon is process start-up, as importing torch is on the other side
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const source = findData(folderConfig(o));
  const t1 = performance.now();
  const opened = await source.open({ dir: o.cacheDir, quiet: true, ...(o.concurrency ? { concurrency: o.concurrency } : {}) });
  const t2 = performance.now();
  const cpu = process.cpuUsage(c0);
  const loader = new BatchLoader(opened.dataset, BATCH, 0, undefined, { flip: true });
  let sum = 0;
  for (let b = 0; b < loader.batchesPerEpoch; b++) sum += loader.next().x[0];
  const t3 = performance.now();
  if (!Number.isFinite(sum)) throw new Error("non-finite batch");
  return {
    images: opened.dataset.length,
    bad: opened.bad.length,
    built: !opened.summary.includes("from the decoded cache"),
    scanSeconds: (t1 - t0) / 1000,
    openSeconds: (t2 - t1) / 1000,
    // Every thread of the process (JS, libuv, libvips, rayon), scan and open: the work, whatever else the cores run.
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    epochSeconds: (t3 - t2) / 1000,
    epochImages: loader.batchesPerEpoch * BATCH,
    cacheBytes: cacheBytes(o.cacheDir),
    sharpConcurrency: sharp.concurrency(),
    uvThreads: Number(process.env.UV_THREADPOOL_SIZE ?? 4),
    concurrency: o.concurrency ?? 2 * os.availableParallelism(),
  };
}

/**
 * One thread's cost per image of each stage: the native path sadm takes for PNG and JPEG (decode, composite and
 * preprocess in one call), then sharp's, which it takes for other files: sharp's decode as sadm asks for it (orient,
 * flatten onto white, sRGB), sharp's bare decode (what the extra steps cost), and the native preprocessing.
 */
async function childStages(o) {
  const sharp = require("sharp");
  const { scanFolder, loadNative } = require("../dist/index.js");
  const { decodeRgb } = require("../dist/data/decode.js");
  const native = loadNative("cpu");
  const files = scanFolder(o.folder, "folders").files.map((f) => f.abs).sort().slice(0, o.limit);
  const white = [255, 255, 255];
  await decodeRgb(files[0], white); // libvips' own start-up
  // CPU time of the whole process (the work runs on libuv, libvips and rayon threads): the wall clock of one image
  // at a time counts the waits for a core on a shared machine.
  const n = files.length;
  const timed = async (fn) => {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await fn();
    const c = process.cpuUsage(c0);
    return { cpuMs: (c.user + c.system) / 1000 / n, wallMs: (performance.now() - t0) / n };
  };
  const opts = { resolution: o.resolution, resize: "crop", channels: 3, background: white };
  const nativePath = await timed(async () => {
    for (const f of files) if (!(await native.decodeImageFile(f, opts))) throw new Error(`${f} left the native path`);
  });
  const decoded = [];
  const decode = await timed(async () => {
    for (const f of files) decoded.push(await decodeRgb(f, white));
  });
  const preprocess = await timed(async () => {
    for (const d of decoded) await native.preprocessImage(d.data, d.width, d.height, 3, opts);
  });
  const bareDecode = await timed(async () => {
    for (const f of files) await sharp(f).raw().toBuffer();
  });
  return { images: n, nativePath, decode, preprocess, bareDecode };
}

function trainInput(o, outDir) {
  return {
    preset: o.preset,
    ...(o.model ? { model: o.model, discriminator: o.discriminator } : {}),
    data: folderConfig(o),
    steps: o.steps,
    // λ = 0 throughout: the cheapest step, so the one that leaves the least time to assemble the next batch.
    lambda: 0,
    sampleEvery: 0,
    checkpointEvery: 0,
    samplesPerClass: 1,
    sampleSteps: 1,
    outDir,
  };
}

/** A training run through the public API on the folder (its cache already built): per-step data and step times. */
async function childTrain(o) {
  const { train } = require("../dist/index.js");
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "sadm-bench-data-train-"));
  const steps = [];
  let last = performance.now();
  try {
    await train(trainInput(o, out), {
      quiet: true,
      onStep: (s) => {
        const now = performance.now();
        steps.push({ step: s.step, seconds: s.seconds, dataSeconds: s.dataSeconds, wall: (now - last) / 1000 });
        last = now;
      },
    });
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
  return { steps };
}

/** The same networks and schedule stepped natively on batches assembled before the clock starts: no data work. */
async function childNative(o) {
  const { resolveConfig, toCoreConfig, loadNative, findData, BatchLoader, lrAt, emaDecayAt } = require("../dist/index.js");
  const cfg = resolveConfig(trainInput(o, os.tmpdir()));
  const { dataset } = await findData(cfg.data).open({ quiet: true });
  const loader = new BatchLoader(dataset, cfg.batchSize, cfg.seed, undefined, { flip: true });
  const batches = Array.from({ length: o.steps }, () => loader.next());
  const trainer = loadNative("cpu").NativeTrainer.create(JSON.stringify(toCoreConfig(cfg)), "cpu");
  const steps = [];
  for (let t = 0; t < o.steps; t++) {
    const ts = performance.now();
    await trainer.step(batches[t].x, batches[t].labels, {
      lambda: 0,
      lr: lrAt(t, cfg.lr, cfg.lrWarmupSteps),
      discLr: cfg.discLr,
      emaDecay: emaDecayAt(t, cfg.emaDecay, cfg.emaWarmup),
      updateDisc: false,
    });
    steps.push({ step: t + 1, seconds: (performance.now() - ts) / 1000 });
  }
  return { steps };
}

const CHILDREN = { open: childOpen, stages: childStages, train: childTrain, native: childNative };

// ------------------------------------------------------------------------------------------------------------
// The folders.
// ------------------------------------------------------------------------------------------------------------

function dataRoot() {
  return process.env.SADM_BENCH_DATA ? path.resolve(process.env.SADM_BENCH_DATA) : path.join(os.homedir(), ".cache", "sadm-bench-data");
}

function emojiFolder(root) {
  const dir = path.join(root, "emoji-v1");
  if (fs.existsSync(dir)) return dir;
  const tmp = `${dir}.tmp-${process.pid}`;
  execFileSync(process.execPath, [path.join(ROOT, "scripts", "emoji-folder.js"), tmp], { stdio: ["ignore", "inherit", "inherit"] });
  fs.renameSync(tmp, dir);
  return dir;
}

/** A small, fast, seeded PRNG (mulberry32): the photos are the same on every machine. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Peak of the triangular grain added to every byte. */
const GRAIN = 40;
const PHOTO_SHAPES = [[500, 375], [500, 375], [375, 500], [512, 512]];

/** Photo i: a shaded background, one emoji of its class large and two others small, grain over all, JPEG q90. */
async function makePhoto(sharp, emoji, i, file) {
  const rnd = prng(1000 + i);
  const [w, h] = PHOTO_SHAPES[i % PHOTO_SHAPES.length];
  const c0 = [0, 1, 2].map(() => 40 + 180 * rnd());
  const c1 = [0, 1, 2].map(() => 40 + 180 * rnd());
  const angle = 2 * Math.PI * rnd();
  const [dx, dy] = [Math.cos(angle), Math.sin(angle)];
  const bg = Buffer.alloc(w * h * 3);
  for (let y = 0, p = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const u = Math.min(1, Math.max(0, 0.5 + ((x - w / 2) * dx + (y - h / 2) * dy) / Math.max(w, h)));
      const shade = 18 * Math.sin(x / 37 + i) * Math.cos(y / 23);
      for (let c = 0; c < 3; c++, p++) bg[p] = Math.max(0, Math.min(255, c0[c] + (c1[c] - c0[c]) * u + shade));
    }
  const side = Math.min(w, h);
  const place = async (src, size) => {
    const input = await sharp(src).resize(size, size, { kernel: "cubic" }).png().toBuffer();
    return { input, left: Math.floor(rnd() * (w - size)), top: Math.floor(rnd() * (h - size)) };
  };
  const layers = [];
  for (let k = 0; k < 2; k++) layers.push(await place(emoji.all[Math.floor(rnd() * emoji.all.length)], Math.round(side * (0.15 + 0.15 * rnd()))));
  layers.push(await place(emoji.main, Math.round(side * (0.5 + 0.3 * rnd()))));
  const px = await sharp(bg, { raw: { width: w, height: h, channels: 3 } }).composite(layers).removeAlpha().raw().toBuffer();
  // Grain: without it the JPEGs are a third of a photograph's size (bits per pixel) and decode faster than photos do;
  // with it the median file is about 85 kB, near ImageNet's (about 110 kB at about 400×350).
  for (let p = 0; p < px.length; p++) px[p] = Math.max(0, Math.min(255, px[p] + Math.round(GRAIN * (rnd() + rnd() - 1))));
  await sharp(px, { raw: { width: w, height: h, channels: 3 } }).jpeg({ quality: 90 }).toFile(file);
}

async function photoFolder(root, emojiDir, count) {
  const dir = path.join(root, `photos-v1-${count}`);
  if (fs.existsSync(dir)) return dir;
  const sharp = require("sharp");
  const classes = fs.readdirSync(emojiDir).sort();
  const byClass = classes.map((c) => fs.readdirSync(path.join(emojiDir, c)).sort().map((n) => path.join(emojiDir, c, n)));
  const all = byClass.flat();
  const tmp = `${dir}.tmp-${process.pid}`;
  for (const c of classes) fs.mkdirSync(path.join(tmp, c), { recursive: true });
  process.stderr.write(`making ${count} photo-sized JPEGs in ${dir} (once)\n`);
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      const k = i % classes.length;
      const list = byClass[k];
      const main = list[Math.floor(prng(i + 1)() * list.length)];
      await makePhoto(sharp, { main, all }, i, path.join(tmp, classes[k], `photo-${String(i).padStart(5, "0")}.jpg`));
    }
  };
  await Promise.all(Array.from({ length: 4 }, worker));
  fs.renameSync(tmp, dir);
  return dir;
}

function folderStats(dir) {
  let files = 0;
  let bytes = 0;
  for (const c of fs.readdirSync(dir))
    for (const n of fs.readdirSync(path.join(dir, c))) {
      files++;
      bytes += fs.readFileSync(path.join(dir, c, n)).length; // also puts the file in the page cache
    }
  return { files, bytes };
}

// ------------------------------------------------------------------------------------------------------------
// Running the figures.
// ------------------------------------------------------------------------------------------------------------

function lastJson(stdout, what) {
  const line = stdout.trim().split("\n").filter(Boolean).pop();
  try {
    return JSON.parse(line);
  } catch {
    throw new Error(`${what}: no JSON result (stdout: ${stdout.slice(-500)})`);
  }
}

function runChild(kind, o, env = {}) {
  const r = spawnSync(process.execPath, [__filename, "child", kind, JSON.stringify(o)], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    encoding: "utf8",
    maxBuffer: 1 << 26,
  });
  if (r.status !== 0) throw new Error(`sadm ${kind} failed (${r.status}): ${r.stderr.slice(-2000)}`);
  return lastJson(r.stdout, `sadm ${kind}`);
}

function runTorch(mode, o) {
  const python = process.env.SADM_BENCH_PYTHON;
  if (!python) throw new Error("SADM_BENCH_PYTHON is not set: run benches/data.sh (npm run bench:data)");
  const r = spawnSync(python, [path.join(__dirname, "torch_data.py"), mode, JSON.stringify(o)], { cwd: ROOT, encoding: "utf8", maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`PyTorch ${mode} failed (${r.status}): ${r.stderr.slice(-2000)}`);
  return lastJson(r.stdout, `PyTorch ${mode}`);
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const load = () => os.loadavg()[0];

/** A cold sadm open in a fresh cache folder; the folder is kept (for the warm figure) when `keep`. */
function sadmCold(folder, resolution, opts = {}, env = {}, keep = false) {
  const cacheDir = fs.mkdtempSync(path.join(dataRoot(), "cache-"));
  try {
    const r = runChild("open", { folder, resolution, cacheDir, ...opts }, env);
    if (!r.built) throw new Error("a cold open found a cache");
    return {
      ...r,
      imagesPerSec: r.images / (r.scanSeconds + r.openSeconds),
      imagesPerCpuSec: r.images / r.cpuSeconds,
      cacheDir: keep ? cacheDir : undefined,
    };
  } finally {
    if (!keep) fs.rmSync(cacheDir, { recursive: true, force: true });
  }
}

function measureFolder(f, threads, repeat) {
  const runs = { sadm: [], warm: [], torchN: [], torch0: [], torchDit: [], load: [] };
  let cacheDir;
  for (let r = 0; r < repeat; r++) {
    process.stderr.write(`== ${f.name} (${r + 1}/${repeat}), load ${load().toFixed(2)}\n`);
    runs.load.push(load());
    if (cacheDir) fs.rmSync(cacheDir, { recursive: true, force: true });
    const cold = sadmCold(f.dir, f.resolution, {}, {}, true);
    cacheDir = cold.cacheDir;
    runs.sadm.push(cold);
    runs.torchN.push(runTorch("epoch", { folder: f.dir, resolution: f.resolution, workers: threads, threads }));
    runs.torch0.push(runTorch("epoch", { folder: f.dir, resolution: f.resolution, workers: 0, threads }));
    if (f.alpha) runs.torchDit.push(runTorch("epoch", { folder: f.dir, resolution: f.resolution, workers: threads, threads, loader: "dit" }));
    const warm = runChild("open", { folder: f.dir, resolution: f.resolution, cacheDir });
    if (warm.built) throw new Error("a warm open rebuilt its cache");
    runs.warm.push(warm);
  }
  const stages = { sadm: runChild("stages", { folder: f.dir, resolution: f.resolution, limit: f.stageImages }), torch: runTorch("stages", { folder: f.dir, resolution: f.resolution, limit: f.stageImages }) };
  const ips = (xs) => median(xs.map((x) => x.imagesPerSec));
  const ipc = (xs) => median(xs.map((x) => x.imagesPerCpuSec));
  const s = runs.sadm;
  const out = {
    folder: f.name,
    files: f.files,
    folderMiB: f.bytes / 2 ** 20,
    resolution: f.resolution,
    loadAvg: median(runs.load),
    sadm: {
      coldImagesPerSec: ips(s),
      coldImagesPerCpuSec: ipc(s),
      firstEpochImagesPerSec: median(s.map((x) => x.images / (x.scanSeconds + x.openSeconds + x.epochSeconds))),
      scanSeconds: median(s.map((x) => x.scanSeconds)),
      warmOpenSeconds: median(runs.warm.map((x) => x.openSeconds)),
      warmScanSeconds: median(runs.warm.map((x) => x.scanSeconds)),
      laterEpochImagesPerSec: median([...s, ...runs.warm].map((x) => x.epochImages / x.epochSeconds)),
      cacheMiB: s[0].cacheBytes / 2 ** 20,
      concurrency: s[0].concurrency,
      sharpConcurrency: s[0].sharpConcurrency,
      uvThreads: s[0].uvThreads,
      runs: s.map(({ cacheDir: _, ...x }) => x),
      warmRuns: runs.warm,
    },
    torch: {
      workersN: threads,
      imagesPerSecN: ips(runs.torchN),
      imagesPerSec0: ips(runs.torch0),
      imagesPerCpuSecN: ipc(runs.torchN),
      imagesPerCpuSec0: ipc(runs.torch0),
      ...(f.alpha ? { imagesPerSecDitLoader: ips(runs.torchDit) } : {}),
      version: runs.torchN[0].torch,
      torchvision: runs.torchN[0].torchvision,
      pillow: runs.torchN[0].pillow,
      runs: { workersN: runs.torchN, workers0: runs.torch0, ...(f.alpha ? { ditLoader: runs.torchDit } : {}) },
    },
    stages,
  };
  out.ratio = {
    coldVsWorkersN: out.sadm.coldImagesPerSec / out.torch.imagesPerSecN,
    coldVsWorkers0: out.sadm.coldImagesPerSec / out.torch.imagesPerSec0,
    cpuVsWorkersN: out.sadm.coldImagesPerCpuSec / out.torch.imagesPerCpuSecN,
    cpuVsWorkers0: out.sadm.coldImagesPerCpuSec / out.torch.imagesPerCpuSec0,
    firstEpochVsWorkersN: out.sadm.firstEpochImagesPerSec / out.torch.imagesPerSecN,
    laterEpochVsWorkersN: out.sadm.laterEpochImagesPerSec / out.torch.imagesPerSecN,
  };
  return { out, cacheDir };
}

/** sadm's cold throughput on folder B by decodes in flight, libuv pool size and libvips threads per image. */
function sweep(f, repeat) {
  const variants = [
    { label: "concurrency 1", opts: { concurrency: 1 } },
    { label: "concurrency 2", opts: { concurrency: 2 } },
    { label: "concurrency 4 (default)", opts: { concurrency: 4 } },
    { label: "concurrency 8", opts: { concurrency: 8 } },
    { label: "concurrency 4, UV_THREADPOOL_SIZE=2", opts: { concurrency: 4 }, env: { UV_THREADPOOL_SIZE: "2" } },
    { label: "concurrency 8, UV_THREADPOOL_SIZE=8", opts: { concurrency: 8 }, env: { UV_THREADPOOL_SIZE: "8" } },
    { label: "concurrency 4, sharp.concurrency(2)", opts: { concurrency: 4, sharpConcurrency: 2 } },
  ];
  return variants.map((v) => {
    const rs = [];
    for (let r = 0; r < repeat; r++) {
      process.stderr.write(`== sweep ${f.name}: ${v.label} (${r + 1}/${repeat})\n`);
      rs.push(sadmCold(f.dir, f.resolution, v.opts, v.env ?? {}));
    }
    return {
      folder: f.name,
      label: v.label,
      ...v.opts,
      ...(v.env ?? {}),
      imagesPerSec: median(rs.map((x) => x.imagesPerSec)),
      imagesPerCpuSec: median(rs.map((x) => x.imagesPerCpuSec)),
      runs: rs.map((x) => ({ imagesPerSec: x.imagesPerSec, imagesPerCpuSec: x.imagesPerCpuSec })),
    };
  });
}

/** The stall runs: the rgb-32 preset's networks, and a small DiT whose short step leaves the least time for data. */
function stallRuns(presetSteps, smallSteps, pairs) {
  return [
    { label: "rgb-32 preset", preset: "rgb-32", steps: presetSteps, skip: 3, pairs: 1 },
    {
      label: "small DiT (patch 4, width 64, depth 2)",
      preset: "rgb-32",
      model: { patchSize: 4, hiddenSize: 64, depth: 2, numHeads: 4 },
      discriminator: { patchSize: 4, width: 32, depth: 1, numHeads: 2, projDim: 16 },
      steps: smallSteps,
      skip: 5,
      pairs,
    },
  ];
}

/**
 * Trains on the folder through the API and steps the same networks on ready batches, alternately `pairs` times (the
 * machine is shared: alternating puts both under the same load); the warm-up steps are left out.
 */
function stall(f, cacheDir, run, pairs) {
  const env = { SADM_CACHE_DIR: cacheDir };
  const o = { folder: f.dir, resolution: f.resolution, ...run };
  const loads = [];
  const api = [];
  const native = [];
  for (let r = 0; r < pairs; r++) {
    process.stderr.write(`== stall: ${run.label} on ${f.name}, ${run.steps} steps (${r + 1}/${pairs}), load ${load().toFixed(2)}\n`);
    loads.push(load());
    api.push(runChild("train", o, env).steps.slice(run.skip));
    native.push(runChild("native", o, env).steps.slice(run.skip));
  }
  const all = api.flat();
  const r = {
    folder: f.name,
    run: run.label,
    steps: run.steps,
    pairs,
    measuredSteps: all.length,
    meanDataSeconds: mean(all.map((s) => s.dataSeconds)),
    maxDataSeconds: Math.max(...all.map((s) => s.dataSeconds)),
    meanStepSeconds: mean(all.map((s) => s.seconds)),
    apiItPerSec: median(api.map((a) => 1 / mean(a.map((s) => s.wall)))),
    nativeItPerSec: median(native.map((a) => 1 / mean(a.map((s) => s.seconds)))),
    itPerSecRatios: api.map((a, i) => mean(native[i].map((s) => s.seconds)) / mean(a.map((s) => s.wall))),
    loadAvg: median(loads),
  };
  r.dataShare = r.meanDataSeconds / r.meanStepSeconds;
  r.itPerSecRatio = median(r.itPerSecRatios);
  return r;
}

// ------------------------------------------------------------------------------------------------------------
// Report.
// ------------------------------------------------------------------------------------------------------------

const g = (v) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toPrecision(3));
const x2 = (v) => `${v.toFixed(2)}×`;

function report(res) {
  const lines = [];
  const p = (l = "") => lines.push(l);
  const t = res.folders[0].torch;
  p(`${res.cpu}, ${res.cores} cores, ${res.threads} threads/workers; load average ${res.loadBefore.toFixed(2)} at the start. PyTorch ${t.version}, torchvision ${t.torchvision}, Pillow ${t.pillow}; sharp ${res.sharp}. Medians of ${res.repeat} run(s), each in a fresh process, files in the page cache. Ratios are sadm / PyTorch (higher is better).`);
  p();
  p("**Decode + preprocess, cold** (sadm: scan + decode into a fresh cache; PyTorch: one epoch of DiT's DataLoader, batch 64). Images/s is wall-clock; images per CPU-second counts the CPU time of every thread and worker, which on a shared machine says more about the work than the wall clock does.");
  p();
  p(`| folder | files | to | load | sadm images/s | PyTorch ${res.threads} workers | ratio | PyTorch 0 workers | ratio | sadm first epoch incl. batches | ratio | images / CPU-s sadm | PyTorch ${res.threads} w. | ratio | PyTorch 0 w. | ratio |`);
  p("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
  for (const f of res.folders)
    p(`| ${f.folder} | ${f.files} (${f.folderMiB.toFixed(0)} MiB) | ${f.resolution}² | ${f.loadAvg.toFixed(1)} | ${g(f.sadm.coldImagesPerSec)} | ${g(f.torch.imagesPerSecN)} | ${x2(f.ratio.coldVsWorkersN)} | ${g(f.torch.imagesPerSec0)} | ${x2(f.ratio.coldVsWorkers0)} | ${g(f.sadm.firstEpochImagesPerSec)} | ${x2(f.ratio.firstEpochVsWorkersN)} | ${g(f.sadm.coldImagesPerCpuSec)} | ${g(f.torch.imagesPerCpuSecN)} | ${x2(f.ratio.cpuVsWorkersN)} | ${g(f.torch.imagesPerCpuSec0)} | ${x2(f.ratio.cpuVsWorkers0)} |`);
  const dit = res.folders.find((f) => f.torch.imagesPerSecDitLoader);
  if (dit) p(`\n(${dit.folder} with DiT's own loader, \`convert("RGB")\` dropping alpha instead of compositing onto white: PyTorch ${g(dit.torch.imagesPerSecDitLoader)} images/s with ${res.threads} workers.)`);
  p();
  p("**Warm start and later epochs** (sadm reads the cache; PyTorch decodes every epoch again)");
  p();
  p(`| folder | cache MiB | sadm scan s | sadm warm open s | sadm epoch from cache images/s | PyTorch epoch images/s | ratio |`);
  p("|---|---|---|---|---|---|---|");
  for (const f of res.folders)
    p(`| ${f.folder} | ${f.sadm.cacheMiB.toFixed(1)} | ${f.sadm.warmScanSeconds.toFixed(3)} | ${f.sadm.warmOpenSeconds.toFixed(3)} | ${g(f.sadm.laterEpochImagesPerSec)} | ${g(f.torch.imagesPerSecN)} | ${x2(f.ratio.laterEpochVsWorkersN)} |`);
  p();
  p("**Per image, one at a time** (CPU ms per image, all threads of the process; the first images of the folder in path order; ratios are speed, sadm / Pillow)");
  p();
  p("| folder | images | sadm native PNG/JPEG (decode + composite + crop) | Pillow open + composite + convert + crop | ratio | sadm's sharp path: decode (orient, flatten, sRGB) | bare sharp decode | Pillow open + composite + convert | ratio | sadm preprocess (native) | Pillow center_crop_arr | ratio |");
  p("|---|---|---|---|---|---|---|---|---|---|---|---|");
  for (const f of res.folders) {
    const s = f.stages.sadm;
    const q = f.stages.torch;
    const ms = (v) => v.cpuMs.toFixed(3);
    const pillowAll = q.decode.cpuMs + q.preprocess.cpuMs;
    p(`| ${f.folder} | ${s.images} | ${ms(s.nativePath)} | ${pillowAll.toFixed(3)} | ${x2(pillowAll / s.nativePath.cpuMs)} | ${ms(s.decode)} | ${ms(s.bareDecode)} | ${ms(q.decode)} | ${x2(q.decode.cpuMs / s.decode.cpuMs)} | ${ms(s.preprocess)} | ${ms(q.preprocess)} | ${x2(q.preprocess.cpuMs / s.preprocess.cpuMs)} |`);
  }
  if (res.sweep.length > 0) {
    p();
    p(`**sadm cold images/s by concurrency** (default: 2 × CPUs = ${2 * res.cores} decodes in flight, UV_THREADPOOL_SIZE 4, sharp.concurrency() ${res.folders[0].sadm.sharpConcurrency})`);
    p();
    const names = [...new Set(res.sweep.map((s) => s.folder))];
    p(`| setting | ${names.map((n) => `${n}: images/s | images / CPU-s`).join(" | ")} |`);
    p(`|---|${names.map(() => "---|---|").join("")}`);
    const cell = (s) => `${g(s.imagesPerSec)} | ${g(s.imagesPerCpuSec)}`;
    for (const label of [...new Set(res.sweep.map((s) => s.label))])
      p(`| ${label} | ${names.map((n) => cell(res.sweep.find((s) => s.folder === n && s.label === label))).join(" | ")} |`);
  }
  p();
  p("**Step stall while training** (λ = 0, batch 64; warm-up steps left out). The API run assembles the next batch on the JS thread while the native step runs; the native run steps the same networks on batches made before the clock starts.");
  p();
  p("| run | load | steps measured (runs) | mean dataSeconds | max | mean step seconds | data / step | API it/s | native it/s | ratio |");
  p("|---|---|---|---|---|---|---|---|---|---|");
  for (const s of res.stall)
    p(`| ${s.run}, ${s.folder} | ${s.loadAvg.toFixed(1)} | ${s.measuredSteps} (${s.pairs}) | ${(1000 * s.meanDataSeconds).toFixed(1)} ms | ${(1000 * s.maxDataSeconds).toFixed(1)} ms | ${s.meanStepSeconds.toFixed(3)} | ${(100 * s.dataShare).toFixed(1)} % | ${s.apiItPerSec.toFixed(3)} | ${s.nativeItPerSec.toFixed(3)} | ${s.itPerSecRatio.toFixed(3)} |`);
  return lines.join("\n");
}

async function main() {
  const repeat = Number(process.env.REPEAT ?? 2);
  const photos = Number(process.env.PHOTOS ?? 1536);
  const steps = Number(process.env.STEPS ?? 100);
  const presetSteps = Number(process.env.PRESET_STEPS ?? 10);
  const threads = Number(process.env.THREADS ?? os.availableParallelism());
  for (const [k, v] of Object.entries({ REPEAT: repeat, PHOTOS: photos, STEPS: steps, PRESET_STEPS: presetSteps, THREADS: threads })) {
    const min = k.endsWith("STEPS") ? 8 : 1;
    if (!Number.isInteger(v) || v < min) throw new Error(`${k} must be an integer ≥ ${min} (got ${process.env[k]})`);
  }
  const root = dataRoot();
  fs.mkdirSync(root, { recursive: true });
  const t0 = Date.now();
  const loadBefore = load();
  const emoji = emojiFolder(root);
  const photo = await photoFolder(root, emoji, photos);
  const folders = [
    { name: "A: emoji PNG 64²", dir: emoji, resolution: 32, alpha: true, stageImages: 1000, ...folderStats(emoji) },
    { name: "B: photo JPEG ~500×375", dir: photo, resolution: 64, alpha: false, stageImages: 300, ...folderStats(photo) },
  ];
  const measured = folders.map((f) => measureFolder(f, threads, repeat));
  const sweepRows = process.env.SWEEP === "0" ? [] : folders.flatMap((f) => sweep(f, repeat));
  const stallRows = stallRuns(presetSteps, steps, Math.max(3, repeat)).map((run) => stall(folders[0], measured[0].cacheDir, run, run.pairs));
  for (const m of measured) fs.rmSync(m.cacheDir, { recursive: true, force: true });
  const res = {
    date: new Date().toISOString(),
    cpu: os.cpus()[0]?.model.trim(),
    cores: os.availableParallelism(),
    threads,
    repeat,
    loadBefore,
    loadAfter: load(),
    sharp: require("sharp").versions.sharp,
    node: process.version,
    seconds: (Date.now() - t0) / 1000,
    folders: measured.map((m) => m.out),
    sweep: sweepRows,
    stall: stallRows,
  };
  const table = report(res);
  console.log(`\n${table}\n\n(load average ${res.loadAfter.toFixed(2)} at the end; ${res.seconds.toFixed(0)} s in all)`);
  fs.mkdirSync(path.join(__dirname, "results"), { recursive: true });
  fs.writeFileSync(path.join(__dirname, "results", "data.json"), JSON.stringify(res, null, 2) + "\n");
}

function fail(e) {
  process.stderr.write(`${e?.stack ?? e}\n`);
  process.exit(1);
}

if (process.argv[2] === "child") {
  const fn = CHILDREN[process.argv[3]];
  if (!fn) fail(new Error(`unknown child ${process.argv[3]}`));
  fn(JSON.parse(process.argv[4])).then((r) => process.stdout.write(JSON.stringify(r) + "\n"), fail);
} else {
  main().catch(fail);
}
