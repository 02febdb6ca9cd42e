#!/usr/bin/env node
// Builds the run report's browser side into dist/report/: the page script (tsconfig.page.json, DOM types) and
// uPlot with its stylesheet, copied from the uplot package, so the package needs neither at run time.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { execFileSync } = require("node:child_process");

const root = path.resolve(__dirname, "..");
const out = path.join(root, "dist", "report");
const build = path.join(out, ".page-build");
fs.rmSync(build, { recursive: true, force: true });
execFileSync(process.execPath, [path.join(root, "node_modules", "typescript", "bin", "tsc"), "-p", path.join(root, "tsconfig.page.json")], { stdio: "inherit" });
fs.mkdirSync(path.join(out, "page"), { recursive: true });
fs.copyFileSync(path.join(build, "page", "page.js"), path.join(out, "page", "page.js"));
fs.rmSync(build, { recursive: true, force: true });
const uplot = path.dirname(require.resolve("uplot/package.json", { paths: [root] }));
fs.mkdirSync(path.join(out, "vendor"), { recursive: true });
for (const f of ["uPlot.iife.min.js", "uPlot.min.css"]) fs.copyFileSync(path.join(uplot, "dist", f), path.join(out, "vendor", f));
fs.copyFileSync(path.join(uplot, "LICENSE"), path.join(out, "vendor", "uPlot-LICENSE"));
