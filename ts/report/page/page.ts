/**
 * The report page's script (runs in the browser; compiled by tsconfig.page.json and inlined by html.ts). It draws
 * the data that html.ts embedded with uPlot, the global of the bundled uPlot script.
 *
 * `window.sadmReport` tells a test what was drawn: every chart's series and their point counts.
 */
import type { ReportData, ReportRun, StepSeries } from "../types.js";

declare const uPlot: typeof import("uplot");
type Plot = import("uplot");
type Options = import("uplot").Options;

interface DrawnChart {
  title: string;
  series: Array<{ label: string; points: number }>;
}
declare global {
  interface Window {
    sadmReport: { ready: boolean; charts: Record<string, DrawnChart>; gridStep: number | undefined };
  }
}

const RUN_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const DASHES: Array<number[] | undefined> = [undefined, [6, 4], [2, 3]];

/** A chart: which series of which runs, and how it is drawn. */
interface ChartSpec {
  id: string;
  title: string;
  /** [metric key, label] pairs; each run draws each key. */
  keys: Array<[string, string]>;
  /** Training curves: smoothed, log toggle, skipped steps marked. Schedules: the current step marked. */
  kind: "train" | "schedule" | "eval";
}

const CHARTS: ChartSpec[] = [
  { id: "loss", title: "Denoising loss (MSE)", keys: [["mse", "mse"]], kind: "train" },
  { id: "vb", title: "Variational bound term (learned Σ)", keys: [["vb", "vb"]], kind: "train" },
  { id: "structure", title: "Structure distance D (real vs generated batch)", keys: [["structure", "D"]], kind: "train" },
  { id: "disc", title: "Discriminator loss", keys: [["discLoss", "disc loss"]], kind: "train" },
  { id: "gradnorm", title: "Gradient norms", keys: [["gradNormDit", "DiT"], ["gradNormDisc", "discriminator"]], kind: "train" },
  { id: "throughput", title: "Throughput (it/s)", keys: [["itPerSec", "it/s"]], kind: "train" },
  { id: "lambda", title: "λ schedule", keys: [["lambda", "λ"]], kind: "schedule" },
  { id: "lr", title: "Learning-rate schedule", keys: [["lr", "lr"]], kind: "schedule" },
  { id: "emaDecay", title: "EMA-decay schedule", keys: [["emaDecay", "EMA decay"]], kind: "schedule" },
  { id: "fd", title: "Fréchet distance ↓", keys: [["fd", "FD"]], kind: "eval" },
  { id: "kid", title: "KID ↓", keys: [["kid", "KID"]], kind: "eval" },
  { id: "pr", title: "Precision and recall ↑", keys: [["precision", "precision"], ["recall", "recall"]], kind: "eval" },
  { id: "accuracy", title: "Classifier accuracy on samples ↑", keys: [["accuracy", "accuracy"]], kind: "eval" },
];

/** Where a chart's series live in a run. */
function seriesOf(run: ReportRun, kind: ChartSpec["kind"]): Record<string, StepSeries> {
  return kind === "train" ? run.train : kind === "schedule" ? run.schedules : run.evals;
}

const data = JSON.parse(document.getElementById("sadm-data")?.textContent ?? "{}") as ReportData;
const state = { smoothing: 0.6, log: false };
const plots = new Map<string, Plot>();
window.sadmReport = { ready: false, charts: {}, gridStep: undefined };

function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, ...children: Array<Node | string>): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  e.append(...children);
  return e;
}

const colorOf = (i: number): string => RUN_COLORS[i % RUN_COLORS.length];

/** TensorBoard's smoothing: an exponential moving average, debiased so the first points are not pulled to 0. */
function smooth(values: Array<number | null>, weight: number): Array<number | null> {
  if (weight <= 0) return values;
  let last = 0;
  let n = 0;
  return values.map((v) => {
    if (v === null) return null;
    last = last * weight + (1 - weight) * v;
    n++;
    return last / (1 - Math.pow(weight, n));
  });
}

