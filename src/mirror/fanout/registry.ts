/**
 * The blob downloads in flight that a new GET may join, keyed by what makes two requests the same
 * download: registry, upstream account, repository scope and digest (a blob pulled with other
 * credentials or from another repository is another authorization decision upstream, so it is
 * never shared across those). Also the one memory budget for all windows: a download reserves its
 * window when it starts and gives it back when its last reader is gone; a download that would go
 * over the budget is not shared (its client gets its own request, as without fan-out).
 *
 * Kept on the Runtime across reloads (like mirror/state.ts): a reload must not orphan downloads
 * that readers are still on, and the counters in /metrics must not restart.
 */
import type { Runtime } from "../../context.ts";
import type { FanoutConfig } from "./config.ts";
import type { SharedDownload } from "./shared-download.ts";

export interface InFlight {
  readonly key: string;
  /** Resolves once the upstream's head is here: the download, or null when the answer is not shared. */
  readonly head: Promise<SharedDownload | null>;
  download: SharedDownload | null;
  /** The client-facing fields of the upstream's 200, copied for each reader. */
  headers: Headers | null;
  /** Requests waiting for the head; when all of them are gone the upstream request is aborted. */
  waiting: number;
  readonly controller: AbortController;
  /** The window this download reserved from the budget (cut to the blob's size once known). */
  reserved: number;
  settle(d: SharedDownload | null): void;
  released: boolean;
}

export type NotShared = "over_budget" | "late" | "range" | "ended";

export class FanoutRegistry {
  private readonly inFlight = new Map<string, InFlight>();
  private readonly live = new Set<InFlight>();
  private reserved = 0;
  private readonly counts = {
    downloads: 0,
    joins: 0,
    detached: 0,
    mismatches: 0,
    waits: 0,
    waitedMs: 0,
  };
  private readonly notShared = new Map<NotShared, number>();

  constructor(
    private rt: Runtime,
    public config: FanoutConfig,
  ) {}

  configure(rt: Runtime): void {
    this.rt = rt;
    this.config = rt.config.mirror.fanout;
  }

  get log(): Runtime["log"] {
    return this.rt.log;
  }

  find(key: string): InFlight | undefined {
    return this.inFlight.get(key);
  }

  /** A new download for `key`, its window reserved; null when that would go over the budget. */
  open(key: string): InFlight | null {
    const window = this.config.window;
    if (this.reserved + window > this.config.budget) {
      this.count("over_budget");
      return null;
    }
    this.reserved += window;
    let settle: (d: SharedDownload | null) => void = () => {};
    const head = new Promise<SharedDownload | null>((resolve) => (settle = resolve));
    const entry: InFlight = {
      key,
      head,
      download: null,
      headers: null,
      waiting: 0,
      controller: new AbortController(),
      reserved: window,
      released: false,
      settle: (d) => {
        entry.download = d;
        if (d === null) this.close(entry);
        settle(d);
      },
    };
    this.inFlight.set(key, entry);
    this.live.add(entry);
    return entry;
  }

  /** Gives back the part of `entry`'s reservation above `bytes` (a blob smaller than the window). */
  shrink(entry: InFlight, bytes: number): void {
    if (entry.released || bytes >= entry.reserved) return;
    this.reserved -= entry.reserved - bytes;
    entry.reserved = bytes;
  }

  /** No one may join `entry` any more. */
  unlist(entry: InFlight): void {
    if (this.inFlight.get(entry.key) === entry) this.inFlight.delete(entry.key);
  }

  /** `entry` holds no memory any more: unlisted, its window back in the budget. */
  close(entry: InFlight): void {
    this.unlist(entry);
    if (entry.released) return;
    entry.released = true;
    this.reserved -= entry.reserved;
    this.live.delete(entry);
  }

  started(): void {
    this.counts.downloads++;
  }

  joined(): void {
    this.counts.joins++;
  }

  detached(): void {
    this.counts.detached++;
  }

  mismatched(): void {
    this.counts.mismatches++;
  }

