/**
 * The SADM study, one resumable command: `npm run experiment:study`.
 *
 * Does the structure term improve a model that already denoises well? For each domain (the digits with
 * `mnist-small`, the emoji set at 32² with `rgb-32`):
 * 1. **Stage 1**: plain training (λ = 0) in chunks until FD plateaus: the best of the last `--plateau-window`
 *    evaluations is no more than `--plateau-tol` better than the best before them.
 * 2. **Stage 2**: from the plateau's checkpoint (its EMA weights, fresh optimizers), every arm continues for the
 *    same number of steps with 3 seeds: plain; SADM at each λ with the Gaussian kernel and cross pairs (the two
 *    structure settings that hurt least in the first experiment); and at one λ each discriminator option
 *    (spectral norm, conv encoder, t-conditioned encoder, frozen LeNet features, low-t pairs only);
 *    every arm with every seed (`--screen-options` runs an option's later seeds only where its first beat plain,
 *    for a cheaper look).
 * 3. **Batch 128**: plain and the best stage-2 SADM arm (a λ or an option, by mean FD over all seeds) again at
 *    twice the batch.
 * 4. **Fine-tuning** (emoji): pre-train on five categories to a plateau, fine-tune on four others (their class
 *    embeddings never trained: DiffFit's fresh class table), `trainable: efficient` and `all`, λ = 0 against the best stage-2 SADM arm.
 *
 * Every run is a `sadm` CLI call (recorded in the report). Runs checkpoint as they go, and an interrupted run
 * resumes from its last checkpoint (exactly: sadm's resume is bit-exact); a finished run (its `done.json`) never
 * runs again. The report (`results.md`, `results.json`, plots) is rewritten after every finished run, so it always
 * shows what is done so far.
 *
 * The run directories need not outlive the machine: what a later session needs is kept next to the report, to be
 * committed with it. results.json holds every finished run's figures; `branch/` each plateau's EMA weights (what
 * the second stages start from) and `<lenet>-seed1.safetensors` each domain's second LeNet; `--park` copies the
 * unfinished plateau runs' newest checkpoints to `parked/`, where the next start picks them up.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import yargs from "yargs";
import { CLI, COLORS, QUICK_SET, commandLine, evalPoints, meanStd, parseList, pm, runCli, runQueue, runSeconds, sadm, threadsPerRun, type EvalPoint } from "./common.js";
import { chartSvg, writePng, type Panel, type Series } from "./plot.js";

const { checkpointName, version } = sadm;
/** A checkpoint's EMA weights (ts/checkpoint.ts lists a checkpoint's files). */
const EMA_FILE = "ema.safetensors";

type DomainKey = "digits" | "emoji";
type Group = "stage1" | "main" | "option" | "batch" | "pretrain" | "finetune" | "noise" | "extractor";

interface Domain {
  key: DomainKey;
  title: string;
  preset: string;
  data: string[];
  extractor: string;
}

const DOMAINS: Record<DomainKey, Domain> = {
  digits: { key: "digits", title: "Digits (MNIST, `mnist-small`)", preset: "mnist-small", data: [], extractor: "lenet-mnist" },
  emoji: { key: "emoji", title: "Emoji (RGB 32², `rgb-32`, 10 categories)", preset: "rgb-32", data: ["--data", "emoji"], extractor: "lenet-emoji" },
};

/** The fine-tuning split of the emoji categories (Component, 5 images, is left out). */
const PRETRAIN_CLASSES = ["Animals & Nature", "Food & Drink", "People & Body", "Smileys & Emotion", "Travel & Places"];
const FINETUNE_CLASSES = ["Activities", "Flags", "Objects", "Symbols"];

/**
 * The structure settings of every SADM arm: the two that hurt least in the first experiment, on the design's
 * transformer encoder (named, so that a preset that changes its default does not change the arms; an option's
 * flags come after these and win).
 */
const STRUCTURE = ["--set", "discriminator.encoder=transformer", "--set", "discriminator.kernel=gaussian", "--set", "discriminator.pairs=cross"];

/**
 * The discriminator options, each tried at `--option-lambda` on top of {@link STRUCTURE}: id, label, flags, and
 * whether the screen may stop it after one seed. The two that test the posterior-mean hypothesis (at high noise
 * the optimal x̂0 is a blur, so a structure target is only fair where x̂0 is near a sample, low t, or where the
 * encoder knows t) always run every seed: their verdict is the question, not a shortcut to the best recipe.
 */
const OPTIONS: Array<[string, string, string[], boolean]> = [
  ["sn", "spectral norm", ["--set", "discriminator.spectralNorm=true"], true],
  ["conv", "conv encoder", ["--set", "discriminator.encoder=conv"], true],
  ["tcond", "t-conditioned encoder", ["--set", "discriminator.timeConditioned=true"], false],
  ["features", "frozen LeNet features + projector", ["--set", "discriminator.encoder=features"], true],
  ["lowt", "pairs with t < 200 only", ["--set", "discriminator.weighting=cutoff", "--set", "discriminator.tMax=200"], false],
];

interface Options {
  domains: DomainKey[];
  seeds: number[];
  lambdas: number[];
  optionLambda: number;
  /** Epochs of the second LeNet (default: train-classifier's). */
  extractorEpochs?: number;
  /** Sampling seeds (from 0) of each arm's final model scored on the second LeNet. */
  crossSeeds: number;
  /** Sampling seeds beyond 0 whose evaluations of each arm's final model are averaged into its final metrics. */
  finalSeeds: number;
  /** Sampling seeds of the evaluation-noise measurement (one checkpoint evaluated again with each). */
  noiseSeeds: number;
  /** Option arms run their later seeds only where the first seed beat plain. */
  screenOptions: boolean;
  stage1Chunk: number;
  stage1Max: number;
  plateauWindow: number;
  plateauTol: number;
  stage2Steps: number;
  finetuneSteps: number;
  evalEvery: number;
  evalSamples: number;
  jobs: number;
  runs: string;
  out: string;
  set: string[];
}

interface Job {
  id: string;
  domain: DomainKey;
  group: Group;
  arm: string;
  seed: number;
  lambda: number;
  runDir: string;
  deps: string[];
  /** Steps the run trains to; for a plateau job, the first chunk (it grows until FD plateaus). */
  steps: number;
  plateau: boolean;
  /** Why not to run it after all, asked when its deps are done (see {@link QueuedJob}). */
  skip?: () => string | undefined;
  /** The fresh start's arguments, resolved when the job starts (a dependent arm may read earlier results). */
  start: (steps: number) => string[];
}

interface Done {
  seconds: number;
  command: string;
  steps: number;
  /** A plateau job: why it stopped. */
  plateau?: string;
  /** The CPU it finished on (a run resumed on another machine keeps the last one's). */
  cpu?: string;
}

/** This machine's CPU, as the report names it. */
const CPU = os.cpus()[0]?.model.trim() ?? "unknown CPU";

const DONE = "done.json";
const COMMAND = "command.json";

function readJson<T>(file: string): T | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, "utf8")) as T;
  } catch {
    return undefined;
  }
}

const readDone = (dir: string): Done | undefined => readJson<Done>(path.join(dir, DONE));

