/**
 * The start-up warning for an open proxy: crm listening beyond loopback with neither
 * access.clients nor access.users lets anyone who can reach the port use it (and its allowed
 * hosts, and the registries' credentials through the mirror). Not an error: a private network
 * or a firewall may be the operator's access control.
 */
import { parseIp } from "./cidr.ts";
import type { Config, ListenAddress } from "./config.ts";

function isLoopback(a: ListenAddress): boolean {
  if (a.unix !== undefined) return true;
  const host = a.hostname.replace(/^\[|\]$/g, "").toLowerCase();
  if (host === "localhost") return true;
  const ip = parseIp(host);
  if (ip === null) return false;
  return ip.v6 ? ip.bits === 1n : ip.bits >> 24n === 127n;
}

/** One warning per exposed listen address, or none when access is restricted. */
export function openProxyWarnings(config: Config): string[] {
  if (config.access.clients.length > 0 || config.access.users.size > 0) return [];
  return config.listen
    .filter((a) => !isLoopback(a))
    .map((a) => `anyone who can reach ${/^\d+$/.test(a.source) ? ":" + a.source : a.source} may use this proxy; set access.clients or access.users`);
}
