/**
 * Fan-out (issue 19 §1), end to end: Debian's docker-registry holding an image with a 64 MiB
 * layer, behind a pacing relay (tests/support/pacing-relay.ts) so one download lasts long enough
 * for clients to overlap, crm in front, and real clients (curl, skopeo). The registry's own log
 * counts the upstream blob GETs; every client's bytes are checked against the digest.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { readFile, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Socket } from "bun";
import { startCrm, type TestCrm } from "./support/crm.ts";
import {
  startCuttingRelay,
  type CuttingRelay,
  type RelayRequest,
} from "./support/cutting-relay.ts";
import { startPacingRelay, type PacingRelay } from "./support/pacing-relay.ts";
import { freePorts } from "./support/ports.ts";
import {
  runSkopeo,
  sha256Digest,
  startRegistry,
  type RegistryFixture,
} from "./support/registry.ts";
import { missingTools } from "./support/tools.ts";

const skip = missingTools("mirror fan-out", ["docker-registry", "skopeo", "curl"]);

const MiB = 1024 * 1024;
const LAYER_SIZE = 64 * MiB;
const REPO = "fan/big";
/** 64 MiB/s for every connection of a relay together: a layer takes about a second once released. */
const RATE = 64 * MiB;
/** Each relay connection waits after this much until the test has seen every client join. */
const GATE = 2 * MiB;

interface Image {
  layer: string;
  config: string;
  manifest: string;
}

