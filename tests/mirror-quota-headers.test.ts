/**
 * Issue 21, "what clients are told": Docker's documented way to check the pull quota is a HEAD of
 * a manifest, reading ratelimit-limit, ratelimit-remaining and docker-ratelimit-source. Every
 * mirror answer that caused an upstream exchange carries them (the tag's HEAD included); an
 * answer from memory carries none. A fake Docker Hub (support/fake-hub.ts) sends them.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { HUB_ACCEPT, startFakeHub, type FakeHub } from "./support/fake-hub.ts";

let hub: FakeHub;
let crm: TestCrm;
beforeAll(async () => {
  hub = startFakeHub({ limit: 1000 });
  crm = await startCrm(
    { mirror: { default_registry: "hub.test", registries: { "hub.test": hub.url } } },
    "info",
  );
});
afterAll(async () => {
  await crm.stop();
  hub.stop();
});

const ask = (method: "GET" | "HEAD", path: string): Promise<Response> =>
  fetch(`${crm.url}${path}`, {
    method,
    proxy: false,
    headers: { accept: HUB_ACCEPT },
  } as RequestInit);

/** The quota fields of an answer, or null for each one missing. */
const quota = (r: Response): Array<string | null> => [
  r.headers.get("ratelimit-limit"),
  r.headers.get("ratelimit-remaining"),
  r.headers.get("docker-ratelimit-source"),
];

test("a HEAD by tag (Docker's quota check) carries the upstream's quota fields", async () => {
  const r = await ask("HEAD", "/v2/library/multi/manifests/latest");
  expect(r.status).toBe(200);
  expect(quota(r)).toEqual(["1000;w=21600", `${hub.remaining};w=21600`, "127.0.0.1"]);
});

test("GET by tag: the first (HEAD + GET upstream) and a later one (HEAD upstream, bytes from memory) both carry them", async () => {
  const first = await ask("GET", "/v2/library/multi/manifests/latest");
  await first.arrayBuffer();
  expect(first.status).toBe(200);
  expect(quota(first)).toEqual(["1000;w=21600", `${hub.remaining};w=21600`, "127.0.0.1"]);
  const gets = hub.gets();
  const again = await ask("GET", "/v2/library/multi/manifests/latest");
  await again.arrayBuffer();
  expect(hub.gets()).toBe(gets); // served from memory after the tag's HEAD
  expect(quota(again)).toEqual(["1000;w=21600", `${hub.remaining};w=21600`, "127.0.0.1"]);
});

test("GET by digest: the upstream fetch carries them, the answer from memory carries none", async () => {
  const digest = hub.image().platforms[0]!.digest;
  const first = await ask("GET", `/v2/library/multi/manifests/${digest}`);
  await first.arrayBuffer();
  expect(first.status).toBe(200);
  expect(quota(first)).toEqual(["1000;w=21600", `${hub.remaining};w=21600`, "127.0.0.1"]);
  const requests = hub.manifestRequests.length;
  for (const method of ["GET", "HEAD"] as const) {
    const cached = await ask(method, `/v2/library/multi/manifests/${digest}`);
    await cached.arrayBuffer();
    expect(cached.status).toBe(200);
    expect(quota(cached)).toEqual([null, null, null]);
  }
  expect(hub.manifestRequests.length).toBe(requests);
});