/**
 * The finished runs of an earlier report (its results.json, committed with the repository): a run whose directory
 * is gone (a fresh machine: the run directories do not outlive a session here) keeps its figures instead of running
 * again. A plateau run counts as finished that way only where its branch weights are committed too (see
 * {@link branchFile}); without them it runs again (deterministically, to the same weights).
 */
let recorded = new Map<string, RunResult>();

function finished(j: Job): boolean {
  if (j.group === "extractor") return fs.existsSync(secondExtractor(j.domain));
  if (recorded.has(j.id) && !fs.existsSync(j.runDir) && (!j.plateau || fs.existsSync(branchFile(j.id)))) return true;
  return (
    readDone(j.runDir) !== undefined &&
    (!averaged(j) || seedPoints(finalEvalDir(j)).length >= wanted.finalSeeds) &&
    (!crossChecked(j) || seedPoints(crossEvalDir(j)).length >= wanted.crossSeeds)
  );
}

/** `--final-seeds` and `--cross-seeds`, for {@link finished} (set once in main). */
const wanted = { finalSeeds: 0, crossSeeds: 0 };

/** The newest complete checkpoint's step of a run directory, if any. */
function latestStep(runDir: string): number | undefined {
  const dir = path.join(runDir, "checkpoints");
  if (!fs.existsSync(dir)) return undefined;
  const steps = fs
    .readdirSync(dir)
    .filter((n) => /^step-\d+$/.test(n) && fs.existsSync(path.join(dir, n, "state.json")))
    .map((n) => Number(n.slice(5)));
  return steps.length ? Math.max(...steps) : undefined;
}

/** Whether a run's FD has stopped improving, and the sentence that says so (or why not yet). */
function plateau(curve: EvalPoint[], o: Options): { reached: boolean; why: string } {
  if (curve.length < o.plateauWindow + 2) return { reached: false, why: `${curve.length} evaluations so far` };
  const last = curve.slice(-o.plateauWindow);
  const before = curve.slice(0, -o.plateauWindow);
  const bestBefore = Math.min(...before.map((p) => p.fd));
  const bestLast = Math.min(...last.map((p) => p.fd));
  const gain = 1 - bestLast / bestBefore;
  const span = `steps ${last[0].step}–${last[last.length - 1].step}`;
  const than = `${Math.abs(100 * gain).toFixed(1)} % ${gain >= 0 ? "better" : "worse"} than the best before them (${bestBefore.toFixed(1)})`;
  return gain <= o.plateauTol
    ? { reached: true, why: `the best FD of the last ${o.plateauWindow} evaluations (${span}: ${bestLast.toFixed(1)}) is ${than}, not more than ${(100 * o.plateauTol).toFixed(0)} % better` }
    : { reached: false, why: `${span} improved the best FD by ${(100 * gain).toFixed(1)} % (${bestBefore.toFixed(1)} → ${bestLast.toFixed(1)})` };
}

/**
 * What the study keeps next to its report, committed with it, so that a fresh machine continues where the last
 * one stopped: each plateau's EMA weights (`branch/<job>.safetensors`, what every second stage starts from) and
 * the second LeNet. Set once in main.
 */
const store = { dir: "" };

/** A plateau job's committed branch weights: its stopping checkpoint's EMA weights. */
const branchFile = (id: string): string => path.join(store.dir, "branch", `${id}.safetensors`);

/** Copies a finished plateau job's stopping checkpoint's EMA weights to {@link branchFile} (atomically). */
function keepBranch(job: Job, steps: number): void {
  const file = branchFile(job.id);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.copyFileSync(path.join(job.runDir, "checkpoints", checkpointName(steps), EMA_FILE), `${file}.partial`);
  fs.renameSync(`${file}.partial`, file);
}

/**
 * A plateau run in progress, kept in the store (`parked/<job>/`) so the next machine resumes it instead of starting
 * over: a stage 1 takes longer than a session here. What resuming needs: the run's files (config, metrics,
 * command) and its newest checkpoint; not the sample grids, the report or older checkpoints.
 */
const parkedDir = (id: string): string => path.join(store.dir, "parked", id);

/** `--park`: parks every unfinished plateau run that has a checkpoint. The ids parked. */
function park(jobs: Job[]): string[] {
  return jobs.flatMap((j) => {
    const at = j.plateau && !finished(j) ? latestStep(j.runDir) : undefined;
    if (at === undefined) return [];
    const to = parkedDir(j.id);
    const tmp = `${to}.partial`;
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.mkdirSync(path.join(tmp, "checkpoints"), { recursive: true });
    for (const f of fs.readdirSync(j.runDir)) {
      const from = path.join(j.runDir, f);
      if (fs.statSync(from).isFile() && f !== "report.html") fs.copyFileSync(from, path.join(tmp, f));
    }
    fs.cpSync(path.join(j.runDir, "checkpoints", checkpointName(at)), path.join(tmp, "checkpoints", checkpointName(at)), { recursive: true });
    fs.rmSync(to, { recursive: true, force: true });
    fs.renameSync(tmp, to);
    return [`${j.id} (step ${at})`];
  });
}

/** Puts a parked run back where it runs, when its directory is not here (a fresh machine). */
function unpark(jobs: Job[]): void {
  for (const j of jobs) {
    if (fs.existsSync(parkedDir(j.id)) && !fs.existsSync(j.runDir)) fs.cpSync(parkedDir(j.id), j.runDir, { recursive: true });
  }
}

/**
 * Where a plateau job's second stages start: its stopping checkpoint while its directory is here (as every arm
 * did before the weights were committed), else the committed EMA weights, the same tensors (`finetune --from` a
 * checkpoint takes its EMA weights; tests/e2e.test.ts checks the two start the same run).
 */
function branchPoint(id: string, runDir: string): string {
  const step = readDone(runDir)?.steps;
  if (step !== undefined) return path.join(runDir, "checkpoints", checkpointName(step));
  if (fs.existsSync(branchFile(id))) return branchFile(id);
  throw new Error(`${runDir} has no checkpoint to continue from`);
}