/** Axis numbers short enough for the axis: 0.00012, 0.5, 12.5, 3.2k, 1.2M. */
function compact(v: number): string {
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 1e6) return `${+(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toPrecision(3)}k`;
  return String(+v.toPrecision(4));
}

/** uPlot's padded range, except for a flat series (λ = 0 throughout), which gets a unit-wide band around it instead of 0–100. */
function linearRange(_u: Plot, min: number | null, max: number | null): [number, number] {
  if (min === null || max === null) return [0, 1];
  if (min === max) {
    const pad = Math.abs(min) > 0 ? Math.abs(min) * 0.5 : 0.5;
    return [min - pad, max + pad];
  }
  const [lo, hi] = uPlot.rangeNum(min, max, 0.1, true);
  return [lo ?? min, hi ?? max];
}

/** Vertical marks at `steps` (skipped steps, the current step) drawn over a chart. */
function markSteps(marks: Array<{ steps: number[]; color: string; dash: number[] }>): (u: Plot) => void {
  return (u) => {
    const ctx = u.ctx;
    ctx.save();
    for (const m of marks) {
      ctx.strokeStyle = m.color;
      ctx.lineWidth = 1.5 * devicePixelRatio;
      ctx.setLineDash(m.dash.map((d) => d * devicePixelRatio));
      for (const s of m.steps) {
        const x = u.valToPos(s, "x", true);
        if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
        ctx.beginPath();
        ctx.moveTo(x, u.bbox.top);
        ctx.lineTo(x, u.bbox.top + u.bbox.height);
        ctx.stroke();
      }
    }
    ctx.restore();
  };
}

/** Draws (or redraws) one chart into `box`; returns whether it had data. */
function drawChart(spec: ChartSpec, box: HTMLElement): boolean {
  plots.get(spec.id)?.destroy();
  plots.delete(spec.id);
  box.replaceChildren();
  const tables: Array<[number[], Array<number | null>]> = [];
  const series: Options["series"] = [{ label: "step" }];
  const drawn: DrawnChart = { title: spec.title, series: [] };
  data.runs.forEach((run, ri) => {
    spec.keys.forEach(([key, label], ki) => {
      const s = seriesOf(run, spec.kind)[key];
      // A curve of zeros is one the run did not have (no learned Σ, no discriminator at λ = 0); a schedule of
      // zeros is a fact (λ stays 0).
      if (!s || !s.values.some((v) => v !== null && (v !== 0 || spec.kind === "schedule"))) return;
      const values = spec.kind === "train" ? smooth(s.values, state.smoothing) : s.values;
      tables.push([s.steps, values]);
      const name = data.runs.length > 1 ? `${run.name}: ${label}` : label;
      series.push({
        label: name,
        stroke: colorOf(ri),
        dash: DASHES[ki % DASHES.length],
        width: 1.5,
        spanGaps: true,
        points: { show: spec.kind === "eval" || s.steps.length === 1 },
      });
      drawn.series.push({ label: name, points: s.values.filter((v) => v !== null).length });
    });
  });
  window.sadmReport.charts[spec.id] = drawn;
  box.append(el("div", { class: "title" }, el("strong", {}, spec.title)));
  if (tables.length === 0) {
    box.append(el("div", { class: "empty" }, "nothing recorded"));
    return false;
  }
  const aligned = uPlot.join(tables.map(([x, y]) => [x, y.map((v) => (v === null ? undefined : v))] as [number[], Array<number | undefined>]));
  const positive = tables.every(([, ys]) => ys.every((v) => v === null || v > 0));
  const marks: Array<{ steps: number[]; color: string; dash: number[] }> = [];
  if (spec.kind === "train") data.runs.forEach((r, i) => r.skipped.length > 0 && marks.push({ steps: r.skipped.map((s) => s.step), color: "#d92d20", dash: i === 0 ? [] : [3, 3] }));
  if (spec.kind === "schedule") data.runs.forEach((r, i) => marks.push({ steps: [r.step], color: colorOf(i), dash: [4, 4] }));
  const opts: Options = {
    width: Math.max(300, box.clientWidth - 12),
    height: 220,
    series,
    scales: { x: { time: false }, y: state.log && positive && spec.kind !== "schedule" ? { distr: 3 } : { range: linearRange } },
    axes: [{ label: "step" }, { size: 56, values: (_u, ticks) => ticks.map(compact) }],
    legend: { live: true },
    hooks: { draw: [markSteps(marks)] },
  };
  plots.set(spec.id, new uPlot(opts, aligned as import("uplot").AlignedData, box));
  return true;
}

