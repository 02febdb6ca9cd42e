#!/usr/bin/env node
/**
 * The `sadm` command line: `sadm train`, `sadm finetune`, `sadm sample`, `sadm eval`, `sadm info`, `sadm presets`,
 * `sadm train-classifier`.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { spawn } from "node:child_process";
import yargs from "yargs";
import type { Argv } from "yargs";
import { ConfigError, SadmError, errorMessage, fsError, isFsError } from "./errors.js";
import { RUN_PRESETS, MODEL_PRESETS, DEFAULT_PRESET, SAMPLERS, SPACINGS, checkOneOf, samplerEvaluations, setPath, type SadmConfigInput } from "./config.js";
import { train } from "./trainer.js";
import { SAMPLE_CHUNK, classNamesOf, isWeightsFile, sampleGrid, sampleToDir, type SampleRequest } from "./sampler.js";
import { evaluate, formatMetrics, trainClassifier } from "./evaluate.js";
import { cpuBinary, cudaBinaryCandidates, loadNative } from "./native.js";
import { readState, resolveCheckpoint } from "./checkpoint.js";
import { TaskProgress } from "./logging.js";
import { version } from "./version.js";
import { INDEX_FILE } from "./data/latents.js";
import { discoverClasses } from "./data/scan.js";
import { encode } from "./latent/encode.js";
import { decodeFile } from "./latent/decode.js";
import { writeReport } from "./report/index.js";

type PlainObject = { [key: string]: unknown };

/**
 * Splits "cat, dog,3" into the classes of `--classes`: names or label numbers, resolved against the data or the
 * checkpoint (a name wins over a label, so a class named "10" is found by its name). A name cannot hold a comma.
 * @throws ConfigError on an empty list.
 */
export function parseClassList(text: string, field: string): string[] {
  const parts = text
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  if (parts.length === 0) throw new ConfigError(field, `must be a comma-separated list of class names or labels (got "${text}")`);
  return parts;
}

/**
 * `--data`: `mnist` and `emoji` are the built-in sets; a folder with sadm encode's `index.json` is latents; anything
 * else is a folder of images.
 */
export function dataFromArg(value: string): { name: "mnist" | "emoji" } | { name: "folder" | "latents"; path: string } {
  if (value === "mnist" || value === "emoji") return { name: value };
  return { name: fs.existsSync(path.join(value, INDEX_FILE)) ? "latents" : "folder", path: value };
}

/** Parses a `--set key.path=value` override; the value is JSON when it parses, else a string. */
export function parseSet(expr: string): [string, unknown] {
  const eq = expr.indexOf("=");
  if (eq <= 0) throw new ConfigError("--set", `expected key.path=value (got "${expr}")`);
  const key = expr.slice(0, eq).trim();
  const raw = expr.slice(eq + 1).trim();
  let value: unknown = raw;
  try {
    value = JSON.parse(raw);
  } catch {
    value = raw;
  }
  return [key, value];
}

/** `all`, `efficient`, or comma-separated name patterns. */
export function parseTrainable(text: string): "all" | "efficient" | string[] {
  if (text === "all" || text === "efficient") return text;
  const parts = text.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
  if (parts.length === 0) throw new ConfigError("--trainable", `expected all, efficient or name patterns (got "${text}")`);
  return parts;
}

function readConfigFile(file: string): PlainObject {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    throw new ConfigError("--config", `cannot read ${file}: ${errorMessage(e)}`);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new ConfigError("--config", `${file} is not valid JSON: ${errorMessage(e)}`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v))
    throw new ConfigError("--config", `${file} must hold a JSON object`);
  return v as PlainObject;
}

/** Flags of `sadm train` (as parsed by yargs). */
interface TrainArgs {
  config?: string;
  preset?: string;
  steps?: number;
  batchSize?: number;
  lambda?: number;
  lr?: number;
  discLr?: number;
  advWarmup?: number;
  advRamp?: number;
  out?: string;
  resume?: string;
  force?: boolean;
  device?: string;
  precision?: string;
  seed?: number;
  sampleEvery?: number;
  checkpointEvery?: number;
  keep?: number;
  classes?: string;
  limit?: number;
  sampler?: string;
  sampleSteps?: number;
  spacing?: string;
  cfg?: number;
  set?: string[];
  quiet?: boolean;
  evalEvery?: number;
  evalSamples?: number;
  trainable?: string;
  from?: string;
  data?: string;
  resolution?: number;
  channels?: number;
  resize?: string;
  flip?: boolean;
  unconditional?: boolean;
  forceData?: boolean;
  vae?: string;
  classesFrom?: string;
}

