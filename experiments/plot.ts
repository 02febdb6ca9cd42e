/**
 * Line charts as SVG (one panel per series group), rendered to PNG with resvg and the DejaVu font from npm, so the
 * result does not depend on the fonts a machine happens to have.
 */
import * as fs from "node:fs";
import * as path from "node:path";

/** One line: points (x, y), drawn thick for a mean and thin for a single seed. */
export interface Series {
  label: string;
  color: string;
  points: Array<[number, number]>;
  /** A per-seed line (thin, translucent, not in the legend). */
  thin?: boolean;
}

/** A panel: its title, axis labels and lines. */
export interface Panel {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  /** Log-scale y axis. */
  logY?: boolean;
}

const W = 560;
const H = 440;
const M = { left: 70, right: 20, top: 40, bottom: 140 };

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function niceTicks(lo: number, hi: number, n: number): number[] {
  const span = hi - lo || 1;
  const step0 = span / n;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) ?? step0;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function logTicks(lo: number, hi: number): number[] {
  const out: number[] = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++)
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v >= lo && v <= hi) out.push(v);
    }
  return out;
}

function fmtTick(v: number): string {
  if (Math.abs(v) >= 1e6 || (Math.abs(v) < 0.01 && v !== 0)) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

function panelSvg(p: Panel, ox: number): string {
  const pts = p.series.flatMap((s) => s.points).filter(([, y]) => Number.isFinite(y) && (!p.logY || y > 0));
  if (pts.length === 0) return "";
  const xs = pts.map(([x]) => x);
  const ys = pts.map(([, y]) => y);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (p.logY) [y0, y1] = [y0 / 1.2, y1 * 1.2];
  else [y0, y1] = [Math.max(0, y0 - 0.05 * (y1 - y0)), y1 + 0.05 * (y1 - y0)];
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  const sx = (x: number): number => ox + M.left + ((x - x0) / (x1 - x0 || 1)) * pw;
  const sy = (y: number): number =>
    M.top + ph - (p.logY ? (Math.log(y / y0) / Math.log(y1 / y0)) * ph : ((y - y0) / (y1 - y0 || 1)) * ph);
  const out: string[] = [];
  out.push(`<rect x="${ox + M.left}" y="${M.top}" width="${pw}" height="${ph}" fill="#fff" stroke="#444"/>`);
  // A narrow log range may hold no 1-2-5 value: fall back to evenly spaced values.
  const yTicks = p.logY && logTicks(y0, y1).length >= 2 ? logTicks(y0, y1) : niceTicks(y0, y1, 6);
  for (const t of yTicks) {
    const y = sy(t);
    out.push(`<line x1="${ox + M.left}" x2="${ox + M.left + pw}" y1="${y}" y2="${y}" stroke="#e4e4e4"/>`);
    out.push(`<text x="${ox + M.left - 6}" y="${y + 4}" font-size="11" text-anchor="end">${fmtTick(t)}</text>`);
  }
  for (const t of niceTicks(x0, x1, 6)) {
    const x = sx(t);
    out.push(`<line x1="${x}" x2="${x}" y1="${M.top + ph}" y2="${M.top + ph + 4}" stroke="#444"/>`);
    out.push(`<text x="${x}" y="${M.top + ph + 17}" font-size="11" text-anchor="middle">${fmtTick(t)}</text>`);
  }
  out.push(`<text x="${ox + M.left + pw / 2}" y="${M.top - 14}" font-size="14" text-anchor="middle">${esc(p.title)}</text>`);
  out.push(`<text x="${ox + M.left + pw / 2}" y="${M.top + ph + 34}" font-size="12" text-anchor="middle">${esc(p.xLabel)}</text>`);
  out.push(
    `<text transform="translate(${ox + 16},${M.top + ph / 2}) rotate(-90)" font-size="12" text-anchor="middle">${esc(p.yLabel)}</text>`,
  );
  for (const s of [...p.series].sort((a, b) => Number(b.thin ?? false) - Number(a.thin ?? false))) {
    const ok = s.points.filter(([, y]) => Number.isFinite(y) && (!p.logY || y > 0)).sort((a, b) => a[0] - b[0]);
    if (ok.length === 0) continue;
    const d = ok.map(([x, y], i) => `${i === 0 ? "M" : "L"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
    const width = s.thin ? 1 : 2.5;
    const opacity = s.thin ? 0.35 : 1;
    out.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="${width}" stroke-opacity="${opacity}"/>`);
    if (!s.thin)
      for (const [x, y] of ok) out.push(`<circle cx="${sx(x)}" cy="${sy(y)}" r="3" fill="${s.color}"/>`);
  }
  const legend = p.series.filter((s) => !s.thin);
  legend.forEach((s, i) => {
    const lx = ox + M.left;
    const ly = M.top + ph + 52 + i * 15;
    out.push(`<line x1="${lx}" x2="${lx + 18}" y1="${ly - 4}" y2="${ly - 4}" stroke="${s.color}" stroke-width="2.5"/>`);
    out.push(`<text x="${lx + 24}" y="${ly}" font-size="11">${esc(s.label)}</text>`);
  });
  return out.join("\n");
}

/** The SVG of panels side by side. */
export function chartSvg(panels: Panel[], caption = ""): string {
  const width = W * panels.length;
  const height = H + (caption ? 22 : 0);
  const body = panels.map((p, i) => panelSvg(p, i * W)).join("\n");
  const cap = caption
    ? `<text x="${width / 2}" y="${H + 12}" font-size="11" text-anchor="middle" fill="#555">${esc(caption)}</text>`
    : "";
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="DejaVu Sans">` +
    `<rect width="100%" height="100%" fill="#fff"/>${body}${cap}</svg>`
  );
}

/** Renders an SVG to a PNG file (atomically). */
export function writePng(svg: string, file: string): void {
  // Loaded lazily: resvg and the font are dev dependencies, needed by the experiment only.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { Resvg } = require("@resvg/resvg-js") as typeof import("@resvg/resvg-js");
  const font = path.join(path.dirname(require.resolve("dejavu-fonts-ttf/package.json")), "ttf", "DejaVuSans.ttf");
  const png = new Resvg(svg, {
    font: { fontFiles: [font], loadSystemFonts: false, defaultFontFamily: "DejaVu Sans" },
    background: "#ffffff",
  })
    .render()
    .asPng();
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, png);
  fs.renameSync(tmp, file);
}
