/**
 * Bandwidth limits: bytes sent to clients, per client (`limits.client_bandwidth`) and in total
 * (`limits.total_bandwidth`). Applied by pacing READS from the upstream side, never by buffering:
 * a response body is read one slice at a time and the next read waits for its grant (so TCP
 * backpressure reaches the upstream), and a tunnel's upstream socket is paused until its last
 * chunk is paid for. Under the total cap, waiting clients are served in start-time fair order
 * over bytes (the client that has been granted least goes next), so N active clients get about
 * 1/N each however many streams each opens. A client is an IPv4 address or an IPv6 /64 (clientKey).
 */
import { CidrList } from "../access/cidr.ts";
import { clientKey } from "../access/client-address.ts";
import type { FairShareLimits } from "./config.ts";

/** The most bytes one grant covers: bounds what a paced stream holds, and the fairness quantum. */
export const SLICE = 64 * 1024;
/** A bucket holds this much time's worth of bytes: a short burst after a pause, never a long one. */
const BURST_SECONDS = 0.25;
const MAX_IDLE_CLIENTS = 10_000;

interface Bucket {
  rate: number;
  cap: number;
  tokens: number;
  at: number;
}

function bucket(rate: number, now: number): Bucket {
  const cap = Math.max(SLICE, rate * BURST_SECONDS);
  return { rate, cap, tokens: cap, at: now };
}

function refill(b: Bucket, now: number): void {
  b.tokens = Math.min(b.cap, b.tokens + ((now - b.at) / 1000) * b.rate);
  b.at = now;
}

interface Waiter {
  bytes: number;
  grant: () => void;
}

interface ClientState {
  own: Bucket | null;
  queue: Waiter[];
  /** Virtual time: bytes granted, counted from when it last joined the line (fair queueing). */
  vtime: number;
}

export class Bandwidth {
  private clientRate: number | null = null;
  private total: Bucket | null = null;
  private exempt: CidrList | null = null;
  private readonly clients = new Map<string, ClientState>();
  /** Clients with queued grants. */
  private readonly waiting = new Set<ClientState>();
  /** The virtual time of the last grant: a client joining the line starts here, so idling earns no credit. */
  private clock = 0;
  private timer: Timer | null = null;

  constructor(limits: FairShareLimits) {
    this.configure(limits);
  }

  /** SIGHUP: new rates apply from the next grant; queued readers are re-examined at once. */
  configure(limits: FairShareLimits): void {
    const now = performance.now();
    this.clientRate = limits.clientBandwidth;
    this.total = limits.totalBandwidth === null ? null : bucket(limits.totalBandwidth, now);
    this.exempt = limits.exemptClients.length > 0 ? new CidrList(limits.exemptClients) : null;
    for (const st of this.clients.values())
      st.own = this.clientRate === null ? null : bucket(this.clientRate, now);
    if (this.waiting.size > 0) this.run();
  }

  /** False when no bandwidth limit is set: callers then skip pacing entirely. */
  get active(): boolean {
    return this.clientRate !== null || this.total !== null || this.waiting.size > 0;
  }

  applies(client: string): boolean {
    return this.active && (this.exempt === null || this.exempt.match(client) === null);
  }

  /**
   * Asks to send `bytes` (at most SLICE) to `client`: null when it may go now, else a promise
   * that resolves when it may. Buckets run into debt by the grant, so the next one waits.
   */
  acquire(client: string, bytes: number): Promise<void> | null {
    if (!this.applies(client)) return null;
    const now = performance.now();
    const st = this.state(clientKey(client), now);
    if (this.waiting.size === 0 && this.ready(st, now)) {
      this.charge(st, bytes);
      return null;
    }
    return new Promise<void>((grant) => {
      st.queue.push({ bytes, grant });
      if (!this.waiting.has(st)) {
        st.vtime = Math.max(st.vtime, this.clock);
        this.waiting.add(st);
      }
      this.schedule(0);
    });
  }

  private state(client: string, now: number): ClientState {
    let st = this.clients.get(client);
    if (st === undefined) {
      if (this.clients.size >= MAX_IDLE_CLIENTS) this.prune();
      st = {
        own: this.clientRate === null ? null : bucket(this.clientRate, now),
        queue: [],
        vtime: this.clock,
      };
      this.clients.set(client, st);
    }
    return st;
  }

  private ready(st: ClientState, now: number): boolean {
    if (this.total !== null) {
      refill(this.total, now);
      if (this.total.tokens <= 0) return false;
    }
    if (st.own !== null) {
      refill(st.own, now);
      if (st.own.tokens <= 0) return false;
    }
    return true;
  }

  private charge(st: ClientState, bytes: number): void {
    if (this.total !== null) this.total.tokens -= bytes;
    if (st.own !== null) st.own.tokens -= bytes;
  }

  private schedule(ms: number): void {
    if (this.timer !== null) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.run();
    }, ms);
  }

  /** Grants what the buckets allow, each time to the eligible waiting client with the least virtual time. */
  private run(): void {
    const now = performance.now();
    while (this.waiting.size > 0) {
      if (this.total !== null) {
        refill(this.total, now);
        if (this.total.tokens <= 0) break;
      }
      let next: ClientState | null = null;
      for (const st of this.waiting) {
        if (st.own !== null) {
          refill(st.own, now);
          if (st.own.tokens <= 0) continue;
        }
        if (next === null || st.vtime < next.vtime) next = st;
      }
      if (next === null) break;
      const w = next.queue.shift() as Waiter;
      this.clock = next.vtime;
      next.vtime += w.bytes;
      this.charge(next, w.bytes);
      if (next.queue.length === 0) this.waiting.delete(next);
      w.grant();
    }
    if (this.waiting.size > 0) this.schedule(this.nextGrantMs());
  }

  /** How long until some waiting client can be served. */
  private nextGrantMs(): number {
    if (this.total !== null && this.total.tokens <= 0)
      return Math.max(1, (-this.total.tokens / this.total.rate) * 1000);
    let ms = Infinity;
    for (const st of this.waiting) {
      if (st.own === null || st.own.tokens > 0) return 1;
      ms = Math.min(ms, (-st.own.tokens / st.own.rate) * 1000);
    }
    return Math.max(1, Number.isFinite(ms) ? ms : 1);
  }

  private prune(): void {
    for (const [k, st] of this.clients) if (st.queue.length === 0) this.clients.delete(k);
  }

  /**
   * The response with its body paced for `client`: the upstream body is read one slice per
   * grant, so at most one upstream chunk is held at a time.
   */
  pace(res: Response, client: string): Response {
    const body = res.body;
    if (body === null || !this.applies(client)) return res;
    const reader = body.getReader();
    let pending: Uint8Array | null = null;
    const paced = new ReadableStream<Uint8Array>(
      {
        pull: async (ctrl) => {
          let chunk: Uint8Array;
          if (pending !== null) chunk = pending;
          else {
            const r = await reader.read();
            if (r.done) {
              ctrl.close();
              return;
            }
            chunk = r.value;
          }
          const slice = chunk.byteLength > SLICE ? chunk.subarray(0, SLICE) : chunk;
          pending = chunk.byteLength > SLICE ? chunk.subarray(SLICE) : null;
          const wait = this.acquire(client, slice.byteLength);
          if (wait !== null) await wait;
          ctrl.enqueue(slice);
        },
        cancel: (reason) => reader.cancel(reason),
      },
      { highWaterMark: 0 },
    );
    return new Response(paced, {
      status: res.status,
      statusText: res.statusText,
      headers: res.headers,
    });
  }
}
