/**
 * Issue 21 (hostile peers, round 3), client identity: an IPv4 client on a dual-stack listener is
 * itself and not one shared "::ffff:" /64 (defect 1), and a PROXY header without a client address
 * leaves the bytes the client's own (defect 2).
 */
import { expect, test } from "bun:test";
import { connect } from "node:net";
import { startCrm } from "./support/crm.ts";
import { sendFrom } from "./support/raw.ts";

/** Opens a connection from `from` and keeps it open; resolves once it is connected. */
function holdFrom(from: string, port: number): Promise<{ close(): void; text(): string }> {
  return new Promise((resolve, reject) => {
    const got: Buffer[] = [];
    const s = connect({ host: "127.0.0.1", port, localAddress: from }, () =>
      resolve({ close: () => s.destroy(), text: () => Buffer.concat(got).toString("latin1") }),
    );
    s.on("data", (d: Buffer) => got.push(d));
    s.on("error", reject);
  });
}

test("dual-stack listener: IPv4 clients are counted each by its own address, and logged as IPv4", async () => {
  const crm = await startCrm({
    listen: "[::ffff:127.0.0.1]:0",
    limits: { max_connections_per_client: 1 },
  });
  try {
    const held = await holdFrom("127.0.0.2", crm.port);
    await Bun.sleep(50);
    // Another IPv4 client is not the first one: it gets its own connection budget.
    const other = await sendFrom(
      "127.0.0.3",
      crm.port,
      "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    expect(other).toMatch(/^HTTP\/1\.1 200 [^]*\r\n\r\nok\n$/);
    // The same client over its limit is still refused.
    const again = await sendFrom(
      "127.0.0.2",
      crm.port,
      "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    expect(again).toMatch(/^HTTP\/1\.1 429 /);
    held.close();
    const line = await crm.waitLog(/GET \/healthz/);
    expect(line).toContain("127.0.0.3");
    expect(crm.logs.filter((l) => !/ listening /.test(l) && l.includes("::ffff:"))).toEqual([]);
  } finally {
    await crm.stop();
  }
});

test("dual-stack listener: one IPv4 client spending its request rate leaves the others theirs", async () => {
  const crm = await startCrm({
    listen: "[::ffff:127.0.0.1]:0",
    limits: { requests_per_second: 0.01, burst: 1 },
  });
  try {
    const v2 = "GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    expect(await sendFrom("127.0.0.2", crm.port, v2)).toMatch(/^HTTP\/1\.1 200 /);
    expect(await sendFrom("127.0.0.2", crm.port, v2)).toMatch(/^HTTP\/1\.1 429 /);
    expect(await sendFrom("127.0.0.3", crm.port, v2)).toMatch(/^HTTP\/1\.1 200 /);
  } finally {
    await crm.stop();
  }
});

test("dual-stack listener: access.clients and metrics.clients see the IPv4 form", async () => {
  const crm = await startCrm({
    listen: "[::ffff:127.0.0.1]:0",
    access: { clients: ["127.0.0.2/32"] },
    metrics: { clients: ["127.0.0.2/32"] },
  });
  try {
    expect(
      await sendFrom(
        "127.0.0.2",
        crm.port,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
      ),
    ).toMatch(/^HTTP\/1\.1 200 /);
    expect(
      await sendFrom(
        "127.0.0.3",
        crm.port,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
      ),
    ).toBe("");
  } finally {
    await crm.stop();
  }
});

const V2_SIG = Buffer.from([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
]);
/** A v2 header: command (0 LOCAL, 1 PROXY), family byte, address block. */
const v2 = (cmd: number, family: number, body: Buffer = Buffer.alloc(0)): Buffer => {
  const len = Buffer.alloc(2);
  len.writeUInt16BE(body.length);
  return Buffer.concat([V2_SIG, Buffer.from([0x20 | cmd, family]), len, body]);
};
/** A request for /metrics that names 127.0.0.5 (the one address metrics.clients allows) in X-Forwarded-For. */
const metricsAs = Buffer.from(
  "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 127.0.0.5\r\nConnection: close\r\n\r\n",
  "latin1",
);

test("a PROXY header without a client address (v1 UNKNOWN, v2 UNSPEC, v2 UNIX) leaves the client unable to name itself", async () => {
  const crm = await startCrm({
    listen: { address: "127.0.0.1:0", proxy_protocol: true },
    access: { trusted_proxies: ["127.0.0.1/32"] },
    metrics: { clients: ["127.0.0.5/32"] },
  });
  try {
    const send = (bytes: Buffer): Promise<string> => sendFrom("127.0.0.1", crm.port, bytes);
    // Every header carries a client's bytes, v2 LOCAL included (HAProxy sends LOCAL for relayed
    // clients of unix-socket frontends): what they say about their client is not believed.
    for (const header of [
      v2(0, 0x00),
      Buffer.from("PROXY UNKNOWN\r\n", "latin1"),
      Buffer.from("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", "latin1"),
      v2(1, 0x00),
      v2(1, 0x31, Buffer.alloc(216)),
    ]) {
      expect(await send(Buffer.concat([header, metricsAs]))).toMatch(
        /^HTTP\/1\.1 403 [^]*metrics\.clients/,
      );
    }
    expect(
      crm.logs.filter((l) => /INFO  GET \/metrics /.test(l) && l.includes("client=127.0.0.5")),
    ).toHaveLength(0);
  } finally {
    await crm.stop();
  }
});
