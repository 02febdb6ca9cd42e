#!/usr/bin/env node
// Screenshots a run report in headless Chromium (as the tests open it): how docs/report.png was made.
//   node scripts/screenshot-report.js REPORT.html OUT.png [width]
// The browser: $SADM_CHROMIUM, else Debian's chromium-headless-shell or chromium (apt-get install chromium-headless-shell).
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const puppeteer = require("puppeteer-core");
const sharp = require("sharp");

async function main() {
  const [html, out, width = "1280"] = process.argv.slice(2);
  if (!html || !out) throw new Error("usage: node scripts/screenshot-report.js REPORT.html OUT.png [width]");
  const executablePath = [process.env.SADM_CHROMIUM, "/usr/bin/chromium-headless-shell", "/usr/bin/chromium"].find((p) => p && fs.existsSync(p));
  if (!executablePath) throw new Error("no headless Chromium: apt-get install chromium-headless-shell, or set SADM_CHROMIUM");
  const browser = await puppeteer.launch({ executablePath, headless: executablePath.includes("headless-shell") ? "shell" : true, args: ["--no-sandbox", "--disable-gpu"] });
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
    await page.setViewport({ width: Number(width), height: 900 });
    await page.goto(`file://${path.resolve(html)}`, { waitUntil: "load" });
    await page.waitForFunction(() => window.sadmReport && window.sadmReport.ready, { timeout: 20000 });
    if (errors.length > 0) throw new Error(`the page reported errors: ${errors.join("; ")}`);
    // A palette PNG: a third of the size, indistinguishable for a page of flat colours and lines.
    const shot = await page.screenshot({ fullPage: true });
    await sharp(Buffer.from(shot)).png({ palette: true, effort: 10 }).toFile(out);
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  process.stderr.write(`error: ${e.message}\n`);
  process.exitCode = 1;
});
