/**
 * The published layout, installed as a user gets it: `scripts/pack.js` packs sadm and its platform package into
 * tarballs, npm installs them into an empty directory with a PATH that has node but no cargo or rustc, and sadm runs
 * from there (help, info, a few training steps, a sample grid, the typed API). Then the ways the binary can be missing
 * or wrong, each with the error that says what to install.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { execFileSync, spawnSync } from "node:child_process";
import { beforeAll, describe, expect, it } from "vitest";
import { PNG } from "pngjs";
import { ROOT, runNodeAsync, tmpDir, type CliResult } from "./helpers";
import { explainLoadFailure, explainMissingCpuBinary } from "../ts/native";
import { resolveConfig } from "../ts/config";

const VERSION = (JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8")) as { version: string }).version;
const PLATFORM = "linux-x64-gnu";

/** npm's own script, run with this node (npm_execpath under `npm test`, else the npm on PATH). */
function npmCli(): string {
  const env = process.env.npm_execpath;
  if (env && /npm-cli\.js$/.test(env)) return env;
  const found = spawnSync("sh", ["-c", "command -v npm"], { encoding: "utf8" }).stdout.trim();
  return fs.realpathSync(found);
}

/**
 * A PATH with node on it and no Rust toolchain: a folder holding only a `node` link, plus the system folders that
 * have neither cargo nor rustc.
 */
function toolchainFreePath(): string {
  const bin = tmpDir("sadm-bin-");
  fs.symlinkSync(process.execPath, path.join(bin, "node"));
  const system = ["/usr/bin", "/bin"].filter(
    (d) => fs.existsSync(d) && !fs.existsSync(path.join(d, "cargo")) && !fs.existsSync(path.join(d, "rustc")),
  );
  return [bin, ...system].join(":");
}

const tarball = (t: Record<string, string>, name: string): string => {
  const f = t[name];
  if (!f) throw new Error(`scripts/pack.js wrote no tarball for ${name}`);
  return f;
};

/** An RGB PNG (pngjs, the tests' own encoder) of HWC bytes. */
function encodePng(rgb: Buffer, width: number, height: number): Buffer {
  const png = new PNG({ width, height, colorType: 2 });
  for (let i = 0; i < width * height; i++) {
    png.data.set(rgb.subarray(i * 3, i * 3 + 3), i * 4);
    png.data[i * 4 + 3] = 255;
  }
  return PNG.sync.write(png, { colorType: 2 });
}

const tarList = (file: string): string[] => execFileSync("tar", ["tzf", file], { encoding: "utf8" }).split("\n");

