/**
 * A PROXY header that names no client (v1 UNKNOWN, v2 UNSPEC, UNIX or LOCAL) must not make the
 * relayed client the balancer: behind a balancer on the same host that would open status.clients
 * and metrics.clients (loopback), pass access.clients and show the balancer's request journal.
 * Such a client is "unknown via <balancer>": no CIDR list matches it, limits count it under the
 * balancer's key, and a balancer's LOCAL health check still reaches /healthz.
 */
import { expect, test } from "bun:test";
import { clientKey, unknownClient } from "../src/access/client-address.ts";
import { startCrm } from "./support/crm.ts";
import { sendFrom } from "./support/raw.ts";

const V2_SIG = Buffer.from([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
]);
const v2 = (cmd: number, family: number, body: Buffer = Buffer.alloc(0)): Buffer => {
  const len = Buffer.alloc(2);
  len.writeUInt16BE(body.length);
  return Buffer.concat([V2_SIG, Buffer.from([0x20 | cmd, family]), len, body]);
};
const ADDRESSLESS: Array<[string, Buffer]> = [
  ["v1 UNKNOWN", Buffer.from("PROXY UNKNOWN\r\n", "latin1")],
  ["v2 PROXY UNSPEC", v2(1, 0x00)],
  ["v2 PROXY UNIX", v2(1, 0x31, Buffer.alloc(216))],
  ["v2 LOCAL", v2(0, 0x00)],
];
const get = (path: string): Buffer =>
  Buffer.from(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`, "latin1");

test("status.json, /metrics and the request journal are not the balancer's for a client nobody named", async () => {
  // The balancer is on 127.0.0.1, inside the loopback defaults of status.clients and metrics.clients.
  const crm = await startCrm(
    {
      listen: { address: "127.0.0.1:0", proxy_protocol: true },
      access: { trusted_proxies: ["127.0.0.1/32"] },
      mirror: { registries: {} },
    },
    "info",
  );
  try {
    const send = (h: Buffer, path: string): Promise<string> =>
      sendFrom("127.0.0.1", crm.port, Buffer.concat([h, get(path)]));
    // A client the balancer named, the balancer itself: its request is in the journal.
    expect(
      await send(Buffer.from("PROXY TCP4 127.0.0.1 127.0.0.1 1 2\r\n", "latin1"), "/v2/"),
    ).toMatch(/^HTTP\/1\.1 /);
    for (const [name, h] of ADDRESSLESS) {
      expect([name, (await send(h, "/status.json")).split("\r\n")[0]]).toEqual([
        name,
        "HTTP/1.1 403 Forbidden",
      ]);
      expect([name, (await send(h, "/metrics")).split("\r\n")[0]]).toEqual([
        name,
        "HTTP/1.1 403 Forbidden",
      ]);
      const journal = await send(h, "/v2/_crm/requests");
      expect(journal).toMatch(/^HTTP\/1\.1 200 /);
      const body = JSON.parse(journal.slice(journal.indexOf("\r\n\r\n") + 4)) as {
        client: string;
        requests: unknown[];
      };
      expect([name, body.client, body.requests]).toEqual([name, "unknown via 127.0.0.1", []]);
    }
    expect(
      crm.logs.some(
        (l) => /GET \/metrics /.test(l) && l.includes(`client="unknown via 127.0.0.1"`),
      ),
    ).toBe(true);
  } finally {
    await crm.stop();
  }
});

test("access.clients: a client nobody named is refused, but a LOCAL health check reaches /healthz", async () => {
  const crm = await startCrm(
    {
      listen: { address: "127.0.0.1:0", proxy_protocol: true },
      access: { trusted_proxies: ["127.0.0.1/32"], clients: ["127.0.0.1/32"] },
    },
    "info",
  );
  try {
    const send = (h: Buffer, path: string): Promise<string> =>
      sendFrom("127.0.0.1", crm.port, Buffer.concat([h, get(path)]));
    expect(await send(v2(0, 0x00), "/healthz")).toMatch(/^HTTP\/1\.1 200 [^]*ok/);
    for (const [name, h] of ADDRESSLESS) {
      expect([name, (await send(h, "/v2/")).split("\r\n")[0]]).toEqual([
        name,
        "HTTP/1.1 403 Forbidden",
      ]);
    }
  } finally {
    await crm.stop();
  }
});

test("limits count a client nobody named under its balancer's key", () => {
  expect(clientKey(unknownClient("192.0.2.1"))).toBe("192.0.2.1");
  expect(clientKey(unknownClient("2001:db8:1:2::7"))).toBe("2001:db8:1:2::/64");
  expect(clientKey(unknownClient("unix"))).toBe("unix");
});
