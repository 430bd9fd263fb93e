/**
 * Loopback ports for servers that must be told their port before they start (pebble, its DNS,
 * crm's ACME listeners, which pebble has to know in advance).
 *
 * Asking the kernel for port 0 and closing it again is not enough: the kernel hands the same
 * port out again soon (measured here: 21 of 20,000 windows of six probes held a repeat), and
 * any bind(0) in between, such as docker-registry's, can take a port before its owner binds it.
 * A reservation keeps every port bound until `release()`, so the ports are distinct and nobody
 * else is given them while the test gets its other servers ready; release just before the
 * owner binds.
 */
import type { TCPSocketListener } from "bun";

export interface PortReservation {
  ports: number[];
  /** Closes the placeholder listeners; idempotent. */
  release(): void;
}

export function reservePorts(n: number): PortReservation {
  const held: TCPSocketListener<undefined>[] = [];
  for (let i = 0; i < n; i++)
    held.push(Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } }));
  return {
    ports: held.map((h) => h.port),
    release() {
      for (const h of held.splice(0)) h.stop(true);
    },
  };
}

/** `n` distinct ports that were free a moment ago, for an owner that binds them at once. */
export function freePorts(n: number): number[] {
  const r = reservePorts(n);
  r.release();
  return r.ports;
}

/** How a server that lost the race for its port says so (Go's and the kernel's wording). */
export const BIND_FAILED = /address already in use/i;

/**
 * Starts a server that must be given its ports, on fresh ones each attempt: a port handed out
 * free can still be taken by another process before the server binds it. Only a bind failure
 * is retried (three attempts in all); any other failure is thrown at once, with every attempt's.
 */
export async function startOnFreePorts<T>(
  what: string,
  start: (attempt: number) => Promise<T>,
): Promise<T> {
  const failures: Error[] = [];
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await start(attempt);
    } catch (err) {
      const e = err instanceof Error ? err : new Error(String(err));
      failures.push(e);
      if (!BIND_FAILED.test(e.message)) break;
    }
  }
  throw new Error(
    `${what} failed to start after ${failures.length} attempt(s):\n${failures.map((f) => f.message).join("\n\n")}`,
    { cause: failures.at(-1) },
  );
}
