/** Origin servers for proxy tests: real Bun servers on 127.0.0.1, port 0. */
import type { Server, Socket, TCPSocketListener } from "bun";
import { createHash } from "node:crypto";
import { gzipSync } from "node:zlib";

export const GZIP_BODY = gzipSync(Buffer.from("compressed payload ".repeat(100)));

/** Deterministic bytes so both ends can check a body without keeping it. */
export function pattern(n: number, offset = 0): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i + offset) % 251;
  return b;
}

export function patternStream(total: number, chunk = 256 * 1024): ReadableStream<Uint8Array> {
  let sent = 0;
  return new ReadableStream({
    pull(c) {
      if (sent >= total) return c.close();
      const n = Math.min(chunk, total - sent);
      c.enqueue(pattern(n, sent));
      sent += n;
    },
  });
}

export function sha256(b: Uint8Array): string {
  return createHash("sha256").update(b).digest("hex");
}

export interface Seen {
  method: string;
  url: string;
  headers: Record<string, string>;
}

/** An HTTP origin whose paths exercise one proxy rule each. It records what it received. */
export function startOrigin(tls?: {
  cert: string;
  key: string;
}): Server<undefined> & { seen: Seen[] } {
  const seen: Seen[] = [];
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    tls,
    maxRequestBodySize: 2 ** 40,
    idleTimeout: 30,
    async fetch(req, srv) {
      const url = new URL(req.url);
      seen.push({
        method: req.method,
        url: url.pathname + url.search,
        headers: Object.fromEntries(req.headers),
      });
      srv.timeout(req, 0);
      switch (url.pathname) {
        case "/echo": {
          const body = req.body ? new Uint8Array(await req.arrayBuffer()) : new Uint8Array();
          return Response.json({
            method: req.method,
            path: url.pathname + url.search,
            headers: Object.fromEntries(req.headers),
            length: body.byteLength,
            sha256: sha256(body),
          });
        }
        case "/bytes": {
          const n = Number(url.searchParams.get("n") ?? "0");
          const chunked = url.searchParams.has("chunked");
          return new Response(patternStream(n), {
            headers: chunked ? {} : { "content-length": String(n) },
          });
        }
        case "/gzip":
          return new Response(GZIP_BODY, {
            headers: {
              "content-encoding": "gzip",
              "content-type": "text/plain",
              "content-length": String(GZIP_BODY.byteLength),
            },
          });
        case "/hop":
          return new Response("hop", {
            headers: {
              connection: "x-private",
              "x-private": "secret",
              "keep-alive": "timeout=5",
              "x-kept": "yes",
              "set-cookie": "a=1",
            },
          });
        case "/cookies": {
          const h = new Headers();
          h.append("set-cookie", "a=1; Path=/");
          h.append("set-cookie", "b=2; Path=/");
          return new Response("cookies", { headers: h });
        }
        case "/trickle": {
          // `n` chunks of 1 KiB, one every `ms`: a slow but steady upstream.
          const n = Number(url.searchParams.get("n") ?? "5");
          const ms = Number(url.searchParams.get("ms") ?? "200");
          let i = 0;
          return new Response(
            new ReadableStream({
              async pull(c) {
                if (i++ >= n) return c.close();
                await Bun.sleep(ms);
                c.enqueue(pattern(1024, i));
              },
            }),
          );
        }
        case "/slow":
          await Bun.sleep(Number(url.searchParams.get("ms") ?? "1000"));
          return new Response("slow done");
        case "/status":
          return new Response(null, { status: Number(url.searchParams.get("code") ?? "204") });
        case "/healthz":
          return new Response("origin healthz");
        default:
          return new Response(`origin ${req.method} ${url.pathname}`, {
            headers: { "x-origin": "1" },
          });
      }
    },
  });
  return Object.assign(server, { seen });
}

/**
 * A raw TCP upstream for tunnel tests. `mode`:
 * - echo: sends back what it reads;
 * - count: reads until FIN, then answers the byte count and closes;
 * - push: sends `n` pattern bytes then half-closes, and records what it reads afterwards.
 */
export function startTcp(
  mode: "echo" | "count" | "push",
  n = 0,
): TCPSocketListener<{ count: number }> & { received: Buffer[] } {
  const received: Buffer[] = [];
  const l = Bun.listen<{ count: number }>({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    data: { count: 0 },
    socket: {
      open(s) {
        s.data = { count: 0 };
        if (mode === "push") {
          const data = pattern(n);
          let off = 0;
          const pump = (): void => {
            while (off < data.byteLength) {
              const w = s.write(data.subarray(off));
              if (w <= 0) return;
              off += w;
            }
            s.shutdown();
          };
          (s as unknown as { pump: () => void }).pump = pump;
          pump();
        }
      },
      drain(s) {
        (s as unknown as { pump?: () => void }).pump?.();
      },
      data(s, d) {
        s.data.count += d.byteLength;
        received.push(Buffer.from(d));
        if (mode === "echo") s.write(d);
      },
      end(s) {
        if (mode === "count") {
          s.write(String(s.data.count));
          s.end();
        } else if (mode === "push") s.end();
      },
      error() {},
    },
  });
  return Object.assign(l, { received });
}

interface Pushing {
  left: number;
  started: boolean;
}

/**
 * An upstream that sends `total` bytes as fast as its socket takes them, counting what the kernel
 * accepted (slow-reader tests: how far did crm let it get?). `httpHead`: an HTTP origin that answers
 * the first request with a Content-Length answer; otherwise a raw upstream that talks first.
 */
export function startPusher(
  total: number,
  tls: { cert: string; key: string } | null,
  httpHead: boolean,
): TCPSocketListener<Pushing> & { pushed: () => number } {
  let pushed = 0;
  const block = Buffer.alloc(256 * 1024, 0x61);
  const pump = (s: Socket<Pushing>): void => {
    while (s.data.left > 0) {
      const want = Math.min(block.byteLength, s.data.left);
      const n = Math.max(0, s.write(block.subarray(0, want)));
      pushed += n;
      s.data.left -= n;
      if (n < want) return;
    }
  };
  const start = (s: Socket<Pushing>): void => {
    if (s.data.started) return;
    s.data = { left: total, started: true };
    if (httpHead) s.write(`HTTP/1.1 200 OK\r\ncontent-length: ${total}\r\n\r\n`);
    pump(s);
  };
  const l = Bun.listen<Pushing>({
    hostname: "127.0.0.1",
    port: 0,
    data: { left: 0, started: false },
    ...(tls ? { tls } : {}),
    socket: {
      open(s) {
        s.data = { left: 0, started: false };
        // A raw tunnel upstream talks first; an HTTP origin answers the request.
        if (!httpHead) start(s);
      },
      data(s) {
        if (httpHead) start(s);
      },
      drain: pump,
      error() {},
    },
  });
  return Object.assign(l, { pushed: () => pushed });
}