describe.skipIf(skip)("mirror fan-out: one upstream download per blob in flight", () => {
  let fx: RegistryFixture;
  let image: Image;
  const started: Array<{ stop(): unknown }> = [];

  beforeAll(async () => {
    fx = await startRegistry({ auth: "none" });
    image = await pushImage(fx);
  }, 120_000);

  afterAll(async () => {
    for (const s of started.splice(0).reverse()) await s.stop();
    await fx?.stop();
  }, 30_000);

  const blobPath = (digest: string): string => `/v2/${REPO}/blobs/${digest}`;

  /** Upstream GETs of `digest` in the registry's own log (distribution logs every request it answers). */
  const registryGets = (digest: string, since: number): string[] =>
    fx
      .logs()
      .slice(since)
      .split("\n")
      .filter(
        (l) =>
          l.includes("http.request.method=GET") &&
          l.includes(`http.request.uri="${blobPath(digest)}"`) &&
          l.includes("response completed"),
      );

  async function setup(
    fanout: Record<string, unknown>,
    relay: { gateAfter?: number; corruptAt?: number } = { gateAfter: GATE },
  ): Promise<{ crm: TestCrm; relay: PacingRelay }> {
    const r = startPacingRelay(Number(new URL(fx.url).port), { rate: RATE, ...relay });
    started.push(r);
    const crm = await startCrm(
      {
        timeouts: { header: "300ms" },
        mirror: {
          default_registry: "reg.test",
          registries: { "reg.test": `http://127.0.0.1:${r.port}` },
          fanout,
        },
      },
      "info",
    );
    started.push(crm);
    return { crm, relay: r };
  }

  const metric = (crm: TestCrm, name: string): number => {
    const line = crm.server.rt.metrics
      .render()
      .split("\n")
      .find((l) => l.startsWith(name + " ") || l.startsWith(name + "{"));
    return line === undefined ? 0 : Number(line.split(" ").pop());
  };

  /** Waits (polling, no deadline of its own) until `n` clients have joined the download. */
  async function joined(crm: TestCrm, n: number): Promise<void> {
    while (metric(crm, "crm_mirror_fanout_joins_total") < n) await Bun.sleep(20);
  }

  test("16 concurrent curl pulls of a 64 MiB layer: one upstream GET, every body verifies", async () => {
    const { crm, relay } = await setup({});
    const since = fx.logs().length;
    const url = `${crm.url}/v2/reg.test/${REPO}/blobs/${image.layer}`;
    const pulls = Array.from({ length: 16 }, (_, i) =>
      curlDigest(url, join(fx.dir, `curl-${i}.bin`)),
    );
    await joined(crm, 15);
    relay.openGate();
    const results = await Promise.all(pulls);
    for (const r of results) {
      expect(r.exit).toBe(0);
      expect(r.size).toBe(LAYER_SIZE);
      expect(r.digest).toBe(image.layer);
    }
    expect(registryGets(image.layer, since)).toHaveLength(1);
    expect(metric(crm, "crm_mirror_fanout_downloads_total")).toBe(1);
    // The window is given back once the last reader is done.
    expect(metric(crm, "crm_mirror_fanout_reserved_bytes")).toBe(0);
  }, 120_000);

  test("8 skopeo copies and 8 curl pulls at once: one upstream GET of the layer, digests intact", async () => {
    const { crm, relay } = await setup({});
    const since = fx.logs().length;
    const conf = join(fx.dir, `fanout-registries-${crm.port}.conf`);
    await writeFile(
      conf,
      [
        "unqualified-search-registries = []",
        "[[registry]]",
        'prefix = "reg.test"',
        `location = "127.0.0.1:${freePorts(1)[0]}"`,
        "insecure = true",
        "[[registry.mirror]]",
        `location = "127.0.0.1:${crm.port}/reg.test"`,
        "insecure = true",
        "",
      ].join("\n"),
    );
    const url = `${crm.url}/v2/reg.test/${REPO}/blobs/${image.layer}`;
    const copies = Array.from({ length: 8 }, (_, i) => {
      const dest = join(fx.dir, `skopeo-${crm.port}-${i}`);
      return runSkopeo(
        fx,
        [
          "--registries-conf",
          conf,
          "copy",
          "--preserve-digests",
          "--quiet",
          `docker://reg.test/${REPO}:v1`,
          `dir:${dest}`,
        ],
        { timeoutMs: 110_000 },
      ).then(() => dest);
    });
    const curls = Array.from({ length: 8 }, (_, i) =>
      curlDigest(url, join(fx.dir, `mixed-${i}.bin`)),
    );
    await joined(crm, 15);
    relay.openGate();
    for (const r of await Promise.all(curls)) expect(r.digest).toBe(image.layer);
    for (const dest of await Promise.all(copies)) {
      // skopeo's dir: transport names each blob by its hex digest.
      const files = await readdir(dest);
      const hex = image.layer.slice("sha256:".length);
      expect(files).toContain(hex);
      expect(sha256Digest(await readFile(join(dest, hex)))).toBe(image.layer);
    }
    expect(registryGets(image.layer, since)).toHaveLength(1);
  }, 120_000);

  for (const grace of ["0s", "1s"])
    test(`a client that stops reading falls behind and detaches (lag_grace ${grace}); the others finish, memory stays bounded, it completes on its own range request`, async () => {
      const window = 4 * MiB;
      const budget = 16 * MiB;
      const { crm, relay } = await setup({ window: "4MiB", budget: "16MiB", lag_grace: grace });
      const since = fx.logs().length;
      const stalled = await rawGet(crm.port, `/v2/reg.test/${REPO}/blobs/${image.layer}`);
      // It has its head and first bytes; now it stops reading.
      await stalled.waitBytes(64 * 1024);
      stalled.pause();
      const url = `${crm.url}/v2/reg.test/${REPO}/blobs/${image.layer}`;
      const others = Array.from({ length: 3 }, (_, i) =>
        curlDigest(url, join(fx.dir, `fast-${i}.bin`)),
      );
      await joined(crm, 3);
      Bun.gc(true);
      const rssBefore = process.memoryUsage.rss();
      relay.openGate();
      let peakWindow = 0;
      let peakRss = 0;
      let done = false;
      const sampler = (async () => {
        while (!done) {
          peakWindow = Math.max(peakWindow, metric(crm, "crm_mirror_fanout_window_bytes"));
          await Bun.sleep(25);
        }
      })();
      const results = await Promise.all(others);
      done = true;
      await sampler;
      for (const r of results) expect(r.digest).toBe(image.layer);
      // While the stalled client still holds its connection: it was detached, and nothing pins the blob.
      expect(metric(crm, "crm_mirror_fanout_detached_total")).toBeGreaterThanOrEqual(1);
      // With a grace the download waited for it first (at most 1 s in all); without, never.
      if (grace === "0s") expect(metric(crm, "crm_mirror_fanout_lag_waits_total")).toBe(0);
      else expect(metric(crm, "crm_mirror_fanout_lag_waits_total")).toBeGreaterThanOrEqual(1);
      expect(metric(crm, "crm_mirror_fanout_lag_wait_seconds_total")).toBeLessThanOrEqual(
        grace === "0s" ? 0 : 1.1,
      );
      expect(peakWindow).toBeLessThanOrEqual(window + 1 * MiB);
      Bun.gc(true);
      peakRss = process.memoryUsage.rss();
      expect(peakRss - rssBefore).toBeLessThan(budget);
      // It resumes: the rest comes from its own range request; the bytes are the blob's.
      stalled.resume();
      const body = await stalled.done;
      expect(body.byteLength).toBe(LAYER_SIZE);
      expect(sha256Digest(body)).toBe(image.layer);
      const gets = registryGets(image.layer, since);
      expect(gets).toHaveLength(2);
    }, 120_000);

  test("backpressure: with its only reader stalled, the upstream is not read on (memory and the uplink are spared)", async () => {
    const { crm, relay } = await setup({ window: "4MiB", budget: "16MiB" }, {});
    const stalled = await rawGet(crm.port, `/v2/reg.test/${REPO}/blobs/${image.layer}`);
    await stalled.waitBytes(64 * 1024);
    stalled.pause();
    // Wait until the relay stops receiving from the registry (it would take all 64 MiB if crm read on).
    let last = -1;
    while (relay.upstreamBytes() !== last) {
      last = relay.upstreamBytes();
      await Bun.sleep(300);
    }
    // Socket buffers on the way (relay → crm, crm → client) and the relay's own queue hold some
    // MiB; crm itself holds at most its window and read-ahead.
    expect(last).toBeLessThan(LAYER_SIZE / 2);
    expect(metric(crm, "crm_mirror_fanout_window_bytes")).toBeLessThanOrEqual(4 * MiB + MiB);
    stalled.resume();
    const body = await stalled.done;
    expect(sha256Digest(body)).toBe(image.layer);
  }, 120_000);

  test("when the last reader leaves, the upstream download is cancelled", async () => {
    const { crm, relay } = await setup({});
    const a = await rawGet(crm.port, `/v2/reg.test/${REPO}/blobs/${image.layer}`);
    const b = await rawGet(crm.port, `/v2/reg.test/${REPO}/blobs/${image.layer}`);
    await joined(crm, 1);
    await Promise.all([a.waitBytes(64 * 1024), b.waitBytes(64 * 1024)]);
    a.close();
    // One reader left: the download goes on for the other.
    expect(metric(crm, "crm_mirror_fanout_in_flight")).toBe(1);
    b.close();
    while (metric(crm, "crm_mirror_fanout_in_flight") > 0) await Bun.sleep(20);
    expect(metric(crm, "crm_mirror_fanout_reserved_bytes")).toBe(0);
    relay.openGate();
    // The relay's upstream connection is closed by crm's cancel: the registry sends no more.
    let last = -1;
    while (relay.upstreamBytes() !== last) {
      last = relay.upstreamBytes();
      await Bun.sleep(300);
    }
    expect(last).toBeLessThan(LAYER_SIZE / 2);
    await a.done.catch(() => {});
    await b.done.catch(() => {});
  }, 120_000);

  test("a client paced by client_bandwidth falls behind, detaches and still gets the whole blob; the others are not slowed to its pace", async () => {
    const { crm, relay } = await setup({ window: "4MiB", budget: "16MiB" });
    // Only 127.0.0.2 is paced (the others are exempt); crm listens on 127.0.0.1, curl binds the source.
    crm.server.rt.bandwidth.configure({
      ...crm.server.rt.config.limits,
      clientBandwidth: 16 * MiB,
      exemptClients: ["127.0.0.1/32"],
    });
    const url = `${crm.url}/v2/reg.test/${REPO}/blobs/${image.layer}`;
    const paced = curlDigest(url, join(fx.dir, "paced.bin"), ["--interface", "127.0.0.2"]);
    const fast = Array.from({ length: 2 }, (_, i) =>
      curlDigest(url, join(fx.dir, `unpaced-${i}.bin`)),
    );
    await joined(crm, 2);
    relay.openGate();
    const fastDone = await Promise.all(fast);
    for (const r of fastDone) expect(r.digest).toBe(image.layer);
    // The fast ones are done while the paced one (at most 16 MiB/s: 4 s for the layer) is still on.
    expect(metric(crm, "crm_mirror_fanout_detached_total")).toBeGreaterThanOrEqual(1);
    const p = await paced;
    expect(p.exit).toBe(0);
    expect(p.digest).toBe(image.layer);
  }, 120_000);

  test("a client arriving after byte 0 left the window gets its own upstream request", async () => {
    const { crm } = await setup({ window: "4MiB", budget: "16MiB" }, {});
    const since = fx.logs().length;
    const first = await rawGet(crm.port, `/v2/reg.test/${REPO}/blobs/${image.layer}`);
    await first.waitBytes(12 * MiB);
    const late = await curlDigest(
      `${crm.url}/v2/reg.test/${REPO}/blobs/${image.layer}`,
      join(fx.dir, "late.bin"),
    );
    expect(late.digest).toBe(image.layer);
    expect(sha256Digest(await first.done)).toBe(image.layer);
    expect(registryGets(image.layer, since)).toHaveLength(2);
    expect(metric(crm, "crm_mirror_fanout_joins_total")).toBe(0);
  }, 120_000);

  test("over the budget, a new download is not shared: its clients get their own requests", async () => {
    // The budget holds one window: the layer's download takes it while its reader stalls.
    const { crm } = await setup({ window: "4MiB", budget: "4MiB" }, {});
    const since = fx.logs().length;
    const holder = await rawGet(crm.port, `/v2/reg.test/${REPO}/blobs/${image.layer}`);
    await holder.waitBytes(64 * 1024);
    holder.pause();
    const url = `${crm.url}/v2/reg.test/${REPO}/blobs/${image.config}`;
    const results = await Promise.all(
      Array.from({ length: 3 }, (_, i) => curlDigest(url, join(fx.dir, `budget-${i}.bin`))),
    );
    for (const r of results) expect(r.digest).toBe(image.config);
    expect(registryGets(image.config, since)).toHaveLength(3);
    expect(crm.server.rt.metrics.render()).toContain(
      'crm_mirror_fanout_not_shared_total{reason="over_budget"} 3',
    );
    holder.resume();
    expect(sha256Digest(await holder.done)).toBe(image.layer);
  }, 120_000);

  test("a relay that corrupts one byte: every reader is cut before its end, the mismatch is counted", async () => {
    const { crm, relay } = await setup({}, { gateAfter: GATE, corruptAt: 20 * MiB });
    const url = `${crm.url}/v2/reg.test/${REPO}/blobs/${image.layer}`;
    const pulls = Array.from({ length: 4 }, (_, i) =>
      curlDigest(url, join(fx.dir, `corrupt-${i}.bin`)),
    );
    await joined(crm, 3);
    relay.openGate();
    for (const r of await Promise.all(pulls)) {
      // curl 18: "transfer closed with outstanding read data remaining": never a clean end.
      expect(r.exit).not.toBe(0);
      expect(r.size).toBeLessThan(LAYER_SIZE);
    }
    expect(metric(crm, "crm_mirror_fanout_digest_mismatch_total")).toBe(1);
    await crm.waitLog(/do not match their digest/);
  }, 120_000);

  /**
   * crm → pacing relay (gate) → cutting relay → registry: `cuts` says after how many body bytes the
   * cutting relay breaks the blob GET numbered n (0 = the first) of `digest`.
   */
  async function setupCut(
    fanout: Record<string, unknown>,
    digest: string,
    cuts: Record<number, number>,
  ): Promise<{ crm: TestCrm; relay: PacingRelay; blobGets: () => RelayRequest[] }> {
    const u = new URL(fx.url);
    const isBlobGet = (r: RelayRequest): boolean =>
      r.method === "GET" && r.path.endsWith(`/blobs/${digest}`);
    let n = 0;
    const cutter: CuttingRelay = await startCuttingRelay(
      { host: u.hostname, port: Number(u.port) },
      (r) => {
        if (!isBlobGet(r)) return { kind: "pass" };
        const at = cuts[n++];
        return at === undefined ? { kind: "pass" } : { kind: "pass", cutAfter: at };
      },
    );
    started.push(cutter);
    const r = startPacingRelay(cutter.port, { rate: RATE, gateAfter: GATE });
    started.push(r);
    const crm = await startCrm(
      {
        timeouts: { header: "300ms" },
        mirror: {
          default_registry: "reg.test",
          registries: { "reg.test": `http://127.0.0.1:${r.port}` },
          fanout,
        },
      },
      "info",
    );
    started.push(crm);
    return { crm, relay: r, blobGets: () => cutter.requests.filter(isBlobGet) };
  }

  test("a shared download whose upstream drops is resumed: every reader gets the whole blob, from one download and one range request", async () => {
    const cutAt = 20 * MiB;
    const { crm, relay, blobGets } = await setupCut({}, image.layer, { 0: cutAt });
    const url = `${crm.url}/v2/reg.test/${REPO}/blobs/${image.layer}`;
    const pulls = Array.from({ length: 4 }, (_, i) =>
      curlDigest(url, join(fx.dir, `cut-shared-${i}.bin`)),
    );
    await joined(crm, 3);
    relay.openGate();
    for (const r of await Promise.all(pulls)) {
      expect(r.exit).toBe(0);
      expect(r.digest).toBe(image.layer);
    }
    const gets = blobGets();
    expect(gets).toHaveLength(2);
    expect(gets[0]?.headers.range).toBeUndefined();
    expect(gets[1]?.headers.range).toBe(`bytes=${cutAt}-${LAYER_SIZE - 1}`);
    expect(metric(crm, "crm_mirror_fanout_downloads_total")).toBe(1);
    expect(
      crm.logs.some((l) => l.includes("mirror blob resume") && l.includes(`at=${cutAt}`)),
    ).toBe(true);
  }, 120_000);

  test("a detached reader's own range request is resumed too when its upstream drops", async () => {
    const { crm, relay, blobGets } = await setupCut(
      { window: "4MiB", budget: "16MiB", lag_grace: "0s" },
      image.layer,
      { 1: 8 * MiB },
    );
    const stalled = await rawGet(crm.port, `/v2/reg.test/${REPO}/blobs/${image.layer}`);
    await stalled.waitBytes(64 * 1024);
    stalled.pause();
    const url = `${crm.url}/v2/reg.test/${REPO}/blobs/${image.layer}`;
    const others = Array.from({ length: 2 }, (_, i) =>
      curlDigest(url, join(fx.dir, `cut-own-${i}.bin`)),
    );
    await joined(crm, 2);
    relay.openGate();
    for (const r of await Promise.all(others)) expect(r.digest).toBe(image.layer);
    expect(metric(crm, "crm_mirror_fanout_detached_total")).toBeGreaterThanOrEqual(1);
    stalled.resume();
    const body = await stalled.done;
    expect(sha256Digest(body)).toBe(image.layer);
    const gets = blobGets();
    expect(gets).toHaveLength(3);
    const own = /^bytes=(\d+)-(\d+)$/.exec(gets[1]?.headers.range ?? "");
    expect(own).not.toBeNull();
    expect(Number(own?.[2])).toBe(LAYER_SIZE - 1);
    expect(gets[2]?.headers.range).toBe(`bytes=${Number(own?.[1]) + 8 * MiB}-${LAYER_SIZE - 1}`);
  }, 120_000);

  test("shared blob requests ask the upstream for identity encoding (the sharing key holds no encoding)", async () => {
    const { crm, relay, blobGets } = await setupCut({}, image.layer, {});
    const url = `${crm.url}/v2/reg.test/${REPO}/blobs/${image.layer}`;
    const pulls = Array.from({ length: 2 }, (_, i) =>
      curlDigest(url, join(fx.dir, `enc-${i}.bin`), ["-H", "Accept-Encoding: gzip"]),
    );
    await joined(crm, 1);
    relay.openGate();
    for (const r of await Promise.all(pulls)) expect(r.digest).toBe(image.layer);
    expect(blobGets()).toHaveLength(1);
    expect(blobGets()[0]?.headers["accept-encoding"]).toBe("identity");
  }, 120_000);

  test("a blob smaller than the window reserves only its size from the budget", async () => {
    const { crm, relay } = await setup({ window: "128MiB", budget: "256MiB" });
    const url = `${crm.url}/v2/reg.test/${REPO}/blobs/${image.layer}`;
    const pull = curlDigest(url, join(fx.dir, "small-reserve.bin"));
    while (metric(crm, "crm_mirror_fanout_downloads_total") < 1) await Bun.sleep(20);
    expect(metric(crm, "crm_mirror_fanout_reserved_bytes")).toBe(LAYER_SIZE);
    relay.openGate();
    expect((await pull).digest).toBe(image.layer);
    expect(metric(crm, "crm_mirror_fanout_reserved_bytes")).toBe(0);
  }, 120_000);

  test("enabled: false keeps one upstream GET per client", async () => {
    const { crm } = await setup({ enabled: false }, {});
    const since = fx.logs().length;
    const url = `${crm.url}/v2/reg.test/${REPO}/blobs/${image.layer}`;
    const results = await Promise.all(
      Array.from({ length: 3 }, (_, i) => curlDigest(url, join(fx.dir, `off-${i}.bin`))),
    );
    for (const r of results) expect(r.digest).toBe(image.layer);
    expect(registryGets(image.layer, since)).toHaveLength(3);
    expect(metric(crm, "crm_mirror_fanout_downloads_total")).toBe(0);
  }, 120_000);

  test("a Range GET joins a download in flight and gets exactly its bytes; HEAD never joins", async () => {
    const { crm, relay } = await setup({});
    const since = fx.logs().length;
    const url = `${crm.url}/v2/reg.test/${REPO}/blobs/${image.layer}`;
    const whole = curlDigest(url, join(fx.dir, "range-whole.bin"));
    while (metric(crm, "crm_mirror_fanout_downloads_total") < 1) await Bun.sleep(20);
    const head = await fetch(url, { method: "HEAD" });
    expect(head.status).toBe(200);
    // A range joins only if it starts within the read-ahead (1 MiB here) of the bytes received.
    while (metric(crm, "crm_mirror_fanout_window_bytes") < 1.5 * MiB) await Bun.sleep(20);
    const from = 2 * MiB + 3;
    const to = LAYER_SIZE - 1;
    const part = fetch(url, { headers: { range: `bytes=${from}-` } });
    await joined(crm, 1);
    // A range that ends before the blob's end would end before the digest is known: its own request.
    const bounded = fetch(url, { headers: { range: `bytes=${from}-${30 * MiB}` } });
    relay.openGate();
    const res = await part;
    expect(res.status).toBe(206);
    expect(res.headers.get("content-range")).toBe(`bytes ${from}-${to}/${LAYER_SIZE}`);
    const bytes = new Uint8Array(await res.arrayBuffer());
    expect((await whole).digest).toBe(image.layer);
    const blob = await readFile(join(fx.dir, "range-whole.bin"));
    expect(Buffer.compare(Buffer.from(bytes), blob.subarray(from, to + 1))).toBe(0);
    const b = await bounded;
    expect(b.status).toBe(206);
    expect(
      Buffer.compare(Buffer.from(await b.arrayBuffer()), blob.subarray(from, 30 * MiB + 1)),
    ).toBe(0);
    expect(registryGets(image.layer, since)).toHaveLength(2);
    expect(crm.server.rt.metrics.render()).toContain(
      'crm_mirror_fanout_not_shared_total{reason="range"} 1',
    );
  }, 120_000);
});

