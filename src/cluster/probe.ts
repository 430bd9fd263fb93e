/**
 * Why the store refused a connection. Bun's RedisClient reports a refused password (or a
 * missing one) only as "Connection closed", the same words as an unreachable host, so start-up
 * could not tell a wrong password (a config error: stop) from a store that is down (run on
 * local state and reconnect). This asks the store itself, once: one RESP command on a plain or
 * TLS socket (`AUTH` when a password is set, else `PING`), and reads the first reply line.
 */
import type { ClusterConfig } from "./config.ts";

export type ProbeResult =
  { kind: "ok" } | { kind: "refused"; message: string } | { kind: "unreachable"; message: string };

/** RESP array of bulk strings. */
function command(args: string[]): string {
  return `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join("")}`;
}

/** The first reply line, or why there is none within `ms`. */
export async function probeStore(k: ClusterConfig, ms: number): Promise<ProbeResult> {
  const args =
    k.password === null
      ? ["PING"]
      : k.username === null
        ? ["AUTH", k.password]
        : ["AUTH", k.username, k.password];
  const port = Number(k.url.port || 6379);
  const hostname = k.url.hostname.replace(/^\[|\]$/g, "");
  let resolveFn: (r: ProbeResult) => void = () => {};
  const done = new Promise<ProbeResult>((r) => (resolveFn = r));
  let buf = "";
  const timer = setTimeout(
    () => resolveFn({ kind: "unreachable", message: `no answer within ${ms} ms` }),
    ms,
  );
  let socket: Awaited<ReturnType<typeof Bun.connect>> | null = null;
  try {
    socket = await Bun.connect({
      hostname,
      port,
      tls: k.tls ? { ca: k.ca ?? undefined, serverName: hostname } : undefined,
      socket: {
        open(s) {
          s.write(command(args));
        },
        data(_s, d) {
          buf += d.toString("latin1");
          // A reply line is bounded: anything longer is not the store's answer to AUTH/PING.
          const nl = buf.indexOf("\r\n");
          if (nl < 0 && buf.length < 512) return;
          const line = (nl < 0 ? buf : buf.slice(0, nl)).slice(0, 300);
          if (line.startsWith("+")) resolveFn({ kind: "ok" });
          else if (line.startsWith("-")) resolveFn({ kind: "refused", message: line.slice(1) });
          else
            resolveFn({
              kind: "unreachable",
              message: `unexpected answer ${JSON.stringify(line.slice(0, 40))}: is this a Redis/Valkey port?`,
            });
        },
        close() {
          resolveFn({ kind: "unreachable", message: "closed the connection without an answer" });
        },
        error(_s, e) {
          resolveFn({ kind: "unreachable", message: e.message });
        },
        connectError(_s, e) {
          resolveFn({ kind: "unreachable", message: e.message });
        },
      },
    });
  } catch (e) {
    resolveFn({ kind: "unreachable", message: (e as Error).message });
  }
  try {
    return await done;
  } finally {
    clearTimeout(timer);
    socket?.end();
  }
}

/** A refusal that no retry can fix: the password or user is wrong, or one is needed. */
export function isAuthRefusal(message: string): boolean {
  return /^(WRONGPASS|NOAUTH|NOPERM)|invalid password|without any password configured/i.test(
    message,
  );
}
