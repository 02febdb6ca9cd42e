/**
 * Finding images and labels in a folder (no decoding): torchvision's ImageFolder order, Hugging Face's metadata
 * files, unlabelled folders, and every way a folder can be unusable.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { tmpDir } from "./helpers";
import { DataError, comparePy, discoverClasses, interleaveByClass, resolveConfig, scanFolder } from "../ts/index";

/** Creates the files (relative path → content) under a fresh folder. */
function folder(files: Record<string, string>): string {
  const root = tmpDir("sadm-scan-");
  for (const [rel, content] of Object.entries(files)) {
    const f = path.join(root, rel);
    fs.mkdirSync(path.dirname(f), { recursive: true });
    fs.writeFileSync(f, content);
  }
  return root;
}

describe("scanFolder", () => {
  it("takes one class per sub-folder, sorted by name as strings (10 before 2), hidden ones ignored", () => {
    const root = folder({
      "2/b.png": "x",
      "2/a.png": "x",
      "10/z.jpg": "x",
      "10/deep/y.webp": "x",
      "cat/c.PNG": "x",
      ".hidden/h.png": "x",
      "cat/.DS_Store": "x",
      "cat/notes.txt": "x",
      "loose.png": "x",
    });
    const s = scanFolder(root);
    expect(s.mode).toBe("folders");
    expect(s.classNames).toEqual(["10", "2", "cat"]);
    expect(s.files.map((f) => [f.rel, f.label])).toEqual([
      ["10/deep/y.webp", 0],
      ["10/z.jpg", 0],
      ["2/a.png", 1],
      ["2/b.png", 1],
      ["cat/c.PNG", 2],
    ]);
    expect(s.ignored.notImages).toEqual(["cat/notes.txt"]);
    expect(s.ignored.outsideClasses).toEqual(["loose.png"]);
    expect(s.files[0].size).toBe(1);
    expect(discoverClasses(root).classNames).toEqual(["10", "2", "cat"]);
  });

  it("sorts by code point as Python does, not by UTF-16 unit", () => {
    // U+FF21 (fullwidth A) is one UTF-16 unit above the surrogates of U+1F600; Python puts it first.
    expect(["\u{1F600}", "\uFF21"].sort(comparePy)).toEqual(["\uFF21", "\u{1F600}"]);
    expect(["\u{1F600}", "\uFF21"].sort()).toEqual(["\u{1F600}", "\uFF21"]);
  });

  it("reads labels from metadata.jsonl and metadata.csv (Hugging Face imagefolder)", () => {
    const jsonl = folder({
      "metadata.jsonl": ['{"file_name": "a.png", "label": "dog"}', '{"file_name": "sub/b.png", "label": "cat"}', ""].join("\n"),
      "a.png": "x",
      "sub/b.png": "x",
      "unlisted.png": "x",
    });
    const s = scanFolder(jsonl);
    expect(s.mode).toBe("metadata");
    expect(s.classNames).toEqual(["cat", "dog"]);
    expect(s.files.map((f) => [f.rel, f.label])).toEqual([["sub/b.png", 0], ["a.png", 1]]);
    expect(s.ignored.notInMetadata).toEqual(["unlisted.png"]);

    const csv = folder({ "metadata.csv": 'file_name,label\na.png,2\n"b,1.png",0\n', "a.png": "x", "b,1.png": "x" });
    const c = scanFolder(csv);
    // Integer labels are class indices.
    expect(c.classNames).toEqual(["0", "1", "2"]);
    expect(c.files.map((f) => [f.rel, f.label])).toEqual([["b,1.png", 0], ["a.png", 2]]);
  });

  it("without sub-folders or metadata, or with labels none, every image is unlabelled", () => {
    const flat = folder({ "a.png": "x", "b.jpg": "x" });
    expect(scanFolder(flat).mode).toBe("none");
    expect(scanFolder(flat).classNames).toBeUndefined();
    const nested = folder({ "x/a.png": "x", "y/b.png": "x" });
    const s = scanFolder(nested, "none");
    expect(s.files.map((f) => [f.rel, f.label])).toEqual([["x/a.png", 0], ["y/b.png", 0]]);
  });

  it("follows symbolic links, reports broken ones, refuses loops", () => {
    const root = folder({ "a/1.png": "x", "b/2.png": "x" });
    fs.symlinkSync(path.join(root, "b"), path.join(root, "a", "linked"));
    fs.symlinkSync(path.join(root, "nowhere.png"), path.join(root, "a", "broken.png"));
    const s = scanFolder(root);
    expect(s.files.map((f) => f.rel)).toEqual(["a/1.png", "a/linked/2.png", "b/2.png"]);
    expect(s.ignored.brokenLinks).toEqual(["a/broken.png"]);
    fs.symlinkSync(root, path.join(root, "b", "up"));
    expect(() => scanFolder(root)).toThrow(/symlink loop: .*\/up leads back to .*, a folder it is inside/);
  });

  it("names the path and the fix for every unusable folder", () => {
    const none = path.join(tmpDir(), "missing");
    expect(() => scanFolder(none)).toThrow(DataError);
    expect(() => scanFolder(none)).toThrow(/does not exist/);
    const file = folder({ "f.png": "x" });
    expect(() => scanFolder(path.join(file, "f.png"))).toThrow(/is not a folder/);
    expect(() => scanFolder(tmpDir())).toThrow(/is empty: put the images in it/);
    expect(() => scanFolder(folder({ "a.txt": "x", "b.md": "x" }))).toThrow(/holds no image files .*2 other file\(s\), e\.g\. a\.txt/);
    const emptyClass = folder({ "cat/a.png": "x", "dog/readme.txt": "x" });
    expect(() => scanFolder(emptyClass)).toThrow(/class folder .*dog holds no images: add images to it or remove it/);
    expect(() => scanFolder(folder({ "a.png": "x" }), "folders")).toThrow(/no sub-folders to take classes from/);
    expect(() => scanFolder(folder({ "a.png": "x" }), "metadata")).toThrow(/no metadata\.jsonl or metadata\.csv/);
    const missingListed = folder({ "metadata.jsonl": '{"file_name": "gone.png", "label": 1}\n', "a.png": "x" });
    expect(() => scanFolder(missingListed)).toThrow(/lists 1 file\(s\) that are not in .*gone\.png/);
    const badLine = folder({ "metadata.jsonl": "{nope\n", "a.png": "x" });
    expect(() => scanFolder(badLine)).toThrow(/metadata\.jsonl, line 1: not valid JSON/);
    const both = folder({ "metadata.jsonl": "", "metadata.csv": "", "a.png": "x" });
    expect(() => scanFolder(both)).toThrow(/both metadata\.jsonl and metadata\.csv/);
  });
});