// ------------------------------------------------------------------------------------- helpers

async function pushImage(fx: RegistryFixture): Promise<Image> {
  const layer = randomBytes(LAYER_SIZE);
  const config = Buffer.from(
    JSON.stringify({
      architecture: "amd64",
      os: "linux",
      rootfs: { type: "layers", diff_ids: [sha256Digest(layer)] },
      config: {},
    }),
  );
  const push = async (data: Uint8Array): Promise<string> => {
    const digest = sha256Digest(data);
    const post = await fetch(`${fx.url}/v2/${REPO}/blobs/uploads/`, { method: "POST" });
    await post.arrayBuffer();
    if (post.status !== 202) throw new Error(`upload start answered ${post.status}`);
    const loc = new URL(post.headers.get("location") ?? "", fx.url);
    loc.searchParams.set("digest", digest);
    const put = await fetch(loc, {
      method: "PUT",
      body: data,
      headers: { "content-type": "application/octet-stream" },
    });
    await put.arrayBuffer();
    if (put.status !== 201) throw new Error(`upload of ${digest} answered ${put.status}`);
    return digest;
  };
  const layerDigest = await push(layer);
  const configDigest = await push(config);
  const manifest = JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.docker.distribution.manifest.v2+json",
    config: {
      mediaType: "application/vnd.docker.container.image.v1+json",
      size: config.byteLength,
      digest: configDigest,
    },
    layers: [
      {
        mediaType: "application/vnd.docker.image.rootfs.diff.tar.gzip",
        size: layer.byteLength,
        digest: layerDigest,
      },
    ],
  });
  const put = await fetch(`${fx.url}/v2/${REPO}/manifests/v1`, {
    method: "PUT",
    body: manifest,
    headers: { "content-type": "application/vnd.docker.distribution.manifest.v2+json" },
  });
  await put.arrayBuffer();
  if (put.status !== 201) throw new Error(`manifest put answered ${put.status}`);
  return { layer: layerDigest, config: configDigest, manifest: sha256Digest(manifest) };
}

