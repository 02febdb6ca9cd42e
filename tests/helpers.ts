/** Shared test helpers. */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawn, spawnSync } from "node:child_process";
import type { SadmConfigInput } from "../ts/index";
import { cpuBinary } from "../ts/native";

/** The smallest networks and data the real core trains in a blink: the e2e tests' base config. */
export const TINY_NETS: SadmConfigInput = {
  model: { hiddenSize: 32, depth: 1, numHeads: 2 },
  discriminator: { width: 32, depth: 1, numHeads: 2, projDim: 16 },
  data: { name: "mnist", limit: 64 },
  batchSize: 8,
};

/** Repository root. */
export const ROOT = path.resolve(__dirname, "..");
/** The compiled CLI. */
export const CLI = path.join(ROOT, "dist", "cli.js");

/** A fresh temporary directory. */
export function tmpDir(prefix = "sadm-test-"): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Result of a CLI run. */
export interface CliResult {
  status: number;
  stdout: string;
  stderr: string;
}

/** Runs `node dist/cli.js ...args` synchronously. */
export function runCli(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): CliResult {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    cwd: opts.cwd ?? ROOT,
    env: { ...process.env, ...opts.env },
    encoding: "utf8",
    timeout: opts.timeoutMs ?? 120_000,
  });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** True when the CPU binary is there (built by `npm run build`, or an installed platform package). */
export function nativeBuilt(): boolean {
  return cpuBinary() !== undefined;
}

/**
 * Runs `node ...args` without blocking the test worker (a long synchronous spawn would starve vitest's worker RPC,
 * which times out after a minute). The child gets this process's environment plus `opts.env`, or with `onlyEnv`
 * nothing but `opts.env`. `runAs: "nobody"` runs it as that unprivileged user (util-linux's setpriv) when this
 * process is root, for tests of permission errors, which root never gets; a user who is not root gets them anyway.
 */
export function runNodeAsync(
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number; onlyEnv?: boolean; runAs?: "nobody" } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const env = opts.onlyEnv ? opts.env : { ...process.env, ...opts.env };
    const [cmd, argv] = opts.runAs && process.getuid?.() === 0
      ? ["setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", process.execPath, ...args]]
      : [process.execPath, args];
    const child = spawn(cmd, argv, { cwd: opts.cwd ?? ROOT, env });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 120_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ status: code ?? -1, stdout, stderr });
    });
  });
}

/** `node dist/cli.js ...args`, asynchronously (see {@link runNodeAsync}). */
export function runCliAsync(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<CliResult> {
  return runNodeAsync([CLI, ...args], opts);
}
