/**
 * Issue 21, defects 4 and 5: shared upstream requests (single flights) and what a client that
 * leaves does to them. A flight every waiter left is never joined (the next client would get its
 * abort as a 500); a client's FIN cancels its upstream request as an RST does (but not an
 * HTTP/1.0-style half-close after a request body); a waiter whose Accept differs from the
 * leader's re-asks when the shared answer by digest is an error.
 */
import { afterEach, expect, test } from "bun:test";
import { startCrm, type TestCrm } from "./support/crm.ts";
import {
  MANIFEST_DIGEST,
  startFakeRegistry,
  startTokenServer,
} from "./support/mirror-upstreams.ts";
import { startOrigin } from "./support/origins.ts";
import { rawConnect } from "./support/raw.ts";

const running: Array<{ stop(): unknown }> = [];
afterEach(async () => {
  for (const r of running.splice(0)) await r.stop();
});

/** Waits for an event; bounded only by the test's own timeout (it does not time anything). */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await Bun.sleep(5);
}

test("a flight whose every waiter left is not joined: the next client gets the manifest, not 500", async () => {
  const tokens = startTokenServer({ delayMs: 400 });
  const registry = startFakeRegistry({ auth: { kind: "bearer", tokens } });
  running.push(tokens, registry);
  const crm = await startCrm(
    {
      allowed_ports: [Number(new URL(tokens.url).port)],
      mirror: { default_registry: "reg.test", registries: { "reg.test": registry.url } },
    },
    "info",
  );
  running.push(crm);
  const path = `/v2/app/manifests/${MANIFEST_DIGEST}`;
  const ac = new AbortController();
  const first = fetch(`${crm.url}${path}`, {
    proxy: false,
    signal: ac.signal,
  } as RequestInit).catch((e: unknown) => e);
  // The flight is waiting for its token (which no client's abort cancels): now its only waiter leaves.
  await until(() =>
    registry.seen.some((s) => s.url === path && s.headers.authorization === undefined),
  );
  await Bun.sleep(50);
  ac.abort();
  expect(await first).toBeInstanceOf(Error);
  const second = await fetch(`${crm.url}${path}`, { proxy: false } as RequestInit);
  expect(second.status).toBe(200);
  expect(await second.text()).toContain('"schemaVersion":2');
  expect(crm.logs.filter((l) => /internal error|handler failed/.test(l))).toEqual([]);
});

test("a client's FIN while its GET waits upstream cancels the upstream request", async () => {
  const registry = startFakeRegistry({ auth: { kind: "none" }, slowMs: 1500 });
  running.push(registry);
  const crm = await startCrm(
    { mirror: { default_registry: "reg.test", registries: { "reg.test": registry.url } } },
    "info",
  );
  running.push(crm);
  const before = registry.slowAborts();
  const c = await rawConnect(crm.port);
  c.write("GET /v2/slow/x/manifests/v1 HTTP/1.1\r\nHost: crm\r\n\r\n");
  await until(() => registry.seen.some((s) => s.url === "/v2/slow/x/manifests/v1"));
  c.socket.shutdown();
  // However it ended, the request's log line comes once crm is done with it.
  await crm.waitLog(/GET \/v2\/slow\/x\/manifests\/v1/, 20_000);
  expect(registry.slowAborts()).toBeGreaterThan(before);
  c.socket.end();
});

test("an HTTP/1.0-style half-close after a request body still gets its answer", async () => {
  const origin = startOrigin();
  running.push({ stop: () => origin.stop(true) });
  const crm = await startCrm(
    { allowed_hosts: ["127.0.0.1"], allowed_ports: [origin.port] },
    "info",
  );
  running.push(crm);
  const c = await rawConnect(crm.port);
  c.write(
    `POST http://127.0.0.1:${origin.port}/echo HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello`,
  );
  c.socket.shutdown();
  await c.closed(20_000);
  expect(c.text()).toMatch(/^HTTP\/1\.1 200 [^]*"length":5/);
});

test("by digest, a waiter whose Accept differs re-asks when the shared answer is an error", async () => {
  const INDEX = "application/vnd.oci.image.index.v1+json";
  const IMAGE = "application/vnd.oci.image.manifest.v1+json";
  const body = JSON.stringify({ schemaVersion: 2, mediaType: INDEX, manifests: [] });
  const digest = "sha256:" + new Bun.CryptoHasher("sha256").update(body).digest("hex");
  let started = 0;
  // A distribution registry answers 404 for an index the client's Accept does not name.
  const upstream = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req) {
      const path = new URL(req.url).pathname;
      if (path === "/v2/" || path === "/v2") return Response.json({});
      if (path !== `/v2/app/manifests/${digest}`)
        return Response.json(
          { errors: [{ code: "NAME_UNKNOWN", message: "no" }] },
          { status: 404 },
        );
      started++;
      await Bun.sleep(300);
      if (!(req.headers.get("accept") ?? "").includes(INDEX))
        return Response.json(
          { errors: [{ code: "MANIFEST_UNKNOWN", message: "manifest unknown" }] },
          { status: 404 },
        );
      return new Response(req.method === "HEAD" ? null : body, {
        headers: {
          "content-type": INDEX,
          "docker-content-digest": digest,
          "content-length": String(body.length),
        },
      });
    },
  });
  running.push({ stop: () => upstream.stop(true) });
  const crm: TestCrm = await startCrm(
    {
      mirror: {
        default_registry: "reg.test",
        registries: { "reg.test": `http://127.0.0.1:${upstream.port}` },
      },
    },
    "info",
  );
  running.push(crm);
  const ask = (accept: string) =>
    fetch(`${crm.url}/v2/app/manifests/${digest}`, {
      proxy: false,
      headers: { accept },
    } as RequestInit);
  const narrow = ask(IMAGE);
  await until(() => started > 0);
  const wide = ask(`${IMAGE}, ${INDEX}`);
  const [a, b] = await Promise.all([narrow, wide]);
  expect(a.status).toBe(404);
  expect(b.status).toBe(200);
  expect(await b.text()).toBe(body);
});
