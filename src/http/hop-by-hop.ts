/**
 * The fields a proxy must not pass on (RFC 9110 §7.6.1): they describe one hop, not the message.
 * Kept in one place so the forward, MITM and mirror paths apply the same rule.
 */
import type { HeaderList } from "./head.ts";

const HOP_BY_HOP = new Set([
  "connection", // RFC 9110 §7.6.1: and every field it names
  "proxy-connection", // non-standard, sent by old clients; means the same as Connection
  "keep-alive", // RFC 9112 §C.2.2 (HTTP/1.0 keep-alive)
  "te", // RFC 9110 §10.1.4: hop-by-hop by definition
  "trailer", // RFC 9110 §6.6.2: trailers are not forwarded by crm
  "transfer-encoding", // RFC 9112 §6.1: crm re-frames every body it relays
  "upgrade", // RFC 9110 §7.8: crm does not switch protocols on a forwarded hop
  "proxy-authorization", // RFC 9110 §11.7.2: credentials for crm, never for the upstream
  "proxy-authenticate", // RFC 9110 §11.7.1: a challenge from a proxy further on
]);

const NONE: ReadonlySet<string> = new Set();

/** Names listed in Connection (RFC 9110 §7.6.1), lower-cased. */
function connectionNamed(headers: Iterable<[string, string]>): Set<string> {
  const named = new Set<string>();
  for (const [k, v] of headers) {
    if (k.toLowerCase() !== "connection") continue;
    for (const t of v.split(",")) {
      const n = t.trim().toLowerCase();
      if (n) named.add(n);
    }
  }
  return named;
}

/** Drops hop-by-hop fields and `extra` (lower-case names) from a header list. */
export function endToEnd(headers: HeaderList, extra: ReadonlySet<string> = NONE): HeaderList {
  const named = connectionNamed(headers);
  return headers.filter(([k]) => {
    const l = k.toLowerCase();
    return !HOP_BY_HOP.has(l) && !named.has(l) && !extra.has(l);
  });
}

export const VIA = "1.1 crm";

/** Appends crm to Via (RFC 9110 §7.6.3) so loops and the chain of proxies stay visible. */
export function addVia(existing: string | null): string {
  return existing ? `${existing}, ${VIA}` : VIA;
}
