/**
 * Typed errors thrown by sadm. Every error sadm raises on purpose is a {@link SadmError}; the CLI prints
 * `error: <message>` for these without a stack trace.
 */

/** Base class of every error sadm throws on purpose. */
export class SadmError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** An invalid configuration value; `field` is the dotted path (e.g. `config.lambda`). */
export class ConfigError extends SadmError {
  /** Dotted path of the offending field, e.g. `config.model.hiddenSize`. */
  readonly field: string;
  constructor(field: string, message: string, options?: { cause?: unknown }) {
    super(`${field}: ${message}`, options);
    this.field = field;
  }
}

/** A problem with the training data (missing, too small, malformed). */
export class DataError extends SadmError {}

/** A missing, incomplete or corrupt checkpoint, or a run directory that cannot be used. */
export class CheckpointError extends SadmError {}

/**
 * Training stopped because `maxBadSteps` steps in a row had a non-finite loss or gradient norm (each was skipped:
 * nothing was updated). The run's files are intact; resume from {@link NumericalError.lastCheckpoint}.
 */
export class NumericalError extends SadmError {
  /** The step at which the run stopped. */
  readonly step: number;
  /** The newest checkpoint of the run, if one was written or loaded. */
  readonly lastCheckpoint: string | undefined;
  constructor(message: string, step: number, lastCheckpoint: string | undefined) {
    super(message);
    this.step = step;
    this.lastCheckpoint = lastCheckpoint;
  }
}

/** An error thrown by the native addon (or the addon failing to load); the original message is kept. */
export class NativeError extends SadmError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }

  /** Wraps anything thrown by the addon, keeping its message; SadmErrors pass through unchanged. */
  static wrap(err: unknown, context?: string): SadmError {
    if (err instanceof SadmError) return err;
    const msg = err instanceof Error ? err.message : String(err);
    return new NativeError(context ? `${context}: ${msg}` : msg, { cause: err });
  }
}

/** A file-system error (it has a `code` such as ENOTDIR and names the path). */
export function isFsError(err: unknown): err is NodeJS.ErrnoException {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === "string" && "syscall" in err;
}

const FS_REASONS: Record<string, string> = {
  ENOTDIR: "part of the path is a file, not a directory",
  EEXIST: "a file is in the way of a directory",
  EISDIR: "it is a directory",
  EACCES: "permission denied",
  EPERM: "permission denied",
  EROFS: "the file system is read-only",
  ENOSPC: "the disk is full",
  ENOENT: "it does not exist",
};

/**
 * A {@link SadmError} for a file-system error, saying what sadm was doing (`doing`, e.g. "cannot create the run
 * directory x"), why in words, and the path the system named.
 */
export function fsError(err: NodeJS.ErrnoException, doing: string): SadmError {
  const reason = FS_REASONS[err.code ?? ""] ?? err.message;
  return new SadmError(`${doing}: ${reason}${err.path ? ` (${err.path})` : ""}`, { cause: err });
}

/** Returns the message of anything thrown. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