describe("the npm packages, installed without a toolchain (Linux x64)", () => {
  let tarballs: Record<string, string>;
  let PATH: string;
  const env = (): NodeJS.ProcessEnv => ({ HOME: process.env.HOME, PATH, TMPDIR: process.env.TMPDIR });

  /** Installs tarballs into a fresh empty project with npm, under the toolchain-free PATH. */
  async function install(files: string[], extra: string[] = []): Promise<string> {
    const dir = tmpDir("sadm-install-");
    fs.writeFileSync(path.join(dir, "package.json"), JSON.stringify({ name: "app", private: true }));
    const r = await runNodeAsync(
      [npmCli(), "install", "--no-audit", "--no-fund", "--prefer-offline", ...extra, ...files],
      { cwd: dir, env: env(), onlyEnv: true, timeoutMs: 300_000 },
    );
    expect(r.status, r.stderr).toBe(0);
    return dir;
  }

  const sadm = (dir: string, args: string[], timeoutMs = 120_000): Promise<CliResult> =>
    runNodeAsync([path.join(dir, "node_modules", "sadm", "dist", "cli.js"), ...args], {
      cwd: dir,
      env: env(),
      onlyEnv: true,
      timeoutMs,
    });

  beforeAll(() => {
    PATH = toolchainFreePath();
    const out = tmpDir("sadm-pack-");
    const json = execFileSync(process.execPath, [path.join(ROOT, "scripts", "pack.js"), "--out", out], {
      cwd: ROOT,
      encoding: "utf8",
    });
    tarballs = JSON.parse(json) as Record<string, string>;
  });

  it("the PATH the installs run under has node and no cargo or rustc", () => {
    const r = spawnSync("sh", ["-c", "command -v node && ! command -v cargo && ! command -v rustc"], {
      env: env(),
      encoding: "utf8",
    });
    expect(r.status, r.stdout).toBe(0);
  });

  it("packs the JS without a binary, and the binary in its platform package", () => {
    const main = tarList(tarball(tarballs, "sadm"));
    expect(main).toContain("package/dist/cli.js");
    expect(main).toContain("package/native/index.d.ts");
    expect(main).toContain("package/LICENSE");
    expect(main.filter((f) => f.endsWith(".node"))).toEqual([]);
    const manifest = JSON.parse(
      execFileSync("tar", ["xzOf", tarball(tarballs, "sadm"), "package/package.json"], { encoding: "utf8" }),
    ) as Record<string, unknown>;
    expect(manifest.optionalDependencies).toEqual({ [`sadm-${PLATFORM}`]: VERSION });
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8")) as { peerDependencies: Record<string, string> };
    expect(manifest.peerDependencies).toEqual({ ...pkg.peerDependencies, [`sadm-cuda-${PLATFORM}`]: VERSION });
    expect(pkg.peerDependencies["emoji-datasource-google"]).toMatch(/^\^16\./);
    expect(manifest.scripts).toBeUndefined();
    expect(tarList(tarball(tarballs, `sadm-${PLATFORM}`))).toContain(`package/sadm.${PLATFORM}.node`);
  });

  it("the prebuilt binary needs no glibc newer than 2.17 (scripts/build-native.js links against its sysroot)", () => {
    // The versions a binary needs are strings in its dynamic string table.
    const bytes = execFileSync("tar", ["xzOf", tarball(tarballs, `sadm-${PLATFORM}`), `package/sadm.${PLATFORM}.node`], {
      maxBuffer: 1 << 28,
    });
    const needed = [...bytes.toString("latin1").matchAll(/GLIBC_2\.(\d+)/g)].map((m) => Number(m[1]));
    expect(needed.length).toBeGreaterThan(0);
    expect(Math.max(...needed)).toBeLessThanOrEqual(17);
  });

  it("installs and trains: --help, info, three training steps, a sample grid, the typed API", { timeout: 600_000 }, async () => {
    const dir = await install([tarball(tarballs, "sadm"), tarball(tarballs, `sadm-${PLATFORM}`)]);
    // The `sadm` command as npm links it (its shebang finds node on PATH).
    const help = spawnSync(path.join(dir, "node_modules", ".bin", "sadm"), ["--help"], {
      cwd: dir,
      env: env(),
      encoding: "utf8",
      timeout: 60_000,
    });
    expect(help.status, help.stderr).toBe(0);
    expect(help.stdout).toContain("sadm train");

    const info = await sadm(dir, ["info", "--json"]);
    expect(info.status, info.stderr).toBe(0);
    const report = JSON.parse(info.stdout) as { version: string; cpu: { binary: string }; cuda: { error?: string } };
    expect(report.version).toBe(VERSION);
    expect(report.cpu.binary).toContain(path.join(dir, "node_modules", `sadm-${PLATFORM}`, `sadm.${PLATFORM}.node`));
    expect(report.cuda.error).toContain(`npm install sadm-cuda-${PLATFORM}@${VERSION}`);

    const train = await sadm(dir, ["train", "--steps", "3", "--limit", "128", "--eval-every", "0", "--out", "run", "-q"], 300_000);
    expect(train.status, train.stderr).toBe(0);
    expect(fs.existsSync(path.join(dir, "run", "checkpoints", "step-00000003", "state.json"))).toBe(true);
    // The run report, with the uPlot and page script the package carries (dist/report/).
    const html = fs.readFileSync(path.join(dir, "run", "report.html"), "utf8");
    expect(html).toContain('id="sadm-data"');
    expect(html).toContain("var uPlot");
    const again = await sadm(dir, ["report", "run", "--out", "again.html"], 60_000);
    expect(again.status, again.stderr).toBe(0);

    const grid = await sadm(dir, ["sample", "--checkpoint", "run", "--classes", "0,1", "--per-class", "2", "--steps", "5", "--out", "g.png"]);
    expect(grid.status, grid.stderr).toBe(0);
    expect(fs.readFileSync(path.join(dir, "g.png")).subarray(1, 4).toString()).toBe("PNG");

    // Your own images: sharp decodes them from its prebuilt package (installed with sadm, no toolchain either).
    const images = path.join(dir, "images");
    for (const [k, colour] of [["red", [220, 30, 30]], ["blue", [30, 30, 220]]] as const) {
      fs.mkdirSync(path.join(images, k), { recursive: true });
      for (let i = 0; i < 8; i++) {
        const px = Buffer.alloc(20 * 14 * 3);
        for (let j = 0; j < 20 * 14; j++) px.set([colour[0], colour[1] + 10 * i, colour[2]], j * 3);
        fs.writeFileSync(path.join(images, k, `${i}.png`), encodePng(px, 20, 14));
      }
    }
    const folder = await sadm(
      dir,
      ["train", "--data", "images", "--resolution", "8", "--steps", "2", "--batch-size", "8", "--set", "model.patchSize=2",
        "--set", "discriminator.patchSize=2", "--out", "run-folder", "-q"],
      300_000,
    );
    expect(folder.status, folder.stderr).toBe(0);
    const state = JSON.parse(fs.readFileSync(path.join(dir, "run-folder", "checkpoints", "step-00000002", "state.json"), "utf8")) as {
      extra: { dataset: { classNames: string[]; images: number } };
    };
    expect(state.extra.dataset).toMatchObject({ classNames: ["blue", "red"], images: 16 });
    // The emoji set is an optional package: missing, it is named with the command that installs it.
    const emoji = await sadm(dir, ["train", "--data", "emoji", "--steps", "1", "--out", "run-emoji"]);
    expect(emoji.status).toBe(1);
    expect(emoji.stderr).toMatch(/^error: the emoji data set is an optional package that is not installed: npm install emoji-datasource-google@16\n$/);

    // A TypeScript user's view: the published typings compile against a script that uses the API, and it runs.
    fs.writeFileSync(
      path.join(dir, "use.ts"),
      'import { resolveConfig, version, type SadmConfig } from "sadm";\n' +
        'const cfg: SadmConfig = resolveConfig({ preset: "mnist-tiny", steps: 7 });\n' +
        "console.log(version(), cfg.steps, cfg.model.hiddenSize);\n",
    );
    const tsc = path.join(ROOT, "node_modules", "typescript", "bin", "tsc");
    const compiled = await runNodeAsync(
      [tsc, "--strict", "--esModuleInterop", "--module", "commonjs", "--target", "es2022", "--moduleResolution", "node", "--types", "node",
        "--typeRoots", path.join(ROOT, "node_modules", "@types"), "use.ts"],
      { cwd: dir, env: env(), onlyEnv: true },
    );
    expect(compiled.status, compiled.stdout + compiled.stderr).toBe(0);
    const ran = await runNodeAsync(["use.js"], { cwd: dir, env: env(), onlyEnv: true });
    expect(ran.status, ran.stderr).toBe(0);
    expect(ran.stdout.trim()).toBe(`${VERSION} 7 ${resolveConfig({ preset: "mnist-tiny" }).model.hiddenSize}`);

    // A platform package of another version is refused by name, not loaded.
    const sub = path.join(dir, "node_modules", `sadm-${PLATFORM}`, "package.json");
    const meta = JSON.parse(fs.readFileSync(sub, "utf8")) as { version: string };
    fs.writeFileSync(sub, JSON.stringify({ ...meta, version: "0.0.1" }));
    const old = await sadm(dir, ["train", "--steps", "1", "--out", "run2"]);
    expect(old.status).toBe(1);
    expect(old.stderr).toContain(`sadm ${VERSION} found the native binary package sadm-${PLATFORM} 0.0.1`);
    expect(old.stderr).toContain(`npm install sadm-${PLATFORM}@${VERSION}`);
  });

  it("without the platform package (--omit=optional): --help works, training says what to install", { timeout: 300_000 }, async () => {
    const dir = await install([tarball(tarballs, "sadm")], ["--omit=optional"]);
    expect(fs.existsSync(path.join(dir, "node_modules", `sadm-${PLATFORM}`))).toBe(false);
    const help = await sadm(dir, ["--help"]);
    expect(help.status, help.stderr).toBe(0);
    const r = await sadm(dir, ["train", "--steps", "1"]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^error: sadm's native binary for ${PLATFORM} is not installed`));
    expect(r.stderr).toContain(`npm install sadm-${PLATFORM}@${VERSION}`);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    // `sadm info` still reports, and fails.
    const info = await sadm(dir, ["info"]);
    expect(info.status).toBe(1);
    expect(info.stdout).toContain(`sadm ${VERSION}\ncpu:      not available: sadm's native binary for ${PLATFORM} is not installed`);
  });
});

describe("explaining a missing or unloadable binary", () => {
  it("names the platform package and the exact version to install", () => {
    const msg = explainMissingCpuBinary("linux-x64-gnu", "1.2.3");
    expect(msg).toContain("the package sadm-linux-x64-gnu, an optional dependency");
    expect(msg).toContain("--omit=optional");
    expect(msg).toContain("npm install sadm-linux-x64-gnu@1.2.3");
  });

  it("says when no prebuilt binary exists for the platform or its libc", () => {
    expect(explainMissingCpuBinary("darwin-arm64", "1.2.3")).toMatch(
      /^sadm has no prebuilt native binary for darwin-arm64; prebuilt: linux-x64-gnu\.\n {2}build it from source/,
    );
    expect(explainMissingCpuBinary("linux-x64-musl", "1.2.3")).toContain(
      "for linux-x64-musl (this Linux runs on musl libc; the prebuilt binary needs glibc)",
    );
  });

  it("says which glibc a binary needs when the system's is too old", () => {
    const msg = explainLoadFailure(
      "/x/sadm.linux-x64-gnu.node",
      "/lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.17' not found (required by /x/sadm.linux-x64-gnu.node)",
    );
    expect(msg).toMatch(/cannot load: .*GLIBC_2\.17.*\n {2}it needs glibc 2\.17 or newer, and this system has /);
  });
});
