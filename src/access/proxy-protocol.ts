/**
 * The PROXY protocol header (HAProxy's spec, versions 1 and 2) that HAProxy, nginx `stream` and
 * cloud load balancers put in front of a TCP connection to name the real client. A listener with
 * `proxy_protocol: true` reads it before the first request head; a connection without one is
 * refused, since anything it says about its client would be the load balancer's address.
 */
import { isIP } from "node:net";
import { peerAddress } from "./peer-address.ts";

const V2_SIGNATURE = Buffer.from([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
]);
const V1_PREFIX = Buffer.from("PROXY ", "latin1");
/** Spec: a v1 line is at most 107 bytes with its CRLF. */
const V1_MAX = 107;
/** Addresses plus TLVs; larger is not a header any known sender produces. */
const V2_MAX_BODY = 4096;

export type ProxyHeader =
  | { kind: "incomplete" }
  /**
   * `client` is null for LOCAL (a health check from the balancer itself) and for headers without
   * a usable address (v1 UNKNOWN, v2 UNSPEC or UNIX). `local` is true only for v2 LOCAL: every
   * other header relays a client's bytes, whose forwarding fields nobody vouched for.
   */
  | { kind: "header"; client: string | null; local: boolean; rest: Buffer };

export class ProxyProtocolError extends Error {
  override name = "ProxyProtocolError";
}

function isPrefixOf(buf: Buffer, sig: Buffer): boolean {
  const n = Math.min(buf.length, sig.length);
  return buf.subarray(0, n).equals(sig.subarray(0, n));
}

/** Reads a PROXY header from the start of `buf`; throws ProxyProtocolError for anything else. */
export function readProxyHeader(buf: Buffer): ProxyHeader {
  if (isPrefixOf(buf, V2_SIGNATURE)) return buf.length < 16 ? { kind: "incomplete" } : readV2(buf);
  if (isPrefixOf(buf, V1_PREFIX)) return readV1(buf);
  throw new ProxyProtocolError(
    "this listener expects a PROXY protocol header (listen[].proxy_protocol) and the connection did not start with one",
  );
}

function readV1(buf: Buffer): ProxyHeader {
  const end = buf.indexOf("\r\n", 0, "latin1");
  if (end < 0) {
    if (buf.length >= V1_MAX) throw new ProxyProtocolError("PROXY v1 line longer than 107 bytes");
    return { kind: "incomplete" };
  }
  if (end + 2 > V1_MAX) throw new ProxyProtocolError("PROXY v1 line longer than 107 bytes");
  const parts = buf.toString("latin1", 0, end).split(" ");
  const rest = buf.subarray(end + 2);
  if (parts[1] === "UNKNOWN") return { kind: "header", client: null, local: false, rest };
  const [, proto, src, dst, sport, dport] = parts;
  const family = proto === "TCP4" ? 4 : proto === "TCP6" ? 6 : 0;
  const port = (p: string | undefined): boolean =>
    p !== undefined && /^\d{1,5}$/.test(p) && Number(p) <= 65535;
  if (
    parts.length !== 6 ||
    family === 0 ||
    src === undefined ||
    dst === undefined ||
    isIP(src) !== family ||
    isIP(dst) !== family ||
    !port(sport) ||
    !port(dport)
  ) {
    throw new ProxyProtocolError("malformed PROXY v1 line");
  }
  return { kind: "header", client: usable(normalize(src)), local: false, rest };
}

function readV2(buf: Buffer): ProxyHeader {
  const verCmd = buf[12] as number;
  const family = buf[13] as number;
  const len = buf.readUInt16BE(14);
  if (verCmd >> 4 !== 2)
    throw new ProxyProtocolError(`PROXY v2 header with version ${verCmd >> 4}`);
  const cmd = verCmd & 0x0f;
  if (cmd > 1) throw new ProxyProtocolError(`PROXY v2 header with unknown command ${cmd}`);
  if (len > V2_MAX_BODY)
    throw new ProxyProtocolError(`PROXY v2 header of ${len} bytes (limit ${V2_MAX_BODY})`);
  if (buf.length < 16 + len) return { kind: "incomplete" };
  const body = buf.subarray(16, 16 + len);
  const rest = buf.subarray(16 + len);
  // LOCAL: the balancer speaks for itself (health checks); the peer address stands.
  if (cmd === 0) return { kind: "header", client: null, local: true, rest };
  const af = family >> 4;
  if (af === 1) {
    if (len < 12) throw new ProxyProtocolError("PROXY v2 IPv4 header too short");
    return {
      kind: "header",
      client: usable([...body.subarray(0, 4)].join(".")),
      local: false,
      rest,
    };
  }
  if (af === 2) {
    if (len < 36) throw new ProxyProtocolError("PROXY v2 IPv6 header too short");
    const groups: string[] = [];
    for (let i = 0; i < 16; i += 2) groups.push(body.readUInt16BE(i).toString(16));
    return { kind: "header", client: usable(normalize(groups.join(":"))), local: false, rest };
  }
  // AF_UNSPEC or AF_UNIX: no address crm could use, but still a client's connection.
  return { kind: "header", client: null, local: false, rest };
}

/**
 * No connection comes from an unspecified, multicast or broadcast address: a header naming one
 * is forged or broken, and believing it would give every such sender one shared (or no) identity.
 */
function usable(ip: string): string {
  const v4 = isIP(ip) === 4;
  const first = v4 ? Number(ip.slice(0, ip.indexOf("."))) : 0;
  const bad = v4
    ? ip === "0.0.0.0" || ip === "255.255.255.255" || (first >= 224 && first <= 239)
    : ip === "::" || /^ff[0-9a-f]{2}:/.test(ip);
  if (bad)
    throw new ProxyProtocolError(
      `PROXY header names ${ip} as the client (unspecified, multicast or broadcast): not an address a connection comes from`,
    );
  return ip;
}

/** One spelling per address (the one node:net and Bun use): compressed IPv6, mapped IPv4 unwrapped. */
function normalize(ip: string): string {
  return peerAddress(ip);
}
