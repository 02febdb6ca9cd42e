/**
 * Compiles ts/ → dist/ (the experiments → dist-experiments/, the report's page → dist/report/) once before the tests, so the CLI and experiment
 * tests run the real compiled code.
 */
import { execFileSync } from "node:child_process";
import * as path from "node:path";

export default function setup(): void {
  const root = path.resolve(__dirname, "..");
  const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc");
  for (const project of ["tsconfig.json", "tsconfig.experiments.json"])
    execFileSync(process.execPath, [tsc, "-p", path.join(root, project)], { cwd: root, stdio: "inherit" });
  // The run report's page script and uPlot (dist/report/).
  execFileSync(process.execPath, [path.join(root, "scripts", "build-report.js")], { cwd: root, stdio: "inherit" });
}
