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

/** Entries read per beat at most: a hash grown huge (ghosts, or a hostile writer) costs no more. */
const MAX_READ = 512;
const SCAN_COUNT = 128;
/** How far ahead of this replica's clock another's beat may be dated. */
const MAX_SKEW_MS = 60_000;

/** Control characters (C0, C1) and bidi overrides: a field from the store must not carry them. */
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
const clean = (v: unknown, max: number): string => String(v).replace(UNSAFE, "").slice(0, max);

/**
 * The live replicas under the prefix, stale and future-dated entries dropped. Read with HSCAN up
 * to MAX_READ entries (not HGETALL), so a huge hash never makes a beat overrun its deadline.
 */
export async function readReplicas(
  store: Store,
  now = Date.now(),
): Promise<ReplicaView[] | undefined> {
  const all = await store.call(async (c) => {
    const got: Array<[string, string]> = [];
    let cursor = "0";
    do {
      const page = (await c.send("HSCAN", [
        replicasKey(store),
        cursor,
        "COUNT",
        String(SCAN_COUNT),
      ])) as unknown;
      if (!Array.isArray(page) || !Array.isArray(page[1])) break;
      cursor = String(page[0]);
      const flat = page[1] as unknown[];
      for (let i = 0; i + 1 < flat.length; i += 2) got.push([String(flat[i]), String(flat[i + 1])]);
    } while (cursor !== "0" && got.length < MAX_READ);
    return got.slice(0, MAX_READ);
  });
  if (all === undefined) return undefined;
  const out: ReplicaView[] = [];
  const stale: string[] = [];
  for (const [id, text] of all) {
    let r: ReplicaView | null = null;
    try {
      r = text.length <= MAX_FIELD ? (JSON.parse(text) as ReplicaView) : null;
    } catch {
      r = null;
    }
    if (
      r === null ||
      typeof r.at !== "number" ||
      !(now - r.at <= STALE_MS) ||
      // A beat dated ahead would stay "live" until then: a ghost.
      r.at > now + MAX_SKEW_MS
    )
      stale.push(id);
    else
      out.push({
        id: clean(r.id, 100),
        version: clean(r.version, 40),
        host: clean(r.host, 100),
        uptimeS: Number.isFinite(Number(r.uptimeS)) ? Number(r.uptimeS) : 0,
        active: Number.isFinite(Number(r.active)) ? Number(r.active) : 0,
        config: clean(r.config, 40),
        at: r.at,
      });
  }
  if (stale.length > 0)
    store.detached((c) => c.hdel(replicasKey(store), stale[0] as string, ...stale.slice(1)));
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
    // While the store is down this replica only knows itself; with a huge hash its own entry may
    // lie beyond what one read takes, but it is live all the same.
    this.replicas =
      list === undefined
        ? [me]
        : list.some((r) => r.id === me.id)
          ? list
          : [...list, me].sort((a, b) => a.id.localeCompare(b.id));
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
