/**
 * The HTML run report: what it reads from a run directory (every state a run can be in), that training keeps it
 * up to date, and — in headless Chromium — that it renders without errors, draws every point and switches grids.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { Browser } from "puppeteer-core";
import { NumericalError, REPORT_FILE, readMetrics, readRun, setNativeModule, train, writeReport, type SadmConfigInput } from "../ts/index";
import { makeFakeNative } from "./fake-native";
import { TINY_NETS, runCli, tmpDir } from "./helpers";
import { drawn, launch, openReport } from "./browser";

function tiny(outDir: string, extra: SadmConfigInput = {}): SadmConfigInput {
  return {
    ...TINY_NETS,
    outDir,
    steps: 12,
    sampleEvery: 4,
    checkpointEvery: 4,
    keepCheckpoints: 5,
    logEvery: 2,
    advWarmupSteps: 2,
    advRampSteps: 4,
    sampleSteps: 2,
    samplesPerClass: 1,
    lambda: 0.1,
    eval: { every: 0 },
    ...extra,
  };
}

const trainRecords = (dir: string): number => readMetrics(path.join(dir, "metrics.jsonl")).filter((r) => typeof r.mse === "number").length;

afterEach(() => setNativeModule(undefined));

describe("run report: reading a run", () => {
  it("is written by training at its checkpoints and end, and says the run finished", async () => {
    const { native, log } = makeFakeNative();
    setNativeModule(native);
    const out = path.join(tmpDir(), "run");
    const seen: boolean[] = [];
    await train(tiny(out), { quiet: true, onCheckpoint: () => seen.push(fs.existsSync(path.join(out, REPORT_FILE))) });
    // Refreshed at each checkpoint: it is there when the hook runs.
    expect(seen).toEqual([true, true, true]);
    const run = readRun(out, { reportDir: out });
    expect(run.status.state).toBe("finished");
    expect(run.step).toBe(12);
    expect(run.steps).toBe(12);
    expect(run.train.mse.steps).toEqual([2, 4, 6, 8, 10, 12]);
    expect(run.grids.map((g) => [g.step, g.src])).toEqual([4, 8, 12].map((s) => [s, `samples/step-${String(s).padStart(8, "0")}.png`]));
    expect(run.checkpoints.map((c) => c.step)).toEqual([4, 8, 12]);
    // The planned schedules are the ones training used, step by step (every step: the report plans ≤ 400 points).
    for (const key of ["lambda", "lr", "emaDecay"] as const) {
      const planned = run.schedules[key];
      expect(planned.steps).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
      expect(planned.values).toEqual(log.steps.map((st) => st.opts[key]));
    }
    expect(run.schedules.lambda.values.slice(0, 7)).toEqual([0, 0, 0.025, 0.05, expect.closeTo(0.075, 12), 0.1, 0.1]);
    expect(run.facts.find(([k]) => k === "data")?.[1]).toBe("mnist (64 images)");
    expect(run.facts.find(([k]) => k === "classes")?.[1]).toMatch(/^0: 0, 1: 1/);
    expect(run.resume).toBe(`sadm train --resume ${out} --steps 24`);
    const html = fs.readFileSync(path.join(out, REPORT_FILE), "utf8");
    // Self-contained: no script, stylesheet or image loaded from anywhere.
    expect(html).not.toMatch(/<(script|link|img)[^>]+(src|href)=/i);
    expect(html).toContain('<script type="application/json" id="sadm-data">');
  });

  it("is not written with report: false", async () => {
    setNativeModule(makeFakeNative().native);
    const out = path.join(tmpDir(), "run");
    await train(tiny(out, { report: false, steps: 4 }), { quiet: true });
    expect(fs.existsSync(path.join(out, REPORT_FILE))).toBe(false);
    expect(fs.existsSync(path.join(out, "status.json"))).toBe(true);
  });

  it("says a run stopped on non-finite steps, with the skipped steps", async () => {
    setNativeModule(makeFakeNative({ badSteps: [5, 6, 7, 8, 9] }).native);
    const out = path.join(tmpDir(), "run");
    const err = await train(tiny(out, { maxBadSteps: 3 }), { quiet: true }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NumericalError);
    const run = readRun(out, { reportDir: out });
    expect(run.status.state).toBe("stopped");
    expect(run.status.summary).toContain("3 steps in a row were skipped");
    expect(run.skipped.map((s) => s.step)).toEqual([5, 6, 7]);
    expect(fs.existsSync(path.join(out, REPORT_FILE))).toBe(true);
  });

  it("reports a torn last line of metrics.jsonl and reads the rest", async () => {
    setNativeModule(makeFakeNative().native);
    const out = path.join(tmpDir(), "run");
    await train(tiny(out), { quiet: true });
    const file = path.join(out, "metrics.jsonl");
    const lines = fs.readFileSync(file, "utf8").trim().split("\n").length;
    fs.appendFileSync(file, '{"step":14,"loss":0.1');
    const run = readRun(out, { reportDir: out });
    expect(run.torn).toEqual([{ line: lines + 1, text: '{"step":14,"loss":0.1' }]);
    expect(run.train.mse.steps).toHaveLength(6);
  });

  it("tells a running run from one whose process is gone", async () => {
    setNativeModule(makeFakeNative().native);
    const out = path.join(tmpDir(), "run");
    await train(tiny(out), { quiet: true });
    const status = JSON.parse(fs.readFileSync(path.join(out, "status.json"), "utf8")) as Record<string, unknown>;
    fs.writeFileSync(path.join(out, "status.json"), JSON.stringify({ ...status, state: "running", pid: process.pid }));
    expect(readRun(out, { reportDir: out }).status.state).toBe("running");
    expect(readRun(out, { reportDir: out }).resume).toBeUndefined();
    // A pid far above any the kernel hands out.
    fs.writeFileSync(path.join(out, "status.json"), JSON.stringify({ ...status, state: "running", pid: 2 ** 30 }));
    const gone = readRun(out, { reportDir: out });
    expect(gone.status.state).toBe("interrupted");
    expect(gone.resume).toBe(`sadm train --resume ${out}`);
  });

  it("inlines the grids on request, and refuses a folder that is not a run", async () => {
    setNativeModule(makeFakeNative().native);
    const out = path.join(tmpDir(), "run");
    await train(tiny(out, { steps: 4 }), { quiet: true });
    const file = writeReport([out], { out: path.join(tmpDir(), "one.html"), inlineImages: true });
    expect(fs.readFileSync(file, "utf8")).toContain("data:image/png;base64,");
    const empty = tmpDir();
    expect(() => writeReport([empty])).toThrow(/is not a sadm run directory/);
    const cli = runCli(["report", empty]);
    expect(cli.status).toBe(1);
    expect(cli.stderr).toContain("is not a sadm run directory");
  });
});

describe("run report in headless Chromium", () => {
  let browser: Browser;
  let root: string;
  let a: string;
  let b: string;
  let one: string;
  let stopped: string;

  beforeAll(async () => {
    root = tmpDir("sadm-report-");
    a = path.join(root, "sadm");
    b = path.join(root, "baseline");
    one = path.join(root, "one-step");
    stopped = path.join(root, "stopped");
    setNativeModule(makeFakeNative().native);
    await train(tiny(a), { quiet: true });
    await train(tiny(b, { lambda: 0, steps: 8, sampleEvery: 2 }), { quiet: true });
    await train(tiny(one, { steps: 1 }), { quiet: true });
    setNativeModule(makeFakeNative({ badSteps: [5, 6, 7, 8, 9] }).native);
    await train(tiny(stopped, { maxBadSteps: 3 }), { quiet: true }).catch(() => undefined);
    setNativeModule(undefined);
    fs.appendFileSync(path.join(a, "metrics.jsonl"), '{"step":13,"lo');
    browser = await launch();
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
  });

  it("renders two runs overlaid: every logged point, no errors, nothing fetched; the slider switches grids", async () => {
    const file = runCli(["report", a, b, "--out", path.join(root, "compare.html")]);
    expect(file.status, file.stderr).toBe(0);
    const { page, errors, remote } = await openReport(browser, path.join(root, "compare.html"));
    expect(errors).toEqual([]);
    expect(remote).toEqual([]);
    const d = await drawn(page);
    expect(d.charts.loss.series).toEqual([
      { label: "sadm: mse", points: trainRecords(a) },
      { label: "baseline: mse", points: trainRecords(b) },
    ]);
    expect(d.charts.loss.series[0].points).toBe(6);
    // λ = 0 has no discriminator: its structure curve is absent, SADM's is there.
    expect(d.charts.structure.series.map((s) => s.label)).toEqual(["sadm: D"]);
    expect(d.charts.lambda.series.map((s) => s.label)).toEqual(["sadm: λ", "baseline: λ"]);
    // Both runs' uPlot canvases are on the page.
    expect(await page.$$eval("#chart-loss canvas", (c) => c.length)).toBeGreaterThan(0);
    // The torn line is reported on the page.
    expect(await page.$eval("main", (m) => m.textContent ?? "")).toContain("skipped 1 line(s) that do not parse");

    // Grids: steps 2, 4, 6, 8 (baseline) and 4, 8, 12 (sadm); the slider starts at the newest.
    expect(d.gridStep).toBe(12);
    const srcs = (): Promise<string[]> => page.$$eval(".grids img", (imgs) => imgs.map((i) => i.getAttribute("src") ?? ""));
    expect(await srcs()).toEqual(["sadm/samples/step-00000012.png", "baseline/samples/step-00000008.png"]);
    await page.$eval("#grid-slider", (s) => {
      (s as unknown as { value: string }).value = "1";
      s.dispatchEvent(new Event("input"));
    });
    expect((await drawn(page)).gridStep).toBe(4);
    expect(await srcs()).toEqual(["sadm/samples/step-00000004.png", "baseline/samples/step-00000004.png"]);
    // Every grid the page shows loads from disk.
    expect(await page.$$eval(".grids img", (imgs) => imgs.every((i) => (i as unknown as { naturalWidth: number }).naturalWidth > 0))).toBe(true);
    await page.screenshot({ path: path.join(root, "report.png"), fullPage: true });
    expect(fs.statSync(path.join(root, "report.png")).size).toBeGreaterThan(10_000);
  });

  it("renders a one-step run, a run stopped on non-finite steps and a run in progress", async () => {
    // In progress: its status names a live process (this one), as a training process's report does mid-run.
    const running = path.join(root, "running");
    fs.cpSync(one, running, { recursive: true });
    const status = JSON.parse(fs.readFileSync(path.join(running, "status.json"), "utf8")) as Record<string, unknown>;
    fs.writeFileSync(path.join(running, "status.json"), JSON.stringify({ ...status, state: "running", pid: process.pid }));
    writeReport([running]);
    for (const [dir, series, text] of [
      [one, 1, "finished"],
      [stopped, trainRecords(stopped), "3 steps in a row were skipped"],
      [running, 1, "running: step 1 of 1"],
    ] as const) {
      const { page, errors } = await openReport(browser, path.join(dir, REPORT_FILE));
      expect(errors, dir).toEqual([]);
      const d = await drawn(page);
      expect(d.charts.loss.series[0].points).toBe(series);
      expect(await page.$eval("main", (m) => m.textContent ?? "")).toContain(text);
    }
  });
});
