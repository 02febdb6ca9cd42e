#!/usr/bin/env node
/**
 * Packs sadm the way it is published (napi-rs's prebuilt-binary layout) into npm tarballs:
 *   sadm-<v>.tgz                       the JS, typings and assets; no binary. Its package.json gains
 *                                      `optionalDependencies: { sadm-linux-x64-gnu: <v> }`, so npm installs the
 *                                      binary for the user's platform only, and an optional peer dependency on the
 *                                      CUDA package, so a CUDA package of another version is refused at install.
 *   sadm-linux-x64-gnu-<v>.tgz         the CPU binary (npm/linux-x64-gnu)
 *   sadm-cuda-linux-x64-gnu-<v>.tgz    the CUDA binary (npm/cuda-linux-x64-gnu), with --cuda
 *
 * Usage: node scripts/pack.js [--cuda] [--out DIR]   (default DIR: ./pack). Needs `npm run build` first (and
 * `npm run build:native:cuda` for --cuda). Prints the tarballs' paths as JSON.
 */
"use strict";
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { execFileSync } = require("node:child_process");
const { npmCommand } = require("./npm.js");

const ROOT = path.resolve(__dirname, "..");
const PLATFORM = "linux-x64-gnu";

function fail(msg) {
  process.stderr.write(`pack: ${msg}\n`);
  process.exit(1);
}

/** `npm pack` of a folder into `out`; returns the tarball's path. */
function pack(dir, out) {
  const [cmd, args] = npmCommand(["pack", "--json", "--ignore-scripts", "--pack-destination", out]);
  const res = JSON.parse(execFileSync(cmd, args, { cwd: dir, encoding: "utf8" }));
  return path.join(out, res[0].filename);
}

function readJson(file) {
  return JSON.parse(fs.readFileSync(file, "utf8"));
}

function main() {
  const args = process.argv.slice(2);
  const cuda = args.includes("--cuda");
  const outIdx = args.indexOf("--out");
  const out = path.resolve(outIdx >= 0 ? args[outIdx + 1] : path.join(ROOT, "pack"));
  fs.mkdirSync(out, { recursive: true });

  const pkg = readJson(path.join(ROOT, "package.json"));
  const binaries = [{ dir: PLATFORM, from: path.join(ROOT, "native", `sadm.${PLATFORM}.node`), build: "npm run build" }];
  if (cuda)
    binaries.push({
      dir: `cuda-${PLATFORM}`,
      from: path.join(ROOT, "native", "cuda", `sadm.${PLATFORM}.node`),
      build: "npm run build:native:cuda",
    });
  for (const f of ["dist/index.js", "dist/cli.js", "native/index.d.ts"])
    if (!fs.existsSync(path.join(ROOT, f))) fail(`${f} is missing: run \`npm run build\` first`);

  const tarballs = {};
  for (const b of binaries) {
    const dir = path.join(ROOT, "npm", b.dir);
    const sub = readJson(path.join(dir, "package.json"));
    if (sub.version !== pkg.version)
      fail(`npm/${b.dir} is at ${sub.version} but sadm is at ${pkg.version}: run \`npx napi version\` (and fix cuda-*)`);
    if (!fs.existsSync(b.from)) fail(`${path.relative(ROOT, b.from)} is missing: run \`${b.build}\` first`);
    fs.copyFileSync(b.from, path.join(dir, `sadm.${PLATFORM}.node`));
    tarballs[sub.name] = pack(dir, out);
  }

  // The main package is staged, as napi-rs's pre-publish does, so the repository's package.json (which a source
  // checkout installs with `npm ci`, before any platform package exists) stays free of these dependencies.
  const stage = fs.mkdtempSync(path.join(os.tmpdir(), "sadm-pack-"));
  try {
    for (const f of [...pkg.files, "README.md", "LICENSE"]) {
      // Globs in `files` are plain paths here; check that they stay so.
      if (/[*?]/.test(f)) fail(`package.json files entry ${f} is a glob; scripts/pack.js copies plain paths`);
      const src = path.join(ROOT, f);
      if (!fs.existsSync(src)) fail(`${f} (package.json files) is missing: run \`npm run build\` first`);
      fs.cpSync(src, path.join(stage, f), { recursive: true });
    }
    const published = { ...pkg };
    delete published.devDependencies;
    delete published.scripts;
    published.optionalDependencies = { [`sadm-${PLATFORM}`]: pkg.version };
    published.peerDependencies = { ...pkg.peerDependencies, [`sadm-cuda-${PLATFORM}`]: pkg.version };
    published.peerDependenciesMeta = { ...pkg.peerDependenciesMeta, [`sadm-cuda-${PLATFORM}`]: { optional: true } };
    fs.writeFileSync(path.join(stage, "package.json"), JSON.stringify(published, null, 2) + "\n");
    tarballs[pkg.name] = pack(stage, out);
  } finally {
    fs.rmSync(stage, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(tarballs, null, 2) + "\n");
}

main();