function plan(o: Options): Job[] {
  const jobs: Job[] = [];
  const dir = (...p: string[]): string => path.join(o.runs, ...p);
  const every = (steps: number): string[] => [
    "--eval-every", String(Math.min(o.evalEvery, steps)), "--eval-samples", String(o.evalSamples),
    "--checkpoint-every", String(Math.min(o.evalEvery, steps)), "--keep", "1000", "--sample-every", String(steps), "-q",
    ...o.set.flatMap((s) => ["--set", s]),
  ];
  const ramp = (steps: number): string[] => ["--adv-warmup", "0", "--adv-ramp", String(Math.max(1, Math.round(steps / 10)))];
  const firstChunk = o.stage1Chunk * 2;

  for (const key of o.domains) {
    const d = DOMAINS[key];
    const stage1 = dir(key, "stage1");
    jobs.push({
      id: `${key}-stage1`, domain: key, group: "stage1", arm: "stage 1: plain to a plateau", seed: 0, lambda: 0,
      runDir: stage1, deps: [], steps: firstChunk, plateau: true,
      start: (steps) => ["train", "--preset", d.preset, ...d.data, "--lambda", "0", "--seed", "0", "--steps", String(steps), ...every(o.evalEvery), "--out", stage1],
    });
  }

  /** A stage-2 arm: continue the domain's plateau checkpoint with `extra`. */
  const arm = (key: DomainKey, group: Group, name: string, label: string, seed: number, lambda: number, extra: () => string[], deps: string[] = []): Job => {
    const d = DOMAINS[key];
    const runDir = dir(key, name, `seed-${seed}`);
    return {
      id: `${key}-${name}-s${seed}`, domain: key, group, arm: label, seed, lambda, runDir, deps: [`${key}-stage1`, ...deps],
      steps: o.stage2Steps, plateau: false,
      start: (steps) => [
        "finetune", "--from", branchPoint(`${key}-stage1`, dir(key, "stage1")), "--preset", d.preset, ...d.data, "--seed", String(seed),
        "--steps", String(steps), "--lambda", String(lambda), ...(lambda > 0 ? [...ramp(steps), ...STRUCTURE] : []),
        ...every(steps), ...extra(), "--out", runDir,
      ],
    };
  };
  const mainArms = (key: DomainKey, seed: number): Job[] => [
    arm(key, "main", "plain", "plain (λ = 0)", seed, 0, () => []),
    ...o.lambdas.map((l) => arm(key, "main", `sadm-${l}`, `SADM λ = ${l}`, seed, l, () => [])),
  ];
  // The cheaper domain first, whole: its table is complete hours before the other's; seed by seed within it, so
  // that partial results are whole comparisons.
  const order = [...o.domains].sort((a, b) => (a === "emoji" ? -1 : b === "emoji" ? 1 : 0));
  for (const key of order) {
    for (const seed of o.seeds) {
      jobs.push(...mainArms(key, seed));
      if (seed === o.seeds[0] && o.noiseSeeds > 0) jobs.push(noiseJob(key, dir(key, "plain", `seed-${seed}`), `${key}-plain-s${seed}`, o));
      for (const [name, label, flags, screenable] of OPTIONS) {
        const id = `${name}-${o.optionLambda}`;
        const first = o.seeds[0];
        if (!o.screenOptions || !screenable || seed === first) {
          jobs.push(arm(key, "option", id, `SADM λ = ${o.optionLambda}, ${label}`, seed, o.optionLambda, () => flags));
          continue;
        }
        const screened = [`${key}-${id}-s${first}`, `${key}-plain-s${first}`];
        const job = arm(key, "option", id, `SADM λ = ${o.optionLambda}, ${label}`, seed, o.optionLambda, () => flags, screened);
        job.skip = () => screenedOut(jobs, screened[0], screened[1], first);
        jobs.push(job);
      }
    }
    // Once the domain's stage 2 is in: plain and its best arm at batch 128, and (emoji) the fine-tuning study.
    const stage2 = jobs.filter((j) => j.domain === key && (j.group === "main" || j.group === "option")).map((j) => j.id);
    const best = (): Recipe => bestRecipe(jobs, key, o);
    if (key === "emoji") jobs.push(pretrainJob(o, every(o.evalEvery), firstChunk));
    for (const seed of o.seeds) {
      jobs.push(arm(key, "batch", "plain-b128", "plain (λ = 0), batch 128", seed, 0, () => ["--batch-size", "128"], stage2));
      const job = arm(key, "batch", "best-b128", "best SADM arm, batch 128", seed, Number.NaN, () => ["--batch-size", "128"], stage2);
      jobs.push(withRecipe(job, best));
      if (key !== "emoji") continue;
      for (const trainable of ["efficient", "all"]) {
        jobs.push(finetuneJob(o, trainable, seed, undefined, every, []));
        jobs.push(withRecipe(finetuneJob(o, trainable, seed, best, every, stage2), best));
      }
    }
  }
  if (o.crossSeeds > 0) {
    // After the stage-1 runs (the longest, started first) and before the arms that need them.
    jobs.splice(jobs.findIndex((j) => j.group !== "stage1"), 0, ...o.domains.map((key) => extractorJob(o, key)));
    for (const j of jobs) if (crossChecked(j)) j.deps.push(`${j.domain}-lenet2`);
  }
  return jobs;
}

/**
 * How much of a difference is the evaluation's own: `checkpoint`'s final model evaluated again with other sampling
 * seeds (every run's evaluation uses seed 0, so paired differences share their sampling noise; this is its size).
 */
function noiseJob(key: DomainKey, of: string, ofId: string, o: Options): Job {
  const runDir = path.join(o.runs, key, "eval-noise");
  return {
    id: `${key}-eval-noise`, domain: key, group: "noise", arm: `evaluation noise: ${ofId} re-evaluated with ${o.noiseSeeds} sampling seeds`,
    seed: 0, lambda: 0, runDir, deps: [ofId], steps: 0, plateau: false,
    start: () => ["eval", "-k", of, "--no-append", "--json"],
  };
}

const seedFile = (dir: string, seed: number): string => path.join(dir, `seed-${seed}.json`);

/**
 * Evaluates `checkpoint` (a run dir: its newest checkpoint) with sampling seeds 1…n into `dir`/seed-k.json, each
 * kept as it comes (an interruption loses one evaluation). Resolves to the seconds it took.
 */
async function evalSeeds(checkpoint: string, dir: string, seeds: number[], threads: number, extra: string[] = []): Promise<number> {
  fs.mkdirSync(dir, { recursive: true });
  let seconds = 0;
  for (const seed of seeds) {
    const file = seedFile(dir, seed);
    if (fs.existsSync(file)) continue;
    const tmp = `${file}.partial`;
    seconds += await runCli(["eval", "-k", checkpoint, "--no-append", "--json", "--seed", String(seed), ...extra], path.join(dir, "eval.log"), threads, tmp);
    fs.renameSync(tmp, file);
  }
  return seconds;
}

const range = (from: number, to: number): number[] => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i);

async function runNoise(job: Job, o: Options, threads: number): Promise<Done> {
  const args = job.start(0);
  const seconds = await evalSeeds(args[2], job.runDir, range(1, o.noiseSeeds), threads);
  return { seconds, command: `${commandLine(args)} --seed 1…${o.noiseSeeds}`, steps: 0 };
}

/** The evaluations in `dir`, one per sampling seed (seed-k.json). */
function seedPoints(dir: string): EvalPoint[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir).filter((f) => /^seed-\d+\.json$/.test(f)).flatMap((f) => {
    const r = readJson<EvalPoint & { step: number; accuracy: number | null }>(path.join(dir, f));
    return r ? [{ step: r.step, fd: r.fd, kid: r.kid, precision: r.precision, recall: r.recall, accuracy: r.accuracy ?? Number.NaN }] : [];
  });
}

/** Where a stage-2 run's final model's evaluations with the other sampling seeds go. */
const finalEvalDir = (j: Job): string => path.join(j.runDir, "final-evals");
/** Jobs whose final model is evaluated with several sampling seeds: every comparison arm. */
const averaged = (j: Job): boolean => ["main", "option", "batch", "finetune"].includes(j.group);

/**
 * A domain's second feature network: its LeNet trained again with another seed. FD on the shipped LeNet's
 * features alone could reward an arm for matching that one network (the frozen-features discriminator is that
 * network), so every arm's final model is also scored on this one's.
 */
