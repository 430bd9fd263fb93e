/**
 * The real client behind a front (nginx, Caddy, HAProxy, a cloud load balancer). From a peer in
 * `access.trusted_proxies` (CIDR ranges, or "unix" for unix-socket listeners) the client is the
 * rightmost address of the one field `access.forwarded_header` names (`X-Forwarded-For` or
 * `Forwarded: for=`) that is not itself a trusted proxy. Only that field: a front that sets one
 * passes the other through from its client untouched, so believing it would let a client name
 * itself. Fields nobody vouched for are removed before anything is forwarded. Limits, the
 * password brake, logs and metrics all use the result.
 */
import { isIP } from "node:net";
import type { Checker } from "../config/checker.ts";
import { CidrList, parseCidr } from "./cidr.ts";
import { headerValues, type HeaderList } from "../http/head.ts";
import { peerAddress } from "./peer-address.ts";

/** The peer name of a unix-socket connection (it has no address). */
export const UNIX_PEER = "unix";

/** `access.trusted_proxies`: CIDR ranges and "unix". */
export function buildTrustedProxies(c: Checker, value: unknown): string[] {
  const list = c.stringList("access.trusted_proxies", value) ?? [];
  list.forEach((entry, i) => {
    if (entry === UNIX_PEER) return;
    const r = parseCidr(entry);
    if (typeof r === "string")
      c.fail(`access.trusted_proxies[${i}]`, entry, `${r} (or "unix" for unix-socket listeners)`);
  });
  return list;
}

/**
 * Who a connection is from when its PROXY header named nobody (v1 UNKNOWN, v2 UNSPEC or UNIX, v2
 * LOCAL, which HAProxy also sends for clients of its unix-socket frontends). Not the balancer's
 * address: that would hand every such client the balancer's standing in status.clients,
 * metrics.clients, access.clients and its request journal. Not an address at all, so it matches
 * no CIDR list; limits count it under the balancer's key (clientKey), where it came from.
 */
const UNKNOWN_VIA = "unknown via ";

export function unknownClient(balancer: string): string {
  return UNKNOWN_VIA + balancer;
}

export function isUnknownClient(client: string): boolean {
  return client.startsWith(UNKNOWN_VIA);
}

/**
 * What limits count a client by: an IPv4 address, or the /64 of an IPv6 one (one subscriber's
 * LAN gets a whole /64, so counting each address would hand one client 2^64 brake windows,
 * buckets and fair shares). Two kinds of IPv6 address are not a subscriber's /64: a link-local
 * one (fe80::/10, every host on the link shares fe80::/64, so one neighbour would lock out all
 * others) counts by its full address, and a NAT64 one (64:ff9b::/96, every IPv4 host behind the
 * translator shares its /64) by the IPv4 address it carries. Logs and metrics keep the full address.
 */
export function clientKey(address: string): string {
  if (isUnknownClient(address)) return clientKey(address.slice(UNKNOWN_VIA.length));
  // Callers pass normalised addresses (peer-address.ts); a mapped one slipping through must
  // still not become the one /64 every IPv4 client shares.
  if (isIP(address) !== 6 || /^::ffff:/i.test(address)) address = peerAddress(address);
  if (isIP(address) !== 6) return address;
  const groups = ipv6Groups(address.split("%")[0] as string);
  // fe80::/10: the first 10 bits are 1111 1110 10.
  if (((groups[0] as number) & 0xffc0) === 0xfe80) return peerAddress(address);
  if (groups[0] === 0x64 && groups[1] === 0xff9b && groups.slice(2, 6).every((g) => g === 0)) {
    const a = groups[6] as number;
    const b = groups[7] as number;
    return `${a >> 8}.${a & 255}.${b >> 8}.${b & 255}`;
  }
  return `${groups
    .slice(0, 4)
    .map((g) => g.toString(16))
    .join(":")}::/64`;
}

/**
 * A network, not a host: an IPv4 /24 or an IPv6 /48 (what one site or one small hosting
 * customer gets). For budgets a stranger must not be able to fill by holding many addresses of
 * its own (the challenge-only budget beside ACME); anything not an address is itself.
 */
export function networkKey(address: string): string {
  if (isUnknownClient(address)) return networkKey(address.slice(UNKNOWN_VIA.length));
  const ip = peerAddress(address);
  if (isIP(ip) === 4) return `${ip.split(".").slice(0, 3).join(".")}.0/24`;
  if (isIP(ip) !== 6) return ip;
  return `${ipv6Groups(ip.split("%")[0] as string)
    .slice(0, 3)
    .map((g) => g.toString(16))
    .join(":")}::/48`;
}

/** The eight 16-bit groups of a valid IPv6 address (no zone), a dotted IPv4 tail as two groups. */
function ipv6Groups(plain: string): number[] {
  const parse = (part: string): number[] =>
    part === ""
      ? []
      : part.split(":").flatMap((g) => {
          if (!g.includes(".")) return [parseInt(g, 16)];
          const [a = 0, b = 0, c = 0, d = 0] = g.split(".").map(Number);
          return [(a << 8) | b, (c << 8) | d];
        });
  const [head = "", tail] = plain.split("::");
  const h = parse(head);
  if (tail === undefined) return h;
  const t = parse(tail);
  return [...h, ...Array<number>(Math.max(0, 8 - h.length - t.length)).fill(0), ...t];
}

/** Which field a trusted front sets to name its client (`access.forwarded_header`). */
export type ForwardedHeader = "x-forwarded-for" | "forwarded";

export function buildForwardedHeader(c: Checker, value: unknown): ForwardedHeader {
  if (value === undefined || value === null) return "x-forwarded-for";
  if (value === "x-forwarded-for" || value === "forwarded") return value;
  c.fail(
    "access.forwarded_header",
    value,
    'must be "x-forwarded-for" or "forwarded" (the field your front sets, overwriting or appending to what the client sent)',
  );
  return "x-forwarded-for";
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
  return isIP(s) !== 0 ? peerAddress(s.toLowerCase()) : null;
}

/** The `for=` addresses of a Forwarded field (RFC 7239), in order. */
function forwardedFor(values: string[]): Array<string | null> {
  const out: Array<string | null> = [];
  for (const v of values) {
    for (const element of v.split(",")) {
      const pair = element
        .split(";")
        .map((p) => p.trim())
        .find((p) => p.toLowerCase().startsWith("for="));
      if (pair !== undefined) out.push(cleanAddress(pair.slice(4)));
    }
  }
  return out;
}

export class ClientAddress {
  private readonly ranges: CidrList | null;
  private readonly unixTrusted: boolean;

  constructor(
    trusted: readonly string[],
    private readonly header: ForwardedHeader = "x-forwarded-for",
  ) {
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
    const values = headerValues(headers, this.header);
    stripForwarding(headers, this.header);
    const chain =
      this.header === "forwarded"
        ? forwardedFor(values)
        : values.length > 0
          ? values.join(",").split(",").map(cleanAddress)
          : [];
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

/** Removes the X-Forwarded-For and Forwarded fields (but `keep`): what no trusted front vouched for. */
export function stripForwarding(headers: HeaderList, keep: ForwardedHeader | null = null): void {
  for (let i = headers.length - 1; i >= 0; i--) {
    const name = (headers[i] as [string, string])[0];
    // The length test first: this runs on every request, and almost no name has either length.
    if (
      (name.length === 15 || name.length === 9) &&
      /^(x-forwarded-for|forwarded)$/i.test(name) &&
      name.toLowerCase() !== keep
    )
      headers.splice(i, 1);
  }
}
