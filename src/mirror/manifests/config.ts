/**
 * `mirror.manifest_cache`: how much memory crm may spend keeping manifests it has already paid a
 * counted pull for (cache.ts). Its own module so config/load.ts only hooks it in.
 */
import { parseSize, type Checker } from "../../config/checker.ts";

export interface ManifestCacheConfig {
  enabled: boolean;
  /** Bytes of manifest bodies (plus a fixed per-entry overhead) kept, LRU. */
  maxSize: number;
}

export const DEFAULT_MANIFEST_CACHE: ManifestCacheConfig = Object.freeze({ enabled: true, maxSize: 64 * 1024 * 1024 });

const KEYS = ["enabled", "max_size"] as const;

/** Unknown keys are errors: a misspelt `max_szie` must not silently leave the default in place. */
export function buildManifestCache(c: Checker, raw: unknown, path = "mirror.manifest_cache"): ManifestCacheConfig {
  const o = c.object(path, raw, KEYS);
  if (o === null) return DEFAULT_MANIFEST_CACHE;
  let maxSize = DEFAULT_MANIFEST_CACHE.maxSize;
  if (o.max_size !== undefined && o.max_size !== null) {
    const v = parseSize(o.max_size);
    if (typeof v === "string") c.fail(`${path}.max_size`, o.max_size, v);
    else maxSize = v;
  }
  return { enabled: c.bool(`${path}.enabled`, o.enabled, DEFAULT_MANIFEST_CACHE.enabled), maxSize };
}
