#!/usr/bin/env node
/**
 * Lays out the emoji of the `emoji-datasource-google` package (a dev dependency; Google's Noto emoji, Apache-2.0) as
 * an image folder with one sub-folder per category, the layout users give `sadm train --data DIR`. The tests train
 * from it, so the folder loader is tested on a real, labelled image set that nobody here made.
 *
 *   node scripts/emoji-folder.js OUT_DIR [--limit N]    (after `npm run build:ts`)
 */
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { scanEmoji } = require("../dist/data/emoji.js");

function main() {
  const [out, ...rest] = process.argv.slice(2);
  if (!out) throw new Error("usage: node scripts/emoji-folder.js OUT_DIR [--limit N]");
  const at = rest.indexOf("--limit");
  const limit = at >= 0 ? Number(rest[at + 1]) : Infinity;
  const scan = scanEmoji();
  const perClass = new Map();
  for (const f of scan.files) {
    const n = perClass.get(f.label) ?? 0;
    if (n >= limit) continue;
    perClass.set(f.label, n + 1);
    const dir = path.join(out, scan.classNames[f.label]);
    fs.mkdirSync(dir, { recursive: true });
    fs.copyFileSync(f.abs, path.join(dir, f.rel));
  }
  process.stdout.write(`${[...perClass.values()].reduce((a, b) => a + b, 0)} emoji in ${perClass.size} class folders → ${out}\n`);
}

main();
