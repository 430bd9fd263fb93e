/**
 * The budget of a client outside access.clients on the plain listener beside ACME. It is let in
 * only so the CA's validators reach http-01 (tls/plain-listener.ts), so it must not be able to
 * spend what the proxy's users need: its connections are counted apart from max_connections and
 * max_connections_per_client, in a small budget of their own, and a silent one is cut sooner.
 */
export const CHALLENGE_ONLY = {
  /** Open connections from all such clients together (a CA validates from a handful of places); when full, the oldest is closed for a newcomer. */
  total: 64,
  /** Open connections from one such network (IPv4 /24 or IPv6 /48); over it a newcomer is refused. */
  perClient: 4,
  /** Longest wait for a request head (and between requests) on such a connection. */
  headMs: 3_000,
} as const;
