/**
 * One spelling per client address, applied where an address enters crm (the accepted socket, a
 * PROXY header, a forwarding field). A dual-stack listener ("[::]:PORT") reports IPv4 peers as
 * IPv4-mapped IPv6 (`::ffff:192.0.2.1`); left as is, clientKey() would put every IPv4 client (and
 * `::1`) in one /64, so one client's connections, rate, or failed logins would lock out all of
 * them, and logs, access lists and metrics would see two names for one client.
 */
import { isIP } from "node:net";

/**
 * The address as crm names clients: IPv4-mapped IPv6 (either spelling, `::ffff:a.b.c.d` or
 * `::ffff:7f00:1`) as dotted IPv4, other IPv6 compressed and lower-case, anything else unchanged.
 */
export function peerAddress(ip: string): string {
  if (isIP(ip) !== 6) return ip;
  let u: string;
  try {
    u = new URL(`http://[${ip.split("%")[0]}]/`).hostname.slice(1, -1);
  } catch {
    return ip.toLowerCase();
  }
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(u);
  if (mapped) {
    const a = parseInt(mapped[1] as string, 16);
    const b = parseInt(mapped[2] as string, 16);
    return `${a >> 8}.${a & 255}.${b >> 8}.${b & 255}`;
  }
  // A zone index (fe80::1%eth0) names the interface, not the peer; keep it as it came.
  return ip.includes("%") ? ip.toLowerCase() : u;
}
