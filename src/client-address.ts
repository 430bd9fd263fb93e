/**
 * The real client behind a front (nginx, Caddy, HAProxy, a cloud load balancer). From a peer in
 * `access.trusted_proxies` (CIDR ranges, or "unix" for unix-socket listeners) the client is the
 * rightmost `X-Forwarded-For` address that is not itself a trusted proxy (else `Forwarded: for=`);
 * from anyone else those fields are ignored and removed before anything is forwarded, so a client
 * cannot name itself someone else. Limits, the password brake, logs and metrics all use the result.
 */
import { isIP } from "node:net";
import { CidrList, parseCidr } from "./cidr.ts";
import { headerValues, type HeaderList } from "./http/head.ts";

/** The peer name of a unix-socket connection (it has no address). */
export const UNIX_PEER = "unix";

export interface TrustedProxyChecks {
  fail(path: string, value: unknown, rule: string): void;
  stringList(path: string, value: unknown): string[] | null;
}

/** `access.trusted_proxies`: CIDR ranges and "unix". */
export function buildTrustedProxies(c: TrustedProxyChecks, value: unknown): string[] {
  const list = c.stringList("access.trusted_proxies", value) ?? [];
  list.forEach((entry, i) => {
    if (entry === UNIX_PEER) return;
    const r = parseCidr(entry);
    if (typeof r === "string") c.fail(`access.trusted_proxies[${i}]`, entry, `${r} (or "unix" for unix-socket listeners)`);
  });
  return list;
}

/** An address as crm names clients: no brackets, no port, IPv4-mapped IPv6 as IPv4. */
function cleanAddress(raw: string): string | null {
  let s = raw.trim();
  if (s.startsWith('"') && s.endsWith('"') && s.length >= 2) s = s.slice(1, -1);
  if (s.startsWith("[")) {
    const end = s.indexOf("]");
    if (end < 0) return null;
    s = s.slice(1, end);
  } else if (s.includes(".") && s.includes(":") && s.indexOf(":") === s.lastIndexOf(":")) {
    s = s.slice(0, s.indexOf(":")); // 192.0.2.1:4711
  }
  if (s.toLowerCase().startsWith("::ffff:") && isIP(s.slice(7)) === 4) s = s.slice(7);
  return isIP(s) !== 0 ? s.toLowerCase() : null;
}

/** The `for=` addresses of a Forwarded field (RFC 7239), in order. */
function forwardedFor(values: string[]): Array<string | null> {
  const out: Array<string | null> = [];
  for (const v of values) {
    for (const element of v.split(",")) {
      const pair = element.split(";").map((p) => p.trim()).find((p) => p.toLowerCase().startsWith("for="));
      if (pair !== undefined) out.push(cleanAddress(pair.slice(4)));
    }
  }
  return out;
}

export class ClientAddress {
  private readonly ranges: CidrList | null;
  private readonly unixTrusted: boolean;

  constructor(trusted: readonly string[]) {
    const cidrs = trusted.filter((t) => t !== UNIX_PEER);
    this.ranges = cidrs.length > 0 ? new CidrList(cidrs) : null;
    this.unixTrusted = trusted.includes(UNIX_PEER);
  }

  /** Nothing configured: every peer is its own client and no header is looked at. */
  get off(): boolean {
    return this.ranges === null && !this.unixTrusted;
  }

  trusts(peer: string): boolean {
    if (peer === UNIX_PEER) return this.unixTrusted;
    return this.ranges !== null && this.ranges.match(peer) !== null;
  }

  /**
   * The client a request speaks for. For an untrusted peer, the forwarding fields are removed
   * from `headers` (in place) so they are neither believed nor passed on.
   */
  resolve(peer: string, headers: HeaderList): string {
    if (!this.trusts(peer)) {
      stripForwarding(headers);
      return peer;
    }
    const xff = headerValues(headers, "x-forwarded-for");
    const chain = xff.length > 0 ? xff.join(",").split(",").map(cleanAddress) : forwardedFor(headerValues(headers, "forwarded"));
    // Walk from the nearest hop back: each trusted proxy vouches for the one before it.
    let client = peer;
    for (let i = chain.length - 1; i >= 0; i--) {
      const a = chain[i];
      if (a === null || a === undefined) break;
      client = a;
      if (!this.trusts(a)) break;
    }
    return client;
  }
}

/** Removes every X-Forwarded-For and Forwarded field: what no trusted front vouched for. */
export function stripForwarding(headers: HeaderList): void {
  for (let i = headers.length - 1; i >= 0; i--) {
    const name = (headers[i] as [string, string])[0];
    // The length test first: this runs on every request, and almost no name has either length.
    if ((name.length === 15 || name.length === 9) && /^(x-forwarded-for|forwarded)$/i.test(name)) headers.splice(i, 1);
  }
}