const SECOND_EXTRACTOR_SEED = 1;
const secondExtractor = (key: DomainKey): string => path.join(store.dir, `${DOMAINS[key].extractor}-seed${SECOND_EXTRACTOR_SEED}.safetensors`);
const crossEvalDir = (j: Job): string => path.join(j.runDir, "final-evals-lenet2");
/** Jobs scored on the second network too: every comparison arm. */
const crossChecked = (j: Job): boolean => averaged(j);

function extractorJob(o: Options, key: DomainKey): Job {
  const arch = DOMAINS[key].extractor;
  return {
    id: `${key}-lenet2`, domain: key, group: "extractor", arm: `${arch}, seed ${SECOND_EXTRACTOR_SEED}: the second feature network`,
    seed: SECOND_EXTRACTOR_SEED, lambda: 0, runDir: path.join(o.runs, key, "lenet2"), deps: [], steps: 0, plateau: false,
    start: () => ["train-classifier", "--arch", arch, "--seed", String(SECOND_EXTRACTOR_SEED), ...(o.extractorEpochs ? ["--epochs", String(o.extractorEpochs)] : []), "--out", secondExtractor(key)],
  };
}

/** Each metric's mean over the points (the final model under several sampling seeds). */
function meanPoint(points: EvalPoint[]): EvalPoint {
  const m = (k: keyof EvalPoint): number => meanStd(points.map((p) => p[k]))[0];
  return { step: points[0].step, fd: m("fd"), kid: m("kid"), precision: m("precision"), recall: m("recall"), accuracy: m("accuracy") };
}

/**
 * The screen of a discriminator option: its later seeds are only worth their hours where the first seed beat
 * plain (paired Δ FD < 0). A reason to skip, or undefined to run.
 */
function screenedOut(jobs: Job[], optionId: string, plainId: string, seed: number): string | undefined {
  const rs = collect(jobs);
  const opt = rs.find((r) => r.id === optionId)?.final;
  const plain = rs.find((r) => r.id === plainId)?.final;
  if (!opt || !plain) return undefined;
  const delta = opt.fd - plain.fd;
  return delta >= 0 ? `seed ${seed} did not beat plain (Δ FD ${delta >= 0 ? "+" : ""}${delta.toFixed(1)})` : undefined;
}

/** An SADM setting: λ and the discriminator flags on top of {@link STRUCTURE}; `label` names it in the tables. */
interface Recipe {
  lambda: number;
  flags: string[];
  label: string;
}

/**
 * A job that trains with the domain's best stage-2 recipe, chosen when it starts: its `--lambda` and the SADM
 * flags follow `best()`.
 */
function withRecipe(job: Job, best: () => Recipe): Job {
  const base = job.start;
  job.start = (steps) => {
    const args = base(steps);
    const r = best();
    const i = args.indexOf("--lambda");
    const out = [...args.slice(0, i), "--lambda", String(r.lambda), ...args.slice(i + 2)];
    const at = out.indexOf("--out");
    return [...out.slice(0, at), "--adv-warmup", "0", "--adv-ramp", String(Math.max(1, Math.round(steps / 10))), ...STRUCTURE, ...r.flags, ...out.slice(at)];
  };
  return job;
}

/**
 * The stage-2 SADM arm (a λ, or an option) with the lowest mean final FD in `key` over all the seeds, on the second
 * LeNet where every run has it (the frozen-features arm's discriminator is the shipped LeNet, so FD on that one
 * could favour it unfairly): an option the screen stopped after one seed does not compete. Ties: the earlier arm.
 */
function bestRecipe(jobs: Job[], key: DomainKey, o: Options): Recipe {
  const rs = collect(jobs).filter((r) => r.domain === key && (r.group === "main" || r.group === "option") && r.lambda > 0 && r.final);
  const recipes: Recipe[] = [
    ...o.lambdas.map((l) => ({ lambda: l, flags: [], label: `SADM λ = ${l}` })),
    ...OPTIONS.map(([, label, flags]) => ({ lambda: o.optionLambda, flags, label: `SADM λ = ${o.optionLambda}, ${label}` })),
  ];
  const whole = recipes.flatMap((rc) => {
    const mine = rs.filter((r) => r.arm === rc.label);
    return mine.length === o.seeds.length ? [{ rc, mine }] : [];
  });
  const independent = whole.every((w) => w.mine.every((r) => r.cross));
  const scored = whole.map(({ rc, mine }) => ({ rc, fd: meanStd(mine.map((r) => ((independent ? r.cross : r.final) as EvalPoint).fd))[0] }));
  scored.sort((a, b) => a.fd - b.fd);
  return scored[0]?.rc ?? { lambda: o.optionLambda, flags: [], label: `SADM λ = ${o.optionLambda}` };
}

/** The recipe a batch-128 or fine-tuning run used, read back from its command line. */
function recipeOf(command: string): string {
  const lambda = lambdaOf(command);
  const option = OPTIONS.find(([, , flags]) => flags.every((f) => f === "--set" || command.includes(f)));
  return option ? `SADM λ = ${lambda}, ${option[1]}` : `SADM λ = ${lambda}`;
}

/** Emoji pre-training on five categories, to a plateau: the fine-tuning arms' source. */
function pretrainJob(o: Options, every: string[], firstChunk: number): Job {
  const d = DOMAINS.emoji;
  const pre = path.join(o.runs, "emoji", "pretrain");
  return {
    id: "emoji-pretrain", domain: "emoji", group: "pretrain", arm: `pre-train on ${PRETRAIN_CLASSES.length} categories to a plateau`,
    seed: 0, lambda: 0, runDir: pre, deps: [], steps: firstChunk, plateau: true,
    start: (steps) => ["train", "--preset", d.preset, ...d.data, "--classes", PRETRAIN_CLASSES.join(","), "--lambda", "0", "--seed", "0", "--steps", String(steps), ...every, "--out", pre],
  };
}

/** A fine-tuning arm on the other four categories: plain (`best` undefined) or with the best stage-2 recipe. */
function finetuneJob(o: Options, trainable: string, seed: number, best: (() => Recipe) | undefined, every: (steps: number) => string[], deps: string[]): Job {
  const d = DOMAINS.emoji;
  const name = `ft-${trainable}-${best ? "sadm-best" : "plain"}`;
  const runDir = path.join(o.runs, "emoji", name, `seed-${seed}`);
  return {
    id: `emoji-${name}-s${seed}`, domain: "emoji", group: "finetune",
    arm: `fine-tune, trainable ${trainable}, ${best ? "the best stage-2 SADM arm" : "plain (λ = 0)"}`,
    seed, lambda: best ? Number.NaN : 0, runDir, deps: ["emoji-pretrain", ...deps], steps: o.finetuneSteps, plateau: false,
    start: (steps) => [
      "finetune", "--from", branchPoint("emoji-pretrain", path.join(o.runs, "emoji", "pretrain")), "--preset", d.preset, ...d.data,
      "--classes", FINETUNE_CLASSES.join(","), "--trainable", trainable, "--seed", String(seed), "--steps", String(steps),
      "--lambda", "0", ...every(steps), "--out", runDir,
    ],
  };
}

/** The first chunk boundary (`first`, then every `chunk` steps) after `at`, at most `--stage1-max`. */
function nextBoundary(first: number, chunk: number, at: number): number {
  return at < first ? first : first + (Math.floor((at - first) / chunk) + 1) * chunk;
}

