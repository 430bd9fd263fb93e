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
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t];
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
    if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > (isIP(addr) === 6 ? 128 : 32)) return `has an invalid prefix length (0-${width})`;
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

/**
 * Destinations a public proxy must not reach for its clients: loopback, private, link-local (the
 * cloud metadata address 169.254.169.254), CGNAT, multicast, reserved and unspecified, and the
 * IPv6 forms that embed IPv4 (NAT64, 6to4) since they can route to the same places.
 */
export const NON_PUBLIC = new CidrList([
  "0.0.0.0/8",
  "10.0.0.0/8",
  "100.64.0.0/10",
  "127.0.0.0/8",
  "169.254.0.0/16",
  "172.16.0.0/12",
  "192.0.0.0/24",
  "192.0.2.0/24",
  "192.168.0.0/16",
  "198.18.0.0/15",
  "198.51.100.0/24",
  "203.0.113.0/24",
  "224.0.0.0/4",
  "240.0.0.0/4",
  "::/128",
  "::1/128",
  "64:ff9b::/96",
  "64:ff9b:1::/48",
  "100::/64",
  "2001:db8::/32",
  "2002::/16",
  "fc00::/7",
  "fe80::/10",
  "ff00::/8",
]);
