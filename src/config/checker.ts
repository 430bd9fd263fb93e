/**
 * How every config section is checked: one Checker collects every problem with its key path, the
 * bad value and the rule, and reports unknown keys with the nearest known one. A leaf: section
 * modules (listen, tls, limits, mirror, doctor...) import it, and config/load.ts runs them all.
 */
import { ConfigError } from "../errors.ts";
import { compileHostPattern } from "../host-policy.ts";
import { nearest } from "./did-you-mean.ts";
import { parseDuration } from "./duration.ts";

export type Obj = Record<string, unknown>;

/** Collects every problem instead of stopping at the first (section modules get one too). */
export class Checker {
  readonly errors: ConfigError[] = [];
  readonly warnings: string[] = [];

  fail(path: string, value: unknown, rule: string): void {
    this.errors.push(new ConfigError(path, `${show(value)} ${rule}`));
  }

  /** An error about a key as a whole (missing, incomplete, secret): no value is shown for it. */
  rule(path: string, message: string): void {
    this.errors.push(new ConfigError(path, message));
  }

  /**
   * A mapping whose keys must all be in `known`: the one list of keys for that section, so a new
   * key is added in exactly one place. An unknown key is an error, not a warning: a config written
   * for a newer crm, or a typo such as `mirror.rule`, must not run with that policy silently off.
   */
  object(path: string, value: unknown, known: readonly string[]): Obj | null {
    if (value === undefined || value === null) return null;
    if (typeof value !== "object" || Array.isArray(value)) {
      this.fail(path, value, "must be a mapping");
      return null;
    }
    const obj = value as Obj;
    for (const k of Object.keys(obj)) if (!known.includes(k)) this.unknownKey(path, k, known);
    return obj;
  }

  private unknownKey(section: string, key: string, known: readonly string[]): void {
    const full = (k: string): string => (section ? `${section}.${k}` : k);
    const near = nearest(key, known);
    const where = section ? `in ${section}` : "at the top level";
    const hint = near !== null ? `did you mean ${full(near)}?` : `known keys: ${known.join(", ")}`;
    this.rule(
      full(key.slice(0, 100)),
      `unknown key ${show(key.slice(0, 100))} ${where} (${hint}); crm refuses to run with a setting it does not understand`,
    );
  }

  bool(path: string, value: unknown, dflt: boolean): boolean {
    if (value === undefined || value === null) return dflt;
    if (typeof value === "boolean") return value;
    this.fail(path, value, "must be true or false");
    return dflt;
  }

  string(path: string, value: unknown): string | null {
    if (value === undefined || value === null) return null;
    if (typeof value === "string" && value.trim() !== "") return value.trim();
    this.fail(path, value, "must be a non-empty string");
    return null;
  }

  stringList(path: string, value: unknown): string[] | null {
    if (value === undefined || value === null) return null;
    if (!Array.isArray(value)) {
      this.fail(path, value, "must be a list");
      return null;
    }
    const out: string[] = [];
    value.forEach((v, i) => {
      const s = this.string(`${path}[${i}]`, v);
      if (s !== null) out.push(s);
    });
    return out;
  }

  hostPatterns(path: string, value: unknown): string[] | null {
    const list = this.stringList(path, value);
    if (list === null) return null;
    list.forEach((entry, i) => {
      try {
        const p = compileHostPattern(entry);
        if (p.kind === "exact" && p.name === "")
          this.fail(`${path}[${i}]`, entry, "is not a valid host name");
      } catch (cause) {
        this.errors.push(
          new ConfigError(
            `${path}[${i}]`,
            `invalid regular expression ${show(entry)}: ${(cause as Error).message}`,
            { cause },
          ),
        );
      }
    });
    return list;
  }

  duration(path: string, value: unknown, dflt: number): number {
    if (value === undefined || value === null) return dflt;
    const ms = parseDuration(value);
    if (typeof ms === "string") {
      this.fail(path, value, ms);
      return dflt;
    }
    return ms;
  }
}

export function show(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

const SIZE_UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  k: 1e3,
  kb: 1e3,
  m: 1e6,
  mb: 1e6,
  g: 1e9,
  gb: 1e9,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
  tib: 1024 ** 4,
};

/** "512MiB", "10GiB", "1GB" or a number of bytes. */
export function parseSize(value: unknown): number | string {
  if (typeof value === "number" && Number.isInteger(value) && value >= 0) return value;
  const m = typeof value === "string" ? /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(value) : null;
  const unit = SIZE_UNITS[(m?.[2] ?? "x").toLowerCase()];
  if (!m || unit === undefined)
    return 'must be a size such as "512MiB", "10GiB" or a number of bytes';
  return Math.round(Number(m[1]) * unit);
}
