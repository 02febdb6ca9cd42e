/**
 * Compiles ts/ → dist/ (and the experiment → dist-experiments/) once before the tests, so the CLI and experiment
 * tests run the real compiled code.
 */
import { execFileSync } from "node:child_process";
import * as path from "node:path";

export default function setup(): void {
  const root = path.resolve(__dirname, "..");
  const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc");
  for (const project of ["tsconfig.json", "tsconfig.experiments.json"])
    execFileSync(process.execPath, [tsc, "-p", path.join(root, project)], { cwd: root, stdio: "inherit" });
}