  waited(ms: number): void {
    this.counts.waits++;
    this.counts.waitedMs += ms;
  }

  count(reason: NotShared): void {
    this.notShared.set(reason, (this.notShared.get(reason) ?? 0) + 1);
  }

  metricLines(): string[] {
    let bytes = 0;
    for (const e of this.live) bytes += e.download?.retained ?? 0;
    const out = [
      "# HELP crm_mirror_fanout_downloads_total Blob downloads started that concurrent GETs may join (mirror.fanout).",
      "# TYPE crm_mirror_fanout_downloads_total counter",
      `crm_mirror_fanout_downloads_total ${this.counts.downloads}`,
      "# HELP crm_mirror_fanout_joins_total Blob GETs answered from a download already in flight instead of an upstream request of their own.",
      "# TYPE crm_mirror_fanout_joins_total counter",
      `crm_mirror_fanout_joins_total ${this.counts.joins}`,
      "# HELP crm_mirror_fanout_detached_total Readers that fell behind a shared download's window and continued on their own range request.",
      "# TYPE crm_mirror_fanout_detached_total counter",
      `crm_mirror_fanout_detached_total ${this.counts.detached}`,
      "# HELP crm_mirror_fanout_digest_mismatch_total Shared downloads whose bytes did not match their digest (every reader cut).",
      "# TYPE crm_mirror_fanout_digest_mismatch_total counter",
      `crm_mirror_fanout_digest_mismatch_total ${this.counts.mismatches}`,
      "# HELP crm_mirror_fanout_lag_waits_total Times a shared download waited for a reader at its window's edge (mirror.fanout.lag_grace).",
      "# TYPE crm_mirror_fanout_lag_waits_total counter",
      `crm_mirror_fanout_lag_waits_total ${this.counts.waits}`,
      "# HELP crm_mirror_fanout_lag_wait_seconds_total Time shared downloads spent waiting for readers at their window's edge.",
      "# TYPE crm_mirror_fanout_lag_wait_seconds_total counter",
      `crm_mirror_fanout_lag_wait_seconds_total ${(this.counts.waitedMs / 1000).toFixed(3)}`,
      "# HELP crm_mirror_fanout_not_shared_total Blob GETs that could not share a download, by reason (over_budget: no window left; late: byte 0 had left the window; range: a range that does not reach the blob's end or starts far beyond the bytes received; ended: the download had failed or been cancelled).",
      "# TYPE crm_mirror_fanout_not_shared_total counter",
    ];
    for (const [reason, n] of this.notShared)
      out.push(`crm_mirror_fanout_not_shared_total{reason="${reason}"} ${n}`);
    out.push(
      "# HELP crm_mirror_fanout_in_flight Shared blob downloads holding a window now (waiting for the upstream's head, or with readers).",
      "# TYPE crm_mirror_fanout_in_flight gauge",
      `crm_mirror_fanout_in_flight ${this.live.size}`,
      "# HELP crm_mirror_fanout_window_bytes Bytes held in shared downloads' windows now.",
      "# TYPE crm_mirror_fanout_window_bytes gauge",
      `crm_mirror_fanout_window_bytes ${bytes}`,
      "# HELP crm_mirror_fanout_reserved_bytes Window bytes reserved from mirror.fanout.budget now.",
      "# TYPE crm_mirror_fanout_reserved_bytes gauge",
      `crm_mirror_fanout_reserved_bytes ${this.reserved}`,
    );
    return out;
  }
}

const registries = new WeakMap<Runtime, FanoutRegistry>();

/** The runtime's registry, made (and its metrics registered) on first use; applies the current config. */
export function fanoutRegistry(rt: Runtime): FanoutRegistry {
  let r = registries.get(rt);
  if (!r) {
    const made = new FanoutRegistry(rt, rt.config.mirror.fanout);
    rt.metrics.sections.push(() => made.metricLines());
    registries.set(rt, made);
    r = made;
  }
  r.configure(rt);
  return r;
}