/**
 * Where a plateau job stops, given the evaluations so far and its newest checkpoint `at`: the first chunk boundary
 * (`first`, `first + chunk`, …, up to `at`) whose evaluations up to it show a plateau, or the cap; else undefined.
 */
function plateauAt(curve: EvalPoint[], o: Options, first: number, at: number): { step: number; why: string } | undefined {
  for (let b = first; b <= at; b += o.stage1Chunk) {
    const p = plateau(curve.filter((e) => e.step <= b), o);
    if (p.reached) return { step: b, why: `plateau at step ${b}: ${p.why}` };
    if (b >= o.stage1Max) return { step: b, why: `stopped at the cap (${o.stage1Max} steps) before a plateau: ${p.why}` };
  }
  return undefined;
}

/** Runs a job to its end: resuming its last checkpoint if it has one, growing a plateau job chunk by chunk. */
async function runJob(job: Job, o: Options, threads: number): Promise<Done> {
  if (job.group === "noise") return runNoise(job, o, threads);
  if (job.group === "extractor") {
    fs.mkdirSync(job.runDir, { recursive: true });
    const args = job.start(0);
    const seconds = await runCli(args, path.join(job.runDir, "train.log"), threads, path.join(job.runDir, "stdout.txt"));
    return { seconds, command: commandLine(args), steps: 0 };
  }
  const commandFile = path.join(job.runDir, COMMAND);
  const logFile = path.join(path.dirname(job.runDir), `${path.basename(job.runDir)}.log`);
  // Runs started before the command had its own file kept it in seconds.json.
  let command = (readJson<{ command: string }>(commandFile) ?? readJson<{ command: string }>(path.join(job.runDir, "seconds.json")))?.command ?? "";
  // What it cost comes from its metrics.jsonl (each resume restarts the clock there): nothing to add up here.
  const done = (steps: number, plateau?: string): Done => ({ seconds: runSeconds(job.runDir), command, steps, ...(plateau ? { plateau } : {}) });
  let target = job.steps;
  for (;;) {
    const at = latestStep(job.runDir);
    if (job.plateau && at !== undefined) {
      // Tested at the chunk boundaries only, on the evaluations up to each: where a run stops does not depend on
      // when the study was interrupted and resumed.
      const stop = plateauAt(evalPoints(job.runDir), o, job.steps, at);
      if (stop) return done(stop.step, stop.why);
      target = nextBoundary(job.steps, o.stage1Chunk, at);
    } else if (at !== undefined && at >= target) {
      return done(at);
    }
    let args: string[];
    if (at === undefined) {
      fs.rmSync(job.runDir, { recursive: true, force: true });
      args = job.start(target);
      command = commandLine(args);
      // Recorded before it runs: a run killed mid-way and resumed still reports how it was started.
      fs.mkdirSync(job.runDir, { recursive: true });
      fs.writeFileSync(commandFile, JSON.stringify({ command }) + "\n");
    } else {
      args = ["train", "--resume", job.runDir, "--steps", String(target), "-q"];
    }
    await runCli(args, logFile, threads).catch((e: unknown) => {
      throw new Error(`${job.id}: ${e instanceof Error ? e.message : String(e)}`);
    });
  }
}

async function runAll(jobs: Job[], o: Options, onDone: () => void): Promise<void> {
  const threads = threadsPerRun(o.jobs);
  await runQueue(jobs, o.jobs, finished, async (job) => {
    const d = readDone(job.runDir) ?? { ...(await runJob(job, o, threads)), cpu: CPU };
    if (job.plateau) {
      keepBranch(job, d.steps);
      fs.rmSync(parkedDir(job.id), { recursive: true, force: true });
    }
    fs.writeFileSync(path.join(job.runDir, DONE), JSON.stringify(d, null, 2) + "\n");
    if (averaged(job)) await evalSeeds(job.runDir, finalEvalDir(job), range(1, o.finalSeeds), threads);
    if (crossChecked(job) && o.crossSeeds > 0)
      await evalSeeds(job.runDir, crossEvalDir(job), range(0, o.crossSeeds - 1), threads, ["--extractor", DOMAINS[job.domain].extractor, "--extractor-weights", secondExtractor(job.domain)]);
    onDone();
    return `in ${d.seconds.toFixed(0)}s${d.plateau ? ` (${d.plateau})` : ""}`;
  });
}

interface RunResult extends Pick<Job, "id" | "domain" | "group" | "arm" | "seed" | "lambda"> {
  command: string;
  seconds: number;
  steps: number;
  plateau?: string;
  curve: EvalPoint[];
  final: EvalPoint | undefined;
  /** The evaluation-noise job: its checkpoint's metrics under each sampling seed. */
  noise?: EvalPoint[];
  /** How its evaluations sample ("unipc, 10 steps"): the preset's setting when the run started. */
  sampling?: string;
  /** How many sampling seeds `final` is the mean of. */
  finalEvals?: number;
  /** The final model scored on the domain's second LeNet (mean over its sampling seeds). */
  cross?: EvalPoint;
  /** The second LeNet's held-out accuracy (its job's row). */
  note?: string;
  /** The CPU it finished on: its done.json's, else this machine's (its directory is here, so it ran here last). */
  cpu?: string;
}

/** A run's final metrics: its last evaluation (sampling seed 0), averaged with its final-evals/ seeds where it has them. */
function finalOf(j: Job, curve: EvalPoint[]): EvalPoint | undefined {
  const last = curve[curve.length - 1];
  if (!last || !averaged(j)) return last;
  return meanPoint([last, ...seedPoints(finalEvalDir(j)).filter((p) => p.step === last.step)]);
}

