/**
 * An upstream that pre-sends an "answer" for a request crm has not sent yet, on its own kept-alive
 * connection: right behind a complete response (in the same write), or a moment later while the
 * socket waits in crm's pool. Either way that socket must not carry another request: the next
 * request to the origin goes on a new connection and gets the origin's real answer. Checked on
 * crm's upstream client and through a running crm (forward proxy, one client connection).
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { Socket } from "bun";
import { staticResolver } from "../src/net/resolver.ts";
import { UpstreamClient, type UpstreamRequest } from "../src/upstream/client.ts";
import { startCrm } from "./support/crm.ts";
import { header, openRaw, parseResponses, waitUntil } from "./support/faulty-upstreams.ts";

const FIRST = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Answer: first\r\n\r\nfirst";
const BOGUS = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Answer: bogus\r\n\r\nbogus";
const REAL = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Answer: real\r\n\r\nreal";

type Mode = "same-write" | "while-idle" | "on-connect" | "big-same-write";

/** A first answer large enough that a slow consumer pauses the socket before its end. */
const BIG = 4 * 1024 * 1024;

interface PresendOrigin {
  port: number;
  /** Connections accepted, and how many of them are still open. */
  accepted: number;
  open: number;
  /** Whether the bogus answer has been written on the first connection. */
  bogusSent: boolean;
  /** Request heads per connection, in order of acceptance. */
  requests: string[][];
  stop(): void;
}

/**
 * The first request on the first connection gets FIRST and then BOGUS (in the same write, or
 * 20 ms later); `on-connect` sends BOGUS as soon as the connection opens, unasked, and answers
 * FIRST after it. Every other request gets REAL.
 */
