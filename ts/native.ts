/**
 * Finds and loads the native addon lazily, so that the pure-TS parts of sadm (config, data, CLI help) work without
 * it. It follows napi-rs's layout (a local build in `native/`, else the platform package `sadm-<platform>` from
 * `optionalDependencies`; the CUDA build in the optional package `sadm-cuda-<platform>`), and turns every way that
 * can fail into a {@link NativeError} that says what is missing and how to get it. The typings come from napi-rs's
 * generated `native/index.d.ts`.
 */
import type * as Native from "../native/index.js";
import * as fs from "node:fs";
import * as path from "node:path";
import { NativeError, errorMessage } from "./errors.js";
import { version } from "./version.js";

/** The addon's module type. */
export type NativeModule = typeof Native;
export type {
  StepOptions,
  StepStats,
  SampleOptions,
  SampleProgress,
  BuildInfo,
  ParamCounts,
  NativeTrainer,
  NativeModel,
  NativeExtractor,
  NativeVae,
  Extracted,
  FeatureMetrics,
  ClassifierTraining,
} from "../native/index.js";

/** Which native build a device needs: the default CPU binary, or the CUDA binary (a separate, optional build). */
export type Backend = "cpu" | "cuda";

/** The backend a device name (`cpu`, `cuda`, `cuda:N`) runs on. */
export function backendOf(device: string): Backend {
  return device.trim().startsWith("cuda") ? "cuda" : "cpu";
}

const cached = new Map<Backend, NativeModule>();
let override: NativeModule | undefined;

/** The folder holding the generated typings and, in a source checkout, the locally built binaries. */
function nativeDir(): string {
  return path.join(__dirname, "..", "native");
}

/** The platforms sadm publishes a prebuilt CPU binary for (napi-rs's names; package.json's `napi.targets`). */
export const PREBUILT_PLATFORMS: readonly string[] = ["linux-x64-gnu"];
/** The platforms sadm publishes a CUDA binary for. */
export const CUDA_PLATFORMS: readonly string[] = ["linux-x64-gnu"];

type Libc = { kind: "gnu"; version?: string } | { kind: "musl" };
let libc: Libc | undefined;

/** The C library a Linux process runs on: glibc's version from the process report, else musl if it is loaded. */
function linuxLibc(): Libc {
  if (libc) return libc;
  // The report would otherwise look up the host's network interfaces.
  if (process.report) (process.report as { excludeNetwork?: boolean }).excludeNetwork = true;
  const report = process.report?.getReport() as
    | { header?: { glibcVersionRuntime?: string }; sharedObjects?: string[] }
    | undefined;
  const glibc = report?.header?.glibcVersionRuntime;
  if (glibc) libc = { kind: "gnu", version: glibc };
  else if (report?.sharedObjects?.some((f) => f.includes("musl"))) libc = { kind: "musl" };
  else libc = { kind: "gnu" };
  return libc;
}

/** napi-rs's name for this process's platform: `linux-x64-gnu`, `linux-x64-musl`, `darwin-arm64`, `win32-x64-msvc`. */
export function napiPlatform(): string {
  const { platform, arch } = process;
  if (platform === "linux") return `linux-${arch}-${linuxLibc().kind}`;
  if (platform === "win32") return `win32-${arch}-msvc`;
  return `${platform}-${arch}`;
}

/** A package's version, or undefined if it is not installed. */
function installedVersion(pkg: string): string | undefined {
  try {
    const v: unknown = (require(`${pkg}/package.json`) as { version?: unknown }).version;
    return typeof v === "string" ? v : undefined;
  } catch {
    return undefined;
  }
}

/** The `.node` file of an installed package, or undefined if it is not installed. */
function packageBinary(pkg: string, platform: string): string | undefined {
  try {
    return require.resolve(`${pkg}/sadm.${platform}.node`);
  } catch {
    return undefined;
  }
}

/**
 * A binary from a platform package must be built from the same sadm version as the JS around it: the two talk
 * through an unchecked JSON and typed-array protocol.
 */
