/**
 * The `listen` key: each item is an address string (as it always was) or an object
 * `{ address, tls?, proxy_protocol? }` for per-listener options. Kept apart from config.ts so the
 * listener options (TLS per listener, PROXY protocol) grow here without touching the rest.
 */

export interface ListenAddress {
  hostname: string;
  port: number;
  /** An absolute path: a unix socket instead of TCP. */
  unix?: string;
  /** As written, for messages. */
  source: string;
  /** Serve this listener over TLS; null follows the global `tls` section. */
  tls: boolean | null;
  /** Every connection starts with a PROXY protocol v1/v2 header naming the real client. */
  proxyProtocol: boolean;
}

export const LISTEN_OBJECT_KEYS = ["address", "tls", "proxy_protocol"] as const;

const ADDRESS_RULE = 'must be a port or address such as ":8080", "8080", "127.0.0.1:8080" or "[::]:8080"';

/** Parses one address string (or bare port number). */
export function parseListen(value: unknown): ListenAddress | string {
  const source = String(value);
  if (typeof value === "string" && value.startsWith("/")) return { hostname: "", port: 0, unix: value, source, tls: null, proxyProtocol: false };
  if (typeof value === "number") value = String(value);
  if (typeof value !== "string") return ADDRESS_RULE;
  const s = value.trim();
  let host = "0.0.0.0";
  let portText = s;
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d+)$/.exec(s);
  if (m) {
    host = m[1] ?? (m[2] === "" || m[2] === undefined ? "0.0.0.0" : m[2]);
    portText = m[3] ?? "";
  }
  if (!/^\d+$/.test(portText)) return ADDRESS_RULE;
  const port = Number(portText);
  if (port > 65535) return "port must be between 0 and 65535";
  return { hostname: host, port, source, tls: null, proxyProtocol: false };
}

/** What the config checker offers this module (structurally: config.ts's Checker). */
export interface ListenChecks {
  fail(path: string, value: unknown, rule: string): void;
  object(path: string, value: unknown, known: readonly string[]): Record<string, unknown> | null;
  bool(path: string, value: unknown, dflt: boolean): boolean;
}

/** Parses one `listen` item: a string, a port number, or the object form. */
export function parseListenItem(c: ListenChecks, path: string, value: unknown): ListenAddress | null {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    const o = c.object(path, value, LISTEN_OBJECT_KEYS) ?? {};
    if (o.address === undefined || o.address === null) {
      c.fail(`${path}.address`, null, "is required (an address such as \"127.0.0.1:8080\" or a unix socket path)");
      return null;
    }
    const a = parseListen(o.address);
    if (typeof a === "string") {
      c.fail(`${path}.address`, o.address, a);
      return null;
    }
    const tls = o.tls === undefined || o.tls === null ? null : c.bool(`${path}.tls`, o.tls, false);
    return { ...a, tls, proxyProtocol: c.bool(`${path}.proxy_protocol`, o.proxy_protocol, false) };
  }
  const a = parseListen(value);
  if (typeof a === "string") {
    c.fail(path, value, a);
    return null;
  }
  return a;
}

/**
 * The PROXY header comes before a TLS handshake, in plain text, and a TLS listener only hands crm
 * decrypted bytes: the two cannot share a listener, so the config says so instead of every
 * connection failing.
 */
export function checkProxyProtocolTls(c: ListenChecks, listen: readonly ListenAddress[], globalTls: boolean, listed: boolean): void {
  listen.forEach((l, i) => {
    if (l.proxyProtocol && (l.tls === true || (l.tls === null && globalTls))) {
      c.fail(`${listed ? `listen[${i}]` : "listen"}.proxy_protocol`, true, "cannot be combined with TLS on the same listener (the PROXY header precedes the TLS handshake): terminate TLS at the balancer");
    }
  });
}
