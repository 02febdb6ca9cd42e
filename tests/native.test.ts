import * as fs from "node:fs";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { runCli, tmpDir } from "./helpers";
import { NativeError } from "../ts/index";
import { backendOf, cudaBinaryCandidates, explainCudaLoadFailure, loadNative } from "../ts/native";

describe("native binary selection", () => {
  const saved = process.env.SADM_CUDA_BINARY;
  afterEach(() => {
    if (saved === undefined) delete process.env.SADM_CUDA_BINARY;
    else process.env.SADM_CUDA_BINARY = saved;
  });

  it("maps devices to backends", () => {
    expect(backendOf("cpu")).toBe("cpu");
    expect(backendOf("cuda")).toBe("cuda");
    expect(backendOf("cuda:1")).toBe("cuda");
  });

  it("looks for the CUDA build in SADM_CUDA_BINARY, else next to the CPU loader and in the optional package", () => {
    process.env.SADM_CUDA_BINARY = "some/where.node";
    expect(cudaBinaryCandidates()).toEqual([path.resolve("some/where.node")]);
    delete process.env.SADM_CUDA_BINARY;
    const c = cudaBinaryCandidates();
    expect(c[0]).toBe(path.resolve(__dirname, "..", "native", "cuda", "sadm.linux-x64-gnu.node"));
  });

  it("a missing CUDA build is a NativeError that says what to install", () => {
    const missing = path.join(tmpDir(), "nothing.node");
    process.env.SADM_CUDA_BINARY = missing;
    let err: unknown;
    try {
      loadNative("cuda:0");
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NativeError);
    const msg = (err as Error).message;
    expect(msg).toContain("needs sadm's CUDA build, which is not installed");
    expect(msg).toContain(missing);
    expect(msg).toContain("npm run build:native:cuda");
  });

  it("a CUDA build that cannot load is explained (not a raw dlopen error)", () => {
    const bogus = path.join(tmpDir(), "bogus.node");
    fs.writeFileSync(bogus, "not an ELF file");
    process.env.SADM_CUDA_BINARY = bogus;
    expect(() => loadNative("cuda:0")).toThrow(/sadm CUDA binary .*bogus\.node cannot load: .*\n {2}it is not a loadable sadm CUDA build/);
  });

  it("names the missing driver or CUDA library", () => {
    const f = "/x/sadm.linux-x64-gnu.node";
    const driver = explainCudaLoadFailure(f, "libcuda.so.1: cannot open shared object file: No such file or directory");
    expect(driver).toContain("NVIDIA driver library libcuda.so.1 is not installed");
    const blas = explainCudaLoadFailure(f, "libcublas.so.13: cannot open shared object file: No such file or directory");
    expect(blas).toContain("the CUDA 13 library libcublas.so.13 is not installed");
    expect(blas).toContain("pip install nvidia-cublas");
    const lt = explainCudaLoadFailure(f, "libcublasLt.so.13: cannot open shared object file");
    expect(lt).toContain("libcublasLt.so.13");
  });

  it("`sadm train --device cuda:0` without the CUDA build fails with that error, not a crash", () => {
    const out = path.join(tmpDir(), "run");
    const r = runCli(["train", "--device", "cuda:0", "--steps", "1", "--out", out], {
      env: { SADM_CUDA_BINARY: path.join(tmpDir(), "absent.node") },
    });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^error: a cuda device needs sadm's CUDA build, which is not installed/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(fs.existsSync(path.join(out, "checkpoints"))).toBe(false);
  });
});