function runCard(run: ReportRun, i: number): HTMLElement {
  const card = el("div", { class: "card" });
  card.append(el("h3", {}, el("span", { class: "swatch", style: `background:${colorOf(i)}` }), run.name, el("span", { class: `badge ${run.status.state}` }, run.status.state)));
  card.append(el("p", { class: "muted" }, run.status.summary));
  const table = el("table", { class: "facts" });
  table.append(el("tr", {}, el("td", {}, "directory"), el("td", {}, el("code", {}, run.dir))));
  table.append(el("tr", {}, el("td", {}, "step"), el("td", {}, `${run.step} of ${run.steps}`)));
  for (const [k, v] of run.facts) table.append(el("tr", {}, el("td", {}, k), el("td", {}, v)));
  card.append(table);
  if (run.skipped.length > 0) {
    const first = run.skipped[0];
    card.append(el("p", { class: "bad" }, `${run.skipped.length} step(s) skipped for a non-finite loss or gradient (red marks on the curves); first at step ${first.step}: ${first.why}`));
  }
  if (run.torn.length > 0)
    card.append(el("p", { class: "warn" }, `metrics.jsonl: skipped ${run.torn.length} line(s) that do not parse (line ${run.torn.map((t) => t.line).join(", ")}; a killed process leaves a torn last line)`));
  const ck = run.checkpoints;
  card.append(el("p", {}, ck.length > 0 ? `Checkpoints: ${ck.map((c) => c.step).join(", ")} (newest ${ck[ck.length - 1].dir})` : "No checkpoint yet."));
  if (run.resume && ck.length > 0) card.append(el("div", {}, run.status.state === "finished" ? "Train on:" : "Resume:", el("code", { class: "cmd" }, run.resume)));
  card.append(el("details", {}, el("summary", {}, "Resolved config"), el("pre", {}, run.config)));
  return card;
}

/** The sample grids: one slider over every step that has a grid; each run shows its newest grid up to that step. */
function gridsSection(): HTMLElement | undefined {
  const steps = [...new Set(data.runs.flatMap((r) => r.grids.map((g) => g.step)))].sort((a, b) => a - b);
  if (steps.length === 0) return undefined;
  const section = el("section", {}, el("h2", {}, "Samples"));
  const label = el("span", {});
  const slider = el("input", { type: "range", id: "grid-slider", min: "0", max: String(steps.length - 1), step: "1", value: String(steps.length - 1) });
  const figures = data.runs.map((r) => {
    const img = el("img", { alt: `${r.name} samples` });
    const cap = el("figcaption", {});
    return { run: r, img, cap, fig: el("figure", {}, img, cap) };
  });
  const show = (): void => {
    const step = steps[Number(slider.value)];
    label.textContent = `step ${step} (${Number(slider.value) + 1} of ${steps.length})`;
    for (const f of figures) {
      const g = [...f.run.grids].reverse().find((x) => x.step <= step);
      f.fig.style.display = g ? "" : "none";
      if (g) {
        f.img.src = g.src;
        f.cap.textContent = `${data.runs.length > 1 ? f.run.name + ", " : ""}step ${g.step}`;
      }
    }
    window.sadmReport.gridStep = step;
  };
  slider.addEventListener("input", show);
  section.append(el("div", { class: "controls" }, el("label", {}, "Step ", slider), label), el("div", { class: "grids" }, ...figures.map((f) => f.fig)));
  show();
  return section;
}

