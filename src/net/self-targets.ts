/**
 * crm's own listening sockets as targets. A client that asks crm to forward to (or CONNECT to)
 * crm itself comes back in from crm's own address: 127.0.0.1, inside the loopback defaults of
 * status.clients and metrics.clients, and past access.clients. So when allow_private_networks
 * and the allow-list would let such a target through, /status.json and /metrics would open to
 * any client. The root of it is the dial, which hands the client crm's own address: the address
 * a target resolves to, with its port, is compared with the bound listeners (a wildcard listener
 * stands for every address of this host). A forward request to crm is refused (crm's upstream
 * connections are pooled and shared, so none can carry one client's identity; the client can ask
 * crm directly). A CONNECT to crm is kept (a client with crm as HTTPS_PROXY pulling from crm's own
 * TLS mirror name does that), but its tunnel's socket is noted, and the connection crm accepts
 * from it is the tunnelling client's, not crm's (`claimedBy`).
 */
import { isIP } from "node:net";
import { networkInterfaces } from "node:os";
import { SelfTargetError } from "../errors.ts";
import type { Resolver } from "./resolver.ts";

/** How long the host's interface addresses are reused before they are read again. */
const INTERFACES_TTL_MS = 10_000;

export interface BoundAddress {
  hostname: string;
  port: number;
}

export class SelfTargets {
  private listeners: () => readonly BoundAddress[] = () => [];
  private local: { at: number; addresses: Set<string> } | null = null;
  /** Tunnels crm opened to itself: "address|port" of the tunnel socket's own end → the client. */
  private readonly tunnels = new Map<string, string>();

  /** A tunnel to crm itself is open from `local`: connections from there are `client`'s. */
  noteTunnel(localAddress: string, localPort: number, client: string): () => void {
    const key = `${plain(localAddress)}|${localPort}`;
    this.tunnels.set(key, client);
    return () => {
      if (this.tunnels.get(key) === client) this.tunnels.delete(key);
    };
  }

  /** The client whose tunnel to crm this accepted connection is, or null. */
  claimedBy(remoteAddress: string | undefined, remotePort: number | undefined): string | null {
    if (remoteAddress === undefined || remotePort === undefined || this.tunnels.size === 0)
      return null;
    return this.tunnels.get(`${plain(remoteAddress)}|${remotePort}`) ?? null;
  }

  /** The server names its bound listeners once they are bound (port 0 resolved). */
  setListeners(listeners: () => readonly BoundAddress[]): void {
    this.listeners = listeners;
  }

  /** Whether a connection to `address`:`port` would reach one of crm's own listeners. */
  matches(address: string, port: number): boolean {
    const a = plain(address);
    for (const l of this.listeners()) {
      if (l.port !== port || l.port === 0) continue;
      const h = plain(l.hostname);
      if (h === a) return true;
      if (isWildcard(h) && this.isLocal(a)) return true;
    }
    return false;
  }

  private isLocal(address: string): boolean {
    if (address === "::1" || /^127\./.test(address) || address === "0.0.0.0" || address === "::")
      return true;
    const now = Date.now();
    if (this.local === null || now - this.local.at > INTERFACES_TTL_MS) {
      const addresses = new Set<string>();
      for (const list of Object.values(networkInterfaces()))
        for (const i of list ?? []) addresses.add(plain(i.address));
      this.local = { at: now, addresses };
    }
    return this.local.addresses.has(address);
  }
}

/** `resolve` that refuses (403, DialError "self") an address that is crm's own listener on `port`. */
export function refusingSelf(resolve: Resolver, self: SelfTargets, port: number): Resolver {
  return async (host) => {
    const address = await resolve(host);
    if (self.matches(address, port)) throw new SelfTargetError(host, address, port);
    return address;
  };
}

function isWildcard(h: string): boolean {
  return h === "" || h === "0.0.0.0" || h === "::";
}

/** Lower case, no brackets or zone, IPv4-mapped IPv6 as IPv4. */
function plain(address: string): string {
  let a =
    address
      .replace(/^\[|\]$/g, "")
      .split("%")[0]
      ?.toLowerCase() ?? "";
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(a);
  if (mapped) a = mapped[1] as string;
  if (isIP(a) === 6) {
    try {
      a = new URL(`http://[${a}]/`).hostname.slice(1, -1);
      const hex = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(a);
      if (hex) {
        const x = parseInt(hex[1] as string, 16);
        const y = parseInt(hex[2] as string, 16);
        a = `${x >> 8}.${x & 255}.${y >> 8}.${y & 255}`;
      }
    } catch {
      // Not an address after all: compared as written.
    }
  }
  return a;
}
