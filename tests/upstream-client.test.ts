/**
 * crm's own HTTP/1.1 upstream client (src/upstream/) against real Bun origins on 127.0.0.1, a
 * TLS origin with a CA made here, and scripted raw-socket upstreams that misbehave.
 */
import { BodyFeeder } from "../src/http/body.ts";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { DialError } from "../src/errors.ts";
import { staticResolver } from "../src/net/resolver.ts";
import { UpstreamClient, type UpstreamRequest } from "../src/upstream/client.ts";
import { startScriptedUpstream } from "./support/faulty-upstreams.ts";
import { pattern, sha256, startOrigin } from "./support/origins.ts";
import { makeLeaf, makeTestCa, type Pem } from "./support/tls.ts";

const resolve = staticResolver({
  "origin.test": "127.0.0.1",
  localhost: "127.0.0.1",
  "other.test": "127.0.0.1",
});

function req(url: string, over: Partial<UpstreamRequest> = {}): UpstreamRequest {
  return {
    url: new URL(url),
    method: "GET",
    headers: [],
    headTimeoutMs: 5000,
    connectTimeoutMs: 5000,
    resolve,
    insecureTls: false,
    ...over,
  };
}

async function text(
  client: UpstreamClient,
  r: UpstreamRequest,
): Promise<{ status: number; body: string }> {
  const res = await client.request(r);
  return { status: res.status, body: Buffer.from(await res.body.readAll(1 << 20)).toString() };
}

async function failure(p: Promise<unknown>): Promise<DialError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof DialError) return e;
    throw e;
  }
  throw new Error("expected a DialError");
}

let origin: ReturnType<typeof startOrigin>;
let ca: Pem;
let tlsOrigin: ReturnType<typeof startOrigin>;

beforeAll(async () => {
  origin = startOrigin();
  ca = await makeTestCa();
  tlsOrigin = startOrigin(await makeLeaf(ca, ["localhost"]));
});
afterAll(() => {
  origin.stop(true);
  tlsOrigin.stop(true);
});