function chartSection(title: string, kind: ChartSpec["kind"], controls?: HTMLElement): HTMLElement {
  const section = el("section", {}, el("h2", {}, title));
  if (controls) section.append(controls);
  const grid = el("div", { class: "charts" });
  section.append(grid);
  const boxes: Array<[ChartSpec, HTMLElement]> = [];
  for (const spec of CHARTS.filter((c) => c.kind === kind)) {
    const box = el("div", { class: "chart", id: `chart-${spec.id}` });
    grid.append(box);
    boxes.push([spec, box]);
  }
  // Drawn once the section is in the page (uPlot sizes to its box); charts with nothing to show are dropped.
  queueMicrotask(() => {
    for (const [spec, box] of boxes) if (!drawChart(spec, box) && spec.id !== "loss") box.remove();
  });
  return section;
}

function trainControls(): HTMLElement {
  const smoothing = el("input", { type: "range", id: "smoothing", min: "0", max: "0.99", step: "0.01", value: String(state.smoothing) });
  const shown = el("span", {}, state.smoothing.toFixed(2));
  const log = el("input", { type: "checkbox", id: "log-scale" });
  const redraw = (): void => {
    for (const spec of CHARTS.filter((c) => c.kind === "train")) {
      const box = document.getElementById(`chart-${spec.id}`);
      if (box) drawChart(spec, box);
    }
  };
  smoothing.addEventListener("input", () => {
    state.smoothing = Number(smoothing.value);
    shown.textContent = state.smoothing.toFixed(2);
    redraw();
  });
  log.addEventListener("change", () => {
    state.log = log.checked;
    redraw();
  });
  return el("div", { class: "controls" }, el("label", {}, "Smoothing ", smoothing, " ", shown), el("label", {}, log, " log scale (curves with positive values)"));
}

/**
 * How old the page is, in the header: a page that says "running" but was written an hour ago is of a run whose
 * process was killed before it could say so (training rewrites it at every checkpoint).
 */
function showAge(): void {
  const p = document.querySelector("header .muted");
  const at = Date.parse(data.writtenAt);
  if (!p || !Number.isFinite(at)) return;
  const min = Math.max(0, Math.round((Date.now() - at) / 60_000));
  const age = min < 1 ? "just now" : min < 120 ? `${min} min ago` : `${(min / 60).toFixed(1)} h ago`;
  const running = data.runs.some((r) => r.status.state === "running");
  p.textContent = `written ${data.written} (${age}) · ${running ? "refresh to update; training rewrites it at every checkpoint" : "refresh to update"}`;
}

function main(): void {
  const app = document.getElementById("app");
  if (!app) return;
  showAge();
  app.replaceChildren();
  app.append(el("section", {}, el("h2", {}, data.runs.length > 1 ? "Runs" : "Run"), el("div", { class: "runs" }, ...data.runs.map(runCard))));
  app.append(chartSection("Training", "train", trainControls()));
  app.append(chartSection("Schedules (dashed: the current step)", "schedule"));
  if (data.runs.some((r) => Object.keys(r.evals).length > 0)) app.append(chartSection("Evaluation", "eval"));
  const grids = gridsSection();
  if (grids) app.append(grids);
  queueMicrotask(() => {
    window.sadmReport.ready = true;
  });
  let resize: number | undefined;
  window.addEventListener("resize", () => {
    clearTimeout(resize);
    resize = window.setTimeout(() => {
      for (const [id, p] of plots) {
        const box = document.getElementById(`chart-${id}`);
        if (box) p.setSize({ width: Math.max(300, box.clientWidth - 12), height: 220 });
      }
    }, 150);
  });
}

main();
