/**
 * A real browser for the report tests: headless Chromium (Debian's chromium-headless-shell or chromium, which
 * .ci/run installs) driven by puppeteer-core. It fails, never skips, when no browser is installed.
 */
import * as fs from "node:fs";
import puppeteer, { type Browser, type Page } from "puppeteer-core";

const CANDIDATES = ["/usr/bin/chromium-headless-shell", "/usr/bin/chromium", "/usr/bin/google-chrome"];

/** The browser binary: $SADM_CHROMIUM, else the first Debian/Chrome path that exists. */
export function chromiumPath(): string {
  const found = [process.env.SADM_CHROMIUM, ...CANDIDATES].find((p): p is string => p !== undefined && p !== "" && fs.existsSync(p));
  if (!found)
    throw new Error(
      `no headless Chromium for the report tests (looked at ${CANDIDATES.join(", ")}): ` +
        "install it with `apt-get install chromium-headless-shell` (as .ci/run does), or set SADM_CHROMIUM",
    );
  return found;
}

export async function launch(): Promise<Browser> {
  const executablePath = chromiumPath();
  return puppeteer.launch({
    executablePath,
    headless: executablePath.includes("headless-shell") ? "shell" : true,
    // Root in CI has no user namespace for the sandbox; the page is our own file.
    args: ["--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"],
  });
}

/** A report opened from disk, with every console error and uncaught exception it raised. */
export interface OpenedReport {
  page: Page;
  errors: string[];
  /** URLs it tried to load from anywhere but the disk (must be none: the report fetches nothing). */
  remote: string[];
}

export async function openReport(browser: Browser, file: string): Promise<OpenedReport> {
  const page = await browser.newPage();
  const errors: string[] = [];
  const remote: string[] = [];
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("requestfailed", (r) => errors.push(`request failed: ${r.url()}`));
  page.on("request", (r) => {
    if (!/^(file|data):/.test(r.url())) remote.push(r.url());
  });
  await page.setViewport({ width: 1280, height: 900 });
  await page.goto(`file://${file}`, { waitUntil: "load" });
  await page.waitForFunction(() => window.sadmReport?.ready === true, { timeout: 20_000 });
  return { page, errors, remote };
}

/** What the page says it drew (see ts/report/page/page.ts). */
export interface Drawn {
  charts: Record<string, { title: string; series: Array<{ label: string; points: number }> }>;
  gridStep: number | undefined;
}

export function drawn(page: Page): Promise<Drawn> {
  return page.evaluate(() => ({ charts: window.sadmReport.charts, gridStep: window.sadmReport.gridStep }));
}

// The page's globals, as the callbacks puppeteer runs in the page see them (this project's tsconfig has no DOM).
declare global {
  interface Window {
    sadmReport: { ready: boolean; charts: Drawn["charts"]; gridStep: number | undefined };
  }
  // eslint-disable-next-line no-var
  var window: Window;
}