/** Builds the config input of `sadm train` from a config file, `--set` overrides and flags (flags win). */
export function trainInputFromArgs(a: TrainArgs): SadmConfigInput {
  const cfg: PlainObject = a.config ? readConfigFile(a.config) : {};
  for (const s of a.set ?? []) {
    const [k, v] = parseSet(s);
    setPath(cfg, k, v);
  }
  const flag = (key: string, value: unknown): void => {
    if (value !== undefined) setPath(cfg, key, value);
  };
  flag("preset", a.preset);
  flag("steps", a.steps);
  flag("batchSize", a.batchSize);
  flag("lambda", a.lambda);
  flag("lr", a.lr);
  flag("discLr", a.discLr);
  flag("advWarmupSteps", a.advWarmup);
  flag("advRampSteps", a.advRamp);
  flag("outDir", a.out);
  flag("device", a.device);
  flag("precision", a.precision);
  flag("seed", a.seed);
  flag("sampleEvery", a.sampleEvery);
  flag("checkpointEvery", a.checkpointEvery);
  flag("keepCheckpoints", a.keep);
  if (a.data !== undefined) for (const [k, v] of Object.entries(dataFromArg(a.data))) flag(`data.${k}`, v);
  flag("data.resolution", a.resolution);
  flag("data.channels", a.channels);
  flag("data.resize", a.resize);
  flag("data.flip", a.flip);
  if (a.unconditional) flag("model.numClasses", 0);
  flag("vae", a.vae);
  if (a.classesFrom !== undefined) {
    const names = discoverClasses(a.classesFrom, "auto").classNames;
    if (!names) throw new ConfigError("--classes-from", `${a.classesFrom} has no classes (no sub-folders or metadata labels)`);
    flag("data.classNames", names);
  }
  flag("data.classes", a.classes !== undefined ? parseClassList(a.classes, "--classes") : undefined);
  flag("data.limit", a.limit);
  flag("sampler", a.sampler);
  flag("sampleSteps", a.sampleSteps);
  flag("sampleSpacing", a.spacing);
  flag("cfgScale", a.cfg);
  flag("eval.every", a.evalEvery);
  flag("eval.samples", a.evalSamples);
  flag("trainable", a.trainable === undefined ? undefined : parseTrainable(a.trainable));
  return cfg as SadmConfigInput;
}

async function runTrain(a: TrainArgs): Promise<number> {
  const input = trainInputFromArgs(a);
  const controller = new AbortController();
  let interrupts = 0;
  const onSigint = (): void => {
    interrupts++;
    if (interrupts === 1) {
      process.stderr.write("\nsadm: interrupted; finishing the current step and saving a checkpoint (Ctrl-C again to quit)\n");
      controller.abort();
    } else process.exit(130);
  };
  process.on("SIGINT", onSigint);
  try {
    const r = await train(input, {
      from: a.from,
      resume: a.resume === undefined ? undefined : a.resume === "" ? "latest" : a.resume,
      force: a.force,
      forceData: a.forceData,
      quiet: a.quiet,
      signal: controller.signal,
    });
    if (!a.quiet) {
      const last = r.last;
      process.stdout.write(
        `sadm: ${r.aborted ? "stopped" : "done"} at step ${r.step} in ${r.seconds.toFixed(1)}s` +
          (last ? ` (loss ${last.loss.toFixed(4)}, mse ${last.mse.toFixed(4)})` : "") +
          `\n  checkpoint: ${r.checkpoint ?? "-"}\n` +
          (r.samples.length > 0 ? `  samples:    ${r.samples[r.samples.length - 1]}\n` : "") +
          (r.evals.length > 0 ? `  eval:       ${formatMetrics(r.evals[r.evals.length - 1])}\n` : ""),
      );
    }
    return r.aborted ? 130 : 0;
  } finally {
    process.off("SIGINT", onSigint);
  }
}

interface SampleArgs {
  checkpoint: string;
  classes?: string;
  perClass?: number;
  n?: number;
  cfg?: number;
  steps?: number;
  sampler?: string;
  spacing?: string;
  eta?: number;
  dynamicThreshold?: string;
  seed?: number;
  device?: string;
  ema?: boolean;
  out?: string;
  outDir?: string;
  chunkSize?: number;
  quiet?: boolean;
  vae?: string;
  guidanceChannels?: number;
  numHeads?: number;
}

/** `--dynamic-threshold RATIO[,MAX]` (MAX default 1.5). */
function parseThreshold(value: string | undefined): { ratio: number; maxValue: number } | undefined {
  if (value === undefined) return undefined;
  const [ratio, maxValue = 1.5, ...rest] = value.split(",").map((x) => Number(x.trim()));
  if (rest.length > 0 || !(ratio > 0 && ratio <= 1) || !(maxValue >= 1 && Number.isFinite(maxValue)))
    throw new ConfigError("--dynamic-threshold", `must be RATIO[,MAX] with 0 < RATIO ≤ 1 and MAX ≥ 1, e.g. 0.995,1.5 (got "${value}")`);
  return { ratio, maxValue };
}