describe("folder data in the config", () => {
  it("sizes the model from the folder: resolution, channels and the class table", () => {
    const root = folder({ "cat/a.png": "x", "dog/b.png": "x", "emu/c.png": "x" });
    const cfg = resolveConfig({ data: { name: "folder", path: root, resolution: 16 } });
    expect(cfg.preset).toBe("rgb-32");
    expect([cfg.model.inputSize, cfg.model.inChannels, cfg.model.numClasses]).toEqual([16, 3, 3]);
    expect(cfg.data).toMatchObject({ path: root, resolution: 16, channels: 3, resize: "crop", flip: true, labels: "auto" });
    // The class names go into the config (config.json says which label is which), and it reads back as input.
    expect(cfg.data.classNames).toEqual(["cat", "dog", "emu"]);
    expect(resolveConfig(cfg)).toEqual(cfg);
    expect(() => resolveConfig({ ...cfg, data: { ...cfg.data, classNames: ["dog", "cat", "emu"] } })).toThrow(
      /config\.data\.classNames: are the data's and cannot be set: the folder data's classes are "cat", "dog", "emu" \(got "dog", "cat", "emu"\)/,
    );
    expect(resolveConfig({ data: { name: "folder", path: root, resolution: 64 } }).preset).toBe("rgb-64");
    // Class names resolve to labels.
    expect(resolveConfig({ data: { name: "folder", path: root, classes: ["emu", "cat"] } }).data.classes).toEqual([2, 0]);
    expect(() => resolveConfig({ data: { name: "folder", path: root, classes: ["cow"] } })).toThrow(
      /config\.data\.classes\[0\]: "cow" is not a class of the folder data \(its classes: "cat", "dog", "emu"\)/,
    );
    // Unconditional: no labels are read.
    const u = resolveConfig({ data: { name: "folder", path: root }, model: { numClasses: 0 } });
    expect([u.data.labels, u.model.numClasses]).toEqual(["none", 0]);
  });

  it("refuses options that do not apply, and a folder without a path", () => {
    expect(() => resolveConfig({ data: { resolution: 32 } })).toThrow(/config\.data\.resolution: applies to folder and emoji data, not mnist/);
    expect(() => resolveConfig({ data: { name: "emoji", path: "x" } })).toThrow(/config\.data\.path: applies to folder data, not emoji/);
    expect(() => resolveConfig({ data: { name: "folder" } })).toThrow(/config\.data\.path: is required for folder data/);
    expect(() => resolveConfig({ data: { name: "folder", path: "/no/such/dir" } })).toThrow(/image folder \/no\/such\/dir does not exist/);
    const root = folder({ "a/x.png": "x" });
    expect(() => resolveConfig({ data: { name: "folder", path: root }, eval: { every: 10 } })).toThrow(
      /config\.eval\.extractor\.arch: lenet-mnist reads 28×28 grey digits/,
    );
  });
});

describe("interleaveByClass", () => {
  it("takes one of every class in turn, so any prefix is balanced", () => {
    expect(interleaveByClass([1, 1, 1, 0, 0, 2])).toEqual([3, 0, 5, 4, 1, 2]);
  });
});
