/**
 * Name resolution for tunnels, kept separate from the dial so the address that is looked up is
 * the address that is connected to, and so tests can map names to 127.0.0.1 without touching
 * real DNS.
 */
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { NON_PUBLIC } from "../access/cidr.ts";
import { PrivateAddressError } from "../errors.ts";

/** Returns one address for `host`, or throws an error with code ENOTFOUND (or similar). */
export type Resolver = (host: string) => Promise<string>;

/**
 * IPv4 first when a name has both: a VPS with a configured but unrouted IPv6 address is common,
 * and crm dials one address (no happy eyeballs). An IPv6-only name still resolves.
 */
export const systemResolver: Resolver = async (host) => {
  if (isIP(host)) return host;
  const all = await lookup(host, { all: true });
  const pick = all.find((a) => a.family === 4) ?? all[0];
  if (pick === undefined)
    throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: "ENOTFOUND" });
  return pick.address;
};

/** A resolver for tests: `names` map to addresses; anything else is ENOTFOUND, "hang" never answers. */
export function staticResolver(names: Record<string, string | "hang">): Resolver {
  return async (host) => {
    if (isIP(host)) return host;
    const a = names[host];
    if (a === "hang") return new Promise<string>(() => {});
    if (a === undefined)
      throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: "ENOTFOUND" });
    return a;
  };
}

/**
 * The SSRF guard: the address a name resolves to is checked, and that same address is what the
 * caller connects to (no second lookup, so DNS rebinding cannot slip through).
 */
export function guardedResolver(base: Resolver, allowPrivate: () => boolean): Resolver {
  return async (host) => {
    const address = await base(host);
    if (!allowPrivate()) {
      const range = NON_PUBLIC.match(address);
      if (range) throw new PrivateAddressError(host, address, range.source);
    }
    return address;
  };
}
