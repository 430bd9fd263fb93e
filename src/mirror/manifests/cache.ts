/**
 * Manifests crm has already paid a counted pull for, kept in memory by registry + repository +
 * digest. Content addressing makes a hit exact: only bytes whose digest was checked are put here
 * (fetch.ts), so a hit needs no upstream request at all. Bounded in bytes, LRU; a
 * manifest over the OCI size limit is never kept. Blobs are never cached anywhere.
 */
import type { RegistryConfig } from "../../config/registries.ts";
import type { ManifestCacheConfig } from "./config.ts";

/** OCI distribution: registries may refuse manifests over 4 MiB; crm streams those, never keeps them. */
export const MAX_CACHED_MANIFEST = 4 * 1024 * 1024;
/** Map slot, key string and header strings of one entry, charged to the size bound. */
const ENTRY_OVERHEAD = 512;

export interface CachedManifest {
  /** The digest the bytes were checked against. */
  digest: string;
  body: Uint8Array;
  /** Content-Type as the upstream sent it. */
  mediaType: string | null;
  etag: string | null;
}

export class ManifestCache {
  /** Map order is the LRU order: a hit is moved to the end, eviction takes from the front. */
  private readonly entries = new Map<string, CachedManifest>();
  private used = 0;
  private maxSize: number;
  enabled: boolean;
  hits = 0;
  misses = 0;
  evictions = 0;

  constructor(config: ManifestCacheConfig) {
    this.enabled = config.enabled;
    this.maxSize = config.maxSize;
  }

  /** A reload: a smaller bound evicts at once, disabling drops everything. */
  configure(config: ManifestCacheConfig): void {
    this.enabled = config.enabled;
    this.maxSize = config.enabled ? config.maxSize : 0;
    this.shrink();
  }

  get bytes(): number {
    return this.used;
  }

  get size(): number {
    return this.entries.size;
  }

  /** For the status page (status/sources.ts ManifestCacheSource). */
  state(): { entries: number; bytes: number; hits: number; misses: number } {
    return { entries: this.entries.size, bytes: this.used, hits: this.hits, misses: this.misses };
  }

  get(registry: string, repository: string, digest: string): CachedManifest | null {
    const key = cacheKey(registry, repository, digest);
    const hit = this.entries.get(key);
    if (!hit) {
      this.misses++;
      return null;
    }
    this.hits++;
    this.entries.delete(key);
    this.entries.set(key, hit);
    return hit;
  }

  /** Keeps a checked manifest; false when it is too big for the bound or the OCI limit. */
  put(registry: string, repository: string, m: CachedManifest): boolean {
    const key = cacheKey(registry, repository, m.digest);
    const cost = entryCost(key, m);
    if (!this.enabled || m.body.byteLength > MAX_CACHED_MANIFEST || cost > this.maxSize)
      return false;
    const old = this.entries.get(key);
    if (old) {
      this.entries.delete(key);
      this.used -= entryCost(key, old);
    }
    this.entries.set(key, m);
    this.used += cost;
    this.shrink();
    return true;
  }

  private shrink(): void {
    for (const [key, m] of this.entries) {
      if (this.used <= this.maxSize) break;
      this.entries.delete(key);
      this.used -= entryCost(key, m);
      this.evictions++;
    }
  }

  metricLines(): string[] {
    return [
      "# HELP crm_mirror_manifest_cache_total Manifest cache lookups (requests by digest, and by tag after its HEAD), by result.",
      "# TYPE crm_mirror_manifest_cache_total counter",
      `crm_mirror_manifest_cache_total{result="hit"} ${this.hits}`,
      `crm_mirror_manifest_cache_total{result="miss"} ${this.misses}`,
      "# HELP crm_mirror_manifest_cache_bytes Bytes charged to mirror.manifest_cache.max_size.",
      "# TYPE crm_mirror_manifest_cache_bytes gauge",
      `crm_mirror_manifest_cache_bytes ${this.used}`,
      "# HELP crm_mirror_manifest_cache_entries Manifests in the cache.",
      "# TYPE crm_mirror_manifest_cache_entries gauge",
      `crm_mirror_manifest_cache_entries ${this.entries.size}`,
      "# HELP crm_mirror_manifest_cache_evictions_total Manifests dropped to stay within max_size.",
      "# TYPE crm_mirror_manifest_cache_evictions_total counter",
      `crm_mirror_manifest_cache_evictions_total ${this.evictions}`,
    ];
  }
}

/**
 * Whose manifests an entry is: the registry's name, and also its upstream and the account crm
 * reads it with, so a reload that points the name elsewhere or drops the credentials (a private
 * repository no longer readable) never serves what the old set-up fetched.
 */
export function cacheScope(reg: RegistryConfig): string {
  return `${reg.name} ${reg.upstream.origin} ${reg.username ?? ""}`;
}

function cacheKey(registry: string, repository: string, digest: string): string {
  return `${registry}\n${repository}\n${digest}`;
}

function entryCost(key: string, m: CachedManifest): number {
  return (
    m.body.byteLength +
    key.length +
    (m.mediaType?.length ?? 0) +
    (m.etag?.length ?? 0) +
    ENTRY_OVERHEAD
  );
}
