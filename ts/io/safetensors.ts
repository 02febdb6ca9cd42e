/**
 * The safetensors format (8-byte little-endian header length, a JSON header of name → dtype/shape/byte range, then
 * the raw little-endian bytes), read and written from TypeScript for the files sadm's TS side owns: latent shards
 * (`sadm encode`) and the latents a user hands to `sadm decode`. npm has no maintained safetensors package; the
 * format is small and fixed, and the Rust core reads these same files with the `safetensors` crate (tested).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { SadmError } from "../errors.js";

/** A malformed or unexpected safetensors file; the message names the file. */
export class SafetensorsError extends SadmError {}

/** The dtypes sadm reads; floats come back as Float32Array, integers as Int32Array. */
export type Dtype = "F32" | "F16" | "BF16" | "I32" | "I64" | "U8";

const BYTES: Record<Dtype, number> = { F32: 4, F16: 2, BF16: 2, I32: 4, I64: 8, U8: 1 };

/** One tensor to write. */
export interface TensorOut {
  dtype: "F32" | "I32" | "U8";
  shape: number[];
  data: Float32Array | Int32Array | Uint8Array;
}

/** A tensor's entry in the header. */
export interface TensorInfo {
  dtype: Dtype;
  shape: number[];
  /** Byte range within the data section. */
  begin: number;
  end: number;
}

/** The header of a file: its tensors and its string metadata. */
export interface Header {
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
}

/** Headers above this are refused as not a safetensors file (the format's own limit is 100 MB). */
const MAX_HEADER = 100_000_000;

