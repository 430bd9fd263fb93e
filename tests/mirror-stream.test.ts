/**
 * Bodies through the mirror are streams: 64 MiB generated on the fly arrive byte-exact, a slow
 * reader holds the upstream back instead of crm buffering, and a client that goes away cancels
 * the upstream request, before its head and in the middle of its body.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { startCrm, type TestCrm } from "./support/crm.ts";
import {
  BIG_SIZE,
  patternDigest,
  startBigBlobServer,
  startFakeRegistry,
  startTokenServer,
  type BigBlobServer,
  type FakeRegistry,
  type TokenServer,
} from "./support/mirror-upstreams.ts";
import { pattern } from "./support/origins.ts";

let tokens: TokenServer;
let registry: FakeRegistry;
let big: BigBlobServer;
/**
 * The slow-reader test's blob: 256 MiB, so "held back" stays well clear of what the kernel may
 * buffer on its own on loopback (tcp_rmem autotunes a receive buffer up to 32 MiB per socket).
 */
const HELD_SIZE = 256 * 1024 * 1024;
let held: BigBlobServer;
let heldRegistry: FakeRegistry;
let crm: TestCrm;
// Any well-formed digest: the fake registry serves the generated blob for every big/... digest.
const BIG = `sha256:${"b".repeat(64)}`;

beforeAll(async () => {
  tokens = startTokenServer();
  big = startBigBlobServer();
  // Big blobs come from a CDN-like host, as on Docker Hub: 307 from the registry, then the bytes.
  registry = startFakeRegistry({
    auth: { kind: "bearer", tokens },
    bigBase: big.url,
    slowMs: 3000,
  });
  held = startBigBlobServer(HELD_SIZE);
  heldRegistry = startFakeRegistry({ auth: { kind: "none" }, bigBase: held.url });
  const ports = [tokens.url, big.url, held.url].map((u) => Number(new URL(u).port));
  crm = await startCrm(
    {
      allowed_ports: [80, 443, ...ports],
      mirror: {
        default_registry: "reg.test",
        registries: { "reg.test": registry.url, "held.test": heldRegistry.url },
      },
    },
    "info",
  );
});

afterAll(async () => {
  await crm.stop();
  registry.stop();
  big.stop();
  heldRegistry.stop();
  held.stop();
  tokens.stop();
});

const get = (path: string, init: RequestInit = {}) =>
  fetch(`${crm.url}${path}`, { proxy: false, ...init } as RequestInit);

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`${what} did not happen within ${ms} ms`);
    await Bun.sleep(10);
  }
}

test("a 64 MiB blob streams byte-exact (sha256) with its Content-Length", async () => {
  const expected = patternDigest(BIG_SIZE);
  const res = await get(`/v2/big/blob/blobs/${BIG}`);
  expect(res.status).toBe(200);
  expect(res.headers.get("content-length")).toBe(String(BIG_SIZE));
  expect(res.headers.get("docker-content-digest")).toBe(BIG);
  const h = createHash("sha256");
  let n = 0;
  for await (const chunk of res.body!) {
    h.update(chunk);
    n += chunk.byteLength;
  }
  expect(n).toBe(BIG_SIZE);
  expect("sha256:" + h.digest("hex")).toBe(expected);
  await crm.waitLog(new RegExp(`GET /v2/big/blob/blobs/${BIG} .*status=200 in=0 out=${BIG_SIZE} `));
});

test("a Range deep inside the big blob is exact", async () => {
  const start = 60_000_000;
  const res = await get(`/v2/big/blob/blobs/${BIG}`, {
    headers: { range: `bytes=${start}-${start + 99_999}` },
  });
  expect(res.status).toBe(206);
  expect(res.headers.get("content-range")).toBe(`bytes ${start}-${start + 99_999}/${BIG_SIZE}`);
  expect(Buffer.from(await res.arrayBuffer()).equals(pattern(100_000, start))).toBe(true);
});

test("a client that stops reading holds the upstream back; disconnecting cancels its body", async () => {
  const cancels = held.cancels();
  const ac = new AbortController();
  const res = await get(`/v2/held.test/big/held/blobs/${BIG}`, { signal: ac.signal });
  const reader = res.body!.getReader();
  await reader.read();
  // Nothing reads now. Socket buffers fill up (some MiB on loopback), then the upstream must
  // stall; if crm buffered, the whole blob would leave the upstream meanwhile.
  let settled = -1;
  for (const end = Date.now() + 3000; Date.now() < end && held.bytesWritten() !== settled;) {
    settled = held.bytesWritten();
    await Bun.sleep(200);
  }
  expect(held.bytesWritten()).toBe(settled);
  expect(settled).toBeLessThan(HELD_SIZE / 2);
  ac.abort();
  await until(() => held.cancels() > cancels, 3000, "upstream body cancel");
});

test("a client that disconnects before the upstream answers aborts the upstream request", async () => {
  const aborts = registry.slowAborts();
  const ac = new AbortController();
  const pending = get("/v2/slow/x/manifests/v1", { signal: ac.signal }).catch((e: unknown) => e);
  await until(
    () =>
      registry.seen.some(
        (s) => s.url === "/v2/slow/x/manifests/v1" && s.headers.authorization !== undefined,
      ),
    2000,
    "slow request upstream",
  );
  ac.abort();
  expect(await pending).toBeInstanceOf(Error);
  await until(() => registry.slowAborts() > aborts, 1500, "upstream abort");
});
