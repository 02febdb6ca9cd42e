import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { runCli, tmpDir } from "./helpers";
import { parseClassList, parseSet, trainInputFromArgs } from "../ts/cli";
import { ConfigError } from "../ts/index";

describe("CLI (no native addon needed)", () => {
  it("prints help for every command", () => {
    const top = runCli(["--help"]);
    expect(top.status).toBe(0);
    for (const c of ["train", "sample", "info", "presets"]) expect(top.stdout).toContain(`sadm ${c}`);
    const train = runCli(["train", "--help"]);
    expect(train.status).toBe(0);
    for (const f of ["--preset", "--steps", "--batch-size", "--lambda", "--out", "--resume", "--force", "--device", "--seed", "--config"])
      expect(train.stdout).toContain(f);
    const sample = runCli(["sample", "--help"]);
    expect(sample.status).toBe(0);
    for (const f of ["--checkpoint", "--classes", "--cfg", "--steps", "--sampler", "--out"]) expect(sample.stdout).toContain(f);
    expect(runCli(["info", "--help"]).status).toBe(0);
  });

  it("prints the version", () => {
    const r = runCli(["--version"]);
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe("0.1.0");
  });

  it("reports config errors as `error: ...` without a stack trace", () => {
    const r = runCli(["train", "--lambda", "-1", "--out", path.join(tmpDir(), "run")]);
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toBe("error: config.lambda: must be a number between 0 and 10 (got -1)");
    const bad = runCli(["train", "--set", "model.hiddenSiz=3", "--out", path.join(tmpDir(), "run")]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/^error: config\.model\.hiddenSiz: unknown key/);
    expect(bad.stderr).not.toMatch(/\n\s+at /);
  });

  it("reports a bad config file", () => {
    const dir = tmpDir();
    const f = path.join(dir, "c.json");
    fs.writeFileSync(f, "{ nope");
    const r = runCli(["train", "--config", f]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^error: --config: .*not valid JSON/);
    fs.writeFileSync(f, JSON.stringify({ steps: -5 }));
    expect(runCli(["train", "--config", f]).stderr).toMatch(/^error: config\.steps: /);
  });

  it("rejects unknown commands and flags", () => {
    const r = runCli(["trian"]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/error: /);
    expect(runCli(["train", "--lamda", "1"]).status).toBe(1);
    expect(runCli([]).status).toBe(1);
  });

  it("sample on a missing checkpoint is a clean error", () => {
    const r = runCli(["sample", "--checkpoint", path.join(tmpDir(), "none"), "--out", path.join(tmpDir(), "g.png")]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^error: checkpoint .* does not exist/);
  });

  it("lists presets", () => {
    const r = runCli(["presets"]);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain("mnist-tiny (default)");
    expect(r.stdout).toContain("DiT-XL/2");
  });
});

describe("CLI argument mapping", () => {
  it("parses class lists and --set", () => {
    expect(parseClassList("0, 1,7", "--classes")).toEqual(["0", "1", "7"]);
    expect(parseClassList("cat, 3,Food & Drink", "--classes")).toEqual(["cat", "3", "Food & Drink"]);
    expect(() => parseClassList(" , ", "--classes")).toThrow(ConfigError);
    expect(parseSet("model.depth=2")).toEqual(["model.depth", 2]);
    expect(parseSet("discriminator.kernel=gaussian")).toEqual(["discriminator.kernel", "gaussian"]);
    expect(parseSet("data.classes=[1,2]")).toEqual(["data.classes", [1, 2]]);
    expect(() => parseSet("nope")).toThrow(ConfigError);
  });

  it("lets flags override --set which overrides the config file", () => {
    const dir = tmpDir();
    const f = path.join(dir, "c.json");
    fs.writeFileSync(f, JSON.stringify({ steps: 5, lambda: 0.5, model: { depth: 3 } }));
    const input = trainInputFromArgs({ config: f, set: ["lambda=0.2", "model.hiddenSize=64"], lambda: 0.3, classes: "1,2", out: "o" });
    expect(input).toEqual({
      steps: 5,
      lambda: 0.3,
      model: { depth: 3, hiddenSize: 64 },
      data: { classes: ["1", "2"] },
      outDir: "o",
    });
  });
});
