/** The package version (read from package.json next to dist/ and ts/). */
import * as fs from "node:fs";
import * as path from "node:path";

let cached: string | undefined;

/** sadm's version from package.json ("0.0.0" if it cannot be read). */
export function version(): string {
  if (cached !== undefined) return cached;
  try {
    const pkg: unknown = JSON.parse(fs.readFileSync(path.join(__dirname, "..", "package.json"), "utf8"));
    const v = typeof pkg === "object" && pkg !== null ? (pkg as { version?: unknown }).version : undefined;
    cached = typeof v === "string" ? v : "0.0.0";
  } catch {
    cached = "0.0.0";
  }
  return cached;
}
