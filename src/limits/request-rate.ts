/**
 * Per-client request rate for the mirror and the proxy: a token bucket per IPv4 address or IPv6
 * /64 (clientKey; `limits.requests_per_second` refill, `limits.burst` size). Over it a request is refused with
 * 429 and Retry-After before any work is done for it. Exempt ranges and an unset rate cost one
 * branch.
 */
import { CidrList } from "../access/cidr.ts";
import { clientKey } from "../access/client-address.ts";
import type { FairShareLimits } from "./config.ts";

interface Bucket {
  tokens: number;
  at: number;
}

/** The rate counted once for every replica (cluster/rate.ts implements it). */
export interface SharedRateCounter {
  /** null: allowed; a number: seconds to wait; undefined: the store did not decide. */
  take(clientKey: string, rate: number, burst: number): Promise<number | null | undefined>;
}

/** Buckets kept before idle (full) ones are dropped; bounds memory under a spray of addresses. */
const MAX_BUCKETS = 50_000;

export class RequestRate {
  private readonly buckets = new Map<string, Bucket>();
  private rate: number | null = null;
  private burst = 1;
  private exempt: CidrList | null = null;
  /** Set by the cluster (cluster/rate.ts): the rate is counted once for every replica. */
  shared: SharedRateCounter | null = null;

  constructor(limits: FairShareLimits) {
    this.configure(limits);
  }

  /** SIGHUP: new rates apply to the buckets as they are. */
  configure(limits: FairShareLimits): void {
    this.rate = limits.requestsPerSecond;
    this.burst = limits.burst;
    this.exempt = limits.exemptClients.length > 0 ? new CidrList(limits.exemptClients) : null;
    if (this.rate === null) this.buckets.clear();
  }

  get enabled(): boolean {
    return this.rate !== null;
  }

  /** Takes one request from the client's bucket: null if allowed, else seconds until one is. */
  take(client: string, now = performance.now()): number | null {
    const rate = this.rate;
    if (rate === null) return null;
    if (this.exempt !== null && this.exempt.match(client) !== null) return null;
    const key = clientKey(client);
    let b = this.buckets.get(key);
    if (b === undefined) {
      if (this.buckets.size >= MAX_BUCKETS) this.prune(now);
      b = { tokens: this.burst, at: now };
      this.buckets.set(key, b);
    } else {
      b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * rate);
      b.at = now;
    }
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return null;
    }
    return Math.max(1, Math.ceil((1 - b.tokens) / rate));
  }

  /**
   * take(), counted in the cluster's store when there is one; the local bucket decides when the
   * store does not answer within its deadline.
   */
  async check(client: string): Promise<number | null> {
    const rate = this.rate;
    if (rate === null || this.shared === null) return this.take(client);
    if (this.exempt !== null && this.exempt.match(client) !== null) return null;
    const got = await this.shared.take(clientKey(client), rate, this.burst);
    return got === undefined ? this.take(client) : got;
  }

  private prune(now: number): void {
    const rate = this.rate ?? 1;
    for (const [k, b] of this.buckets)
      if (b.tokens + ((now - b.at) / 1000) * rate >= this.burst) this.buckets.delete(k);
    if (this.buckets.size >= MAX_BUCKETS) this.buckets.clear();
  }
}
