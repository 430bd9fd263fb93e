/**
 * A client's FIN after a bodiless request cancels its upstream request, as an RST does: on a
 * connection that pipelined once before (the pipelining mark is per request), and when the FIN
 * comes in the same write as the request, while the upstream client is still connecting.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { rawConnect } from "./support/raw.ts";

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
      return new Response(new ReadableStream({ async pull(c) { await Bun.sleep(100); c.enqueue(new Uint8Array(10)); } }));
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

const req = (p: string): string => `GET http://127.0.0.1:${origin.port}/${p} HTTP/1.1\r\nHost: x\r\n\r\n`;

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
