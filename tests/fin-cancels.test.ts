/**
 * A client's FIN after a bodiless request cancels its upstream request, as an RST does: on a
 * connection that pipelined once before (the pipelining mark is per request), and when the FIN
 * comes in the same write as the request (while the password is checked, while the upstream
 * client resolves or connects): then nothing may reach the upstream at all.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { DialError } from "../src/errors.ts";
import { staticResolver } from "../src/net/resolver.ts";
import { UpstreamClient } from "../src/upstream/client.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { LAYER_DIGEST, startFakeRegistry, startTokenServer } from "./support/mirror-upstreams.ts";
import { startOrigin } from "./support/origins.ts";
import { rawConnect } from "./support/raw.ts";
import { makeLeaf, makeTestCa } from "./support/tls.ts";

const aborted: string[] = [];
let origin: ReturnType<typeof Bun.serve>;
let crm: TestCrm;

beforeAll(async () => {
  origin = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const p = new URL(req.url).pathname;
      if (p !== "/slow") return new Response("ok");
      req.signal.addEventListener("abort", () => aborted.push(p));
      // Endless, slow: only a cancel ends it.
      return new Response(
        new ReadableStream({
          async pull(c) {
            await Bun.sleep(100);
            c.enqueue(new Uint8Array(10));
          },
        }),
      );
    },
  });
  crm = await startCrm({ allowed_hosts: ["127.0.0.1"], allowed_ports: [origin.port] }, "warn");
});
afterAll(async () => {
  await crm.stop();
  origin.stop(true);
});

async function until(pred: () => boolean): Promise<void> {
  while (!pred()) await Bun.sleep(20);
}

const req = (p: string): string =>
  `GET http://127.0.0.1:${origin.port}/${p} HTTP/1.1\r\nHost: x\r\n\r\n`;

test("after one pipelined pair, a later request's FIN still cancels its upstream request", async () => {
  aborted.length = 0;
  const c = await rawConnect(crm.port);
  c.write(req("a") + req("b"));
  await c.waitFor(/ok[^]*ok/);
  c.write(req("slow"));
  // The upstream answer has started: the request is in flight.
  await c.waitFor(/HTTP\/1\.1 200[^]*HTTP\/1\.1 200[^]*HTTP\/1\.1 200/);
  c.socket.shutdown();
  await until(() => aborted.length > 0);
  expect(aborted).toEqual(["/slow"]);
  c.socket.end();
}, 20000);

test("FIN in the request's own write, while the password is checked: nothing goes upstream", async () => {
  const seen: string[] = [];
  const o = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      seen.push(new URL(req.url).pathname);
      return new Response(
        new ReadableStream({
          async pull(c) {
            await Bun.sleep(100);
            c.enqueue(new Uint8Array(10));
          },
        }),
      );
    },
  });
  const users = { alice: await Bun.password.hash("pw", { algorithm: "argon2id" }) };
  const withUsers = await startCrm(
    { allowed_hosts: ["127.0.0.1"], allowed_ports: [o.port], access: { users } },
    "info",
  );
  try {
    const c = await rawConnect(withUsers.port);
    c.write(
      `GET http://127.0.0.1:${o.port}/gone HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic ${btoa("alice:pw")}\r\n\r\n`,
    );
    c.socket.shutdown();
    // Either crm records the request as ended, or the origin sees it (the defect).
    await until(() => seen.length > 0 || withUsers.logs.some((l) => l.includes("/gone")));
    expect(seen).toEqual([]);
    c.socket.end();
  } finally {
    await withUsers.stop();
    o.stop(true);
  }
}, 20000);

test("mirror: FIN in the request's own write: no manifest GET reaches the registry", async () => {
  const registry = startFakeRegistry({ auth: { kind: "none" }, slowMs: 1500 });
  const m = await startCrm(
    { mirror: { default_registry: "reg.test", registries: { "reg.test": registry.url } } },
    "info",
  );
  try {
    const c = await rawConnect(m.port);
    c.write("GET /v2/slow/x/manifests/v1 HTTP/1.1\r\nHost: crm\r\n\r\n");
    c.socket.shutdown();
    const slow = (): number => registry.seen.filter((s) => s.url.includes("/slow/")).length;
    await until(() => slow() > 0 || m.logs.some((l) => l.includes("/v2/slow/x/manifests/v1")));
    expect(slow()).toBe(0);
    c.socket.end();
  } finally {
    await m.stop();
    registry.stop();
  }
}, 20000);

test("upstream client: an abort during the TLS connect sends nothing", async () => {
  const ca = await makeTestCa();
  const tlsOrigin = startOrigin(await makeLeaf(ca, ["localhost"]));
  const ac = new AbortController();
  // A TCP relay in front of the TLS origin: the client leaves as the connection is accepted,
  // long before the handshake through the relay is done.
  const relay = await Bun.listen<{ up: Promise<import("bun").Socket<undefined>> | null }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        ac.abort(new Error("client sent FIN"));
        s.data = {
          up: Bun.connect({
            hostname: "127.0.0.1",
            port: tlsOrigin.port as number,
            socket: { data: (_u, d) => void s.write(d), close: () => void s.end(), error() {} },
          }),
        };
      },
      async data(s, d) {
        (await s.data.up)?.write(d);
      },
      async close(s) {
        (await s.data.up)?.end();
      },
      error() {},
    },
  });
  const client = new UpstreamClient({ extraCa: [ca.cert] });
  try {
    const before = tlsOrigin.seen.length;
    let err: unknown = null;
    try {
      await client.request({
        url: new URL(`https://localhost:${relay.port}/never`),
        method: "GET",
        headers: [],
        headTimeoutMs: 5000,
        connectTimeoutMs: 5000,
        resolve: staticResolver({ localhost: "127.0.0.1" }),
        insecureTls: false,
        signal: ac.signal,
      });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DialError);
    expect((err as DialError).message).toContain("request aborted");
    // The connection, never written to, went back to the pool.
    expect(client.pool.idleCount).toBe(1);
    expect(tlsOrigin.seen.length).toBe(before);
  } finally {
    client.close();
    relay.stop(true);
    tlsOrigin.stop(true);
  }
}, 20000);

test("mirror: a blob request whose FIN came with it costs nothing upstream, not even a token", async () => {
  const tokens = startTokenServer();
  const registry = startFakeRegistry({ auth: { kind: "bearer", tokens } });
  const m = await startCrm(
    {
      allowed_ports: [Number(new URL(tokens.url).port)],
      mirror: { default_registry: "reg.test", registries: { "reg.test": registry.url } },
    },
    "info",
  );
  try {
    const path = `/v2/app/blobs/${LAYER_DIGEST}`;
    const c = await rawConnect(m.port);
    c.write(`GET ${path} HTTP/1.1\r\nHost: crm\r\n\r\n`);
    c.socket.shutdown();
    await until(
      () =>
        tokens.calls() > 0 ||
        registry.seen.some((s) => s.url.includes("/blobs/")) ||
        m.logs.some((l) => l.includes(path)),
    );
    expect([tokens.calls(), registry.seen.filter((s) => s.url.includes("/blobs/")).length]).toEqual(
      [0, 0],
    );
    c.socket.end();
  } finally {
    await m.stop();
    registry.stop();
    tokens.stop();
  }
}, 20000);
