/**
 * A resumed blob asks the registry again, not the signed CDN URL it was redirected to last time:
 * those URLs expire (registry-clients.md: Docker Hub's 307 to a signed CDN URL). A fake Docker
 * Hub-like registry (tests/support/mirror-upstreams.ts) redirects `cdn/...` blobs to a CDN that a
 * cutting relay (tests/support/cutting-relay.ts) stands in front of.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { startCuttingRelay, type CuttingRelay } from "./support/cutting-relay.ts";
import {
  LAYER_BLOB,
  LAYER_DIGEST,
  startCdn,
  startFakeRegistry,
  startTokenServer,
  type Cdn,
  type FakeRegistry,
  type TokenServer,
} from "./support/mirror-upstreams.ts";

let tokens: TokenServer;
let cdn: Cdn;
let relay: CuttingRelay;
let hub: FakeRegistry;
let crm: TestCrm;

beforeAll(async () => {
  tokens = startTokenServer({ expiresIn: 300 });
  cdn = startCdn("localhost");
  relay = await startCuttingRelay({ host: "127.0.0.1", port: Number(new URL(cdn.url).port) });
  hub = startFakeRegistry({
    auth: { kind: "bearer", tokens },
    cdnBase: `http://localhost:${relay.port}`,
  });
  crm = await startCrm(
    {
      allowed_ports: [80, 443, Number(new URL(tokens.url).port), relay.port],
      mirror: {
        default_registry: "docker.io",
        registries: { "docker.io": { upstream: hub.url, redirect_hosts: ["localhost"] } },
      },
    },
    "info",
  );
});

afterAll(async () => {
  await crm.stop();
  hub.stop();
  relay.stop();
  cdn.stop();
  tokens.stop();
});

test("a blob cut on its CDN hop is resumed through the registry: a fresh signed URL, then Range on the CDN", async () => {
  const cut = Math.floor(LAYER_BLOB.byteLength * 0.3);
  let n = 0;
  relay.plan = (r) =>
    r.method === "GET" && r.path.includes("/blobs/") && n++ === 0
      ? { kind: "pass", cutAfter: cut }
      : { kind: "pass" };
  const registryGets = () =>
    hub.seen.filter(
      (s) =>
        s.method === "GET" &&
        s.url.includes(`/blobs/${LAYER_DIGEST}`) &&
        s.headers.authorization !== undefined,
    ).length;
  const before = registryGets();
  const res = await fetch(`${crm.url}/v2/cdn/app/blobs/${LAYER_DIGEST}`);
  expect(res.status).toBe(200);
  const body = Buffer.from(await res.arrayBuffer());
  expect("sha256:" + createHash("sha256").update(body).digest("hex")).toBe(LAYER_DIGEST);
  // The registry was asked twice (each time for a new signed URL) ...
  expect(registryGets() - before).toBe(2);
  const cdnGets = relay.requests.filter((r) => r.method === "GET" && r.path.includes("/blobs/"));
  expect(cdnGets.length).toBe(2);
  // ... and the second CDN request carries another signature and the Range, never Authorization.
  const sig = (p: string): string | null => new URL(p, "http://x").searchParams.get("sig");
  expect(sig(cdnGets[1]?.path ?? "")).not.toBe(sig(cdnGets[0]?.path ?? ""));
  expect(cdnGets[1]?.headers.range).toBe(`bytes=${cut}-${LAYER_BLOB.byteLength - 1}`);
  expect(cdnGets[1]?.headers.authorization).toBeUndefined();
});
