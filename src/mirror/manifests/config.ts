/**
 * `mirror.manifest_cache`: how much memory crm may spend keeping manifests it has already paid a
 * counted pull for (cache.ts). Its own module so config/load.ts only hooks it in.
 */
import { parseSize, type Checker } from "../../config/checker.ts";

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

export const DEFAULT_MANIFEST_CACHE: ManifestCacheConfig = Object.freeze({
  enabled: true,
  maxSize: 64 * 1024 * 1024,
});

/** `stale_if_error` when not configured: a tag resolved within the last hour. */
export const DEFAULT_STALE_IF_ERROR_MS = 3_600_000;

const KEYS = ["enabled", "max_size", "stale_if_error"] as const;

/** Unknown keys are errors: a misspelt `max_szie` must not silently leave the default in place. */
export function buildManifestCache(
  c: Checker,
  raw: unknown,
  path = "mirror.manifest_cache",
): ManifestCacheConfig {
  const o = c.object(path, raw, KEYS);
  if (o === null) return DEFAULT_MANIFEST_CACHE;
  let maxSize = DEFAULT_MANIFEST_CACHE.maxSize;
  if (o.max_size !== undefined && o.max_size !== null) {
    const v = parseSize(o.max_size);
    if (typeof v === "string") c.fail(`${path}.max_size`, o.max_size, v);
    else maxSize = v;
  }
  // Absent means the default (DEFAULT_STALE_IF_ERROR_MS); only a configured value is carried.
  const stale =
    o.stale_if_error === undefined || o.stale_if_error === null
      ? null
      : {
          staleIfErrorMs: c.duration(
            `${path}.stale_if_error`,
            o.stale_if_error,
            DEFAULT_STALE_IF_ERROR_MS,
          ),
        };
  return {
    enabled: c.bool(`${path}.enabled`, o.enabled, DEFAULT_MANIFEST_CACHE.enabled),
    maxSize,
    ...stale,
  };
}