describe("pool", () => {
  test("sequential requests reuse one kept-alive connection", async () => {
    const client = new UpstreamClient();
    for (let i = 0; i < 5; i++)
      expect(await text(client, req(`http://origin.test:${origin.port}/p${i}`))).toEqual({
        status: 200,
        body: `origin GET /p${i}`,
      });
    expect(client.opened).toBe(1);
    expect(client.pool.idleCount).toBe(1);
    expect(origin.seen.at(-1)?.headers.host).toBe(`origin.test:${origin.port}`);
    client.close();
    expect(client.pool.idleCount).toBe(0);
  });

  test("idle sockets are bounded per origin and in total", async () => {
    const client = new UpstreamClient({
      pool: { maxIdlePerOrigin: 2, maxIdleTotal: 3, idleTimeoutMs: 30_000 },
    });
    await Promise.all(
      [1, 2, 3, 4].map((i) => text(client, req(`http://origin.test:${origin.port}/a${i}`))),
    );
    expect(client.opened).toBe(4);
    expect(client.pool.idleCount).toBe(2);
    // A second origin (another name, same IP: another key) fills the total bound.
    await Promise.all(
      [1, 2].map((i) => text(client, req(`http://localhost:${origin.port}/b${i}`))),
    );
    expect(client.pool.idleCount).toBe(3);
    client.close();
  });

  test("an idle connection is closed after the idle timeout", async () => {
    const client = new UpstreamClient({
      pool: { maxIdlePerOrigin: 4, maxIdleTotal: 4, idleTimeoutMs: 30 },
    });
    await text(client, req(`http://origin.test:${origin.port}/x`));
    expect(client.pool.idleCount).toBe(1);
    await Bun.sleep(120);
    expect(client.pool.idleCount).toBe(0);
    await text(client, req(`http://origin.test:${origin.port}/y`));
    expect(client.opened).toBe(2);
    client.close();
  });

  test("a connection the upstream closed while idle is dropped before reuse", async () => {
    const up = startScriptedUpstream(() => ({
      bytes: Buffer.from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
      after: "end",
    }));
    const client = new UpstreamClient();
    expect(await text(client, req(`http://127.0.0.1:${up.port}/`))).toEqual({
      status: 200,
      body: "ok",
    });
    for (let i = 0; i < 50 && client.pool.idleCount > 0; i++) await Bun.sleep(10);
    expect(client.pool.idleCount).toBe(0);
    expect(await text(client, req(`http://127.0.0.1:${up.port}/`))).toEqual({
      status: 200,
      body: "ok",
    });
    expect(client.opened).toBe(2);
    client.close();
    up.stop();
  });

  // The upstream keeps every socket open, so only the answer's version and Connection decide.
  test.each([
    ["HTTP/1.1", "", 1],
    ["HTTP/1.1", "connection: close\r\n", 2],
    ["HTTP/1.1", "connection: Keep-Alive, CLOSE\r\n", 2],
    ["HTTP/1.0", "", 2],
    ["HTTP/1.0", "connection: Keep-Alive\r\n", 1],
  ])(
    "an %s answer with %j is kept for reuse only when it asks to be: %d connection(s) for two requests",
    async (version, field, connections) => {
      const up = startScriptedUpstream(() => ({
        bytes: Buffer.from(`${version} 200 OK\r\n${field}content-length: 2\r\n\r\nok`),
        after: "keep",
      }));
      const client = new UpstreamClient();
      for (let i = 0; i < 2; i++)
        expect(await text(client, req(`http://127.0.0.1:${up.port}/${i}`))).toEqual({
          status: 200,
          body: "ok",
        });
      expect(client.opened).toBe(connections);
      expect(up.heads).toHaveLength(2);
      client.close();
      up.stop();
    },
  );

  /** First answer kept alive; the next request on that socket gets a FIN and no answer. */
  function closesSecond(): ReturnType<typeof startScriptedUpstream> {
    let n = 0;
    return startScriptedUpstream(() =>
      n++ === 1
        ? { bytes: Buffer.alloc(0), after: "end" }
        : { bytes: Buffer.from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"), after: "keep" },
    );
  }

  test("a GET failing on a reused socket before any answer byte is retried once on a new one", async () => {
    const up = closesSecond();
    const client = new UpstreamClient();
    await text(client, req(`http://127.0.0.1:${up.port}/one`));
    expect(await text(client, req(`http://127.0.0.1:${up.port}/two`))).toEqual({
      status: 200,
      body: "ok",
    });
    expect(up.heads.length).toBe(3);
    expect(client.opened).toBe(2);
    client.close();
    up.stop();
  });

  test("a POST failing on a reused socket is not retried", async () => {
    const up = closesSecond();
    const client = new UpstreamClient();
    await text(client, req(`http://127.0.0.1:${up.port}/one`));
    const e = await failure(
      client.request(
        req(`http://127.0.0.1:${up.port}/two`, { method: "POST", body: Buffer.from("data") }),
      ),
    );
    expect(e.reason).toBe("reset");
    expect(up.heads.length).toBe(2);
    expect(client.opened).toBe(1);
    client.close();
    up.stop();
  });
});

describe("TLS", () => {
  test("verifies against the system roots plus extra CAs, with SNI", async () => {
    const client = new UpstreamClient({ extraCa: [ca.cert] });
    expect(await text(client, req(`https://localhost:${tlsOrigin.port}/tls`))).toEqual({
      status: 200,
      body: "origin GET /tls",
    });
    await text(client, req(`https://localhost:${tlsOrigin.port}/tls2`));
    expect(client.opened).toBe(1);
    client.close();
  });

  test("a certificate for another name is refused", async () => {
    const client = new UpstreamClient({ extraCa: [ca.cert] });
    const e = await failure(client.request(req(`https://other.test:${tlsOrigin.port}/`)));
    expect(e.reason).toBe("tls");
    expect(e.status).toBe(502);
    client.close();
  });

  test("an unknown CA is refused; insecure_tls accepts it, in a pool of its own", async () => {
    const client = new UpstreamClient();
    const e = await failure(client.request(req(`https://localhost:${tlsOrigin.port}/`)));
    expect(e.reason).toBe("tls");
    expect(
      await text(client, req(`https://other.test:${tlsOrigin.port}/i`, { insecureTls: true })),
    ).toEqual({ status: 200, body: "origin GET /i" });
    const again = await failure(client.request(req(`https://other.test:${tlsOrigin.port}/`)));
    expect(again.reason).toBe("tls");
    client.close();
  });
});

describe("bodies", () => {
  test("a Content-Length body is relayed as it comes, paused behind a slow reader", async () => {
    const client = new UpstreamClient();
    const n = 16 * 1024 * 1024;
    const whole = pattern(n);
    const fixed = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response(whole) });
    const res = await client.request(req(`http://origin.test:${fixed.port}/`));
    expect(res.contentLength).toBe(n);
    const parts: Uint8Array[] = [];
    let sinceResume = 0;
    let most = 0;
    const done = res.body.relay((b) => {
      parts.push(b);
      sinceResume += b.byteLength;
      most = Math.max(most, sinceResume);
      setTimeout(() => {
        sinceResume = 0;
        res.body.resume();
      }, 1);
      return false;
    });
    await done;
    const all = Buffer.concat(parts);
    expect(all.byteLength).toBe(n);
    expect(sha256(all)).toBe(sha256(pattern(n)));
    // What arrives while paused is one socket read, not the body.
    expect(most).toBeLessThan(2 * 1024 * 1024);
    expect(client.pool.idleCount).toBe(1);
    client.close();
    fixed.stop(true);
  });

  test("a chunked body is passed on byte for byte, framing included", async () => {
    const raw = "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
    const up = startScriptedUpstream(() => ({
      bytes: Buffer.from(`HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n${raw}`),
      after: "keep",
    }));
    const client = new UpstreamClient();
    const res = await client.request(req(`http://127.0.0.1:${up.port}/`));
    const parts: Uint8Array[] = [];
    await res.body.relay((b) => (parts.push(b), true));
    expect(Buffer.concat(parts).toString()).toBe(raw);
    expect(client.pool.idleCount).toBe(1);
    const res2 = await client.request(req(`http://127.0.0.1:${up.port}/`));
    expect(Buffer.from(await res2.body.readAll(100)).toString()).toBe("hello world");
    client.close();
    up.stop();
  });

  test("close-delimited, HEAD, 204 and 304 bodies end by their rule", async () => {
    const up = startScriptedUpstream((head) =>
      head.startsWith("GET /close")
        ? { bytes: Buffer.from("HTTP/1.1 200 OK\r\n\r\nuntil the end"), after: "end" }
        : head.startsWith("HEAD")
          ? { bytes: Buffer.from("HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n"), after: "keep" }
          : {
              bytes: Buffer.from(
                `HTTP/1.1 ${head.includes("/304") ? 304 : 204} X\r\ncontent-length: 7\r\n\r\n`,
              ),
              after: "keep",
            },
    );
    const client = new UpstreamClient();
    expect(await text(client, req(`http://127.0.0.1:${up.port}/close`))).toEqual({
      status: 200,
      body: "until the end",
    });
    expect(await text(client, req(`http://127.0.0.1:${up.port}/h`, { method: "HEAD" }))).toEqual({
      status: 200,
      body: "",
    });
    expect(await text(client, req(`http://127.0.0.1:${up.port}/204`))).toEqual({
      status: 204,
      body: "",
    });
    expect(await text(client, req(`http://127.0.0.1:${up.port}/304`))).toEqual({
      status: 304,
      body: "",
    });
    expect(client.opened).toBe(2);
    client.close();
    up.stop();
  });

  test("request bodies stream to the upstream, by length or chunked", async () => {
    const client = new UpstreamClient();
    const n = 4 * 1024 * 1024 + 3;
    const data = pattern(n);
    // A client's body as crm reads it: socket reads fed to a BodyFeeder, paused when the upstream is full.
    function source(): BodyFeeder {
      let at = 0;
      let paused = true;
      const pump = (): void => {
        while (!paused && at < n) {
          const end = Math.min(n, at + 256 * 1024);
          feeder.feed(Buffer.from(data.subarray(at, end)));
          at = end;
        }
      };
      const feeder = new BodyFeeder(
        { kind: "length", length: n },
        {
          pause: () => (paused = true),
          resume: () => {
            paused = false;
            queueMicrotask(pump);
          },
        },
      );
      return feeder;
    }
    for (const bodyLength of [n, null]) {
      const res = await client.request(
        req(`http://origin.test:${origin.port}/echo`, {
          method: "PUT",
          body: source(),
          bodyLength,
        }),
      );
      const seen = JSON.parse(Buffer.from(await res.body.readAll(1 << 16)).toString()) as {
        length: number;
        sha256: string;
        headers: Record<string, string>;
      };
      expect(seen.length).toBe(n);
      expect(seen.sha256).toBe(sha256(data));
      expect(
        bodyLength === null ? seen.headers["transfer-encoding"] : seen.headers["content-length"],
      ).toBe(bodyLength === null ? "chunked" : String(n));
    }
    client.close();
  });
});

