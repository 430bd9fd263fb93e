/**
 * Issue 21, defect 9: the status page and status.json show every client's address and images,
 * so they are readable from `status.clients` only (loopback by default), like /metrics.
 */
import { expect, test } from "bun:test";
import { buildConfig } from "../src/config/load.ts";
import { startCrm } from "./support/crm.ts";
import { sendFrom } from "./support/raw.ts";

const get = (path: string): string =>
  `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`;

test("status.clients: loopback by default; an address outside the list gets 403 for /, /status.json and /status.js", async () => {
  const crm = await startCrm({});
  try {
    expect(buildConfig({}, "t").config.status.clients).toEqual(["127.0.0.0/8", "::1/128"]);
    expect(await sendFrom("127.0.0.1", crm.port, get("/status.json"))).toMatch(/^HTTP\/1\.1 200 /);
  } finally {
    await crm.stop();
  }
  const narrow = await startCrm({ status: { clients: ["127.0.0.1/32"] } });
  try {
    for (const p of ["/", "/status.json", "/status.js"]) {
      const r = await sendFrom("127.0.0.2", narrow.port, get(p));
      expect(r).toMatch(/^HTTP\/1\.1 403 [^]*status\.clients/);
      expect(r).not.toContain('"clients"');
    }
    expect(await sendFrom("127.0.0.1", narrow.port, get("/status.json"))).toMatch(
      /^HTTP\/1\.1 200 /,
    );
  } finally {
    await narrow.stop();
  }
});

test("status.clients (default): a non-loopback client behind a trusted front is refused, a loopback one served", async () => {
  const crm = await startCrm({ access: { trusted_proxies: ["127.0.0.1/32"] } });
  try {
    const via = (xff: string): Promise<string> =>
      sendFrom(
        "127.0.0.1",
        crm.port,
        `GET /status.json HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: ${xff}\r\nConnection: close\r\n\r\n`,
      );
    expect(await via("192.0.2.10")).toMatch(/^HTTP\/1\.1 403 [^]*status\.clients/);
    expect(await via("127.0.0.9")).toMatch(/^HTTP\/1\.1 200 /);
  } finally {
    await crm.stop();
  }
});

test("status.clients: opened on purpose to a range; bad entries and unknown keys are config errors", async () => {
  const crm = await startCrm({
    status: { clients: ["127.0.0.0/8", "192.0.2.0/24"] },
    access: { trusted_proxies: ["127.0.0.1/32"] },
  });
  try {
    const r = await sendFrom(
      "127.0.0.1",
      crm.port,
      "GET /status.json HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.10\r\nConnection: close\r\n\r\n",
    );
    expect(r).toMatch(/^HTTP\/1\.1 200 /);
  } finally {
    await crm.stop();
  }
  expect(() => buildConfig({ status: { clients: ["not-a-range"] } }, "t")).toThrow(
    /status\.clients\[0\]/,
  );
  expect(() => buildConfig({ status: { client: ["127.0.0.1/32"] } }, "t")).toThrow(
    /status\.client[^]*did you mean[^]*clients/i,
  );
});