function checkPackageVersion(pkg: string, file: string): void {
  const want = version();
  const got = installedVersion(pkg);
  if (got !== undefined && got !== want && want !== "0.0.0")
    throw new NativeError(
      `sadm ${want} found the native binary package ${pkg} ${got} (${file}); the two versions must match:\n` +
        `  npm install ${pkg}@${want}`,
    );
}

/**
 * Where the CPU binary comes from, in order: `$NAPI_RS_NATIVE_LIBRARY_PATH`, the local build in `native/` (a source
 * checkout: `npm run build`), then the platform package `sadm-<platform>` (an npm install, through
 * `optionalDependencies`). Undefined when none is there.
 */
export function cpuBinary(): { file: string; source: string; pkg?: string } | undefined {
  const env = process.env.NAPI_RS_NATIVE_LIBRARY_PATH;
  if (env) return { file: path.resolve(env), source: "NAPI_RS_NATIVE_LIBRARY_PATH" };
  const platform = napiPlatform();
  const local = path.join(nativeDir(), `sadm.${platform}.node`);
  if (fs.existsSync(local)) return { file: local, source: "local build" };
  const pkg = `sadm-${platform}`;
  const file = packageBinary(pkg, platform);
  return file ? { file, source: `package ${pkg}`, pkg } : undefined;
}

/** Why no CPU binary was found, and what to do: another platform, another libc, or a skipped optional package. */
export function explainMissingCpuBinary(platform: string, sadmVersion: string): string {
  const build =
    "build it from source in a clone of sadm with `npm install` (needs a Rust toolchain) and point " +
    "NAPI_RS_NATIVE_LIBRARY_PATH at the .node file it writes";
  if (!PREBUILT_PLATFORMS.includes(platform)) {
    const libc = platform.endsWith("-musl") ? " (this Linux runs on musl libc; the prebuilt binary needs glibc)" : "";
    return (
      `sadm has no prebuilt native binary for ${platform}${libc}; prebuilt: ${PREBUILT_PLATFORMS.join(", ")}.\n` +
      `  ${build}`
    );
  }
  const pkg = `sadm-${platform}`;
  return (
    `sadm's native binary for ${platform} is not installed: it comes in the package ${pkg}, an optional ` +
    "dependency, which npm skips under --omit=optional (or --no-optional), or when the lockfile was made on " +
    "another platform.\n" +
    `  install it: npm install ${pkg}@${sadmVersion}; or ${build}`
  );
}

/**
 * Turns the dynamic loader's message for a binary that exists but cannot load into what is wrong: a C library
 * too old for it, or a file that is not a binary for this machine. Exported for tests.
 */
