/**
 * IPv4/IPv6 ranges: the client allow-list (`access.clients`) and the SSRF guard's list of
 * destinations crm refuses by default. IPv4-mapped IPv6 (`::ffff:10.0.0.1`) is checked as IPv4,
 * so a mapped address cannot slip past an IPv4 rule.
 */
import { isIP } from "node:net";

export interface Cidr {
  source: string;
  v6: boolean;
  bits: bigint;
  prefix: number;
}

/** Parses an address into a 32- or 128-bit integer; IPv4-mapped IPv6 becomes IPv4. */
export function parseIp(text: string): { v6: boolean; bits: bigint } | null {
  let s = text.trim();
  if (s.startsWith("[") && s.endsWith("]")) s = s.slice(1, -1);
  const zone = s.indexOf("%");
  if (zone >= 0) s = s.slice(0, zone);
  const kind = isIP(s);
  if (kind === 4) return { v6: false, bits: v4Bits(s) };
  if (kind !== 6) return null;
  const bits = v6Bits(s);
  if (bits >> 32n === 0xffffn) return { v6: false, bits: bits & 0xffffffffn };
  return { v6: true, bits };
}

function v4Bits(s: string): bigint {
  return s.split(".").reduce((acc, part) => (acc << 8n) | BigInt(Number(part)), 0n);
}

function v6Bits(s: string): bigint {
  // An embedded dotted quad (::ffff:1.2.3.4) becomes two hex groups first.
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (dotted) {
    const v4 = v4Bits(dotted[1] as string);
    s = s.slice(0, dotted.index) + `${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const [head = "", tail] = s.split("::");
  const h = head === "" ? [] : head.split(":");
  const t = tail === undefined || tail === "" ? [] : tail.split(":");
  const groups =
    tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t];
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

/** Parses `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128). Returns an error text. */
export function parseCidr(text: string): Cidr | string {
  const [addr = "", prefixText] = text.split("/");
  const ip = parseIp(addr);
  if (ip === null) return "is not an IPv4 or IPv6 address or CIDR range";
  const width = ip.v6 ? 128 : 32;
  let prefix = width;
  if (prefixText !== undefined) {
    if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > (isIP(addr) === 6 ? 128 : 32))
      return `has an invalid prefix length (0-${width})`;
    prefix = Number(prefixText);
    // A mapped IPv6 range like ::ffff:10.0.0.0/104 is the IPv4 range /8.
    if (isIP(addr) === 6 && !ip.v6) prefix = Math.max(0, prefix - 96);
  }
  const mask = prefix === 0 ? 0n : ((1n << BigInt(prefix)) - 1n) << BigInt(width - prefix);
  return { source: text, v6: ip.v6, bits: ip.bits & mask, prefix };
}

export function cidrContains(c: Cidr, ip: { v6: boolean; bits: bigint }): boolean {
  if (c.v6 !== ip.v6) return false;
  const width = c.v6 ? 128 : 32;
  const shift = BigInt(width - c.prefix);
  return ip.bits >> shift === c.bits >> shift;
}

export class CidrList {
  private readonly ranges: Cidr[];
  constructor(entries: readonly string[]) {
    this.ranges = entries.map((e) => {
      const c = parseCidr(e);
      if (typeof c === "string") throw new Error(`${e} ${c}`);
      return c;
    });
  }

  /** The first range containing `address`, or null (also for text that is no address). */
  match(address: string): Cidr | null {
    const ip = parseIp(address);
    if (ip === null) return null;
    return this.ranges.find((r) => cidrContains(r, ip)) ?? null;
  }
}

/** Why the SSRF guard refuses an address: the range, as written in GUARD_TABLE. */
export interface RefusedRange {
  source: string;
}

/**
 * "true": globally reachable, allowed (an exception inside a refused block); "false": refused;
 * "embedded-v4": judged by the IPv4 address in its low 32 bits (NAT64).
 */
type Reachability = true | false | "embedded-v4";