async function runSample(a: SampleArgs): Promise<number> {
  const sampler = checkOneOf(a.sampler, SAMPLERS, "--sampler");
  const spacing = checkOneOf(a.spacing, SPACINGS, "--spacing");
  if (a.out !== undefined && a.outDir !== undefined)
    throw new ConfigError("--out-dir", "cannot be combined with --out: write one grid (--out FILE) or one PNG per image (--out-dir DIR)");
  let progress: TaskProgress | undefined;
  let done = 0;
  const weightsFile = isWeightsFile(a.checkpoint);
  const chunk = a.chunkSize ?? (weightsFile ? 1 : SAMPLE_CHUNK);
  let unit: "images" | "evaluations" | undefined;
  const tick = (now: number, total: number): void => {
    progress ??= new TaskProgress({ unit: unit ?? "images", total, quiet: a.quiet });
    progress.tick(now - done);
    done = now;
  };
  const req: SampleRequest = {
    checkpoint: a.checkpoint,
    classes: a.classes !== undefined ? parseClassList(a.classes, "--classes") : undefined,
    perClass: a.perClass,
    n: a.n,
    cfgScale: a.cfg,
    steps: a.steps,
    sampler,
    spacing,
    eta: a.eta,
    dynamicThreshold: parseThreshold(a.dynamicThreshold),
    seed: a.seed,
    device: a.device,
    useEma: a.ema,
    chunkSize: a.chunkSize,
    vae: a.vae,
    guidanceChannels: a.guidanceChannels,
    numHeads: a.numHeads,
    // Many chunks: images done; one chunk, or a weights file's minutes per image: network evaluations.
    onProgress: (now, total) => {
      unit ??= weightsFile || total <= chunk ? "evaluations" : "images";
      if (unit === "images") tick(now, total);
    },
    onEvaluations: (now, total) => {
      if (unit === "evaluations") tick(now, total);
    },
  };
  if (weightsFile && !a.quiet) {
    const s = sampler ?? "ddpm";
    const evals = samplerEvaluations(s, a.steps ?? 250);
    process.stdout.write(
      `sadm: sampling a weights file with ${s}: ${evals} network evaluations per image` +
        `${(a.cfg ?? 4) === 1 ? "" : ", each a guided (doubled) batch"}; a DiT-XL/2 takes minutes per image on a CPU\n`,
    );
  }
  try {
    if (a.outDir !== undefined) {
      const r = await sampleToDir(req, a.outDir);
      process.stdout.write(`sadm: wrote ${r.count} samples to ${r.dir}\n`);
    } else {
      const r = await sampleGrid(req, a.out ?? "samples.png");
      process.stdout.write(`sadm: wrote ${r.shape[0]} samples to ${r.path}\n`);
    }
  } finally {
    progress?.stop();
  }
  return 0;
}

interface EncodeArgs {
  data: string;
  vae: string;
  out: string;
  resolution?: number;
  resize?: string;
  classes?: string;
  limit?: number;
  unconditional?: boolean;
  shardSize?: number;
  device?: string;
  quiet?: boolean;
}

async function runEncode(a: EncodeArgs): Promise<number> {
  const src = dataFromArg(a.data);
  if (src.name === "latents") throw new ConfigError("--data", `${a.data} already holds latents (an index.json): give the image folder`);
  if (src.name === "mnist") throw new ConfigError("--data", "the VAE encodes RGB images: give a folder of images or emoji, not mnist");
  let bar: TaskProgress | undefined;
  let last = 0;
  const r = await encode({
    data: {
      ...src,
      resolution: a.resolution ?? 256,
      ...(a.resize !== undefined ? { resize: a.resize as "crop" | "pad" | "stretch" } : {}),
      ...(a.classes !== undefined ? { classes: parseClassList(a.classes, "--classes") } : {}),
      ...(a.limit !== undefined ? { limit: a.limit } : {}),
      ...(a.unconditional ? { labels: "none" as const } : {}),
    },
    vae: a.vae,
    out: a.out,
    device: a.device,
    shardSize: a.shardSize,
    decode: { quiet: a.quiet },
    onProgress: (done, total) => {
      if (!bar) {
        if (done > 0 && !a.quiet) process.stdout.write(`sadm: resuming the encode at image ${done} of ${total}\n`);
        bar = new TaskProgress({ unit: "images", total, quiet: a.quiet });
        last = done;
        return;
      }
      bar.tick(done - last);
      last = done;
    },
  });
  bar?.stop();
  const { index } = r;
  process.stdout.write(
    `sadm: ${r.encoded} image(s) encoded in ${r.seconds.toFixed(1)}s (${(r.encoded / Math.max(r.seconds, 1e-3)).toFixed(2)} images/s)` +
      `${r.resumed > 0 ? `, ${r.resumed} from before` : ""}${r.badImages > 0 ? `, ${r.badImages} file(s) skipped (did not decode)` : ""}\n` +
      `  latents: ${r.dir} (${index.source.images} × ${index.vae.latentChannels}×${index.latentSize}×${index.latentSize}, ` +
      `${index.source.classNames ? `${index.source.classNames.length} class${index.source.classNames.length === 1 ? "" : "es"}` : "no labels"})\n` +
      `  train:   sadm train --data ${r.dir}\n`,
  );
  return 0;
}

interface DecodeArgs {
  latents: string;
  tensor?: string;
  vae: string;
  out: string;
  device?: string;
  quiet?: boolean;
}

async function runDecode(a: DecodeArgs): Promise<number> {
  let bar: TaskProgress | undefined;
  let last = 0;
  const r = await decodeFile({
    latents: a.latents,
    tensor: a.tensor,
    vae: a.vae,
    out: a.out,
    device: a.device,
    onProgress: (done, total) => {
      bar ??= new TaskProgress({ unit: "images", total, quiet: a.quiet });
      bar.tick(done - last);
      last = done;
    },
  });
  bar?.stop();
  process.stdout.write(`sadm: wrote ${r.count} images (${r.shape[2]}×${r.shape[3]}) to ${r.dir}\n`);
  return 0;
}

interface EvalArgs {
  checkpoint: string;
  samples?: number;
  steps?: number;
  sampler?: string;
  spacing?: string;
  cfg?: number;
  seed?: number;
  extractor?: string;
  extractorWeights?: string;
  device?: string;
  append?: boolean;
  json?: boolean;
  real?: string;
  vae?: string;
}

