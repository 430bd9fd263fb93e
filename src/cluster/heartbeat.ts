/**
 * Each replica says every HEARTBEAT_MS that it is alive (id, version, uptime, requests in
 * flight, and a fingerprint of the config it runs), so the status page lists the live replicas
 * and `crm doctor` can tell when the key prefix is also used by replicas of another config. An
 * entry not renewed within STALE_MS is dropped by whoever reads it.
 */
import pkg from "../../package.json" with { type: "json" };
import type { ReplicaView } from "../status/sources.ts";
import type { Store } from "./store.ts";

export type { ReplicaView };

export const HEARTBEAT_MS = 5000;
export const STALE_MS = 3 * HEARTBEAT_MS;
const MAX_FIELD = 2048;

export function replicasKey(store: Store): string {
  return store.key("replicas");
}

/** The live replicas under the prefix, oldest entries dropped. */
export async function readReplicas(
  store: Store,
  now = Date.now(),
): Promise<ReplicaView[] | undefined> {
  const all = await store.call((c) => c.hgetall(replicasKey(store)));
  if (all === undefined || all === null) return undefined;
  const out: ReplicaView[] = [];
  const stale: string[] = [];
  for (const [id, text] of Object.entries(all)) {
    let r: ReplicaView | null = null;
    try {
      r = text.length <= MAX_FIELD ? (JSON.parse(text) as ReplicaView) : null;
    } catch {
      r = null;
    }
    if (r === null || typeof r.at !== "number" || now - r.at > STALE_MS) stale.push(id);
    else
      out.push({
        id: String(r.id).slice(0, 100),
        version: String(r.version).slice(0, 40),
        host: String(r.host).slice(0, 100),
        uptimeS: Number(r.uptimeS) || 0,
        active: Number(r.active) || 0,
        config: String(r.config).slice(0, 40),
        at: r.at,
      });
  }
  if (stale.length > 0)
    void store.call((c) => c.hdel(replicasKey(store), stale[0] as string, ...stale.slice(1)));
  return out.sort((a, b) => a.id.localeCompare(b.id));
}

export class Heartbeat {
  private timer: ReturnType<typeof setInterval> | null = null;
  /** The last list read, for the status page (which must not wait for the store). */
  replicas: ReplicaView[] = [];

  constructor(
    private readonly store: Store,
    private readonly self: () => ReplicaView,
    private readonly alsoEach: () => Promise<void>,
  ) {}

  start(): void {
    void this.beat();
    this.timer = setInterval(() => void this.beat(), HEARTBEAT_MS);
    this.timer.unref?.();
  }

  async beat(): Promise<void> {
    const me = this.self();
    await this.store.call((c) => c.hset(replicasKey(this.store), { [me.id]: JSON.stringify(me) }));
    const list = await readReplicas(this.store);
    // While the store is down this replica only knows itself.
    this.replicas = list ?? [me];
    await this.alsoEach();
  }

  /** Leaving: the entry goes at once, not after STALE_MS. */
  async stop(id: string): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    await this.store.call((c) => c.hdel(replicasKey(this.store), id));
  }
}

export const VERSION = pkg.version;
