/**
 * Bandwidth limits hold as limits (lower bounds on time only: the machine is shared), the total
 * cap is shared fairly between clients whatever number of streams each opens, memory stays
 * bounded while pacing, and tunnels are paced too. Clients are told apart by binding curl to
 * 127.0.0.2 and 127.0.0.3.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startCrm, type TestCrm } from "./support/crm.ts";
import {
  patternDigest,
  startBigBlobServer,
  startFakeRegistry,
  type BigBlobServer,
  type FakeRegistry,
} from "./support/mirror-upstreams.ts";
import { startTcp } from "./support/origins.ts";
import { rawConnect, run } from "./support/raw.ts";
import { missingTools } from "./support/tools.ts";

const MiB = 1024 * 1024;
const BLOB = `sha256:${"b".repeat(64)}`;

/** The blob server is the registry's redirect target on a port of its own: allowed_ports must name it. */
async function mirrorFor(
  registry: FakeRegistry,
  limits: Record<string, unknown>,
  big: BigBlobServer,
): Promise<TestCrm> {
  return startCrm(
    {
      limits,
      allowed_ports: [80, 443, Number(new URL(big.url).port)],
      mirror: { default_registry: "reg.test", registries: { "reg.test": registry.url } },
    },
    "info",
  );
}

describe("client_bandwidth", () => {
  let big: BigBlobServer;
  let registry: FakeRegistry;
  let crm: TestCrm;
  beforeAll(async () => {
    big = startBigBlobServer(100 * MiB);
    registry = startFakeRegistry({ auth: { kind: "none" }, bigBase: big.url });
    crm = await mirrorFor(registry, { client_bandwidth: "10MiB/s" }, big);
  });
  afterAll(async () => {
    await crm.stop();
    registry.stop();
    big.stop();
  });

  test("a 100 MiB blob at 10MiB/s takes at least 9 s, arrives whole, and RSS stays bounded", async () => {
    Bun.gc(true);
    const rssBefore = process.memoryUsage.rss();
    let rssPeak = rssBefore;
    const t0 = performance.now();
    const res = await fetch(`${crm.url}/v2/big/app/blobs/${BLOB}`, { proxy: false } as RequestInit);
    expect(res.status).toBe(200);
    let got = 0;
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      got += value.byteLength;
      // After a full GC, so the sample counts what is held, not garbage the collector has not reached yet.
      if ((got & (4 * MiB - 1)) < value.byteLength) {
        Bun.gc(true);
        rssPeak = Math.max(rssPeak, process.memoryUsage.rss());
      }
    }
    const seconds = (performance.now() - t0) / 1000;
    expect(got).toBe(100 * MiB);
    expect(seconds).toBeGreaterThanOrEqual(9);
    // Paced by delaying reads, not by buffering: far less than the blob is ever held.
    expect(rssPeak - rssBefore).toBeLessThan(64 * MiB);
    console.log(
      `client_bandwidth 10MiB/s: 100 MiB in ${seconds.toFixed(1)} s (${(100 / seconds).toFixed(2)} MiB/s), RSS growth ${((rssPeak - rssBefore) / MiB).toFixed(1)} MiB`,
    );
  }, 60_000);
});

describe.skipIf(missingTools("fair shares", ["curl"]))("total_bandwidth", () => {
  let big: BigBlobServer;
  let registry: FakeRegistry;
  let crm: TestCrm;
  const CAP = 16 * MiB;
  beforeAll(async () => {
    big = startBigBlobServer(24 * MiB);
    registry = startFakeRegistry({ auth: { kind: "none" }, bigBase: big.url });
    crm = await mirrorFor(
      registry,
      { total_bandwidth: "16MiB/s", exempt_clients: ["127.0.0.9/32"] },
      big,
    );
  });
  afterAll(async () => {
    await crm.stop();
    registry.stop();
    big.stop();
  });

  test("a greedy client pulling 8 blobs in parallel does not starve a second one", async () => {
    // The blob's real digest: these pulls share one download (mirror.fanout), which checks it.
    const url = `${crm.url}/v2/big/app/blobs/${patternDigest(24 * MiB)}`;
    const greedy = Array.from({ length: 8 }, () =>
      Bun.spawn(
        ["curl", "-sS", "--noproxy", "*", "--interface", "127.0.0.2", "-o", "/dev/null", url],
        { stdout: "ignore", stderr: "ignore" },
      ),
    );
    try {
      await Bun.sleep(1000);
      const modest = await run(
        [
          "curl",
          "-sS",
          "--noproxy",
          "*",
          "--interface",
          "127.0.0.3",
          "-o",
          "/dev/null",
          "-w",
          "%{size_download} %{speed_download}",
          url,
        ],
        { timeoutMs: 60_000 },
      );
      const [size, speed] = modest.stdout.split(" ").map(Number) as [number, number];
      expect(size).toBe(24 * MiB);
      // Fair share with two active clients is half the cap; at least a third must reach it.
      expect(speed).toBeGreaterThanOrEqual(CAP / 3);
      console.log(
        `total_bandwidth 16MiB/s: modest client (1 stream) got ${(speed / MiB).toFixed(2)} MiB/s = ${((speed / CAP) * 100).toFixed(0)}% of the cap next to 8 greedy streams`,
      );
    } finally {
      for (const p of greedy) p.kill();
      await Promise.all(greedy.map((p) => p.exited));
    }
  }, 90_000);

  test("an exempt client is not paced", async () => {
    const r = await run(
      [
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "--interface",
        "127.0.0.9",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{speed_download}",
        `${crm.url}/v2/big/app/blobs/${BLOB}`,
      ],
      { timeoutMs: 60_000 },
    );
    const [size, speed] = r.stdout.split(" ").map(Number) as [number, number];
    expect(size).toBe(24 * MiB);
    // Not a speed test: an exempt client is simply not held to the cap (loopback runs far above it).
    expect(speed).toBeGreaterThan(CAP);
  }, 60_000);
});

describe("tunnels are paced too", () => {
  test("20 MiB through a CONNECT tunnel at client_bandwidth 10MiB/s take at least 1.6 s (2 s less the 0.25 s burst)", async () => {
    const tcp = startTcp("push", 20 * MiB);
    const crm = await startCrm(
      {
        allowed_hosts: ["127.0.0.1"],
        allowed_ports: [tcp.port],
        limits: { client_bandwidth: "10MiB/s" },
      },
      "info",
    );
    try {
      const t0 = performance.now();
      const c = await rawConnect(crm.port);
      c.write(`CONNECT 127.0.0.1:${tcp.port} HTTP/1.1\r\nHost: x\r\n\r\n`);
      await c.closed(60_000);
      const seconds = (performance.now() - t0) / 1000;
      const head = "HTTP/1.1 200 Connection Established\r\n\r\n";
      expect(c.text().startsWith(head)).toBe(true);
      expect(c.received().byteLength - head.length).toBe(20 * MiB);
      expect(seconds).toBeGreaterThanOrEqual(1.6);
    } finally {
      await crm.stop();
      tcp.stop(true);
    }
  }, 60_000);
});