/** curl to a file; its exit code, the bytes written and their sha256. */
async function curlDigest(
  url: string,
  out: string,
  extra: string[] = [],
): Promise<{ exit: number; size: number; digest: string }> {
  const p = Bun.spawn(["curl", "-sS", ...extra, "-o", out, url], {
    stdout: "ignore",
    stderr: "pipe",
  });
  const exit = await p.exited;
  let data: Buffer;
  try {
    data = await readFile(out);
  } catch {
    data = Buffer.alloc(0);
  }
  return {
    exit,
    size: data.byteLength,
    digest: "sha256:" + createHash("sha256").update(data).digest("hex"),
  };
}

interface RawGet {
  waitBytes(n: number): Promise<void>;
  pause(): void;
  resume(): void;
  close(): void;
  /** The whole body once the answer is complete (by its Content-Length). */
  done: Promise<Uint8Array>;
}

/** A GET on a raw socket whose reading the test can stop and restart (a client that stalls). */
async function rawGet(port: number, path: string): Promise<RawGet> {
  const parts: Buffer[] = [];
  let got = 0;
  let wake: (() => void) | null = null;
  let finish: (b: Uint8Array) => void = () => {};
  let fail: (e: Error) => void = () => {};
  const done = new Promise<Uint8Array>((res, rej) => ((finish = res), (fail = rej)));
  // Handled here too: a test that closes the socket itself does not await it.
  done.catch(() => {});
  let bodyStart = -1;
  let length = -1;
  const check = (): void => {
    if (bodyStart < 0) {
      const all = Buffer.concat(parts);
      const end = all.indexOf("\r\n\r\n");
      if (end < 0) return;
      const head = all.subarray(0, end).toString("latin1");
      const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
      if (!head.startsWith("HTTP/1.1 200") || m === null)
        return fail(new Error(`unexpected head: ${head}`));
      bodyStart = end + 4;
      length = Number(m[1]);
    }
    if (got - bodyStart >= length)
      finish(Buffer.concat(parts).subarray(bodyStart, bodyStart + length));
  };
  const socket: Socket<undefined> = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      data(_s, d) {
        parts.push(Buffer.from(d));
        got += d.byteLength;
        wake?.();
        check();
      },
      close() {
        fail(new Error(`connection closed after ${got} bytes`));
      },
      error(_s, e) {
        fail(e);
      },
    },
  });
  socket.write(`GET ${path} HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\nconnection: close\r\n\r\n`);
  return {
    async waitBytes(n) {
      while (got < n) await new Promise<void>((r) => (wake = r));
    },
    pause: () => socket.pause(),
    resume: () => socket.resume(),
    close: () => socket.end(),
    done,
  };
}