function product(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * Writes `tensors` (and string `metadata`) to `file` under a temporary name, synced and renamed into place, so a
 * killed write never leaves a file that looks whole.
 */
export function writeSafetensors(file: string, tensors: Record<string, TensorOut>, metadata: Record<string, string> = {}): void {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  const names = Object.keys(tensors).sort();
  for (const name of names) {
    const t = tensors[name];
    const bytes = product(t.shape) * BYTES[t.dtype];
    if (t.data.byteLength !== bytes)
      throw new SafetensorsError(`${file}: tensor '${name}' has ${t.data.byteLength} bytes for shape [${t.shape}] ${t.dtype}`);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = Buffer.from(JSON.stringify(header), "utf8");
  // The data section starts 8-byte aligned, as the Rust writer pads it.
  const pad = (8 - (json.length % 8)) % 8;
  if (pad > 0) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}`);
  const fd = fs.openSync(tmp, "w");
  try {
    fs.writeSync(fd, len);
    fs.writeSync(fd, json);
    for (const name of names) {
      const d = tensors[name].data;
      fs.writeSync(fd, new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
    }
    fs.fsyncSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
}

/** An open safetensors file: its header, and tensors (or rows of them) read on demand. */
export class SafetensorsFile {
  private constructor(
    readonly file: string,
    readonly header: Header,
    private readonly fd: number,
    private readonly dataStart: number,
  ) {}

  /** Opens and checks `file` (header well-formed, every byte range inside the file). */
  static open(file: string): SafetensorsFile {
    const fd = fs.openSync(file, "r");
    try {
      const size = fs.fstatSync(fd).size;
      const bad = (why: string): SafetensorsError =>
        new SafetensorsError(`${file} is not a readable safetensors file: ${why}`);
      if (size < 8) throw bad(`it has ${size} bytes`);
      const len = Buffer.alloc(8);
      fs.readSync(fd, len, 0, 8, 0);
      const n = Number(len.readBigUInt64LE());
      if (n < 2 || n > MAX_HEADER || 8 + n > size) throw bad(`its header length ${n} does not fit its ${size} bytes`);
      const text = Buffer.alloc(n);
      fs.readSync(fd, text, 0, n, 8);
      let raw: unknown;
      try {
        raw = JSON.parse(text.toString("utf8"));
      } catch {
        throw bad("its header is not JSON");
      }
      if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw bad("its header is not an object");
      const tensors = new Map<string, TensorInfo>();
      let metadata: Record<string, string> = {};
      const dataSize = size - 8 - n;
      for (const [name, v] of Object.entries(raw as Record<string, unknown>)) {
        if (name === "__metadata__") {
          metadata = v as Record<string, string>;
          continue;
        }
        const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
        const dtype = e.dtype as Dtype;
        if (!(typeof dtype === "string" && dtype in BYTES))
          throw bad(`tensor '${name}' has dtype ${String(e.dtype)}, which sadm does not read (F32, F16, BF16, I32, I64, U8)`);
        const shape = e.shape;
        const offsets = e.data_offsets;
        if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) throw bad(`tensor '${name}' has a bad shape`);
        if (!Array.isArray(offsets) || offsets.length !== 2) throw bad(`tensor '${name}' has bad data_offsets`);
        const [begin, end] = offsets as number[];
        if (!(Number.isInteger(begin) && Number.isInteger(end) && 0 <= begin && begin <= end && end <= dataSize))
          throw bad(`tensor '${name}' lies outside the file (truncated?)`);
        if (end - begin !== product(shape as number[]) * BYTES[dtype])
          throw bad(`tensor '${name}' has ${end - begin} bytes for shape [${String(shape)}] ${dtype}`);
        tensors.set(name, { dtype, shape: shape as number[], begin, end });
      }
      return new SafetensorsFile(file, { tensors, metadata }, fd, 8 + n);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /** The entry of tensor `name`. @throws SafetensorsError naming the tensors there are. */
  info(name: string): TensorInfo {
    const t = this.header.tensors.get(name);
    if (!t)
      throw new SafetensorsError(
        `${this.file} has no tensor '${name}' (it has ${[...this.header.tensors.keys()].slice(0, 8).join(", ") || "none"})`,
      );
    return t;
  }

  /** The whole tensor `name`, floats as f32 and integers as i32. */
  read(name: string): Float32Array | Int32Array {
    const t = this.info(name);
    return this.readRows(name, 0, t.shape[0] ?? 1);
  }

  /** Rows [first, first + count) of tensor `name` along its first dimension. */
  readRows(name: string, first: number, count: number): Float32Array | Int32Array {
    const t = this.info(name);
    const rows = t.shape.length === 0 ? 1 : t.shape[0];
    if (!(Number.isInteger(first) && Number.isInteger(count) && first >= 0 && count >= 0 && first + count <= rows))
      throw new SafetensorsError(`${this.file}: rows [${first}, ${first + count}) of '${name}' are outside its ${rows}`);
    const per = t.shape.length === 0 ? 1 : product(t.shape.slice(1));
    const width = BYTES[t.dtype];
    const bytes = new Uint8Array(count * per * width);
    fs.readSync(this.fd, bytes, 0, bytes.length, this.dataStart + t.begin + first * per * width);
    return convert(bytes, t.dtype, count * per);
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

/**
 * Little-endian bytes of `dtype` → f32 (floats) or i32 (integers; I64 must fit). `bytes` owns its whole buffer, so
 * F32 and I32 are views of it (every platform Node's prebuilt binaries run on is little-endian).
 */
function convert(bytes: Uint8Array, dtype: Dtype, n: number): Float32Array | Int32Array {
  switch (dtype) {
    case "F32":
      return new Float32Array(bytes.buffer, 0, n);
    case "I32":
      return new Int32Array(bytes.buffer, 0, n);
    case "F16": {
      const h = new Uint16Array(bytes.buffer, 0, n);
      return Float32Array.from(h, halfToFloat);
    }
    case "BF16": {
      const h = new Uint16Array(bytes.buffer, 0, n);
      const out = new Float32Array(n);
      const word = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) word[i] = h[i] << 16;
      return out;
    }
    case "I64": {
      const v = new BigInt64Array(bytes.buffer, 0, n);
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        if (v[i] > 2147483647n || v[i] < -2147483648n) throw new SafetensorsError(`an I64 value ${v[i]} does not fit 32 bits`);
        out[i] = Number(v[i]);
      }
      return out;
    }
    case "U8":
      return Int32Array.from(bytes);
  }
}

/** IEEE binary16 → number. */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}