function startPresendOrigin(mode: Mode): PresendOrigin {
  const sockets = new Set<Socket<{ n: number; buf: string; drain?: () => void }>>();
  const o: PresendOrigin = {
    port: 0,
    accepted: 0,
    open: 0,
    bogusSent: false,
    requests: [],
    stop: () => {},
  };
  const listener = Bun.listen<{ n: number; buf: string; drain?: () => void }>({
    hostname: "127.0.0.1",
    port: 0,
    data: { n: 0, buf: "" },
    socket: {
      open(s) {
        s.data = { n: o.accepted++, buf: "" };
        o.requests.push([]);
        sockets.add(s);
        o.open = sockets.size;
        if (mode === "on-connect" && s.data.n === 0) {
          s.write(BOGUS);
          o.bogusSent = true;
        }
      },
      data(s, d) {
        s.data.buf += d.toString("latin1");
        for (
          let end = s.data.buf.indexOf("\r\n\r\n");
          end >= 0;
          end = s.data.buf.indexOf("\r\n\r\n")
        ) {
          const head = s.data.buf.slice(0, end);
          s.data.buf = s.data.buf.slice(end + 4);
          const mine = o.requests[s.data.n] as string[];
          mine.push(head);
          if (s.data.n !== 0 || mine.length > 1) s.write(REAL);
          else if (mode === "same-write") {
            s.write(FIRST + BOGUS);
            o.bogusSent = true;
          } else if (mode === "big-same-write") {
            writeAll(
              s,
              Buffer.concat([
                Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${BIG}\r\n\r\n`),
                Buffer.alloc(BIG, 0x61),
                Buffer.from(BOGUS),
              ]),
              () => (o.bogusSent = true),
            );
          } else if (mode === "while-idle") {
            s.write(FIRST);
            setTimeout(() => {
              s.write(BOGUS);
              o.bogusSent = true;
            }, 20);
          } else s.write(FIRST);
        }
      },
      drain(s) {
        s.data.drain?.();
      },
      close(s) {
        sockets.delete(s);
        o.open = sockets.size;
      },
      error() {},
    },
  });
  o.port = listener.port;
  o.stop = () => {
    for (const s of sockets) s.terminate();
    listener.stop(true);
  };
  return o;
}

/** Writes `buf` whole, waiting for drain (Bun's write takes only what fits). */
function writeAll(
  s: Socket<{ n: number; buf: string; drain?: () => void }>,
  buf: Buffer,
  done: () => void,
): void {
  const n = s.write(buf);
  if (n >= buf.byteLength) return done();
  s.data.drain = () => {
    s.data.drain = undefined;
    writeAll(s, buf.subarray(Math.max(0, n)), done);
  };
}

async function until(pred: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (pred()) return;
    await Bun.sleep(10);
  }
  throw new Error(`timed out waiting for ${what}`);
}

let origin: PresendOrigin | null = null;
afterEach(() => {
  origin?.stop();
  origin = null;
});

const resolve = staticResolver({});
function req(port: number, path: string): UpstreamRequest {
  return {
    url: new URL(`http://127.0.0.1:${port}${path}`),
    method: "GET",
    headers: [],
    headTimeoutMs: 5000,
    connectTimeoutMs: 5000,
    resolve,
    insecureTls: false,
  };
}

describe("upstream client: a socket that got bytes nobody asked for is never reused", () => {
  test.each(["same-write", "while-idle"] as const)("%s", async (mode) => {
    const o = (origin = startPresendOrigin(mode));
    const client = new UpstreamClient();
    const r1 = await client.request(req(o.port, "/one"));
    expect(Buffer.from(await r1.body.readAll(100)).toString()).toBe("first");
    await until(() => o.bogusSent, "the bogus answer");
    // The first connection is closed by crm, not kept: the bogus bytes made it unusable.
    await until(() => o.open === 0, "crm to close the first connection");
    expect(client.pool.idleCount).toBe(0);
    const r2 = await client.request(req(o.port, "/two"));
    expect(r2.headers.find(([k]) => k.toLowerCase() === "x-answer")?.[1]).toBe("real");
    expect(Buffer.from(await r2.body.readAll(100)).toString()).toBe("real");
    expect(client.opened).toBe(2);
    expect(o.requests).toEqual([
      [expect.stringMatching(/^GET \/one /)],
      [expect.stringMatching(/^GET \/two /)],
    ]);
    client.close();
  });

  test("big-same-write: the answer's end and the bogus bytes arrive while a slow consumer has the socket paused", async () => {
    const o = (origin = startPresendOrigin("big-same-write"));
    const client = new UpstreamClient();
    const r1 = await client.request(req(o.port, "/one"));
    let got = 0;
    await r1.body.relay((b) => {
      got += b.byteLength;
      setTimeout(() => r1.body.resume(), 1);
      return false;
    });
    expect(got).toBe(BIG);
    await until(() => o.bogusSent, "the bogus answer");
    await until(() => o.open === 0, "crm to close the first connection");
    const r2 = await client.request(req(o.port, "/two"));
    expect(Buffer.from(await r2.body.readAll(100)).toString()).toBe("real");
    expect(client.opened).toBe(2);
    client.close();
  });

  test("on-connect: a preconnected socket the upstream spoke on first is not pooled", async () => {
    const o = (origin = startPresendOrigin("on-connect"));
    const client = new UpstreamClient();
    client.preconnect(new URL(`http://127.0.0.1:${o.port}/`), resolve, false, 5000);
    await until(() => o.bogusSent && o.accepted === 1, "the preconnect");
    await until(() => o.open === 0, "crm to close the connection that spoke first");
    expect(client.pool.idleCount).toBe(0);
    const r = await client.request(req(o.port, "/two"));
    expect(Buffer.from(await r.body.readAll(100)).toString()).toBe("real");
    expect(o.requests[0]).toEqual([]);
    client.close();
  });
});

describe("through crm: the next request on the client's connection gets the real answer", () => {
  test.each(["same-write", "while-idle"] as const)("%s", async (mode) => {
    const o = (origin = startPresendOrigin(mode));
    const crm = await startCrm({ allowed_hosts: ["127.0.0.1"], allowed_ports: [o.port] }, "info");
    try {
      const conn = await openRaw(crm.port);
      const get = (path: string): Promise<boolean> =>
        conn.send(
          `GET http://127.0.0.1:${o.port}${path} HTTP/1.1\r\nHost: 127.0.0.1:${o.port}\r\n\r\n`,
        );
      const answers = (): number =>
        parseResponses(conn.received(), ["GET"], conn.closed).responses.filter((r) => r.complete)
          .length;
      await get("/one");
      await waitUntil(conn, () => conn.closed || answers() >= 1, 5000);
      await until(() => o.bogusSent, "the bogus answer");
      await until(() => o.open === 0, "crm to close the first upstream connection");
      await get("/two");
      await waitUntil(conn, () => conn.closed || answers() >= 2, 5000);
      conn.socket.terminate();
      const p = parseResponses(conn.received(), ["GET"], conn.closed);
      expect(p.error).toBeNull();
      expect(p.responses.map((r) => [header(r, "x-answer"), r.body.toString()])).toEqual([
        ["first", "first"],
        ["real", "real"],
      ]);
      expect(o.accepted).toBe(2);
      expect(o.requests.map((heads) => heads.length)).toEqual([1, 1]);
    } finally {
      await crm.stop();
    }
  });
});
