/**
 * The start-up warning for an open proxy: crm listening beyond loopback with neither
 * access.clients nor access.users lets anyone who can reach the port use it (and its allowed
 * hosts, and the registries' credentials through the mirror). Not an error: a private network
 * or a firewall may be the operator's access control.
 */
import { parseCidr, parseIp } from "./cidr.ts";
import type { Config } from "../config/types.ts";
import type { ListenAddress } from "../config/listen.ts";

function isLoopback(a: ListenAddress): boolean {
  if (a.unix !== undefined) return true;
  const host = a.hostname.replace(/^\[|\]$/g, "").toLowerCase();
  if (host === "localhost") return true;
  const ip = parseIp(host);
  if (ip === null) return false;
  return ip.v6 ? ip.bits === 1n : ip.bits >> 24n === 127n;
}

/** A `/0` range (0.0.0.0/0, ::/0) restricts nothing: it is no access control. */
function everyone(clients: readonly string[]): string | null {
  for (const c of clients) {
    const r = parseCidr(c);
    if (typeof r !== "string" && r.prefix === 0) return c;
  }
  return null;
}

/** One warning per exposed listen address, or none when access is restricted. */
export function openProxyWarnings(config: Config): string[] {
  const { clients, users, mirrorAuth } = config.access;
  const all = everyone(clients);
  if (clients.length > 0 && all === null) return [];
  const exposed = config.listen
    .filter((a) => !isLoopback(a))
    .map((a) => (/^\d+$/.test(a.source) ? ":" + a.source : a.source));
  const because = all === null ? "" : ` (access.clients has ${all}, which admits every address)`;
  if (users.size === 0)
    return exposed.map(
      (a) =>
        `anyone who can reach ${a} may use this proxy${because}; set access.clients or access.users`,
    );
  // Users guard the proxy, but with mirror_auth: false the mirror at /v2/ asks nobody, unless
  // it is served under a secret mirror.path_prefix (the documented set-up for Docker).
  if (!mirrorAuth && config.mirror.enabled && config.mirror.pathPrefix === "")
    return exposed.map(
      (a) =>
        `anyone who can reach ${a} may use the mirror at /v2/: access.mirror_auth is false, so access.users does not apply to it${because}; set access.clients to your clients' ranges`,
    );
  return [];
}
