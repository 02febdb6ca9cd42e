/**
 * The experiment pipeline end to end in its quick mode (tiny model, a few steps): every arm runs through the real
 * CLI and addon, and the report, JSON and plot come out. The numbers are meaningless at this size; the structure is
 * what is checked.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { PNG } from "pngjs";
import { ROOT, runNodeAsync, tmpDir } from "./helpers";

interface Results {
  results: Array<{ id: string; group: string; seed: number; curve: Array<{ step: number; fd: number }>; command: string }>;
}

describe("npm run experiment -- --quick", () => {
  it("runs every arm, resumes without rerunning, and writes the table, JSON and plot", async () => {
    const dir = tmpDir();
    const args = [
      path.join(ROOT, "dist-experiments", "experiments", "sadm-vs-dit.js"),
      "--quick", "--seeds", "0,1", "--runs", path.join(dir, "runs"), "--out", path.join(dir, "out"),
    ];
    const r = await runNodeAsync(args, { timeoutMs: 600_000 });
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const res = JSON.parse(fs.readFileSync(path.join(dir, "out", "results.json"), "utf8")) as Results;
    // 1 pre-training + per seed (λ = 0, 2 λ × 2 modes, 2 fine-tunings) + 4 sweep variants.
    expect(res.results).toHaveLength(1 + 2 * 7 + 4);
    const byId = new Map(res.results.map((x) => [x.id, x]));
    // Evaluations every 2 steps; a second stage shares the λ = 0 run's first 6 steps (identical FD there).
    expect(byId.get("dit-s0")?.curve.map((p) => p.step)).toEqual([2, 4, 6, 8]);
    const stage2 = byId.get("sadm-stage2-0.1-s0");
    expect(stage2?.curve.map((p) => p.step)).toEqual([2, 4, 6, 8]);
    expect(stage2?.curve.slice(0, 3)).toEqual(byId.get("dit-s0")?.curve.slice(0, 3));
    expect(stage2?.command).toMatch(/^sadm train --resume .*step-00000006 /);
    expect(byId.get("ft-sadm-0.1-s1")?.command).toMatch(/^sadm finetune --from .*pretrain-0-4 /);
    for (const x of res.results) for (const p of x.curve) expect(Number.isFinite(p.fd)).toBe(true);
    const md = fs.readFileSync(path.join(dir, "out", "results.md"), "utf8");
    expect(md).toContain("| DiT (λ = 0) | 0, 1 |");
    expect(md).toContain("| SADM second stage, λ = 0.1 | 0, 1 |");
    expect(md).toContain("| fine-tune on 5–9 with SADM, λ = 0.1 | 0, 1 |");
    // Every run's report, and the λ = 0 against SADM overlays, are linked and there.
    const links = [...md.matchAll(/\[([^\]]+)\]\(([^)]+\.html)\)/g)].map((m) => m[2]);
    expect(links.filter((l) => l.endsWith("/report.html"))).toHaveLength(res.results.length);
    expect(links).toContain("../runs/compare-scratch-seed-0.html");
    for (const l of links) expect(fs.existsSync(path.join(dir, "out", l)), l).toBe(true);
    const png = PNG.sync.read(fs.readFileSync(path.join(dir, "out", "fd-over-steps.png")));
    expect(png.width).toBe(1120);
    // Finished runs are not run again.
    const again = await runNodeAsync(args, { timeoutMs: 600_000 });
    expect(again.status).toBe(0);
    expect(again.stdout).not.toContain("start ");
  }, 600_000);
});

interface StudyResults {
  results: Array<{ id: string; group: string; cpu?: string; final?: { fd: number }; cross?: { fd: number }; curve: Array<{ step: number; fd: number }> }>;
}

describe("npm run experiment:study -- --quick", () => {
  it("runs both domains, then continues on a fresh machine from what it keeps next to the report, a parked stage 1 included", async () => {
    const dir = tmpDir();
    const runs = path.join(dir, "runs");
    const out = path.join(dir, "out");
    const args = [path.join(ROOT, "dist-experiments", "experiments", "study.js"), "--quick", "--seeds", "0,1", "--lambdas", "0.01", "--runs", runs, "--out", out];
    const read = (): StudyResults => JSON.parse(fs.readFileSync(path.join(out, "results.json"), "utf8")) as StudyResults;

    const first = await runNodeAsync(args, { timeoutMs: 600_000 });
    expect(first.stderr).toBe("");
    expect(first.status).toBe(0);
    const done = read();
    const ids = done.results.map((r) => r.id).sort();
    for (const id of ["digits-stage1", "emoji-stage1", "digits-lenet2", "emoji-lenet2", "emoji-pretrain", "digits-plain-s1", "emoji-ft-all-sadm-best-s1", "digits-best-b128-s0"])
      expect(ids).toContain(id);
    // Every run names the CPU it ran on, and the report says it: a study spans sessions, and machines.
    const cpu = os.cpus()[0]?.model.trim();
    for (const r of done.results) expect(r.cpu, r.id).toBe(cpu);
    // Every comparison arm of both domains is also scored on the domain's second LeNet.
    for (const r of done.results.filter((x) => ["main", "option", "batch", "finetune"].includes(x.group))) {
      expect(Number.isFinite(r.final?.fd), r.id).toBe(true);
      expect(Number.isFinite(r.cross?.fd), r.id).toBe(true);
    }
    const md = fs.readFileSync(path.join(out, "results.md"), "utf8");
    expect(md).toContain(`h of run time on ${cpu}; `);
    expect(md).toMatch(/## Digits[\s\S]*FD, 2nd LeNet[\s\S]*## Emoji[\s\S]*FD, 2nd LeNet/);
    expect(md).toContain("Evaluation sampler: stage 1 unipc, 2 steps; the other runs unipc, 2 steps.");
    for (const f of ["branch/digits-stage1.safetensors", "branch/emoji-stage1.safetensors", "branch/emoji-pretrain.safetensors", "lenet-mnist-seed1.safetensors", "lenet-emoji-seed1.safetensors", "fd.png"])
      expect(fs.existsSync(path.join(out, f)), f).toBe(true);

    // Finished runs are not run again.
    const again = await runNodeAsync(args, { timeoutMs: 600_000 });
    expect(again.status).toBe(0);
    expect(again.stdout).not.toContain("start ");

    // A run still scoring its final model (done.json written, a sampling seed to go) is left out of results.json:
    // a fresh machine takes every run there for finished.
    const lastSeed = path.join(runs, "digits", "plain", "seed-1", "final-evals", "seed-1.json");
    const kept = fs.readFileSync(lastSeed);
    fs.rmSync(lastSeed);
    expect((await runNodeAsync([...args, "--report-only"])).status).toBe(0);
    expect(read().results.map((r) => r.id)).not.toContain("digits-plain-s1");
    fs.writeFileSync(lastSeed, kept);
    expect((await runNodeAsync([...args, "--report-only"])).status).toBe(0);
    expect(read().results.map((r) => r.id).sort()).toEqual(ids);

    // The digits' stage 1 as if the session had ended mid-way: no done.json, no branch weights. --park keeps its
    // newest checkpoint next to the report; then the machine is gone, run directories and all.
    fs.rmSync(path.join(runs, "digits", "stage1", "done.json"));
    fs.rmSync(path.join(out, "branch", "digits-stage1.safetensors"));
    const park = await runNodeAsync([...args, "--park"]);
    expect(park.stdout).toMatch(/^parked digits-stage1 \(step \d+\) in /);
    expect(fs.readdirSync(path.join(out, "parked", "digits-stage1", "checkpoints"))).toHaveLength(1);
    fs.rmSync(runs, { recursive: true });

    // The next machine resumes the parked stage 1 (which finds its plateau in the evaluations it has) and keeps
    // every other run's figures from results.json: nothing else starts.
    const fresh = await runNodeAsync(args, { timeoutMs: 600_000 });
    expect(fresh.stderr).toBe("");
    expect(fresh.status).toBe(0);
    expect(fresh.stdout.match(/start \S+/g)).toEqual(["start digits-stage1"]);
    expect(fs.existsSync(path.join(out, "branch", "digits-stage1.safetensors"))).toBe(true);
    expect(fs.existsSync(path.join(out, "parked", "digits-stage1"))).toBe(false);
    const after = read();
    expect(after.results.map((r) => r.id).sort()).toEqual(ids);
    for (const r of done.results) {
      const same = after.results.find((x) => x.id === r.id);
      expect(same?.final, r.id).toEqual(r.final);
      expect(same?.curve, r.id).toEqual(r.curve);
    }
  }, 900_000);
});
