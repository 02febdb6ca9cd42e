import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import {
  CheckpointError,
  checkpointDir,
  checkpointName,
  latestCheckpoint,
  listCheckpoints,
  pruneCheckpoints,
  readState,
  resolveCheckpoint,
} from "../ts/index";
import { tmpDir } from "./helpers";

function writeCheckpoint(outDir: string, step: number, state?: string): string {
  const dir = checkpointDir(outDir, step);
  fs.mkdirSync(dir, { recursive: true });
  for (const f of ["model", "ema", "discriminator", "optimizer"]) fs.writeFileSync(path.join(dir, `${f}.safetensors`), "");
  if (state !== undefined) fs.writeFileSync(path.join(dir, "state.json"), state);
  else
    fs.writeFileSync(
      path.join(dir, "state.json"),
      JSON.stringify({ formatVersion: 1, config: { seed: 0 }, step, rng: {}, extra: { data: { epoch: 0, index: 8 } } }),
    );
  return dir;
}

describe("checkpoints", () => {
  it("names directories step-<8 digits>", () => {
    expect(checkpointName(1500)).toBe("step-00001500");
    expect(checkpointDir("runs/x", 3)).toBe(path.join("runs/x", "checkpoints", "step-00000003"));
  });

  it("lists only complete checkpoints, oldest first", () => {
    const out = tmpDir();
    writeCheckpoint(out, 20);
    writeCheckpoint(out, 5);
    writeCheckpoint(out, 30, "{ torn");
    const incomplete = checkpointDir(out, 40);
    fs.mkdirSync(incomplete, { recursive: true });
    fs.mkdirSync(path.join(out, "checkpoints", "step-00000050.tmp"), { recursive: true });
    expect(listCheckpoints(out).map((c) => c.step)).toEqual([5, 20]);
    expect(latestCheckpoint(out)?.step).toBe(20);
    expect(latestCheckpoint(tmpDir())).toBeUndefined();
  });

  it("prunes to the newest K", () => {
    const out = tmpDir();
    for (const s of [1, 2, 3, 4]) writeCheckpoint(out, s);
    const removed = pruneCheckpoints(out, 2);
    expect(removed.map((d) => path.basename(d))).toEqual(["step-00000001", "step-00000002"]);
    expect(listCheckpoints(out).map((c) => c.step)).toEqual([3, 4]);
    expect(() => pruneCheckpoints(out, 0)).toThrow(CheckpointError);
  });

  it("reads state.json with typed extra", () => {
    const out = tmpDir();
    const dir = writeCheckpoint(out, 7);
    const s = readState(dir);
    expect(s.step).toBe(7);
    expect(s.formatVersion).toBe(1);
    expect(s.extra.data).toEqual({ epoch: 0, index: 8 });
  });

  it("explains missing and corrupt checkpoints", () => {
    const out = tmpDir();
    expect(() => readState(path.join(out, "nope"))).toThrow(/does not exist/);
    const torn = writeCheckpoint(out, 1, "{");
    expect(() => readState(torn)).toThrow(CheckpointError);
    expect(() => readState(torn)).toThrow(/state\.json is corrupt/);
    const noStep = writeCheckpoint(out, 2, JSON.stringify({ formatVersion: 1, config: {} }));
    expect(() => readState(noStep)).toThrow(/no valid step/);
    const dir = checkpointDir(out, 3);
    fs.mkdirSync(dir, { recursive: true });
    expect(() => readState(dir)).toThrow(/incomplete: state\.json is missing/);
  });

  it("resolves a run directory to its latest checkpoint", () => {
    const out = tmpDir();
    writeCheckpoint(out, 1);
    const latest = writeCheckpoint(out, 2);
    expect(resolveCheckpoint(out)).toBe(latest);
    expect(resolveCheckpoint(latest)).toBe(latest);
    expect(() => resolveCheckpoint(tmpDir())).toThrow(CheckpointError);
  });
});