/**
 * The SSRF guard's table. Source: the IANA IPv4 and IPv6 Special-Purpose Address Registries,
 * "Globally Reachable" column: every block marked False is refused, and every block marked True
 * that sits inside a refused one is let through again (the longest prefix decides). Blocks
 * marked N/A (6to4 2002::/16, Teredo 2001::/32, the deprecated 6to4 relay anycast
 * 192.88.99.0/24) tunnel to an IPv4 address crm cannot check, so they are refused. Added beyond
 * the registries: multicast, and the deprecated IPv6 forms that still route somewhere local
 * (IPv4-compatible ::/96, IPv4-translated ::ffff:0:0:0/96, site-local fec0::/10).
 * IPv4-mapped ::ffff:0:0/96 never reaches this table: parseIp turns it into its IPv4 address.
 */
const GUARD_TABLE: ReadonlyArray<readonly [string, Reachability]> = [
  ["0.0.0.0/8", false],
  ["10.0.0.0/8", false],
  ["100.64.0.0/10", false],
  ["127.0.0.0/8", false],
  ["169.254.0.0/16", false],
  ["172.16.0.0/12", false],
  ["192.0.0.0/24", false],
  ["192.0.0.9/32", true], // Port Control Protocol anycast
  ["192.0.0.10/32", true], // TURN anycast
  ["192.0.2.0/24", false],
  ["192.88.99.0/24", false],
  ["192.168.0.0/16", false],
  ["198.18.0.0/15", false],
  ["198.51.100.0/24", false],
  ["203.0.113.0/24", false],
  ["224.0.0.0/4", false],
  ["240.0.0.0/4", false],
  ["::/96", false],
  ["::/128", false],
  ["::1/128", false],
  ["::ffff:0:0:0/96", false],
  ["64:ff9b::/96", "embedded-v4"],
  ["64:ff9b:1::/48", false],
  ["100::/64", false],
  ["100:0:0:1::/64", false],
  ["2001::/23", false],
  ["2001:1::1/128", true],
  ["2001:1::2/128", true],
  ["2001:1::3/128", true],
  ["2001:2::/48", false],
  ["2001:3::/32", true],
  ["2001:4:112::/48", true],
  ["2001:10::/28", false],
  ["2001:20::/28", true],
  ["2001:30::/28", true],
  ["2001:db8::/32", false],
  ["2002::/16", false],
  ["3fff::/20", false],
  ["5f00::/16", false],
  ["fc00::/7", false],
  ["fe80::/10", false],
  ["fec0::/10", false],
  ["ff00::/8", false],
];

/**
 * Destinations a public proxy must not reach for its clients: everything the IANA registries do
 * not call globally reachable (loopback, private, link-local with the cloud metadata address
 * 169.254.169.254, CGNAT, documentation, benchmarking, reserved), multicast, and IPv6 forms
 * that lead to the same places.
 */
export class SpecialPurposeGuard {
  private readonly table: Array<{ cidr: Cidr; reachable: Reachability }>;

  constructor(table: ReadonlyArray<readonly [string, Reachability]>) {
    this.table = table.map(([source, reachable]) => {
      const cidr = parseCidr(source);
      if (typeof cidr === "string") throw new Error(`${source} ${cidr}`);
      return { cidr, reachable };
    });
  }

  /** The range that makes `address` non-public, or null when crm may dial it (also for non-addresses). */
  match(address: string): RefusedRange | null {
    const ip = parseIp(address);
    return ip === null ? null : this.judge(ip);
  }

  private judge(ip: { v6: boolean; bits: bigint }): RefusedRange | null {
    let best: { cidr: Cidr; reachable: Reachability } | null = null;
    for (const e of this.table)
      if (cidrContains(e.cidr, ip) && (best === null || e.cidr.prefix > best.cidr.prefix)) best = e;
    if (best === null || best.reachable === true) return null;
    if (best.reachable === false) return { source: best.cidr.source };
    const inner = this.judge({ v6: false, bits: ip.bits & 0xffffffffn });
    return inner === null ? null : { source: `${best.cidr.source} embedding ${inner.source}` };
  }
}

export const NON_PUBLIC = new SpecialPurposeGuard(GUARD_TABLE);
