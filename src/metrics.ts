/**
 * Counters for /metrics in the Prometheus text format (version 0.0.4). Every request ends in
 * exactly one observe() call (from the connection's or the tunnel's log line), so the log and
 * the metrics always agree.
 */
import { readdirSync } from "node:fs";
import type { CertificateStatus } from "./tls/status.ts";

export type RequestKind = "forward" | "connect" | "mitm" | "mirror" | "local";

/** Clients named in /metrics; the rest are summed under "other", so a spray of addresses cannot grow it. */
const MAX_CLIENTS = 100;

interface ClientCounters {
  requests: number;
  bytesOut: number;
  limited: Map<string, number>;
}

const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

interface Histogram {
  counts: number[];
  sum: number;
  count: number;
}

export interface Gauges {
  connections(): number;
  certificates(): number;
  /** Certificates served on TLS listeners (src/tls/), for the index page; their metrics are a section. */
  tls?(): readonly CertificateStatus[];
}

/**
 * A label value as the exposition format escapes it (backslash, double quote, newline): a value
 * that came from the network (a registry name read from the shared store, a client key, an
 * upstream's reason) must not end its series and start a forged one.
 */
export function labelValue(s: string): string {
  return s.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

export class Metrics {
  private readonly requests = new Map<string, number>();
  private readonly bytes = new Map<string, number>();
  private readonly upstreamErrors = new Map<string, number>();
  private readonly durations = new Map<RequestKind, Histogram>();
  private tunnels = 0;
  private readonly clients = new Map<string, ClientCounters>();
  tokenCacheHits = 0;
  tokenCacheMisses = 0;
  gauges: Gauges = { connections: () => 0, certificates: () => 0 };
  /** Families a feature renders itself (the mirror's manifest cache and upstream quota). */
  readonly sections: Array<() => string[]> = [];

  constructor(private readonly startedAt = Date.now()) {}

  observe(
    kind: RequestKind,
    status: number,
    bytesIn: number,
    bytesOut: number,
    seconds: number,
  ): void {
    const cls = status === 0 ? "none" : `${Math.floor(status / 100)}xx`;
    inc(this.requests, `${kind}|${cls}`, 1);
    inc(this.bytes, `${kind}|in`, bytesIn);
    inc(this.bytes, `${kind}|out`, bytesOut);
    let h = this.durations.get(kind);
    if (!h) {
      h = { counts: BUCKETS.map(() => 0), sum: 0, count: 0 };
      this.durations.set(kind, h);
    }
    for (let i = 0; i < BUCKETS.length; i++)
      if (seconds <= (BUCKETS[i] as number)) ((h.counts[i] as number)++, (i = BUCKETS.length));
    h.sum += seconds;
    h.count++;
  }

  /** One request or tunnel of `client` ended, with this many bytes sent to it. */
  client(client: string, bytesOut: number): void {
    const c = this.clientCounters(client);
    c.requests++;
    c.bytesOut += bytesOut;
  }

  /** A request of `client` refused by a limit ("rate", "brake"). */
  limited(client: string, limit: string): void {
    const c = this.clientCounters(client);
    c.limited.set(limit, (c.limited.get(limit) ?? 0) + 1);
  }

  private clientCounters(client: string): ClientCounters {
    let c = this.clients.get(client);
    if (c === undefined) {
      const key = this.clients.size >= MAX_CLIENTS ? "other" : client;
      c = this.clients.get(key) ?? { requests: 0, bytesOut: 0, limited: new Map() };
      this.clients.set(key, c);
    }
    return c;
  }

  upstreamError(reason: string): void {
    inc(this.upstreamErrors, reason, 1);
  }

  tunnelOpened(): void {
    this.tunnels++;
  }

  tunnelClosed(): void {
    this.tunnels--;
  }

  render(): string {
    const out: string[] = [];
    const family = (name: string, type: string, help: string): void => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    };
    family(
      "crm_requests_total",
      "counter",
      "Requests and tunnels handled, by kind and status class.",
    );
    for (const [k, v] of this.requests) {
      const [kind, cls] = k.split("|");
      out.push(`crm_requests_total{kind="${kind}",status="${cls}"} ${v}`);
    }
    family(
      "crm_bytes_total",
      "counter",
      "Body bytes relayed, by kind and direction (in: from clients, out: to clients).",
    );
    for (const [k, v] of this.bytes) {
      const [kind, dir] = k.split("|");
      out.push(`crm_bytes_total{kind="${kind}",direction="${dir}"} ${v}`);
    }
    family(
      "crm_upstream_errors_total",
      "counter",
      "Failed upstream connections and requests, by reason.",
    );
    for (const [k, v] of this.upstreamErrors)
      out.push(`crm_upstream_errors_total{reason="${labelValue(k)}"} ${v}`);
    family(
      "crm_request_duration_seconds",
      "histogram",
      "Time from request head to the end of the answer.",
    );
    for (const [kind, h] of this.durations) {
      let cum = 0;
      BUCKETS.forEach((b, i) => {
        cum += h.counts[i] as number;
        out.push(`crm_request_duration_seconds_bucket{kind="${kind}",le="${b}"} ${cum}`);
      });
      out.push(`crm_request_duration_seconds_bucket{kind="${kind}",le="+Inf"} ${h.count}`);
      out.push(`crm_request_duration_seconds_sum{kind="${kind}"} ${h.sum.toFixed(6)}`);
      out.push(`crm_request_duration_seconds_count{kind="${kind}"} ${h.count}`);
    }
    family(
      "crm_client_requests_total",
      "counter",
      `Requests and tunnels by client address (the first ${MAX_CLIENTS}; later ones as "other").`,
    );
    for (const [k, c] of this.clients)
      out.push(`crm_client_requests_total{client="${labelValue(k)}"} ${c.requests}`);
    family("crm_client_bytes_out_total", "counter", "Body bytes sent to each client.");
    for (const [k, c] of this.clients)
      out.push(`crm_client_bytes_out_total{client="${labelValue(k)}"} ${c.bytesOut}`);
    family(
      "crm_client_limited_total",
      "counter",
      "Requests refused by a per-client limit, by client and limit.",
    );
    for (const [k, c] of this.clients)
      for (const [limit, n] of c.limited)
        out.push(
          `crm_client_limited_total{client="${labelValue(k)}",limit="${labelValue(limit)}"} ${n}`,
        );
    family(
      "crm_active_connections",
      "gauge",
      "Open client connections (a decrypted MITM stream counts as its own).",
    );
    out.push(`crm_active_connections ${this.gauges.connections()}`);
    family("crm_active_tunnels", "gauge", "Open CONNECT tunnels.");
    out.push(`crm_active_tunnels ${this.tunnels}`);
    family("crm_mirror_token_cache_total", "counter", "Mirror upstream token lookups, by result.");
    out.push(
      `crm_mirror_token_cache_total{result="hit"} ${this.tokenCacheHits}`,
      `crm_mirror_token_cache_total{result="miss"} ${this.tokenCacheMisses}`,
    );
    family("crm_mitm_certificates", "gauge", "Leaf certificates in the MITM cache.");
    out.push(`crm_mitm_certificates ${this.gauges.certificates()}`);
    for (const section of this.sections) out.push(...section());
    family("crm_process_resident_memory_bytes", "gauge", "Resident set size.");
    out.push(`crm_process_resident_memory_bytes ${process.memoryUsage.rss()}`);
    const fds = openFds();
    if (fds !== null) {
      family("crm_process_open_fds", "gauge", "Open file descriptors.");
      out.push(`crm_process_open_fds ${fds}`);
    }
    family("crm_uptime_seconds", "gauge", "Seconds since start.");
    out.push(`crm_uptime_seconds ${((Date.now() - this.startedAt) / 1000).toFixed(3)}`);
    return out.join("\n") + "\n";
  }
}

function inc(m: Map<string, number>, k: string, by: number): void {
  m.set(k, (m.get(k) ?? 0) + by);
}

function openFds(): number | null {
  try {
    return readdirSync("/proc/self/fd").length;
  } catch {
    return null;
  }
}
