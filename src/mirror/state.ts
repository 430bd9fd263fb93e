/**
 * What the mirror keeps for the life of a crm process, across reloads: the manifest cache and
 * the upstream quota figures. A reload builds a new mirror handler (new registries, new token
 * cache) but must neither empty the cache nor forget the quota, so both hang off the Runtime.
 */
import type { Runtime } from "../context.ts";
import { ManifestCache } from "./manifests/cache.ts";
import { QuotaTracker } from "./upstream/quota.ts";
import type { SharedManifests } from "./manifests/shared.ts";
import type { SharedTokenStore } from "./auth/token-cache.ts";

/** What replicas share for the mirror (cluster/index.ts hands it over); absent: nothing. */
export interface MirrorShared {
  manifests: SharedManifests;
  /** null with cluster.share_tokens: false. */
  tokens: SharedTokenStore | null;
  /** Shares the tracker's quota figures. */
  quota(tracker: QuotaTracker): void;
}

export interface MirrorState {
  cache: ManifestCache;
  quota: QuotaTracker;
  shared: MirrorShared | null;
}

const states = new WeakMap<Runtime, MirrorState>();
const sharing = new WeakMap<Runtime, MirrorShared>();

/** The cluster plugs in what the replicas share, before (or after) the mirror starts. */
export function shareMirrorState(rt: Runtime, shared: MirrorShared): void {
  sharing.set(rt, shared);
  const s = states.get(rt);
  if (s !== undefined && s.shared === null) {
    s.shared = shared;
    shared.quota(s.quota);
  }
}

/** The runtime's mirror state, made (and its metrics registered) on first use; applies the current config. */
export function mirrorState(rt: Runtime): MirrorState {
  let s = states.get(rt);
  if (!s) {
    const made: MirrorState = {
      cache: new ManifestCache(rt.config.mirror.manifestCache),
      quota: new QuotaTracker(),
      shared: sharing.get(rt) ?? null,
    };
    rt.metrics.sections.push(() => [...made.cache.metricLines(), ...made.quota.metricLines()]);
    rt.sources.quota = made.quota;
    rt.sources.manifestCache = made.cache;
    made.shared?.quota(made.quota);
    states.set(rt, made);
    s = made;
  }
  s.cache.configure(rt.config.mirror.manifestCache);
  return s;
}