async function runEvalCommand(a: EvalArgs): Promise<number> {
  checkOneOf(a.sampler, SAMPLERS, "--sampler");
  checkOneOf(a.spacing, SPACINGS, "--spacing");
  const overrides: PlainObject = {};
  const put = (k: string, v: unknown): void => {
    if (v !== undefined) overrides[k] = v;
  };
  put("samples", a.samples);
  put("steps", a.steps);
  put("sampler", a.sampler);
  put("spacing", a.spacing);
  put("cfgScale", a.cfg);
  put("seed", a.seed);
  if (a.extractor !== undefined || a.extractorWeights !== undefined)
    overrides.extractor = { arch: a.extractor ?? "lenet-mnist", ...(a.extractorWeights ? { weights: a.extractorWeights } : {}) };
  const r = await evaluate({ checkpoint: a.checkpoint, eval: overrides, device: a.device, append: a.append, real: a.real, vae: a.vae });
  if (a.json) process.stdout.write(JSON.stringify(r, null, 2) + "\n");
  else
    process.stdout.write(
      `sadm: ${r.checkpoint} (step ${r.step}), ${r.samples} samples vs ${r.realImages} real images, ${r.seconds.toFixed(1)}s\n` +
        `  ${formatMetrics(r)}\n` +
        (r.metricsFile ? `  appended to ${r.metricsFile}\n` : ""),
    );
  return 0;
}

async function runTrainClassifier(a: { arch: string; out?: string; epochs?: number; seed?: number }): Promise<number> {
  const arch = checkOneOf(a.arch, ["lenet-mnist", "lenet-emoji"] as const, "--arch") ?? "lenet-mnist";
  const out = a.out ?? `assets/${arch}.safetensors`;
  const r = await trainClassifier({
    arch,
    out,
    epochs: a.epochs,
    seed: a.seed,
    onEpoch: (e, l) => process.stdout.write(`epoch ${e}: loss ${l.toFixed(4)}\n`),
  });
  process.stdout.write(
    `sadm: ${r.arch} test accuracy ${(100 * r.testAccuracy).toFixed(2)}% on ${r.testImages} held-out images ` +
      `(${r.trainImages} training images, ${r.seconds.toFixed(0)}s) → ${out}\n`,
  );
  return 0;
}

/** What `sadm info` says of one native build: where it is and what it sees, or why it cannot load. */
interface BackendReport {
  binary?: string;
  features?: string[];
  devices?: string[];
  error?: string;
}

/** Loads one backend's binary and reports it, or says why it cannot load. */
function report(device: string, binary: string | undefined): BackendReport & { version?: string } {
  try {
    const info = loadNative(device).buildInfo();
    return { binary, version: info.version, features: info.features, devices: info.devices };
  } catch (e) {
    return { binary, error: errorMessage(e) };
  }
}

/** `sadm info`: the version, each binary (where it is, its features and devices, or why it cannot load). */
function runBuildInfo(a: { json?: boolean }): number {
  const found = cpuBinary();
  const { version: nativeVersion, ...cpu } = report("cpu", found ? `${found.file} (${found.source})` : undefined);
  const { version: _, ...cuda } = report("cuda:0", cudaBinaryCandidates().find((f) => fs.existsSync(f)));
  const devices = [...new Set([...(cpu.devices ?? []), ...(cuda.devices ?? [])])];
  // Without its CPU binary sadm can do nothing but this report, so it is a failure.
  const status = cpu.error ? 1 : 0;
  if (a.json) {
    process.stdout.write(JSON.stringify({ version: version(), nativeVersion, cpu, cuda, devices }, null, 2) + "\n");
    return status;
  }
  const line = (r: BackendReport): string =>
    r.error
      ? `not available: ${r.error.replace(/\n\s*/g, "\n          ")}`
      : `${r.binary ?? "(loaded)"} (features: ${(r.features ?? []).join(", ")})`;
  process.stdout.write(
    `sadm ${version()}${nativeVersion ? ` (native core ${nativeVersion})` : ""}\n` +
      `cpu:      ${line(cpu)}\n` +
      `cuda:     ${line(cuda)}\n` +
      `devices:  ${devices.join(", ") || "none"}\n` +
      `node:     ${process.version} ${process.platform}-${process.arch}\n`,
  );
  return status;
}

/** What `sadm info --checkpoint` reports of a checkpoint. */
interface CheckpointReport {
  checkpoint: string;
  step: number;
  preset: string | undefined;
  /** The core config's model and diffusion settings, and its numeric precision. */
  model: Record<string, unknown>;
  diffusion: Record<string, unknown>;
  precision: string | undefined;
  /** Total steps, batch size and λ of the run (its saved config). */
  run: { steps?: number; batchSize?: number; lambda?: number } | undefined;
  data: { source: string | undefined; images: number | undefined; fingerprint: string | undefined };
  /** Class names by label; null when the data had none (the labels are the names). */
  classNames: string[] | null;
  sadmVersion: string | undefined;
  finetunedFrom: string | undefined;
  files: Array<{ name: string; bytes: number }>;
}

/** Reads a checkpoint (or a run's latest) for `sadm info --checkpoint`. @throws CheckpointError */
function checkpointReport(target: string): CheckpointReport {
  const dir = resolveCheckpoint(target);
  const state = readState(dir);
  const { config: core, extra } = state;
  const cfg = extra.config;
  const ds = extra.dataset;
  const filter = cfg?.data.classes ? ` classes ${cfg.data.classes.join(",")}` : "";
  const limit = cfg?.data.limit !== undefined ? ` limit ${cfg.data.limit}` : "";
  return {
    checkpoint: dir,
    step: state.step,
    preset: cfg?.preset,
    model: { ...core.model },
    diffusion: { ...core.diffusion },
    precision: core.precision,
    run: cfg ? { steps: cfg.steps, batchSize: cfg.batchSize, lambda: cfg.lambda } : undefined,
    data: {
      source: ds?.source ?? (cfg ? `${cfg.data.name}${filter}${limit}` : undefined),
      images: ds?.images,
      fingerprint: ds?.fingerprint,
    },
    classNames: classNamesOf(state, dir) ?? null,
    sadmVersion: extra.sadmVersion,
    finetunedFrom: extra.finetunedFrom,
    files: fs
      .readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.isFile())
      .map((e) => ({ name: e.name, bytes: fs.statSync(path.join(dir, e.name)).size }))
      .sort((x, y) => x.name.localeCompare(y.name)),
  };
}

