/**
 * What crm is doing right now, for the status page: the requests and tunnels in flight (bytes
 * so far, current rate), totals per registry, and each registry's throughput over the last 15
 * minutes in 10-second buckets (the sparkline). Byte counts are read from the request or tunnel
 * itself (a getter), sampled every few seconds while anything is in flight and once more at the
 * end, so the hot path pays nothing. Memory is bounded: one entry per open request, 90 buckets
 * per registry, and at most MAX_REGISTRIES registries.
 */
import { LinkedList, type Linked } from "../linked-list.ts";

export const BUCKET_MS = 10_000;
export const BUCKETS = 90;
const SAMPLE_MS = 2_000;
const MAX_REGISTRIES = 64;
/** Requests and tunnels that are not mirror pulls are counted under this name. */
export const PROXY_GROUP = "proxy";

/** What the mirror says about a pull: the status record keeps these as fields of their own. */
export interface PullFields {
  registry: string;
  repo: string;
  /** Tag, digest, or "tags/list". */
  ref: string;
}

export interface ActiveInput {
  id: string;
  client: string;
  method: string;
  /** Read when shown, so a request nobody looks at never pays for redacting its target. */
  target: () => string;
  /** Read when shown: the kind and the mirror's pull fields are known only later. */
  kind: () => string;
  pull: () => PullFields | null;
  bytes: () => number;
}

/** One request or tunnel in flight: the handle begin() returns and end() takes. */
export interface Active extends Linked<Active> {
  input: ActiveInput;
  ended: boolean;
  /** Replaced by the final count when the request ends. */
  bytes: () => number;
  started: number;
  sampled: number;
  sampledAt: number;
  rate: number;
}

export interface ActiveView {
  id: string;
  client: string;
  kind: string;
  method: string;
  target: string;
  registry: string | null;
  repo: string | null;
  ref: string | null;
  bytes: number;
  /** Bytes per second since the previous sample. */
  rate: number;
  ms: number;
}

export interface RegistryView {
  name: string;
  requests: number;
  errors: number;
  bytes: number;
  /** Bytes per bucket, oldest first, BUCKETS long; the last bucket is the current one. */
  spark: number[];
}

interface Totals {
  requests: number;
  errors: number;
  bytes: number;
  /** Ring of byte counts per bucket; `epoch` is the bucket number of index (epoch % BUCKETS). */
  buckets: number[];
  epoch: number;
}

export class ActivityBoard {
  /** In flight, oldest first: a linked list, not a Map by id (linked-list.ts says why). */
  private readonly inFlight = new LinkedList<Active>();
  private readonly totals = new Map<string, Totals>();
  private timer: Timer | null = null;

  constructor(private readonly now: () => number = Date.now) {}

  begin(input: ActiveInput): Active {
    const t = this.now();
    const a: Active = {
      input,
      prev: null,
      next: null,
      ended: false,
      bytes: input.bytes,
      started: t,
      sampled: 0,
      sampledAt: t,
      rate: 0,
    };
    this.inFlight.push(a);
    // Sampling runs only while something is in flight (the timer stops at the first idle tick),
    // so an idle crm has no timer and a busy one does not start and stop one per request.
    if (this.timer === null) {
      this.timer = setInterval(() => this.tick(), SAMPLE_MS);
      (this.timer as { unref?: () => void }).unref?.();
    }
    return a;
  }

  private tick(): void {
    if (this.inFlight.size === 0 && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
      return;
    }
    this.sample();
  }

  /**
   * The request or tunnel ended with `status` after `total` bytes (both directions): its last
   * bytes and its count go to its registry.
   */
  end(a: Active, status: number, total?: number): void {
    if (a.ended) return;
    a.ended = true;
    if (total !== undefined) a.bytes = () => total;
    this.sampleOne(a, this.now());
    this.inFlight.remove(a);
    const group = groupOf(a.input);
    if (group !== null) {
      const tot = this.group(group);
      if (tot) {
        tot.requests++;
        if (status >= 400 || status === 0) tot.errors++;
      }
    }
  }

  get size(): number {
    return this.inFlight.size;
  }

  sample(): void {
    const t = this.now();
    for (const a of this.inFlight) this.sampleOne(a, t);
  }

  activeView(): ActiveView[] {
    this.sample();
    const t = this.now();
    return [...this.inFlight].map((a) => {
      const { input } = a;
      const p = input.pull();
      return {
        id: input.id,
        client: input.client,
        kind: input.kind(),
        method: input.method,
        target: input.target(),
        registry: p?.registry ?? null,
        repo: p?.repo ?? null,
        ref: p?.ref ?? null,
        bytes: a.sampled,
        rate: Math.round(a.rate),
        ms: t - a.started,
      };
    });
  }

  registries(): RegistryView[] {
    const epoch = Math.floor(this.now() / BUCKET_MS);
    return [...this.totals].map(([name, tot]) => {
      this.roll(tot, epoch);
      const spark: number[] = [];
      for (let e = epoch - BUCKETS + 1; e <= epoch; e++)
        spark.push(tot.buckets[((e % BUCKETS) + BUCKETS) % BUCKETS] ?? 0);
      return { name, requests: tot.requests, errors: tot.errors, bytes: tot.bytes, spark };
    });
  }

  private sampleOne(a: Active, t: number): void {
    const b = a.bytes();
    const delta = b - a.sampled;
    if (t > a.sampledAt) a.rate = (delta * 1000) / (t - a.sampledAt);
    a.sampled = b;
    a.sampledAt = t;
    if (delta <= 0) return;
    const group = groupOf(a.input);
    const tot = group === null ? null : this.group(group);
    if (!tot) return;
    this.roll(tot, Math.floor(t / BUCKET_MS));
    tot.bytes += delta;
    const i = tot.epoch % BUCKETS;
    tot.buckets[i] = (tot.buckets[i] ?? 0) + delta;
  }

  private group(name: string): Totals | null {
    let tot = this.totals.get(name);
    if (!tot) {
      if (this.totals.size >= MAX_REGISTRIES) return null;
      tot = {
        requests: 0,
        errors: 0,
        bytes: 0,
        buckets: new Array<number>(BUCKETS).fill(0),
        epoch: Math.floor(this.now() / BUCKET_MS),
      };
      this.totals.set(name, tot);
    }
    return tot;
  }

  /** Moves the ring forward to `epoch`, zeroing the buckets it passes. */
  private roll(tot: Totals, epoch: number): void {
    if (epoch <= tot.epoch) return;
    const steps = Math.min(BUCKETS, epoch - tot.epoch);
    for (let s = 1; s <= steps; s++) tot.buckets[(tot.epoch + s) % BUCKETS] = 0;
    tot.epoch = epoch;
  }
}

/** Mirror pulls count under their registry, proxy traffic together, crm's own pages not at all. */
function groupOf(a: ActiveInput): string | null {
  const pull = a.pull();
  if (pull !== null) return pull.registry;
  const kind = a.kind();
  return kind === "connect" || kind === "forward" || kind === "mitm" ? PROXY_GROUP : null;
}
