/**
 * What a cluster shares for manifests (cluster/manifests.ts implements it): a manifest another
 * replica has already paid a pull for, and one upstream GET by digest for all replicas. The
 * mirror hands over its own GET (`local`) and says how a verified manifest looks in its result,
 * so this interface needs none of the mirror's request types and the cluster can sit above it.
 */
import type { CachedManifest } from "./cache.ts";

export interface SharedManifestWant {
  /** cacheScope() of the registry: whose manifests these are. */
  scope: string;
  repository: string;
  digest: string;
  /** The log line of the request that leads (hit, waited, led, down). */
  logFields: Record<string, string | number>;
}

export interface SharedManifests {
  /**
   * The manifest from the shared store (verified against `want.digest`), else `local()` once
   * across replicas. `manifestOf`: the verified manifest in a local result (to share it);
   * `fromStore`: a result made of a manifest read from the store.
   */
  fetch<R>(
    want: SharedManifestWant,
    signal: AbortSignal,
    local: () => Promise<R>,
    manifestOf: (r: R) => CachedManifest | null,
    fromStore: (m: CachedManifest) => R,
  ): Promise<R>;
}
