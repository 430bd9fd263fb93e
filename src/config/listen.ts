/**
 * The `listen` key: one address or a list. An item is a string or port as it always was
 * (`":8080"`, `"127.0.0.1:8443"`, `"[::]:443"`, `/run/crm/crm.sock`), or an object
 * `{ address, tls?, proxy_protocol? }` so one crm can serve a TLS port next to a plain one
 * (ACME http-01 and the redirect to https need a plain :80 beside :443).
 */
import type { Checker } from "./checker.ts";

export interface ListenAddress {
  hostname: string;
  port: number;
  /** An absolute path: a unix socket instead of TCP. */
  unix?: string;
  /** As written, for messages. */
  source: string;
  /** true/false as the item says; null follows the global `tls` section (TLS when it is set). */
  tls: boolean | null;
  /** Expect a PROXY protocol (v1/v2) header before the first byte of each connection. */
  proxyProtocol: boolean;
}

export const LISTEN_KEYS = ["address", "tls", "proxy_protocol"] as const;

const FORMS = 'must be a port or address such as ":8080", "8080", "127.0.0.1:8080" or "[::]:8080"';

/** Parses the address part (string or port); a string is the rule that was broken. */
export function parseListen(value: unknown): ListenAddress | string {
  const source = String(value);
  if (typeof value === "string" && value.startsWith("/"))
    return { hostname: "", port: 0, unix: value, source, tls: null, proxyProtocol: false };
  if (typeof value === "number") value = String(value);
  if (typeof value !== "string") return FORMS;
  const s = value.trim();
  let host = "0.0.0.0";
  let portText = s;
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d+)$/.exec(s);
  if (m) {
    host = m[1] ?? (m[2] === "" || m[2] === undefined ? "0.0.0.0" : m[2]);
    portText = m[3] ?? "";
  }
  if (!/^\d+$/.test(portText)) return FORMS;
  const port = Number(portText);
  if (port > 65535) return "port must be between 0 and 65535";
  return { hostname: host, port, source, tls: null, proxyProtocol: false };
}

/** Every `listen` item, with errors reported on `c` by key path (`listen[1].tls`). */
export function buildListen(c: Checker, raw: unknown): ListenAddress[] {
  const listen: ListenAddress[] = [];
  const rawListen = raw ?? ":8080";
  const items = Array.isArray(rawListen) ? rawListen : [rawListen];
  items.forEach((v, i) => {
    const path = items.length > 1 || Array.isArray(rawListen) ? `listen[${i}]` : "listen";
    if (v !== null && typeof v === "object" && !Array.isArray(v)) {
      const o = c.object(path, v, LISTEN_KEYS) ?? {};
      if (o.address === undefined || o.address === null) {
        c.fail(`${path}.address`, null, 'is required (for example ":80")');
        return;
      }
      const a = parseListen(o.address);
      if (typeof a === "string") return c.fail(`${path}.address`, o.address, a);
      const tls =
        o.tls === undefined || o.tls === null ? null : c.bool(`${path}.tls`, o.tls, false);
      listen.push({
        ...a,
        tls,
        proxyProtocol: c.bool(`${path}.proxy_protocol`, o.proxy_protocol, false),
      });
      return;
    }
    const a = parseListen(v);
    if (typeof a === "string") c.fail(path, v, a);
    else listen.push(a);
  });
  if (Array.isArray(rawListen) && rawListen.length === 0)
    c.fail("listen", rawListen, "must name at least one address");
  return listen;
}

/** Whether a listener serves TLS: its own `tls`, else whether the config has a `tls` section. */
export function listenerIsTls(addr: ListenAddress, tlsSection: boolean): boolean {
  return addr.tls ?? tlsSection;
}

/**
 * The PROXY header comes before a TLS handshake, in plain text, and a TLS listener only hands crm
 * decrypted bytes: the two cannot share a listener, so the config says so instead of every
 * connection failing.
 */
export function checkProxyProtocolTls(
  c: Checker,
  listen: readonly ListenAddress[],
  globalTls: boolean,
  listed: boolean,
): void {
  listen.forEach((l, i) => {
    if (l.proxyProtocol && listenerIsTls(l, globalTls)) {
      c.fail(
        `${listed ? `listen[${i}]` : "listen"}.proxy_protocol`,
        true,
        "cannot be combined with TLS on the same listener (the PROXY header precedes the TLS handshake): terminate TLS at the balancer",
      );
    }
  });
}

/**
 * A PROXY header names any address its sender likes, so it is believed only from the balancer:
 * without trusted_proxies a proxy_protocol listener would refuse every connection.
 */
export function checkProxyProtocolTrust(
  c: Checker,
  listen: readonly ListenAddress[],
  trustedProxies: readonly string[],
  listed: boolean,
): void {
  if (trustedProxies.length > 0) return;
  listen.forEach((l, i) => {
    if (l.proxyProtocol)
      c.fail(
        `${listed ? `listen[${i}]` : "listen"}.proxy_protocol`,
        true,
        "needs access.trusted_proxies: list the balancer's addresses in access.trusted_proxies",
      );
  });
}