export function explainLoadFailure(file: string, message: string, what = "native binary"): string {
  const first = message.split("\n")[0] ?? message;
  const glibc = /version [`'"]GLIBC_([\d.]+)[`'"] not found/.exec(first)?.[1];
  const sys = process.platform === "linux" ? linuxLibc() : undefined;
  const advice = glibc
    ? `it needs glibc ${glibc} or newer, and this system has ` +
      `${sys?.kind === "gnu" && sys.version ? `glibc ${sys.version}` : "an older one"}: it was built on a newer ` +
      "system; sadm's prebuilt binaries need only glibc 2.17 (reinstall the platform package), or rebuild it here " +
      "with `npm run build`"
    : "it is not a sadm binary for this machine: reinstall sadm (or rebuild it with `npm run build`)";
  return `the sadm ${what} ${file} cannot load: ${first}\n  ${advice}`;
}

function loadCpu(): NativeModule {
  const found = cpuBinary();
  if (!found) throw new NativeError(explainMissingCpuBinary(napiPlatform(), version()));
  if (found.pkg) checkPackageVersion(found.pkg, found.file);
  try {
    return require(found.file) as NativeModule;
  } catch (e) {
    throw new NativeError(explainLoadFailure(found.file, errorMessage(e)), { cause: e });
  }
}

/** napi-rs's platform suffix if sadm has a CUDA build for it. */
function cudaPlatform(): string | undefined {
  const platform = napiPlatform();
  return CUDA_PLATFORMS.includes(platform) ? platform : undefined;
}

/**
 * Where sadm looks for the CUDA binary, in order: `$SADM_CUDA_BINARY`, the local build (`npm run
 * build:native:cuda` writes `native/cuda/`), then the optional package `sadm-cuda-<platform>`.
 */
export function cudaBinaryCandidates(): string[] {
  const env = process.env.SADM_CUDA_BINARY;
  if (env) return [path.resolve(env)];
  const platform = cudaPlatform();
  if (!platform) return [];
  const out = [path.join(nativeDir(), "cuda", `sadm.${platform}.node`)];
  const pkg = packageBinary(`sadm-cuda-${platform}`, platform);
  if (pkg) out.push(pkg);
  return out;
}

/**
 * Turns the dynamic loader's message for a CUDA binary that exists but cannot load into what is missing and how
 * to get it. Exported for tests.
 */
export function explainCudaLoadFailure(file: string, message: string): string {
  const first = message.split("\n")[0] ?? message;
  const lib = /(lib[\w.+-]+\.so[\d.]*)/.exec(first)?.[1];
  if (lib?.startsWith("libcuda.so"))
    return (
      `the sadm CUDA binary ${file} cannot load: ${first}\n  the NVIDIA driver library libcuda.so.1 is not ` +
      "installed (or not on the library path): this machine has no usable NVIDIA driver; install the driver, or " +
      'use device "cpu"'
    );
  if (lib && /^lib(cublas|cublasLt|curand|nvrtc)\.so/.test(lib))
    return (
      `the sadm CUDA binary ${file} cannot load: ${first}\n  the CUDA 13 library ${lib} is not installed (or not ` +
      "on LD_LIBRARY_PATH): install the CUDA 13 toolkit, or `pip install nvidia-cublas nvidia-curand` and add " +
      "their lib folders to LD_LIBRARY_PATH"
    );
  if (/GLIBC_[\d.]+/.test(first)) return explainLoadFailure(file, message, "CUDA binary");
  return (
    `the sadm CUDA binary ${file} cannot load: ${first}\n  it is not a loadable sadm CUDA build for this ` +
    "machine; rebuild it with `npm run build:native:cuda`"
  );
}

function loadCuda(): NativeModule {
  const candidates = cudaBinaryCandidates();
  const file = candidates.find((f) => fs.existsSync(f));
  if (!file) {
    const platform = cudaPlatform();
    throw new NativeError(
      platform
        ? "a cuda device needs sadm's CUDA build, which is not installed" +
            (candidates.length > 0 ? ` (looked for ${candidates.join(", ")})` : "") +
            `:\n  install the optional package: npm install sadm-cuda-${platform}@${version()}; or, in a source ` +
            "checkout, build it with `npm run build:native:cuda` (needs the CUDA toolkit); or set SADM_CUDA_BINARY " +
            'to its .node file; or use device "cpu"'
        : `sadm's CUDA build exists for ${CUDA_PLATFORMS.join(", ")} only (this is ${napiPlatform()}); ` +
            'use device "cpu"',
    );
  }
  const platform = cudaPlatform();
  if (platform && file === packageBinary(`sadm-cuda-${platform}`, platform))
    checkPackageVersion(`sadm-cuda-${platform}`, file);
  try {
    return require(file) as NativeModule;
  } catch (e) {
    throw new NativeError(explainCudaLoadFailure(file, errorMessage(e)), { cause: e });
  }
}

/**
 * Returns the native addon for `device`'s backend, loading it on first use: the CPU binary for `"cpu"`, the
 * CUDA binary for `"cuda:N"`. Both can be loaded in one process.
 * @throws NativeError when the binary is missing or cannot load, with what to install.
 */
export function loadNative(device = "cpu"): NativeModule {
  if (override) return override;
  const backend = backendOf(device);
  const hit = cached.get(backend);
  if (hit) return hit;
  const mod = backend === "cuda" ? loadCuda() : loadCpu();
  cached.set(backend, mod);
  return mod;
}

/**
 * Replaces the addon with another implementation of the same API (tests use an in-process fake);
 * pass `undefined` to restore the real one.
 */
export function setNativeModule(mod: NativeModule | undefined): void {
  override = mod;
}
