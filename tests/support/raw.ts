/** A raw TCP client for the cases curl will not send: malformed heads, half-close, slow-loris. */
import type { Socket } from "bun";
import { connect } from "node:net";

export interface RawClient {
  socket: Socket<undefined>;
  /** Everything received so far. */
  received(): Buffer;
  text(): string;
  /** Resolves when the server closes the connection (or after `ms`, rejecting). */
  closed(ms?: number): Promise<void>;
  /** Resolves once received bytes contain `s`. */
  waitFor(s: string | RegExp, ms?: number): Promise<string>;
  ended: boolean;
  write(d: string | Uint8Array): void;
}

export async function rawConnect(port: number, host = "127.0.0.1"): Promise<RawClient> {
  const chunks: Buffer[] = [];
  let closedResolve: () => void = () => {};
  const closedP = new Promise<void>((r) => (closedResolve = r));
  const client: Partial<RawClient> & { ended: boolean } = { ended: false };
  const socket = await Bun.connect({
    hostname: host,
    port,
    allowHalfOpen: true,
    socket: {
      data(_s, d) {
        chunks.push(Buffer.from(d));
      },
      end() {
        // The server's FIN is what "closed" means to an HTTP client.
        client.ended = true;
        closedResolve();
      },
      close() {
        client.ended = true;
        closedResolve();
      },
      error() {},
    },
  });
  const received = (): Buffer => Buffer.concat(chunks);
  return Object.assign(client, {
    socket,
    received,
    text: () => received().toString("latin1"),
    write(d: string | Uint8Array) {
      let buf = typeof d === "string" ? Buffer.from(d, "latin1") : d;
      // Tests write small amounts; loop so nothing is silently dropped.
      while (buf.byteLength > 0) {
        const n = socket.write(buf);
        if (n <= 0) break;
        buf = buf.subarray(n);
      }
    },
    async closed(ms = 5000) {
      let t: Timer | undefined;
      await Promise.race([
        closedP,
        new Promise<never>(
          (_, rej) =>
            (t = setTimeout(
              () =>
                rej(
                  new Error(
                    `connection not closed within ${ms} ms; got: ${received().toString("latin1").slice(0, 500)}`,
                  ),
                ),
              ms,
            )),
        ),
      ]);
      clearTimeout(t);
    },
    async waitFor(s: string | RegExp, ms = 5000) {
      const end = Date.now() + ms;
      for (;;) {
        const t = received().toString("latin1");
        if (typeof s === "string" ? t.includes(s) : s.test(t)) return t;
        if (Date.now() > end)
          throw new Error(`did not receive ${s} within ${ms} ms; got: ${t.slice(0, 500)}`);
        await Bun.sleep(5);
      }
    },
  }) as RawClient;
}

/** Runs a command and returns its exit code, stdout and stderr. */
export async function run(
  cmd: string[],
  opts: { env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = Bun.spawn(cmd, {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, ...opts.env },
    cwd: opts.cwd,
  });
  const timer = setTimeout(() => p.kill(), opts.timeoutMs ?? 20_000);
  const [stdout, stderr, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}

/**
 * Sends `bytes` from the local address `from` (any of 127.0.0.0/8: Bun.connect cannot bind one)
 * and returns all that came back by the time the server closed.
 */
export function sendFrom(from: string, port: number, bytes: string | Buffer): Promise<string> {
  return new Promise((resolve) => {
    const got: Buffer[] = [];
    const s = connect({ host: "127.0.0.1", port, localAddress: from }, () => void s.write(bytes));
    s.on("data", (d: Buffer) => got.push(d));
    s.on("close", () => resolve(Buffer.concat(got).toString("latin1")));
    s.on("error", () => {});
  });
}