function collect(jobs: Job[]): RunResult[] {
  return jobs.flatMap((j) => {
    // A run still scoring its final model has its done.json already; reporting it then would record a partial mean
    // that a fresh machine takes for finished (see recorded).
    const d = finished(j) ? readDone(j.runDir) : undefined;
    const before = recorded.get(j.id);
    if (!d) return before && finished(j) ? [before] : [];
    const cpu = d.cpu ?? CPU;
    if (j.group === "extractor") {
      const said = fs.existsSync(path.join(j.runDir, "stdout.txt")) ? fs.readFileSync(path.join(j.runDir, "stdout.txt"), "utf8") : "";
      const note = /test accuracy [\d.]+% on \d+ held-out images/.exec(said)?.[0];
      return [{ id: j.id, domain: j.domain, group: j.group, arm: j.arm, seed: j.seed, lambda: 0, command: d.command, seconds: d.seconds, steps: 0, curve: [], final: undefined, cpu, ...(note ? { note } : {}) }];
    }
    if (j.group === "noise") {
      const noise = seedPoints(j.runDir);
      return [{ id: j.id, domain: j.domain, group: j.group, arm: j.arm, seed: 0, lambda: 0, command: d.command, seconds: d.seconds, steps: 0, curve: [], final: undefined, noise, cpu }];
    }
    // A stage-2 curve starts where its arms branch: the plateau's last evaluation, at step 0.
    const stage1 = path.join(path.dirname(path.dirname(j.runDir)), "stage1");
    const branchStep = readDone(stage1)?.steps;
    const stage1Curve = branchStep !== undefined ? evalPoints(stage1).filter((p) => p.step <= branchStep) : (recorded.get(`${j.domain}-stage1`)?.curve ?? []);
    const branch = ["main", "option", "batch"].includes(j.group) ? stage1Curve.slice(-1) : [];
    // A plateau run may have trained past the step where it stopped (an interrupted chunk): its curve ends there.
    const own = evalPoints(j.runDir).filter((p) => !j.plateau || p.step <= d.steps);
    const curve = [...branch.map((p) => ({ ...p, step: 0 })), ...own];
    // The best-recipe arms: λ and the recipe from the command they ran.
    const lambda = Number.isFinite(j.lambda) ? j.lambda : lambdaOf(d.command);
    const arm = Number.isFinite(j.lambda) ? j.arm : j.group === "batch" ? `${recipeOf(d.command)} (the best stage-2 arm), batch 128` : `${j.arm.replace("the best stage-2 SADM arm", recipeOf(d.command))}`;
    return [{
      // Runs before the command was recorded up front lost it when killed; every job but the batch arm's (whose λ
      // depended on results then) starts the same way again.
      id: j.id, domain: j.domain, group: j.group, arm, seed: j.seed, lambda,
      command: d.command || (Number.isFinite(j.lambda) ? commandLine(j.start(j.steps)) : ""), seconds: runSeconds(j.runDir),
      steps: d.steps, plateau: d.plateau, cpu, curve, final: finalOf(j, curve), finalEvals: averaged(j) ? 1 + seedPoints(finalEvalDir(j)).length : 1,
      ...(crossChecked(j) && seedPoints(crossEvalDir(j)).length > 0 ? { cross: meanPoint(seedPoints(crossEvalDir(j))) } : {}),
      ...(evalSampling(j.runDir) ? { sampling: evalSampling(j.runDir) } : {}),
    }];
  });
}

/** How a run's evaluations sample, from its config.json. */
function evalSampling(runDir: string): string | undefined {
  const e = readJson<{ eval?: { sampler?: string; steps?: number } }>(path.join(runDir, "config.json"))?.eval;
  return e?.sampler && e.steps ? `${e.sampler}, ${e.steps} steps` : undefined;
}

/** The samplings of `rs`' evaluations, one line (evaluations that differ between runs are named, not hidden). */
function samplingOf(rs: RunResult[]): string {
  const all = [...new Set(rs.flatMap((r) => (r.sampling ? [r.sampling] : [])))];
  return all.length > 0 ? all.join(" / ") : "not recorded";
}

function lambdaOf(command: string): number {
  const m = / --lambda ([\d.e-]+)/.exec(command);
  return m ? Number(m[1]) : Number.NaN;
}

/** Student's t quantile 0.975 for 1–10 degrees of freedom. */
const T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228];

/**
 * The paired differences' 95 % confidence interval (Student's t over the seeds), marked where it excludes 0: the
 * difference is then beyond what the seeds' spread explains. Empty for fewer than 2 seeds.
 */
function ciText(d: number[]): string {
  if (d.length < 2 || d.length > T975.length + 1) return "";
  const [m, s] = meanStd(d);
  const half = (T975[d.length - 2] * s) / Math.sqrt(d.length);
  const [lo, hi] = [m - half, m + half];
  const mark = hi < 0 ? " **better**" : lo > 0 ? " **worse**" : "";
  return ` [${lo.toFixed(0)}, ${hi.toFixed(0)}]${mark}`;
}

/**
 * One table: an arm per row, mean ± std over seeds, Δ FD paired by seed with `baseline`'s runs; with the second
 * LeNet's FD and its paired Δ where the rows have it.
 */
function table(rows: RunResult[], baseline: RunResult[]): string[] {
  const arms = [...new Set(rows.map((r) => r.arm))];
  const cross = rows.some((r) => r.cross);
  const out = [
    `| arm | seeds | FD ↓ | Δ FD vs plain (paired) | ${cross ? "FD, 2nd LeNet ↓ | Δ (paired) | " : ""}KID ↓ | precision ↑ | recall ↑ | accuracy ↑ | min/run |`,
    `|---|---|---|---|${cross ? "---|---|" : ""}---|---|---|---|---|`,
  ];
  const paired = (rs: RunResult[], pick: (r: RunResult) => EvalPoint | undefined): number[] =>
    rs.flatMap((r) => {
      const b = pick(baseline.find((x) => x.seed === r.seed) ?? r);
      const v = pick(r);
      return b && v && baseline.some((x) => x.seed === r.seed) ? [v.fd - b.fd] : [];
    });
  for (const a of arms) {
    const rs = rows.filter((r) => r.arm === a && r.final);
    const f = rs.map((r) => r.final as EvalPoint);
    const isBase = baseline.some((b) => b.arm === a);
    const delta = (pick: (r: RunResult) => EvalPoint | undefined): string => {
      const d = paired(rs, pick);
      return isBase || d.length === 0 ? "–" : `${pm(d, 1)}${ciText(d)}`;
    };
    const crossCells = cross ? `${pm(rs.flatMap((r) => (r.cross ? [r.cross.fd] : [])), 1)} | ${delta((r) => r.cross)} | ` : "";
    out.push(
      `| ${a} | ${rs.map((r) => r.seed).join(", ")} | ${pm(f.map((p) => p.fd), 1)} | ${delta((r) => r.final)} | ${crossCells}` +
        `${pm(f.map((p) => p.kid), 1)} | ${pm(f.map((p) => p.precision), 3)} | ${pm(f.map((p) => p.recall), 3)} | ` +
        `${pm(f.map((p) => p.accuracy), 3)} | ${(meanStd(rs.map((r) => r.seconds))[0] / 60).toFixed(0)} |`,
    );
  }
  return out;
}

function fdPanel(results: RunResult[], title: string, offset: (r: RunResult) => number): Panel {
  const series: Series[] = [];
  const arms = [...new Set(results.map((r) => r.arm))];
  arms.forEach((a, i) => {
    const color = COLORS[i % COLORS.length];
    const rs = results.filter((r) => r.arm === a);
    for (const r of rs) series.push({ label: a, color, thin: rs.length > 1, points: r.curve.map((p) => [p.step + offset(r), p.fd]) });
    if (rs.length > 1) {
      const steps = [...new Set(rs.flatMap((r) => r.curve.map((p) => p.step)))].sort((x, y) => x - y);
      const mean = steps.flatMap((s) => {
        const v = rs.flatMap((r) => r.curve.filter((p) => p.step === s).map((p) => p.fd));
        return v.length === rs.length ? [[s, meanStd(v)[0]] as [number, number]] : [];
      });
      series.push({ label: `${a} (mean of ${rs.length})`, color, points: mean });
    }
  });
  return { title, xLabel: "training step", yLabel: "Fréchet distance", series, logY: true };
}

