/**
 * The `limits` keys that share a public mirror fairly: a request rate per client (token bucket),
 * bandwidth per client and in total, and the clients exempt from both (the operator's own nodes).
 * Every one is off unless set, so a private instance pays nothing for them.
 */
import { parseCidr } from "../access/cidr.ts";
import { parseSize, type Checker } from "../config/checker.ts";

export interface FairShareLimits {
  /** Requests a client may start per second, on average; null: no rate limit. */
  requestsPerSecond: number | null;
  /** Requests a client may start at once after being quiet (the bucket size). */
  burst: number;
  /** Bytes per second one client may receive; null: unlimited. */
  clientBandwidth: number | null;
  /** Bytes per second all clients together may receive; null: unlimited. */
  totalBandwidth: number | null;
  /** CIDR ranges that no rate or bandwidth limit applies to. */
  exemptClients: readonly string[];
}

export const FAIR_SHARE_KEYS = [
  "requests_per_second",
  "burst",
  "client_bandwidth",
  "total_bandwidth",
  "exempt_clients",
] as const;

/** "20MiB/s", "100Mbit/s"-free: sizes per second in the max_body size syntax, "/s" optional. */
export function parseRate(value: unknown): number | string {
  const text = typeof value === "string" ? value.trim().replace(/\s*\/\s*s(ec)?$/i, "") : value;
  const n = parseSize(text);
  if (typeof n === "string" || n < 1)
    return 'must be a rate such as "20MiB/s" or "500KiB/s" (bytes per second, at least 1)';
  return n;
}

export function buildFairShare(c: Checker, l: Record<string, unknown>): FairShareLimits {
  let requestsPerSecond: number | null = null;
  if (l.requests_per_second !== undefined && l.requests_per_second !== null) {
    const v = l.requests_per_second;
    if (typeof v === "number" && Number.isFinite(v) && v > 0) requestsPerSecond = v;
    else
      c.fail(
        "limits.requests_per_second",
        v,
        "must be a number greater than 0 (requests per second per client)",
      );
  }
  let burst = requestsPerSecond === null ? 0 : Math.max(1, Math.ceil(requestsPerSecond));
  if (l.burst !== undefined && l.burst !== null) {
    const v = l.burst;
    if (typeof v === "number" && Number.isInteger(v) && v >= 1) burst = v;
    else c.fail("limits.burst", v, "must be a whole number of at least 1");
    if (requestsPerSecond === null) c.fail("limits.burst", v, "needs limits.requests_per_second");
  }
  const rate = (key: "client_bandwidth" | "total_bandwidth"): number | null => {
    const v = l[key];
    if (v === undefined || v === null) return null;
    const n = parseRate(v);
    if (typeof n === "string") {
      c.fail(`limits.${key}`, v, n);
      return null;
    }
    return n;
  };
  const exemptClients = c.stringList("limits.exempt_clients", l.exempt_clients) ?? [];
  exemptClients.forEach((entry, i) => {
    const r = parseCidr(entry);
    if (typeof r === "string") c.fail(`limits.exempt_clients[${i}]`, entry, r);
  });
  return {
    requestsPerSecond,
    burst,
    clientBandwidth: rate("client_bandwidth"),
    totalBandwidth: rate("total_bandwidth"),
    exemptClients,
  };
}
