/**
 * crm must not be a target of its own forward proxy or CONNECT: the request would come back in
 * from 127.0.0.1, inside the loopback defaults of status.clients and metrics.clients, opening
 * /status.json and /metrics to any client when allow_private_networks and the allow-list cover
 * crm's own address and port.
 */
import { expect, test } from "bun:test";
import { SelfTargets } from "../src/net/self-targets.ts";
import { startCrm } from "./support/crm.ts";
import { freePorts } from "./support/ports.ts";
import { sendFrom } from "./support/raw.ts";

test("a forward request to crm's own listener is refused; status.json and /metrics stay closed", async () => {
  const [port] = freePorts(1) as [number];
  const crm = await startCrm(
    {
      listen: `127.0.0.1:${port}`,
      allowed_hosts: ["127.0.0.1", "localhost"],
      allowed_ports: [port],
      status: { clients: ["127.0.0.1/32"] },
      metrics: { clients: ["127.0.0.1/32"] },
    },
    "info",
  );
  try {
    for (const path of ["/status.json", "/metrics"]) {
      const via = await sendFrom(
        "127.0.0.2",
        port,
        `GET http://127.0.0.1:${port}${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`,
      );
      expect([path, via.split("\r\n")[0]]).toEqual([path, "HTTP/1.1 403 Forbidden"]);
      expect(via).toContain("crm's own listener");
    }
    // Nothing reached crm's own endpoints from crm's own address.
    expect(
      crm.logs.filter(
        (l) => /GET \/(status\.json|metrics) /.test(l) && l.includes("client=127.0.0.1 "),
      ),
    ).toEqual([]);
  } finally {
    await crm.stop();
  }
});

test("a CONNECT to crm's own listener works, and what comes through it is the tunnelling client's", async () => {
  const [port] = freePorts(1) as [number];
  const crm = await startCrm(
    {
      listen: `127.0.0.1:${port}`,
      allowed_hosts: ["127.0.0.1", "localhost"],
      allowed_ports: [port],
      status: { clients: ["127.0.0.1/32"] },
      metrics: { clients: ["127.0.0.1/32"] },
      access: { trusted_proxies: ["127.0.0.1/32"] },
    },
    "info",
  );
  try {
    const inner = (path: string): string =>
      `GET ${path} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 127.0.0.1\r\nConnection: close\r\n\r\n`;
    for (const path of ["/status.json", "/metrics"]) {
      const tunnel = await sendFrom(
        "127.0.0.2",
        port,
        `CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n${inner(path)}`,
      );
      expect([path, tunnel]).toEqual([
        path,
        expect.stringMatching(/^HTTP\/1\.1 200 [^]*\r\n\r\nHTTP\/1\.1 403 /),
      ]);
    }
    // The tunnel still carries a client's own requests to crm.
    const health = await sendFrom(
      "127.0.0.2",
      port,
      `CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n${inner("/healthz")}`,
    );
    expect(health).toMatch(/\r\n\r\nHTTP\/1\.1 200 [^]*ok\n$/);
    expect(
      crm.logs.filter(
        (l) => /GET \/(status\.json|metrics) /.test(l) && !l.includes("client=127.0.0.2 "),
      ),
    ).toEqual([]);
  } finally {
    await crm.stop();
  }
});

test("SelfTargets: a wildcard listener stands for every local address; other ports and hosts are not crm", () => {
  const self = new SelfTargets();
  self.setListeners(() => [
    { hostname: "0.0.0.0", port: 3128 },
    { hostname: "::ffff:127.0.0.1", port: 8080 },
    { hostname: "/run/crm.sock", port: 0 },
  ]);
  expect(self.matches("127.0.0.1", 3128)).toBe(true);
  expect(self.matches("127.9.9.9", 3128)).toBe(true);
  expect(self.matches("::1", 3128)).toBe(true);
  expect(self.matches("::ffff:127.0.0.1", 3128)).toBe(true);
  expect(self.matches("127.0.0.1", 8080)).toBe(true);
  expect(self.matches("127.0.0.2", 8080)).toBe(false);
  expect(self.matches("127.0.0.1", 3129)).toBe(false);
  expect(self.matches("192.0.2.1", 3128)).toBe(false);
  expect(self.matches("127.0.0.1", 0)).toBe(false);
});
