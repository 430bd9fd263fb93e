/**
 * The upstream quota figures (`ratelimit-*` of the last manifest answer, mirror/upstream/quota.ts)
 * shared per registry, so any replica's /metrics and status page show the latest figure whichever
 * replica saw it. Written when a replica sees a new figure (at most once a second per registry),
 * read with the heartbeat; the newest (by when it was seen) wins.
 */
import type { QuotaTracker } from "../mirror/upstream/quota.ts";
import type { RateLimit } from "../status/quota.ts";
import type { Store } from "./store.ts";

const WRITE_EVERY_MS = 1000;
const MAX_FIELD = 1024;
/** How far ahead of this replica's clock another's figure may be dated. */
const MAX_SKEW_MS = 60_000;

export class SharedQuota {
  private readonly written = new Map<string, number>();
  private readonly pending = new Map<string, RateLimit>();
  private readonly timers = new Map<string, ReturnType<typeof setTimeout>>();
  private trackers: QuotaTracker[] = [];
  constructor(
    private readonly store: Store,
    /** The configured registry names: the only ones another replica's figures are taken for. */
    private readonly registries: () => ReadonlySet<string> | ReadonlyMap<string, unknown>,
  ) {}

  /** A tracker (mirror/state.ts) whose figures are shared. */
  attach(tracker: QuotaTracker): void {
    this.trackers.push(tracker);
    tracker.shared = (registry, rl) => this.publish(registry, rl);
  }

  private publish(registry: string, rl: RateLimit): void {
    this.pending.set(registry, rl);
    if (this.timers.has(registry)) return;
    const last = this.written.get(registry) ?? 0;
    const wait = Math.max(0, last + WRITE_EVERY_MS - Date.now());
    // At most one write a second per registry, and the latest figure is the one written.
    const timer = setTimeout(() => {
      this.timers.delete(registry);
      const latest = this.pending.get(registry);
      this.pending.delete(registry);
      if (latest === undefined) return;
      this.written.set(registry, Date.now());
      this.store.detached((c) =>
        c.hset(this.store.key("quota"), { [registry]: JSON.stringify(latest) }),
      );
    }, wait);
    timer.unref?.();
    this.timers.set(registry, timer);
  }

  /** Takes the other replicas' newer figures (called with each heartbeat). */
  async pull(): Promise<void> {
    if (this.trackers.length === 0) return;
    const all = await this.store.call((c) => c.hgetall(this.store.key("quota")));
    if (all === undefined || all === null) return;
    const mine = this.registries();
    const now = Date.now();
    for (const [registry, text] of Object.entries(all)) {
      // The hash is the network's: a name this config does not have would only be a new series
      // on /metrics (without bound, and with whatever characters it holds).
      if (!mine.has(registry) || text.length > MAX_FIELD) continue;
      let rl: RateLimit;
      try {
        rl = JSON.parse(text) as RateLimit;
      } catch {
        continue;
      }
      if (
        typeof rl.limit !== "number" ||
        typeof rl.remaining !== "number" ||
        typeof rl.at !== "number" ||
        !Number.isFinite(rl.limit) ||
        !Number.isFinite(rl.remaining) ||
        // A figure "seen" in the future would win over every real one until then.
        !(rl.at <= now + MAX_SKEW_MS)
      )
        continue;
      const clean: RateLimit = {
        limit: rl.limit,
        remaining: rl.remaining,
        windowS: typeof rl.windowS === "number" ? rl.windowS : null,
        source: typeof rl.source === "string" ? rl.source.slice(0, 200) : null,
        at: rl.at,
      };
      for (const t of this.trackers) t.merge(registry, clean);
    }
  }
}
