import pc from "picocolors";

export type LogLevel = "debug" | "info" | "warn" | "error";
export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];

export type LogFields = Record<string, string | number | boolean | null | undefined>;

/** Where formatted lines go; tests pass their own to read what an operator would see. */
export type LogSink = (line: string, level: LogLevel) => void;

const rank: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

const stderrSink: LogSink = (line) => {
  process.stderr.write(line + "\n");
};

export type LogFormat = "text" | "json";

export interface LoggerOptions {
  level: LogLevel;
  /** json: one object per line with stable fields: time, level, msg, then the line's fields. */
  format?: LogFormat;
  sink?: LogSink;
  /** Colours only when a person is watching: a TTY, and NO_COLOR unset. */
  color?: boolean;
  /**
   * Path prefixes that are credentials (mirror.path_prefix: Docker's registry-mirrors can carry a
   * path but no password). Every line shows them as `/<prefix>`, whatever field they are in.
   */
  secretPaths?: readonly string[];
}

export class Logger {
  readonly level: LogLevel;
  private readonly min: number;
  private readonly sink: LogSink;
  private readonly color: boolean;
  private readonly json: boolean;
  private readonly secretPaths: RegExp | null;

  constructor(opts: LoggerOptions) {
    this.level = opts.level;
    const paths = (opts.secretPaths ?? []).filter((p) => p !== "");
    // A whole path segment only: `/s3cret` hides `/s3cret/v2/...`, not `/s3cretary`.
    this.secretPaths =
      paths.length > 0
        ? new RegExp(`(?:${paths.map(escapeRegExp).join("|")})(?=[/?#\\s"]|$)`, "g")
        : null;
    this.json = opts.format === "json";
    this.min = rank[opts.level];
    this.sink = opts.sink ?? stderrSink;
    this.color = opts.color ?? (Boolean(process.stderr.isTTY) && !process.env.NO_COLOR);
  }

  enabled(level: LogLevel): boolean {
    return rank[level] >= this.min;
  }

  debug(msg: string, fields?: LogFields): void {
    this.write("debug", msg, fields);
  }
  info(msg: string, fields?: LogFields): void {
    this.write("info", msg, fields);
  }
  warn(msg: string, fields?: LogFields): void {
    this.write("warn", msg, fields);
  }
  error(msg: string, fields?: LogFields): void {
    this.write("error", msg, fields);
  }

  private write(level: LogLevel, msg: string, fields?: LogFields): void {
    if (rank[level] < this.min) return;
    if (this.json) {
      const o: Record<string, unknown> = { time: new Date().toISOString(), level, msg };
      if (fields)
        for (const [k, v] of Object.entries(fields)) if (v !== undefined && !(k in o)) o[k] = v;
      this.sink(this.redact(escapeUnsafe(JSON.stringify(o))), level);
      return;
    }
    const c = this.color ? pc : noColor;
    const tag = {
      debug: c.gray("DEBUG"),
      info: c.cyan("INFO "),
      warn: c.yellow("WARN "),
      error: c.red("ERROR"),
    }[level];
    let line = `${c.dim(new Date().toISOString())} ${tag} ${plain(msg)}`;
    if (fields) {
      for (const [k, v] of Object.entries(fields)) {
        if (v === undefined) continue;
        line += ` ${c.dim(plain(k) + "=")}${formatValue(v)}`;
      }
    }
    this.sink(this.redact(line), level);
  }

  private redact(line: string): string {
    return this.secretPaths === null ? line : line.replace(this.secretPaths, "/<prefix>");
  }
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

const identity = (s: string): string => s;
const noColor = { gray: identity, cyan: identity, yellow: identity, red: identity, dim: identity };

/**
 * Characters JSON.stringify leaves as they are but a terminal or a log viewer acts on: DEL, C1
 * controls, bidi overrides and isolates, line and paragraph separators. A value from the network
 * (a header, a store entry) must not reorder or hide what an operator reads.
 */
const UNSAFE = /[\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
/** Any control character, C0 included (a test, so not global: no lastIndex to carry). */
const CONTROL =
  /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;

/** A JSON text with those characters as \uXXXX escapes (still the same JSON value). */
function escapeUnsafe(json: string): string {
  return json.replace(UNSAFE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/**
 * Values with spaces, quotes or control characters are quoted (and escaped) so a line stays
 * machine-splittable and shows what it holds.
 */
function formatValue(v: string | number | boolean | null): string {
  const s = String(v);
  return s === "" || /[\s"=]/.test(s) || CONTROL.test(s) ? escapeUnsafe(JSON.stringify(s)) : s;
}

/** A message or key: printed bare, but with any control character escaped. */
function plain(s: string): string {
  return CONTROL.test(s) ? escapeUnsafe(JSON.stringify(s)).slice(1, -1) : s;
}

/** Header values that carry secrets: logged as their scheme and length only. */
const SECRET_HEADERS = new Set(["authorization", "proxy-authorization", "cookie", "set-cookie"]);

export function redactHeaderValue(name: string, value: string): string {
  if (!SECRET_HEADERS.has(name.toLowerCase())) return value;
  const space = value.indexOf(" ");
  const scheme =
    space > 0 && /^[A-Za-z][A-Za-z0-9._-]*$/.test(value.slice(0, space))
      ? value.slice(0, space) + " "
      : "";
  return `${scheme}<redacted, ${value.length - scheme.length} bytes>`;
}

/** Query parameters that carry credentials (signed CDN URLs, token endpoints). */
const SECRET_QUERY =
  /^(token|access_token|refresh_token|password|signature|sig|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential|expires|verify|key)$/i;

/** Redacts token-bearing query values in a path or URL, keeping their length for debugging. */
export function redactUrl(target: string): string {
  // Userinfo (http://user:pass@host/) is a credential as well.
  target = target.replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/)[^/?#]*@/, "$1<redacted>@");
  const q = target.indexOf("?");
  if (q < 0) return target;
  const parts = target
    .slice(q + 1)
    .split("&")
    .map((kv) => {
      const eq = kv.indexOf("=");
      if (eq < 0) return kv;
      const k = kv.slice(0, eq);
      return SECRET_QUERY.test(decodeURIComponentSafe(k))
        ? `${k}=<redacted, ${kv.length - eq - 1} bytes>`
        : kv;
    });
  return target.slice(0, q + 1) + parts.join("&");
}

function decodeURIComponentSafe(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** Formats a header list for a debug line with secrets redacted. */
export function formatHeaders(headers: Iterable<[string, string]>): string {
  const out: string[] = [];
  for (const [k, v] of headers) out.push(`${k}: ${redactHeaderValue(k, v)}`);
  return out.join(" | ");
}