function report(o: Options, jobs: Job[], results: RunResult[]): string {
  const runsOn = new Map<string, number>();
  for (const r of results) {
    const c = r.cpu ?? "an unrecorded CPU";
    runsOn.set(c, (runsOn.get(c) ?? 0) + 1);
  }
  const cpu = runsOn.size === 1 ? [...runsOn.keys()][0] : [...runsOn].map(([c, n]) => `${c} (${n} run${n === 1 ? "" : "s"})`).join(", ");
  const total = results.reduce((a, r) => a + r.seconds, 0);
  const L: string[] = [];
  L.push("# Does SADM help a converged model? The study");
  L.push("");
  L.push(`Written by \`npm run experiment:study\` (experiments/study.ts), sadm ${version()}, ${new Date().toISOString().slice(0, 10)}; ` +
    `${results.length} of ${jobs.length} runs done (${(total / 3600).toFixed(1)} h of run time on ${cpu}; ${os.cpus().length} cores, ${o.jobs} runs at a time). ` +
    "The command resumes where it stopped; this file is rewritten after every finished run.");
  L.push("");
  L.push(
    `Protocol: stage 1 trains plain (λ = 0) in chunks of ${o.stage1Chunk} steps, evaluating every ${o.evalEvery}, until FD plateaus ` +
      `(the best of the last ${o.plateauWindow} evaluations within ${(100 * o.plateauTol).toFixed(0)} % of the best before them). ` +
      `Every stage-2 arm continues that checkpoint's EMA weights (fresh optimizers, the preset's LR warm-up) for ${o.stage2Steps} steps, ` +
      `seeds ${o.seeds.join(", ")}; SADM arms use the Gaussian kernel and cross pairs, λ ramped over the first 10 %. ` +
      `Metrics on the final EMA model, each the mean of ${1 + o.finalSeeds} evaluations with sampling seeds 0–${o.finalSeeds} ` +
      `(the evaluation's own noise is large: see under each table): ${o.evalSamples} class-balanced samples (the preset's evaluation sampler, named under each domain; no guidance) against ${o.evalSamples} real images, ` +
      "on the shipped LeNet's features (lenet-mnist for the digits, lenet-emoji for the emoji); accuracy = the LeNet's accuracy on the samples " +
      "w.r.t. their labels. Mean ± sample std over seeds; Δ FD is paired by seed (the same data order and noise; negative = SADM better), with its 95 % confidence interval over the seeds (Student's t) in brackets: **better** or **worse** where it excludes 0.",
  );
  if (o.screenOptions && o.seeds.length > 1) {
    L.push("");
    L.push(`Discriminator options are screened: an option arm's seeds after the first (here ${o.seeds.slice(1).join(", ")}) run only if its ` +
      `seed-${o.seeds[0]} run beat plain seed ${o.seeds[0]} (Δ FD < 0), so the hours go to the options that might help; except ` +
      `${OPTIONS.filter((x) => !x[3]).map((x) => `the ${x[1]}`).join(" and ")}, which test why SADM may fail here and run every seed.`);
  }
  for (const key of o.domains) {
    const d = DOMAINS[key];
    const mine = results.filter((r) => r.domain === key);
    L.push("");
    L.push(`## ${d.title}`);
    L.push("");
    const s1 = mine.find((r) => r.group === "stage1");
    if (s1) {
      L.push(`Stage 1: ${s1.steps} steps, ${(s1.seconds / 60).toFixed(0)} min; ${s1.plateau}. FD by step: ` +
        s1.curve.map((p) => `${p.step}: ${p.fd.toFixed(1)}`).join(", ") + ".");
    } else L.push("Stage 1 has not finished yet.");
    const arms = mine.filter((r) => r.group !== "stage1" && r.group !== "extractor");
    L.push("");
    L.push(`Evaluation sampler: ${s1 ? `stage 1 ${samplingOf([s1])}; ` : ""}the other runs ${samplingOf(arms)}. ` +
      "A stage-2 curve's step 0 is the plateau's last evaluation, with stage 1's sampler.");
    const base = mine.filter((r) => r.group === "main" && r.lambda === 0);
    L.push("");
    L.push(`### Stage 2: ${o.stage2Steps} more steps from the plateau`);
    L.push("");
    L.push(...table(mine.filter((r) => r.group === "main" || r.group === "option"), base));
    const lenet2 = mine.find((r) => r.group === "extractor");
    if (lenet2) {
      L.push("");
      L.push(`"FD, 2nd LeNet" scores the same final models (sampling seeds 0–${o.crossSeeds - 1}) on a second ${d.extractor}, trained with seed ` +
        `${SECOND_EXTRACTOR_SEED} (${lenet2.note ?? "accuracy not recorded"}): an arm that only matched the shipped LeNet's features ` +
        "(the frozen-features discriminator is that network) would gain on FD but not here.");
    }
    const noise = mine.find((r) => r.group === "noise")?.noise ?? [];
    if (noise.length > 0) {
      L.push("");
      L.push(`Evaluation noise: plain seed ${o.seeds[0]}'s final model evaluated again with ${noise.length} other sampling seeds gives ` +
        `FD ${pm(noise.map((p) => p.fd), 1)}, KID ${pm(noise.map((p) => p.kid), 1)}, precision ${pm(noise.map((p) => p.precision), 3)}, ` +
        `recall ${pm(noise.map((p) => p.recall), 3)}, accuracy ${pm(noise.map((p) => p.accuracy), 3)}. That is one evaluation's noise; ` +
        `the table's means over ${1 + o.finalSeeds} sampling seeds have about 1/√${1 + o.finalSeeds} of it (every run uses the same seeds, so paired ` +
        "differences share part of it). The curves are seed 0's evaluations alone.");
    }
    const batch = mine.filter((r) => r.group === "batch");
    if (batch.length > 0) {
      L.push("");
      L.push("### Batch 128 (Δ against plain at batch 128)");
      L.push("");
      L.push(...table(batch, batch.filter((r) => r.lambda === 0)));
    }
    if (key === "emoji") {
      const pre = mine.find((r) => r.group === "pretrain");
      L.push("");
      L.push(`### Fine-tuning: pre-train on ${PRETRAIN_CLASSES.join(", ")}; fine-tune ${o.finetuneSteps} steps on ${FINETUNE_CLASSES.join(", ")}`);
      L.push("");
      L.push(pre ? `Pre-training: ${pre.steps} steps; ${pre.plateau}.` : "Pre-training has not finished yet.");
      L.push("");
      for (const t of ["efficient", "all"]) {
        const ft = mine.filter((r) => r.group === "finetune" && r.arm.includes(`trainable ${t}`));
        if (ft.length > 0) L.push(...table(ft, ft.filter((r) => r.lambda === 0)), "");
      }
    }
  }
  L.push("");
  L.push("## Runs");
  L.push("");
  L.push("| run | steps | FD | KID | precision | recall | accuracy | min | command |");
  L.push("|---|---|---|---|---|---|---|---|---|");
  for (const r of results) {
    const f = r.final;
    const n = (v: number | undefined, k: number): string => (v !== undefined && Number.isFinite(v) ? v.toFixed(k) : "–");
    L.push(`| ${r.id} | ${r.steps} | ${n(f?.fd, 1)} | ${n(f?.kid, 1)} | ${n(f?.precision, 3)} | ${n(f?.recall, 3)} | ${n(f?.accuracy, 3)} | ${(r.seconds / 60).toFixed(0)} | \`${r.command}\` |`);
  }
  const left = jobs.filter((j) => !results.some((r) => r.id === j.id));
  const skipped = left.flatMap((j) => {
    const why = j.skip?.();
    return why === undefined ? [] : [`${j.id} (${why})`];
  });
  const pending = left.filter((j) => j.skip?.() === undefined).map((j) => j.id);
  if (skipped.length > 0) L.push("", `Skipped by the screen: ${skipped.join("; ")}.`);
  if (pending.length > 0) L.push("", `Not yet run: ${pending.join(", ")}.`);
  L.push("");
  return L.join("\n");
}

