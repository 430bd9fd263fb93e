/**
 * `mirror.manifest_cache`: how much memory crm may spend keeping manifests it has already paid a
 * counted pull for (cache.ts). Its own module so config.ts only hooks it in.
 */
import { ConfigError } from "../../errors.ts";
import { parseSize } from "../../config/checker.ts";

export interface ManifestCacheConfig {
  enabled: boolean;
  /** Bytes of manifest bodies (plus a fixed per-entry overhead) kept, LRU. */
  maxSize: number;
}

export const DEFAULT_MANIFEST_CACHE: ManifestCacheConfig = Object.freeze({ enabled: true, maxSize: 64 * 1024 * 1024 });

const KEYS = ["enabled", "max_size"];

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
  return { config: { enabled, maxSize }, errors };
}
