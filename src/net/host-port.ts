/**
 * `host:port` as a URL authority and a log field: an IPv6 literal is bracketed. A leaf, so the
 * dialer, the upstream client and the router format targets the same way without importing
 * each other.
 */
export function formatHostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
