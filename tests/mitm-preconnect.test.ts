/**
 * MITM opens the upstream connection (DNS, TCP, TLS) while the client's TLS handshake with crm
 * runs: the connection exists before the client has sent a request, and the request uses it.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { connect as netConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { initCa } from "../src/pki/index.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { startOrigin } from "./support/origins.ts";
import { makeLeaf, makeTestCa } from "./support/tls.ts";

const dir = mkdtempSync(join(tmpdir(), "crm-preconnect-"));
let crm: TestCrm;
let origin: ReturnType<typeof startOrigin>;

beforeAll(async () => {
  const mitmCa = await initCa({ outDir: join(dir, "ca") });
  origin = startOrigin(await makeLeaf(await makeTestCa("origin CA"), ["127.0.0.1"]));
  crm = await startCrm(
    {
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [origin.port],
      insecure_tls: true,
      mitm: { enabled: true, ca_cert_path: mitmCa.certPath, ca_key_path: mitmCa.keyPath },
    },
    "warn",
  );
});
afterAll(async () => {
  await crm.stop();
  origin.stop(true);
  rmSync(dir, { recursive: true, force: true });
});

/** CONNECT through crm, then TLS with crm's leaf; resolves once the client's handshake is done. */
function mitmTunnel(port: number): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const raw = netConnect(crm.port, "127.0.0.1", () =>
      raw.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`),
    );
    raw.once("data", (d) => {
      if (!d.toString().startsWith("HTTP/1.1 200")) return reject(new Error(d.toString()));
      const tls = tlsConnect({ socket: raw, rejectUnauthorized: false }, () => resolve(tls));
      tls.on("error", reject);
    });
    raw.on("error", reject);
  });
}

test("the upstream is dialled during the client's handshake, and the request uses that connection", async () => {
  const up = crm.server.rt.upstream;
  const before = up.opened;
  const tls = await mitmTunnel(Number(origin.port));
  // No request sent yet: the upstream connection is already there, idle in the pool.
  for (let i = 0; i < 200 && up.opened === before; i++) await Bun.sleep(10);
  expect(up.opened).toBe(before + 1);
  expect(up.pool.idleCount).toBeGreaterThan(0);
  const answer = await new Promise<string>((resolve) => {
    let got = "";
    tls.on("data", (d) => {
      got += d.toString();
      if (got.includes("origin GET /pre")) resolve(got);
    });
    tls.write(`GET /pre HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`);
  });
  expect(answer).toMatch(/^HTTP\/1\.1 200 /);
  expect(up.opened).toBe(before + 1);
  tls.destroy();
});