function write(o: Options, jobs: Job[]): void {
  const results = collect(jobs);
  fs.mkdirSync(o.out, { recursive: true });
  fs.writeFileSync(path.join(o.out, "results.json"), JSON.stringify({ options: o, results }, null, 2) + "\n");
  fs.writeFileSync(path.join(o.out, "results.md"), report(o, jobs, results));
  const panels: Panel[] = [];
  for (const key of o.domains) {
    const mine = results.filter((r) => r.domain === key);
    const s1 = mine.filter((r) => r.group === "stage1" || r.group === "pretrain");
    if (s1.length > 0) panels.push(fdPanel(s1, `${key}: stage 1 (plain) to a plateau`, () => 0));
    const s2 = mine.filter((r) => r.group === "main");
    if (s2.length > 0) panels.push(fdPanel(s2, `${key}: stage 2 (λ sweep)`, () => 0));
    const opt = mine.filter((r) => r.group === "option" || (r.group === "main" && r.lambda === 0));
    if (opt.some((r) => r.group === "option")) panels.push(fdPanel(opt, `${key}: discriminator options`, () => 0));
  }
  // The final sample grids of the first seed, to see what the numbers mean.
  for (const r of results.filter((x) => x.seed === o.seeds[0])) {
    const job = jobs.find((j) => j.id === r.id);
    const grid = job && path.join(job.runDir, "samples", `${checkpointName(r.steps)}.png`);
    if (grid && fs.existsSync(grid)) fs.copyFileSync(grid, path.join(o.out, `grid-${r.id}.png`));
  }
  if (panels.length > 0) writePng(chartSvg(panels, `FD every ${o.evalEvery} steps (stage 2: from the plateau); thin: seeds, thick: mean.`), path.join(o.out, "fd.png"));
}

async function main(): Promise<void> {
  const a = await yargs(process.argv.slice(2))
    .usage("npm run experiment:study -- [options]")
    .option("quick", { type: "boolean", describe: "The whole pipeline on a toy model in a few minutes (meaningless numbers)" })
    .option("domains", { type: "string", default: "digits,emoji" })
    .option("seeds", { type: "string", default: "0,1,2" })
    .option("lambdas", { type: "string", default: "0.003,0.01,0.03" })
    .option("option-lambda", { type: "number", default: 0.01, describe: "λ of the discriminator-option arms" })
    .option("cross-seeds", { type: "number", default: 2, describe: "Score each arm's final model on a second LeNet with this many sampling seeds (0: not)" })
    .option("final-seeds", { type: "number", default: 4, describe: "Evaluate each arm's final model with this many more sampling seeds and report the mean" })
    .option("noise-seeds", { type: "number", default: 5, describe: "Sampling seeds of the evaluation-noise measurement (0: none)" })
    .option("screen-options", { type: "boolean", default: false, describe: "Run an option arm's later seeds only where its first seed beat plain (a cheaper look; the study runs every seed)" })
    .option("stage1-chunk", { type: "number", default: 2000, describe: "Stage 1 grows by this many steps until FD plateaus" })
    .option("stage1-max", { type: "number", default: 30000, describe: "Stage 1 stops here even without a plateau" })
    .option("plateau-window", { type: "number", default: 4, describe: "Evaluations that must not improve FD" })
    .option("plateau-tol", { type: "number", default: 0.03, describe: "…by more than this fraction" })
    .option("stage2-steps", { type: "number", default: 1000 })
    .option("finetune-steps", { type: "number", default: 1000 })
    .option("eval-every", { type: "number", default: 500 })
    .option("eval-samples", { type: "number", default: 1000 })
    .option("jobs", { type: "number", default: 2, describe: "Runs at a time (cores are split between them)" })
    .option("runs", { type: "string", default: "runs/study", describe: "Where the run directories go" })
    .option("out", { type: "string", default: "experiments/results/study", describe: "Where the report goes" })
    .option("set", { type: "string", array: true, default: [] as string[], describe: "Config overrides for every run" })
    .option("report-only", { type: "boolean", describe: "Rewrite the report from the runs so far, and exit" })
    .option("park", { type: "boolean", describe: "Keep the unfinished plateau runs' newest checkpoints next to the report (to commit), and exit" })
    .strict()
    .parseAsync();
  const quick = a.quick === true;
  const domains = a.domains.split(",").map((s) => s.trim()) as DomainKey[];
  for (const d of domains) if (!(d in DOMAINS)) throw new Error(`--domains: unknown domain "${d}" (known: ${Object.keys(DOMAINS).join(", ")})`);
  const o: Options = {
    domains,
    seeds: parseList(a.seeds),
    lambdas: parseList(a.lambdas),
    optionLambda: a["option-lambda"],
    screenOptions: a["screen-options"],
    noiseSeeds: quick ? 2 : Math.max(0, a["noise-seeds"]),
    finalSeeds: quick ? 1 : Math.max(0, a["final-seeds"]),
    crossSeeds: quick ? 1 : Math.max(0, a["cross-seeds"]),
    ...(quick ? { extractorEpochs: 1 } : {}),
    stage1Chunk: quick ? 4 : a["stage1-chunk"],
    stage1Max: quick ? 24 : a["stage1-max"],
    plateauWindow: quick ? 2 : a["plateau-window"],
    plateauTol: a["plateau-tol"],
    stage2Steps: quick ? 4 : a["stage2-steps"],
    finetuneSteps: quick ? 4 : a["finetune-steps"],
    evalEvery: quick ? 2 : a["eval-every"],
    evalSamples: quick ? 20 : a["eval-samples"],
    jobs: Math.max(1, a.jobs),
    runs: path.resolve(a.runs),
    out: path.resolve(a.out),
    set: [
      ...(quick ? [...QUICK_SET, "eval.steps=2"] : []),
      ...a.set,
    ],
  };
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first`);
  wanted.finalSeeds = o.finalSeeds;
  wanted.crossSeeds = o.crossSeeds;
  store.dir = o.out;
  const jobs = plan(o);
  const earlier = readJson<{ results: RunResult[] }>(path.join(o.out, "results.json"));
  recorded = new Map((earlier?.results ?? []).map((r) => [r.id, r]));
  if (a.park === true) {
    const parked = park(jobs);
    process.stdout.write(parked.length ? `parked ${parked.join(", ")} in ${path.join(o.out, "parked")}\n` : "no plateau run in progress to park\n");
    return;
  }
  unpark(jobs);
  write(o, jobs);
  if (a["report-only"] === true) {
    process.stdout.write(`wrote ${path.join(o.out, "results.md")}\n`);
    return;
  }
  await runAll(jobs, o, () => write(o, jobs));
  write(o, jobs);
  process.stdout.write(`wrote ${path.join(o.out, "results.md")}, results.json and fd.png\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`error: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
