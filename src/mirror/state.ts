/**
 * What the mirror keeps for the life of a crm process, across reloads: the manifest cache and
 * the upstream quota figures. A reload builds a new mirror handler (new registries, new token
 * cache) but must neither empty the cache nor forget the quota, so both hang off the Runtime.
 */
import type { Runtime } from "../context.ts";
import { ManifestCache } from "./manifests/cache.ts";
import { QuotaTracker } from "./upstream-quota.ts";

export interface MirrorState {
  cache: ManifestCache;
  quota: QuotaTracker;
}

const states = new WeakMap<Runtime, MirrorState>();

/** The runtime's mirror state, made (and its metrics registered) on first use; applies the current config. */
export function mirrorState(rt: Runtime): MirrorState {
  let s = states.get(rt);
  if (!s) {
    const made: MirrorState = { cache: new ManifestCache(rt.config.mirror.manifestCache), quota: new QuotaTracker() };
    rt.metrics.sections.push(() => [...made.cache.metricLines(), ...made.quota.metricLines()]);
    rt.sources.quota = made.quota;
    rt.sources.manifestCache = made.cache;
    rt.cluster?.quota.attach(made.quota);
    states.set(rt, made);
    s = made;
  }
  s.cache.configure(rt.config.mirror.manifestCache);
  return s;
}