describe("hostile upstreams", () => {
  const cases: Array<[string, string, RegExp]> = [
    ["garbage", "SSH-2.0-OpenSSH_9.6\r\n\r\n", /malformed status line/],
    ["garbage, unterminated", "SSH-2.0-OpenSSH_9.6\r\n", /not an HTTP response/],
    ["bare LF", "HTTP/1.1 200 OK\ncontent-length: 0\n\n", /bare LF/],
    ["bad status line", "HTTP/1.1 2000 OK\r\n\r\n", /malformed status line/],
    ["folding", "HTTP/1.1 200 OK\r\nx: a\r\n b\r\ncontent-length: 0\r\n\r\n", /folding/],
    [
      "differing lengths",
      "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
      /differing Content-Length/,
    ],
    [
      "gzip TE",
      "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
      /relays only "chunked"/,
    ],
    ["101", "HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n", /101/],
    ["huge head", `HTTP/1.1 200 OK\r\nx: ${"a".repeat(70 * 1024)}\r\n\r\n`, /too large/],
  ];
  for (const [name, answer, message] of cases) {
    test(`${name}: 502 with the reason`, async () => {
      const up = startScriptedUpstream(() => ({ bytes: Buffer.from(answer), after: "end" }));
      const client = new UpstreamClient();
      const e = await failure(client.request(req(`http://127.0.0.1:${up.port}/`)));
      expect(e.reason).toBe("framing");
      expect(e.status).toBe(502);
      expect(e.message).toMatch(message);
      client.close();
      up.stop();
    });
  }

  test("1xx answers are dropped; the final answer is read", async () => {
    const up = startScriptedUpstream(() => ({
      bytes: Buffer.from(
        "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody",
      ),
      after: "keep",
    }));
    const client = new UpstreamClient();
    expect(await text(client, req(`http://127.0.0.1:${up.port}/`))).toEqual({
      status: 200,
      body: "body",
    });
    client.close();
    up.stop();
  });

  test("TE and CL together: chunked wins, the length is not relayed", async () => {
    const up = startScriptedUpstream(() => ({
      bytes: Buffer.from(
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
      ),
      after: "keep",
    }));
    const client = new UpstreamClient();
    const res = await client.request(req(`http://127.0.0.1:${up.port}/`));
    expect(res.contentLength).toBeNull();
    expect(Buffer.from(await res.body.readAll(100)).toString()).toBe("body");
    client.close();
    up.stop();
  });

  test("a broken chunked body fails the body, and the socket is not reused", async () => {
    const up = startScriptedUpstream(() => ({
      bytes: Buffer.from(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nbodyXX0\r\n\r\n",
      ),
      after: "keep",
    }));
    const client = new UpstreamClient();
    const res = await client.request(req(`http://127.0.0.1:${up.port}/`));
    const e = await failure(res.body.readAll(100));
    expect(e.message).toMatch(/chunk/);
    expect(client.pool.idleCount).toBe(0);
    client.close();
    up.stop();
  });

  test("a body cut short by the close is an error, not a short success", async () => {
    const up = startScriptedUpstream(() => ({
      bytes: Buffer.from("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"),
      after: "end",
    }));
    const client = new UpstreamClient();
    const res = await client.request(req(`http://127.0.0.1:${up.port}/`));
    const e = await failure(res.body.readAll(100));
    expect(e.message).toMatch(/before the end of the body/);
    client.close();
    up.stop();
  });

  test("bytes after the framed body: the answer is delivered, the socket is not kept", async () => {
    const up = startScriptedUpstream(() => ({
      bytes: Buffer.from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n"),
      after: "keep",
    }));
    const client = new UpstreamClient();
    expect(await text(client, req(`http://127.0.0.1:${up.port}/`))).toEqual({
      status: 200,
      body: "ok",
    });
    expect(client.pool.idleCount).toBe(0);
    client.close();
    up.stop();
  });

  test("no head within upstream_header: 504; an abort ends the wait", async () => {
    const up = startScriptedUpstream(() => ({ bytes: Buffer.from("HTTP/1.1 2"), after: "keep" }));
    const client = new UpstreamClient();
    const e = await failure(
      client.request(req(`http://127.0.0.1:${up.port}/`, { headTimeoutMs: 100 })),
    );
    expect(e.reason).toBe("timeout");
    expect(e.status).toBe(504);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    const aborted = await failure(
      client.request(req(`http://127.0.0.1:${up.port}/`, { signal: ac.signal })),
    );
    expect(aborted.message).toMatch(/aborted/);
    client.close();
    up.stop();
  });

  test("the SSRF guard judges the address dialled", async () => {
    const { guardedResolver } = await import("../src/net/resolver.ts");
    const client = new UpstreamClient();
    const e = await failure(
      client.request(
        req(`http://origin.test:${origin.port}/`, {
          resolve: guardedResolver(resolve, () => false),
        }),
      ),
    );
    expect(e.reason).toBe("private");
    expect(client.opened).toBe(0);
    client.close();
  });
});
