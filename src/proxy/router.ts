/**
 * Decides what a request head is: a CONNECT tunnel, an absolute-form forward, or a request for
 * crm itself. The allow-list is applied here, before any DNS lookup or dial, so no handler can
 * forget it.
 */
import { HttpError } from "../errors.ts";
import type { HostPolicy } from "../host-policy.ts";
import { normalizeHost } from "../host-policy.ts";
import type { RequestHead } from "../http/head.ts";
import { formatHostPort } from "../net/host-port.ts";
import type { Authority, Route } from "./exchange.ts";

/**
 * Splits `host:port` (RFC 9110 §7.2, IPv6 in brackets). Userinfo, percent-encoding and anything
 * a resolver would not take are refused: a name is checked and dialled exactly as written.
 */
export function parseAuthority(text: string, defaultPort: number | null): Authority {
  if (text.includes("@"))
    throw new HttpError(400, "user information in the request target is not allowed");
  if (text.includes("%")) throw new HttpError(400, "percent-encoded host names are not allowed");
  const m = /^(\[[^\]]*\]|[^:[\]]*)(?::(\d{1,5}))?$/.exec(text);
  if (!m) throw new HttpError(400, `malformed authority ${JSON.stringify(text.slice(0, 100))}`);
  const rawHost = m[1] ?? "";
  const portText = m[2];
  if (portText === undefined && defaultPort === null)
    throw new HttpError(400, "CONNECT target must be host:port");
  const port = portText === undefined ? (defaultPort as number) : Number(portText);
  if (port < 1 || port > 65535) throw new HttpError(400, `invalid port ${portText}`);
  const host = normalizeHost(rawHost);
  if (host === "" || rawHost.startsWith("[") !== host.includes(":")) {
    throw new HttpError(400, `invalid host ${JSON.stringify(rawHost.slice(0, 100))}`);
  }
  return { host, port };
}

function refuse(policy: HostPolicy, host: string, port: number): void {
  const d = policy.check(host, port);
  if (!d.allowed)
    throw new HttpError(403, `crm: ${formatHostPort(host, port)} is not allowed (${d.reason})`);
}

/**
 * `secureAuthority` is set on a decrypted MITM connection: there, origin-form requests go to the
 * CONNECT host over TLS rather than to crm's own endpoints.
 */
export function route(
  head: RequestHead,
  policy: HostPolicy,
  secureAuthority: Authority | null = null,
): Route {
  const t = head.target;
  if (head.method === "CONNECT") {
    if (secureAuthority) throw new HttpError(400, "CONNECT inside an intercepted tunnel");
    const a = parseAuthority(t, null);
    refuse(policy, a.host, a.port);
    exactUrl(`https://${formatHostPort(a.host, a.port)}/`, a.host);
    return { kind: "connect", host: a.host, port: a.port };
  }
  if (t.startsWith("/")) {
    if (secureAuthority) {
      const url = exactUrl(
        `https://${formatHostPort(secureAuthority.host, secureAuthority.port)}${t}`,
        secureAuthority.host,
      );
      return { kind: "forward", url, ...secureAuthority };
    }
    return { kind: "local", path: t };
  }
  const m = /^(https?):\/\/([^/?#]*)([/?][^#]*)?$/i.exec(t);
  if (!m) {
    if (t === "*" && head.method === "OPTIONS") return { kind: "local", path: "*" };
    throw new HttpError(400, "malformed request target");
  }
  const scheme = (m[1] ?? "http").toLowerCase();
  const a = parseAuthority(m[2] ?? "", scheme === "https" ? 443 : 80);
  refuse(policy, a.host, a.port);
  let path = m[3] ?? "/";
  if (path.startsWith("?")) path = "/" + path;
  return {
    kind: "forward",
    url: exactUrl(`${scheme}://${formatHostPort(a.host, a.port)}${path}`, a.host),
    host: a.host,
    port: a.port,
  };
}

/**
 * Builds the upstream URL and insists the URL parser kept the host the allow-list saw: WHATWG
 * turns `2130706433`, `0x7f.1` or `127.1` into 127.0.0.1, and refuses `10.1.2.999` outright.
 */
function exactUrl(text: string, host: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch (cause) {
    throw new HttpError(400, `invalid host ${JSON.stringify(host.slice(0, 100))}`, { cause });
  }
  if (url.hostname.replace(/^\[|\]$/g, "") !== host)
    throw new HttpError(400, `ambiguous host ${JSON.stringify(host.slice(0, 100))}`);
  return url;
}
