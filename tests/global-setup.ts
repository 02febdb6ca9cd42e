/** Compiles ts/ → dist/ once before the tests, so the CLI tests run the real `dist/cli.js`. */
import { execFileSync } from "node:child_process";
import * as path from "node:path";

export default function setup(): void {
  const root = path.resolve(__dirname, "..");
  const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc");
  execFileSync(process.execPath, [tsc, "-p", path.join(root, "tsconfig.json")], { cwd: root, stdio: "inherit" });
}
