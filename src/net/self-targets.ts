/**
 * crm's own listening sockets as targets. A client that asks crm to forward to (or CONNECT to)
 * crm itself comes back in from crm's own address: 127.0.0.1, inside the loopback defaults of
 * status.clients and metrics.clients, and past access.clients. So when allow_private_networks
 * and the allow-list would let such a target through, /status.json and /metrics would open to
 * any client. The root of it is the dial, not the endpoints (a CONNECT tunnel carries no field
 * crm could mark): the address a target resolves to, with its port, is compared with the bound
 * listeners, a wildcard listener standing for every address of this host, and refused.
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
    if (address === "::1" || /^127\./.test(address) || address === "0.0.0.0" || address === "::") return true;
    const now = Date.now();
    if (this.local === null || now - this.local.at > INTERFACES_TTL_MS) {
      const addresses = new Set<string>();
      for (const list of Object.values(networkInterfaces())) for (const i of list ?? []) addresses.add(plain(i.address));
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
  let a = address.replace(/^\[|\]$/g, "").split("%")[0]?.toLowerCase() ?? "";
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