/** 1234567 → "1.2 MB". */
function fmtBytes(n: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let v = n;
  let u = 0;
  while (v >= 1000 && u < units.length - 1) {
    v /= 1000;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

/** `sadm info --checkpoint`: what a checkpoint holds, as text or JSON. */
function runCheckpointInfo(a: { checkpoint: string; json?: boolean }): number {
  const r = checkpointReport(a.checkpoint);
  if (a.json) {
    process.stdout.write(JSON.stringify(r, null, 2) + "\n");
    return 0;
  }
  const m = r.model as Partial<Record<string, number | boolean>>;
  const d = r.diffusion as Partial<Record<string, string | number>>;
  const size = `${m.inputSize}×${m.inputSize}×${m.inChannels}`;
  const classes = m.numClasses === 0 ? "unconditional" : `${m.numClasses} classes`;
  const dash = (v: unknown): string => (v === undefined || v === null ? "-" : String(v));
  const lines = [
    `checkpoint:  ${r.checkpoint}`,
    `step:        ${r.step}` + (r.run?.steps !== undefined ? ` of ${r.run.steps}` : ""),
    `preset:      ${dash(r.preset)}`,
    `model:       DiT depth ${m.depth}, hidden ${m.hiddenSize}, heads ${m.numHeads}, patch ${m.patchSize}, ` +
      `${size}, ${classes}${m.learnSigma ? ", learned σ" : ""}`,
    `diffusion:   ${d.numTimesteps} steps, ${d.schedule} schedule, ${d.prediction}-prediction, ${dash(r.precision)}`,
  ];
  if (r.run) lines.push(`training:    batch ${dash(r.run.batchSize)}, λ ${dash(r.run.lambda)}`);
  lines.push(
    `data:        ${dash(r.data.source)}`,
    `images:      ${dash(r.data.images)}`,
    `fingerprint: ${dash(r.data.fingerprint)}`,
  );
  if (r.classNames) {
    lines.push("classes:");
    r.classNames.forEach((name, k) => lines.push(`  ${k}: ${name}`));
  } else if (m.numClasses) lines.push(`classes:     no names (labels 0 to ${Number(m.numClasses) - 1})`);
  lines.push(`written by:  sadm ${dash(r.sadmVersion)}`);
  if (r.finetunedFrom !== undefined) lines.push(`fine-tuned from: ${r.finetunedFrom}`);
  lines.push("files:");
  const width = Math.max(0, ...r.files.map((f) => f.name.length));
  for (const f of r.files) lines.push(`  ${f.name.padEnd(width)}  ${fmtBytes(f.bytes)}`);
  process.stdout.write(lines.join("\n") + "\n");
  return 0;
}

/** `sadm info`: the native builds, or with `--checkpoint` what a checkpoint holds. */
function runInfo(a: { json?: boolean; checkpoint?: string }): number {
  return a.checkpoint !== undefined ? runCheckpointInfo({ checkpoint: a.checkpoint, json: a.json }) : runBuildInfo(a);
}

function runReport(a: { runs?: string[]; out?: string; open?: boolean; inlineImages?: boolean; title?: string }): number {
  const file = writeReport(a.runs ?? [], { out: a.out, inlineImages: a.inlineImages, title: a.title });
  process.stdout.write(`wrote ${file}\n`);
  if (a.open) openInBrowser(file);
  return 0;
}

/** Opens a file with the desktop's handler (xdg-open, open, start); says so when there is none. */
function openInBrowser(file: string): void {
  const [cmd, args] =
    process.platform === "darwin" ? ["open", [file]] : process.platform === "win32" ? ["cmd", ["/c", "start", "", file]] : ["xdg-open", [file]];
  const child = spawn(cmd, args, { detached: true, stdio: "ignore" });
  child.on("error", () => process.stderr.write(`sadm: cannot open a browser (${cmd} failed): open ${file} yourself\n`));
  child.unref();
}

function runPresets(): number {
  const lines = ["run presets:"];
  for (const [name, p] of Object.entries(RUN_PRESETS))
    lines.push(`  ${name}${name === DEFAULT_PRESET ? " (default)" : ""}  ${p.description}`);
  lines.push("model presets (DiT reference architectures):");
  for (const [name, m] of Object.entries(MODEL_PRESETS))
    lines.push(`  ${name}  depth ${m.depth}, hidden ${m.hiddenSize}, heads ${m.numHeads}, patch ${m.patchSize}`);
  process.stdout.write(lines.join("\n") + "\n");
  return 0;
}

function reportError(err: unknown): void {
  if (err instanceof SadmError) {
    process.stderr.write(`error: ${err.message}\n`);
    if (process.env.SADM_DEBUG && err.stack) process.stderr.write(err.stack + "\n");
  } else if (isFsError(err)) {
    // A file-system error that no caller put in context still reads as one line, not a stack.
    process.stderr.write(`error: ${fsError(err, "file-system error").message}\n`);
  } else {
    process.stderr.write(`error: ${errorMessage(err)}\n`);
    if (err instanceof Error && err.stack) process.stderr.write(err.stack + "\n");
  }
}

/** The options shared by `sadm train` and `sadm finetune`. */
function withTrainOptions<T>(y: Argv<T>) {
  return y
    .option("config", { alias: "c", type: "string", describe: "JSON config file (flags override it)" })
    .option("preset", {
      type: "string",
      describe: `Run preset (${Object.keys(RUN_PRESETS).join(", ")}) or DiT model preset (DiT-S/2 … DiT-XL/8)`,
    })
    .option("steps", { type: "number", describe: "Total optimizer steps" })
    .option("batch-size", { alias: "b", type: "number", describe: "Images per step" })
    .option("lambda", { type: "number", describe: "Max adversarial weight λ (0 = plain DiT)" })
    .option("lr", { type: "number", describe: "DiT learning rate" })
    .option("disc-lr", { type: "number", describe: "Discriminator learning rate" })
    .option("adv-warmup", { type: "number", describe: "Steps with λ = 0 before the ramp" })
    .option("adv-ramp", { type: "number", describe: "Steps of the linear λ ramp" })
    .option("out", { alias: "o", type: "string", describe: "Run directory (default runs/mnist)" })
    .option("resume", {
      type: "string",
      describe: "Continue a run: no value or 'latest' = newest checkpoint in --out; or a checkpoint/run dir",
    })
    .option("force", { type: "boolean", describe: "Overwrite a run already in --out" })
    .option("device", { type: "string", describe: "cpu or cuda:N" })
    .option("precision", { type: "string", choices: ["fp32", "bf16"], describe: "DiT matmuls in fp32, or bf16 (CUDA)" })
    .option("seed", { type: "number", describe: "Random seed" })
    .option("sample-every", { type: "number", describe: "Write a sample grid every N steps" })
    .option("checkpoint-every", { type: "number", describe: "Save a checkpoint every N steps" })
    .option("keep", { type: "number", describe: "Keep the last K checkpoints" })
    .option("data", {
      type: "string",
      describe:
        "Training data: mnist (built in, default), emoji (npm install emoji-datasource-google), a folder of images, or latents (sadm encode)",
    })
    .option("resolution", { type: "number", describe: "Image folders and emoji: side of the square images (default 32)" })
    .option("channels", { type: "number", choices: [1, 3], describe: "Image folders and emoji: 3 = RGB (default), 1 = grey" })
    .option("resize", {
      type: "string",
      choices: ["crop", "pad", "stretch"],
      describe: "How images become square: crop (ADM centre crop, as DiT; default), pad, stretch",
    })
    .option("flip", { type: "boolean", describe: "Random horizontal flips (default on for images, off for digits; --no-flip)" })
    .option("unconditional", { type: "boolean", describe: "Ignore the labels: one unconditional model" })
    .option("vae", { type: "string", describe: "Latent data: the VAE for the grids and evaluations (default: the latents' own)" })
    .option("classes-from", {
      type: "string",
      describe: "Check that the data's classes are this image folder's (latents of it, in its class order)",
    })
    .option("force-data", { type: "boolean", describe: "Resume even though the data changed since the checkpoint" })
    .option("classes", { type: "string", describe: "Train on these classes only: labels (0,1,7) or names (cat,dog)" })
    .option("limit", { type: "number", describe: "Use at most N images" })
    .option("sampler", { type: "string", choices: [...SAMPLERS], describe: "Sampler for the grids" })
    .option("sample-steps", { type: "number", describe: "Sampling steps for the grids" })
    .option("spacing", { type: "string", choices: [...SPACINGS], describe: "The grids' timestep spacing (default: karras for euler/heun, else linspace)" })
    .option("cfg", { type: "number", describe: "Guidance scale for the grids" })
    .option("set", {
      type: "string",
      array: true,
      describe: "Override any config field: --set model.depth=2 --set discriminator.kernel=gaussian",
    })
    .option("quiet", { alias: "q", type: "boolean", describe: "No progress output" })
    .option("eval-every", { type: "number", describe: "Evaluate (FD, KID, precision/recall, accuracy) every N steps" })
    .option("eval-samples", { type: "number", describe: "Samples per evaluation, default 1000" })
    .option("trainable", {
      type: "string",
      describe: "DiT parameters to train: all, efficient (biases, adaLN, embeddings) or patterns like 'blocks.*.attn.*'",
    });
}

/** Builds the yargs parser (exported for tests). */
export function buildCli(argv: string[]): Argv {
  let result = 0;
  const setResult = (p: Promise<number> | number): Promise<void> =>
    Promise.resolve(p).then((code) => {
      result = code;
      process.exitCode = result;
    });
  return yargs(argv)
    // A flag given twice takes its last value, as in most CLIs; only --set (and report's runs) collect.
    .middleware((args) => {
      for (const [k, v] of Object.entries(args)) if (Array.isArray(v) && k !== "_" && k !== "set" && k !== "runs") args[k] = v[v.length - 1] as unknown;
    }, true)
    .scriptName("sadm")
    .usage("$0 <command> [options]")
    .command(
      "train",
      "Train a DiT with SADM (default: the built-in MNIST run, preset mnist-tiny)",
      (y) =>
        withTrainOptions(y)
          .example("$0 train", "train the built-in MNIST model into runs/mnist")
          .example("$0 train --lambda 0 --out runs/baseline", "plain DiT baseline")
          .example("$0 train --resume --steps 3000", "continue runs/mnist to 3000 steps"),
      (a) => setResult(runTrain(a as TrainArgs)),
    )
    .command(
      "finetune",
      "Fine-tune a trained model on new data/classes (fresh optimizers, EMA and discriminator)",
      (y) =>
        withTrainOptions(y)
          .option("from", {
            type: "string",
            demandOption: true,
            describe:
              "Checkpoint or run dir (its EMA weights), or DiT weights in the reference names: a .pt/.pth (torch.save, e.g. DiT-XL-2-256x256.pt) or .safetensors",
          })
          .example("$0 finetune --from runs/digits04 --classes 5,6,7,8,9 --out runs/ft59", "new digits")
          .example("$0 finetune --from runs/mnist --trainable efficient --lambda 0.05", "parameter-efficient SADM")
          .example("$0 finetune --from DiT-XL-2-256x256.pt --data latents/mine --lambda 0.1", "the paper's setting (a GPU)"),
      (a) => setResult(runTrain(a as TrainArgs)),
    )
    .command(
      "eval",
      "Evaluate a checkpoint: FD, KID, precision/recall and classifier accuracy of its EMA samples",
      (y) =>
        y
          .option("checkpoint", { alias: "k", type: "string", demandOption: true, describe: "Checkpoint or run dir" })
          .option("samples", { alias: "n", type: "number", describe: "Samples to generate (default: the run's eval.samples, 1000)" })
          .option("steps", { type: "number", describe: "Sampling steps (default: the run's eval.steps, 10)" })
          .option("sampler", { type: "string", choices: [...SAMPLERS], describe: "Sampler (default: the run's eval.sampler, unipc)" })
          .option("spacing", { type: "string", choices: [...SPACINGS], describe: "Timestep spacing (default: karras for euler/heun, else linspace)" })
          .option("cfg", { type: "number", describe: "Guidance scale (default 1: the plain conditional model)" })
          .option("seed", { type: "number", describe: "Noise seed (default 0)" })
          .option("extractor", { type: "string", describe: "Feature extractor: lenet-mnist (default), lenet-emoji (the emoji at 32²; their default) or inception-v3-fid (needs --extractor-weights)" })
          .option("extractor-weights", { type: "string", describe: "Its weights (safetensors); default: the shipped LeNet" })
          .option("device", { type: "string", describe: "cpu or cuda:N" })
          .option("real", { type: "string", describe: "Compare with this folder of images instead of the run's data" })
          .option("vae", { type: "string", describe: "Latent runs: the VAE that decodes the samples (default: the latents' own)" })
          .option("append", { type: "boolean", default: true, describe: "Append to the run's metrics.jsonl (--no-append: don't)" })
          .option("json", { type: "boolean", describe: "Print JSON" })
          .example("$0 eval -k runs/mnist --samples 2000", "evaluate the latest checkpoint of runs/mnist"),
      (a) => setResult(runEvalCommand(a as EvalArgs)),
    )
    .command(
      "train-classifier",
      "Train a feature extractor the metrics use (how assets/lenet-mnist.safetensors and lenet-emoji.safetensors were made)",
      (y) =>
        y
          .option("arch", { type: "string", choices: ["lenet-mnist", "lenet-emoji"], default: "lenet-mnist", describe: "lenet-mnist (digits) or lenet-emoji (--data emoji at 32²)" })
          .option("out", { alias: "o", type: "string", describe: "Weights file (default assets/<arch>.safetensors)" })
          .option("epochs", { type: "number", describe: "Epochs (default 4; lenet-emoji 30)" })
          .option("seed", { type: "number", describe: "Seed (default 0)" }),
      (a) => setResult(runTrainClassifier(a)),
    )
    .command(
      "sample",
      "Sample a class-conditional grid from a checkpoint (EMA weights), or any number of samples into a directory",
      (y) =>
        y
          .option("checkpoint", {
            alias: "k",
            type: "string",
            demandOption: true,
            describe: "Checkpoint or run dir, or DiT weights (.pt/.pth/.safetensors, e.g. DiT-XL-2-256x256.pt)",
          })
          .option("vae", { type: "string", describe: "Latent models: the VAE that decodes the samples (default: the run's)" })
          .option("guidance-channels", { type: "number", describe: "Guide only the first N channels (DiT's sample.py: 3)" })
          .option("num-heads", { type: "number", describe: "A weights file of no reference DiT width: its attention heads" })
          .option("classes", {
            type: "string",
            describe: "Classes, one column each, by name or label, e.g. cat,dog or 0,1,2 (default: all)",
          })
          .option("per-class", { type: "number", describe: "Rows (samples per class), default 8" })
          .option("n", { type: "number", describe: "Samples for an unconditional model, default 64" })
          .option("cfg", { type: "number", describe: "Classifier-free guidance scale, default 3 (a .pt: 4)" })
          .option("steps", { type: "number", describe: "Sampling steps, default 10 (a .pt: 250)" })
          .option("sampler", { type: "string", choices: [...SAMPLERS], describe: "Sampler, default unipc (a .pt: ddpm)" })
          .option("spacing", { type: "string", choices: [...SPACINGS], describe: "Timestep spacing (default: karras for euler/heun, else linspace)" })
          .option("eta", { type: "number", describe: "DDIM η, default 0" })
          .option("dynamic-threshold", { type: "string", describe: "Threshold x̂0 dynamically instead of clipping: RATIO[,MAX], e.g. 0.995,1.5" })
          .option("seed", { type: "number", describe: "Noise seed, default 0" })
          .option("device", { type: "string", describe: "cpu or cuda:N" })
          .option("ema", { type: "boolean", default: true, describe: "Use the EMA weights (--no-ema: raw)" })
          .option("out", { alias: "o", type: "string", describe: "PNG grid to write, class names under the columns (default samples.png)" })
          .option("out-dir", { type: "string", describe: "Write each sample as its own PNG (00000123-<class>.png) into this directory" })
          .option("chunk-size", { type: "number", describe: `Images per native sampling call, default ${SAMPLE_CHUNK}` })
          .option("quiet", { alias: "q", type: "boolean", describe: "No progress output" })
          .example("$0 sample -k runs/mnist --classes 0,1,2 --cfg 4 --out grid.png", "three columns of digits")
          .example("$0 sample -k runs/pets --classes cat,dog --per-class 5000 --out-dir samples/", "10,000 PNGs")
          .example("$0 sample -k DiT-XL-2-256x256.pt --vae sd-vae-ft-ema --classes 207,360,387,974,88 --per-class 1", "DiT's sample.py"),
      (a) => setResult(runSample(a as SampleArgs)),
    )
    .command(
      "encode",
      "Encode images into VAE latents for training (both flips' posteriors; resumes an interrupted encode)",
      (y) =>
        y
          .option("data", { type: "string", demandOption: true, describe: "A folder of images, or emoji" })
          .option("vae", { type: "string", demandOption: true, describe: "The VAE: a diffusers folder (config.json + safetensors) or a weights file" })
          .option("out", { alias: "o", type: "string", demandOption: true, describe: "The latent dataset folder to write" })
          .option("resolution", { type: "number", describe: "Side of the images the VAE sees (default 256)" })
          .option("resize", { type: "string", choices: ["crop", "pad", "stretch"], describe: "crop (ADM centre crop, default), pad, stretch" })
          .option("classes", { type: "string", describe: "Only these classes: labels or names" })
          .option("limit", { type: "number", describe: "At most N images" })
          .option("unconditional", { type: "boolean", describe: "Ignore the folders: no labels" })
          .option("shard-size", { type: "number", describe: "Images per shard file (default 256)" })
          .option("device", { type: "string", describe: "cpu or cuda:N" })
          .option("quiet", { alias: "q", type: "boolean", describe: "No progress output" })
          .example("$0 encode --data ./my-images --resolution 256 --vae ./sd-vae-ft-ema --out latents/mine", "then: sadm train --data latents/mine"),
      (a) => setResult(runEncode(a as EncodeArgs)),
    )
    .command(
      "decode",
      "Decode latents (a safetensors file, scaled as a DiT samples them) into PNGs through the VAE",
      (y) =>
        y
          .option("latents", { type: "string", demandOption: true, describe: "A safetensors file with an [N, C, h, w] tensor" })
          .option("tensor", { type: "string", describe: "Its tensor (default: the only 4-D one, or latents/samples)" })
          .option("vae", { type: "string", demandOption: true, describe: "The VAE: a diffusers folder or a weights file" })
          .option("out", { alias: "o", type: "string", demandOption: true, describe: "Folder for the PNGs" })
          .option("device", { type: "string", describe: "cpu or cuda:N" })
          .option("quiet", { alias: "q", type: "boolean", describe: "No progress output" })
          .example("$0 decode --latents x.safetensors --vae ./sd-vae-ft-ema --out imgs/", "one PNG per latent"),
      (a) => setResult(runDecode(a as DecodeArgs)),
    )
    .command(
      "info",
      "Show the version, native build features, devices and binary; or with --checkpoint what a checkpoint holds",
      (y) =>
        y
          .option("checkpoint", {
            alias: "k",
            type: "string",
            describe: "A checkpoint or run dir: its step, model, data, class names, version and files",
          })
          .option("json", { type: "boolean", describe: "Print JSON" }),
      (a) => setResult(runInfo(a)),
    )
    .command(
      "report <runs..>",
      "Write a run's HTML report (several runs: their curves overlaid); training keeps RUN/report.html up to date itself",
      (y) =>
        y
          .positional("runs", { type: "string", array: true, demandOption: true, describe: "Run directories" })
          .option("out", { alias: "o", type: "string", describe: "The HTML file (default: report.html in the first run)" })
          .option("open", { type: "boolean", describe: "Open it in the browser" })
          .option("inline-images", { type: "boolean", describe: "Embed the sample grids in the file (one file to share) instead of linking them" })
          .option("title", { type: "string", describe: "The page's title (default: the run names)" })
          .example("$0 report runs/mnist --open", "look at a run")
          .example("$0 report runs/baseline runs/sadm -o compare.html", "λ = 0 against SADM, overlaid"),
      (a) => setResult(runReport(a)),
    )
    .command("presets", "List the presets", (y) => y, () => setResult(runPresets()))
    .demandCommand(1, "give a command: train, finetune, sample, eval, report, encode, decode, info, presets or train-classifier")
    .strict()
    .recommendCommands()
    .help()
    .alias("help", "h")
    .version(version())
    .wrap(Math.min(110, process.stdout.columns ?? 110))
    .fail((msg, err) => {
      if (err) throw err;
      process.stderr.write(`error: ${msg}\nrun 'sadm --help' for usage\n`);
      process.exit(1);
    });
}

/** Runs the CLI; resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  try {
    await buildCli(argv).parseAsync();
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (err) {
    reportError(err);
    return 1;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      reportError(err);
      process.exitCode = 1;
    },
  );
}
