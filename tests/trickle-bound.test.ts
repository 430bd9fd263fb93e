/**
 * An upstream that trickles one byte per `timeouts.idle` keeps its response alive as long as the
 * client reads it: crm's idle rule ("nothing moved either way") is the same as nginx's
 * proxy_read_timeout, and no minimum rate is imposed, because a large layer over a slow link must
 * still complete. What bounds the harm is that every such upstream socket belongs to one client
 * connection: a client holds at most limits.max_connections_per_client of them, the next one is
 * refused with 429 while other clients are still served, and when the client goes away crm closes
 * the upstream sockets it held.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { Socket, TCPSocketListener } from "bun";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { openRaw, type RawConn, waitUntil } from "./support/faulty-upstreams.ts";
import { sendFrom } from "./support/raw.ts";

const IDLE_MS = 1000;
const PER_CLIENT = 3;

/** Answers any request with a 1 MB Content-Length and then one byte of it every 300 ms. */
function startTrickler(): TCPSocketListener<{ timer?: Timer }> & {
  open: () => number;
  accepted: () => number;
} {
  const sockets = new Set<Socket<{ timer?: Timer }>>();
  let accepted = 0;
  const l = Bun.listen<{ timer?: Timer }>({
    hostname: "127.0.0.1",
    port: 0,
    data: {},
    socket: {
      open(s) {
        s.data = {};
        sockets.add(s);
        accepted++;
      },
      data(s, d) {
        if (s.data.timer || !d.toString("latin1").includes("\r\n\r\n")) return;
        s.write("HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n");
        s.data.timer = setInterval(() => s.write("x"), 300);
      },
      close(s) {
        clearInterval(s.data.timer);
        sockets.delete(s);
      },
      error() {},
    },
  });
  return Object.assign(l, { open: () => sockets.size, accepted: () => accepted });
}

let trickler: ReturnType<typeof startTrickler>;
let crm: TestCrm;

beforeAll(async () => {
  trickler = startTrickler();
  crm = await startCrm(
    {
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [trickler.port],
      timeouts: { idle: `${IDLE_MS}ms` },
      limits: { max_connections_per_client: PER_CLIENT },
    },
    "info",
  );
});

afterAll(async () => {
  await crm?.stop();
  trickler?.stop(true);
});

const bodyBytes = (c: RawConn): number => {
  const t = c.received().toString("latin1");
  const head = t.indexOf("\r\n\r\n");
  return head < 0 ? 0 : t.length - head - 4;
};

test("a trickling upstream holds at most max_connections_per_client connections of one client, and none after it leaves", async () => {
  const get = `GET http://127.0.0.1:${trickler.port}/blob HTTP/1.1\r\nHost: 127.0.0.1:${trickler.port}\r\n\r\n`;
  const held: RawConn[] = [];
  for (let i = 0; i < PER_CLIENT; i++) {
    const c = await openRaw(crm.port);
    await c.send(get);
    expect(await waitUntil(c, () => bodyBytes(c) > 0, 5000)).toBe(true);
    held.push(c);
  }
  // Three idle periods later every response is still alive and moving: the trickle is traffic.
  const before = held.map(bodyBytes);
  await Bun.sleep(3 * IDLE_MS + 500);
  for (const [i, c] of held.entries()) {
    expect(c.closed).toBe(false);
    expect(bodyBytes(c)).toBeGreaterThan(before[i] as number);
  }
  for (const c of held) expect(c.received().toString("latin1")).toMatch(/^HTTP\/1\.1 200 /);

  // The bound: one more connection from this address is refused, and reaches no upstream.
  const extra = await openRaw(crm.port);
  await extra.send(get);
  await waitUntil(extra, () => extra.closed, 5000);
  expect(extra.received().toString("latin1")).toMatch(/^HTTP\/1\.1 429 [^]*retry-after: 5/i);
  expect(trickler.open()).toBe(PER_CLIENT);
  expect(trickler.accepted()).toBe(PER_CLIENT);

  // Another client is not affected.
  expect(
    await sendFrom(
      "127.0.0.2",
      crm.port,
      "GET /healthz HTTP/1.1\r\nHost: crm\r\nConnection: close\r\n\r\n",
    ),
  ).toMatch(/^HTTP\/1\.1 200 /);

  // The client leaves: crm closes every upstream socket it held for it.
  for (const c of held) c.socket.terminate();
  for (let i = 0; i < 500 && trickler.open() > 0; i++) await Bun.sleep(10);
  expect(trickler.open()).toBe(0);

  // And its slots are free again.
  const again = await openRaw(crm.port);
  await again.send(get);
  expect(await waitUntil(again, () => bodyBytes(again) > 0, 5000)).toBe(true);
  again.socket.terminate();
}, 30_000);
