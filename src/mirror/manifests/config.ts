/**
 * `mirror.manifest_cache`: how much memory crm may spend keeping manifests it has already paid a
 * counted pull for (cache.ts). Its own module so config.ts only hooks it in.
 */
import { ConfigError } from "../../errors.ts";
import { parseSize } from "../../config.ts";
import { parseDuration } from "../../config/duration.ts";

export interface ManifestCacheConfig {
  enabled: boolean;
  /** Bytes of manifest bodies (plus a fixed per-entry overhead) kept, LRU. */
  maxSize: number;
  /**
   * A tag crm resolved this recently is answered with its last digest (from this cache) when
   * every upstream fails for it (stale.ts); 0 turns it off, absent means the default (1 h).
   */
  staleIfErrorMs?: number;
}

export const DEFAULT_MANIFEST_CACHE: ManifestCacheConfig = Object.freeze({ enabled: true, maxSize: 64 * 1024 * 1024 });

/** `stale_if_error` when not configured: a tag resolved within the last hour. */
export const DEFAULT_STALE_IF_ERROR_MS = 3_600_000;

const KEYS = ["enabled", "max_size", "stale_if_error"];

/** Unknown keys are errors: a misspelt `max_szie` must not silently leave the default in place. */
export function buildManifestCache(raw: unknown, path = "mirror.manifest_cache"): { config: ManifestCacheConfig; errors: ConfigError[] } {
  const errors: ConfigError[] = [];
  if (raw === undefined || raw === null) return { config: DEFAULT_MANIFEST_CACHE, errors };
  if (typeof raw !== "object" || Array.isArray(raw)) {
    return { config: DEFAULT_MANIFEST_CACHE, errors: [new ConfigError(path, `${JSON.stringify(raw)} must be a mapping with enabled and max_size`)] };
  }
  const o = raw as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (!KEYS.includes(k)) errors.push(new ConfigError(`${path}.${k}`, `unknown key; known: ${KEYS.join(", ")}`));
  }
  let enabled = DEFAULT_MANIFEST_CACHE.enabled;
  if (o.enabled !== undefined && o.enabled !== null) {
    if (typeof o.enabled === "boolean") enabled = o.enabled;
    else errors.push(new ConfigError(`${path}.enabled`, `${JSON.stringify(o.enabled)} must be true or false`));
  }
  let maxSize = DEFAULT_MANIFEST_CACHE.maxSize;
  if (o.max_size !== undefined && o.max_size !== null) {
    const v = parseSize(o.max_size);
    if (typeof v === "string") errors.push(new ConfigError(`${path}.max_size`, `${JSON.stringify(o.max_size)} ${v}`));
    else maxSize = v;
  }
  // Absent means the default (DEFAULT_STALE_IF_ERROR_MS); only a configured value is carried.
  let stale: { staleIfErrorMs: number } | null = null;
  if (o.stale_if_error !== undefined && o.stale_if_error !== null) {
    const v = parseDuration(o.stale_if_error);
    if (typeof v === "string") errors.push(new ConfigError(`${path}.stale_if_error`, `${JSON.stringify(o.stale_if_error)} ${v}`));
    else stale = { staleIfErrorMs: v };
  }
  return { config: { enabled, maxSize, ...stale }, errors };
}
