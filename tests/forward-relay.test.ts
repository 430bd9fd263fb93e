/**
 * The forward path on crm's own upstream client: bodies relayed as bytes (a chunked body passes
 * with its framing as it came), kept-alive upstream connections reused, and a slow client holding
 * the upstream back instead of crm buffering the body.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { Socket } from "bun";
import { startScriptedUpstream } from "./support/faulty-upstreams.ts";
import { startOrigin, startPusher } from "./support/origins.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";

const MiB = 1024 * 1024;
let crm: TestCrm;
let origin: ReturnType<typeof startOrigin>;
const chunked = startScriptedUpstream(() => ({
  bytes: Buffer.from(`HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-up: 1\r\n\r\n${CHUNKS}`),
  after: "keep",
}));
const CHUNKS = "5;name=value\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
let big: ReturnType<typeof startPusher>;

beforeAll(async () => {
  origin = startOrigin();
  big = startPusher(128 * MiB, null, true);
  crm = await startCrm(
    { allowed_hosts: ["127.0.0.1"], allowed_ports: [origin.port, chunked.port, big.port] },
    "warn",
  );
});
afterAll(async () => {
  await crm.stop();
  origin.stop(true);
  chunked.stop();
  big.stop(true);
});

/** Sends `request` to crm and returns every byte until crm closes. */
async function exchange(request: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  return new Promise((resolve, reject) => {
    Bun.connect({
      hostname: "127.0.0.1",
      port: crm.port,
      socket: {
        open: (s) => void s.write(request),
        data: (_s, d) => void parts.push(Buffer.from(d)),
        close: () => resolve(Buffer.concat(parts)),
        error: (_s, e) => reject(e),
      },
    }).catch(reject);
  });
}

test("a chunked upstream body reaches the client as it came, extensions and all", async () => {
  const chunks = CHUNKS;
  const up = chunked;
  const out = (
    await exchange(
      `GET http://127.0.0.1:${up.port}/c HTTP/1.1\r\nHost: 127.0.0.1:${up.port}\r\nConnection: close\r\n\r\n`,
    )
  ).toString("latin1");
  const [head = "", body] =
    out.split("\r\n\r\n", 2).length === 2
      ? [out.slice(0, out.indexOf("\r\n\r\n")), out.slice(out.indexOf("\r\n\r\n") + 4)]
      : [out, ""];
  expect(head).toMatch(/^HTTP\/1\.1 200 /);
  expect(head.toLowerCase()).toContain("transfer-encoding: chunked");
  expect(head.toLowerCase()).toContain("via: 1.1 crm");
  expect(body).toBe(chunks);
});

test("an HTTP/1.0 client gets an upstream's chunked body de-chunked, delimited by the close", async () => {
  const out = (await exchange(`GET http://127.0.0.1:${chunked.port}/c HTTP/1.0\r\n\r\n`)).toString(
    "latin1",
  );
  expect(out.toLowerCase()).not.toContain("transfer-encoding");
  expect(out.slice(out.indexOf("\r\n\r\n") + 4)).toBe("hello world");
});

test("sequential forwarded requests share one kept-alive upstream connection", async () => {
  const before = crm.server.rt.upstream.opened;
  for (let i = 0; i < 5; i++) {
    const res = await fetch(`http://127.0.0.1:${origin.port}/k${i}`, { proxy: crm.url });
    expect(await res.text()).toBe(`origin GET /k${i}`);
  }
  expect(crm.server.rt.upstream.opened - before).toBe(1);
});

test("a client that stops reading holds the upstream back: crm does not buffer the body", async () => {
  const total = 128 * MiB;
  const upstream = big;
  const pushed = (): number => big.pushed();
  let got = 0;
  let client!: Socket<undefined>;
  const done = new Promise<void>((resolve) => {
    void Bun.connect({
      hostname: "127.0.0.1",
      port: crm.port,
      socket: {
        open(s) {
          client = s;
          s.write(
            `GET http://127.0.0.1:${upstream.port}/big HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`,
          );
        },
        data(_s, d) {
          got += d.byteLength;
        },
        close: () => resolve(),
        error() {},
      },
    });
  });
  while (got === 0) await Bun.sleep(5);
  client.pause();
  // Let the pipes fill, then check the upstream was stopped far short of the body.
  let last = -1;
  while (pushed() !== last) {
    last = pushed();
    await Bun.sleep(200);
  }
  console.log(
    `slow reader: upstream pushed ${(pushed() / MiB).toFixed(1)} MiB of ${total / MiB} MiB while the client read ${(got / MiB).toFixed(1)} MiB`,
  );
  expect(pushed()).toBeLessThan(48 * MiB);
  client.resume();
  await done;
  expect(got).toBeGreaterThan(total);
});
