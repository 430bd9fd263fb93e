/**
 * timeouts.upstream_header counts from the end of the request: a steady upload that takes longer
 * than it is not cut with a 504 (the review found a 40-byte upload at 1 byte / 100 ms cut at 2 s
 * with upstream_header 2s, so every large push through the proxy longer than 60 s failed).
 */
import { afterAll, expect, test } from "bun:test";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { rawConnect } from "./support/raw.ts";

const TOTAL = 40;
let received = 0;
const upstream = Bun.listen<{ head: boolean; n: number; buf: string }>({
  hostname: "127.0.0.1",
  port: 0,
  socket: {
    open(s) {
      s.data = { head: false, n: 0, buf: "" };
    },
    data(s, d) {
      if (!s.data.head) {
        s.data.buf += d.toString("latin1");
        const i = s.data.buf.indexOf("\r\n\r\n");
        if (i < 0) return;
        s.data.head = true;
        s.data.n = s.data.buf.length - i - 4;
      } else s.data.n += d.length;
      received = s.data.n;
      if (s.data.n >= TOTAL) s.write("HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok");
    },
  },
});
let crm: TestCrm;

afterAll(async () => {
  await crm?.stop();
  upstream.stop(true);
});

test("an upload slower than upstream_header is relayed whole and answered", async () => {
  crm = await startCrm(
    {
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [upstream.port],
      timeouts: { upstream_header: "1s" },
    },
    "warn",
  );
  const c = await rawConnect(crm.port);
  c.write(
    `PUT http://127.0.0.1:${upstream.port}/upload HTTP/1.1\r\nHost: 127.0.0.1:${upstream.port}\r\nContent-Length: ${TOTAL}\r\n\r\n`,
  );
  // 40 bytes over about 2 s: twice the head timeout, steadily.
  for (let i = 0; i < TOTAL && !c.ended; i++) {
    c.write("x");
    await Bun.sleep(50);
  }
  const answer = await c.waitFor(/\r\n\r\nok/, 10_000).catch(() => c.text());
  expect(received).toBe(TOTAL);
  expect(answer).toStartWith("HTTP/1.1 201 ");
  c.socket.end();
});
