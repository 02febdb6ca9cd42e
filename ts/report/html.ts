/**
 * The report page: one HTML file with uPlot (bundled into the package at build time), its stylesheet, the page
 * script and the data inlined, so it opens from disk with no server and fetches nothing.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { SadmError } from "../errors.js";
import type { ReportData } from "./types.js";

/** Where the build puts the page's script and uPlot (`scripts/build-report.js`), whether this runs from ts/ or dist/. */
const ASSETS = path.resolve(__dirname, "..", "..", "dist", "report");

let cached: { uplot: string; css: string; page: string } | undefined;

function assets(): { uplot: string; css: string; page: string } {
  if (cached) return cached;
  const read = (rel: string): string => {
    try {
      return fs.readFileSync(path.join(ASSETS, rel), "utf8");
    } catch {
      throw new SadmError(`the report's ${rel} is missing from ${ASSETS}: the package is incomplete; rebuild it with \`npm run build:ts\``);
    }
  };
  cached = { uplot: read("vendor/uPlot.iife.min.js"), css: read("vendor/uPlot.min.css"), page: read("page/page.js") };
  return cached;
}

/** `data` as the text of a `<script type="application/json">`: `<` escaped, so no value can close the element. */
function jsonScript(data: ReportData): string {
  return JSON.stringify(data).replace(/</g, "\\u003c").replace(/\u2028/g, "\\u2028").replace(/\u2029/g, "\\u2029");
}

const esc = (s: string): string => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

/** The whole page. */
export function renderReport(data: ReportData): string {
  const a = assets();
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="sadm">
<title>${esc(data.title)}</title>
<style>${a.css}</style>
<style>${STYLE}</style>
</head>
<body>
<header><h1>${esc(data.title)}</h1><p class="muted">written ${esc(data.written)} · refresh to update</p></header>
<main id="app"><noscript>The report draws its charts with JavaScript; enable it for this file.</noscript></main>
<script type="application/json" id="sadm-data">${jsonScript(data)}</script>
<script>${a.uplot}</script>
<script type="module">${a.page}</script>
</body>
</html>
`;
}

const STYLE = `
:root { --fg: #1d2430; --muted: #667085; --line: #e4e7ec; --bg: #fff; --card: #f8f9fb; --bad: #d92d20; --ok: #079455; --warn: #dc6803; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); margin: 0; padding: 16px 24px 48px; }
h1 { font-size: 20px; margin: 0 0 2px; } h2 { font-size: 16px; margin: 28px 0 10px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.muted { color: var(--muted); margin: 0; }
.runs { display: grid; grid-template-columns: repeat(auto-fit, minmax(360px, 1fr)); gap: 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.card h3 { margin: 0 0 6px; font-size: 15px; display: flex; align-items: center; gap: 8px; }
.swatch { width: 12px; height: 12px; border-radius: 3px; display: inline-block; }
.badge { font-size: 12px; padding: 1px 8px; border-radius: 10px; color: #fff; background: var(--muted); }
.badge.finished { background: var(--ok); } .badge.running { background: #1570ef; } .badge.stopped, .badge.failed { background: var(--bad); }
.badge.interrupted, .badge.incomplete { background: var(--warn); }
table.facts { border-collapse: collapse; width: 100%; } table.facts td { padding: 2px 6px 2px 0; vertical-align: top; }
table.facts td:first-child { color: var(--muted); white-space: nowrap; }
code, pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; } pre { background: #fff; border: 1px solid var(--line); padding: 8px; overflow: auto; max-height: 420px; }
code.cmd { display: block; background: #fff; border: 1px solid var(--line); padding: 4px 6px; margin: 4px 0; word-break: break-all; }
.warn { color: var(--warn); } .bad { color: var(--bad); }
.controls { display: flex; gap: 18px; align-items: center; flex-wrap: wrap; margin-bottom: 8px; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 14px; }
.chart { border: 1px solid var(--line); border-radius: 8px; padding: 6px; min-width: 0; }
.chart .empty { color: var(--muted); padding: 24px; text-align: center; }
.grids { display: flex; gap: 12px; flex-wrap: wrap; } .grids figure { margin: 0; } .grids img { max-width: 100%; image-rendering: pixelated; border: 1px solid var(--line); }
.grids figcaption { color: var(--muted); font-size: 12px; }
#grid-slider { width: min(600px, 100%); }
`;
