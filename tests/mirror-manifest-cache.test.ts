/**
 * Pull once, serve many: crm spends the upstream's pull quota once per manifest. A fake Docker
 * Hub (tests/support/fake-hub.ts) counts manifest GETs and HEADs and meters GETs with
 * ratelimit-* headers and 429; real clients (skopeo, curl as containerd) pull through crm.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildConfig } from "../src/config/load.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import {
  HUB_ACCEPT,
  sha256,
  startFakeHub,
  type FakeHub,
  type HubImage,
} from "./support/fake-hub.ts";
import { deadPort } from "./support/mirror-upstreams.ts";
import { run } from "./support/raw.ts";
import { prepareSkopeo, runSkopeo } from "./support/registry.ts";
import { missingTools } from "./support/tools.ts";

const skipTools = missingTools("manifest cache with real clients", ["skopeo", "curl"]);

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "crm-mcache-"));
  await prepareSkopeo(dir);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const running: Array<{ stop(): unknown }> = [];
afterEach(async () => {
  for (const r of running.splice(0)) await r.stop();
});

async function setup(
  opts: { limit?: number; cache?: Record<string, unknown> } = {},
): Promise<{ hub: FakeHub; crm: TestCrm }> {
  const hub = startFakeHub({ limit: opts.limit ?? 1000 });
  running.push(hub);
  const crm = await startCrm(
    {
      // skopeo tries https first on an insecure mirror; crm answers its ClientHello at this timeout.
      timeouts: { header: "300ms" },
      mirror: {
        default_registry: "hub.test",
        registries: { "hub.test": hub.url },
        ...(opts.cache ? { manifest_cache: opts.cache } : {}),
      },
    },
    "info",
  );
  running.push(crm);
  return { hub, crm };
}

const get = (crm: TestCrm, path: string, init: RequestInit = {}): Promise<Response> =>
  fetch(`${crm.url}${path}`, {
    proxy: false,
    ...init,
    headers: { accept: HUB_ACCEPT, ...(init.headers as Record<string, string> | undefined) },
  } as RequestInit);

async function metric(crm: TestCrm, line: string): Promise<number> {
  const text = await (await fetch(`${crm.url}/metrics`, { proxy: false } as RequestInit)).text();
  const hit = text.split("\n").find((l) => l.startsWith(line + " "));
  return hit === undefined ? NaN : Number(hit.slice(line.length + 1));
}

let confCount = 0;
async function registriesConf(crm: TestCrm): Promise<string> {
  const file = join(dir, `registries-${++confCount}.conf`);
  // The primary is a dead port: a copy that left the mirror would fail, never reach the hub.
  await writeFile(
    file,
    [
      "unqualified-search-registries = []",
      "[[registry]]",
      'prefix = "hub.test"',
      `location = "127.0.0.1:${deadPort()}"`,
      "insecure = true",
      "[[registry.mirror]]",
      `location = "127.0.0.1:${crm.port}/hub.test"`,
      "insecure = true",
      "",
    ].join("\n"),
  );
  return file;
}

/** skopeo copy --all into an OCI layout; checks every manifest of the image arrived intact. */
async function skopeoAll(conf: string, dest: string, img: HubImage): Promise<void> {
  await runSkopeo(
    { dir },
    [
      "--registries-conf",
      conf,
      "copy",
      "--all",
      "--preserve-digests",
      "--quiet",
      "docker://hub.test/library/multi:latest",
      `oci:${dest}:latest`,
    ],
    { timeoutMs: 170_000 },
  );
  const layout = JSON.parse(await readFile(join(dest, "index.json"), "utf8")) as {
    manifests: Array<{ digest: string }>;
  };
  expect(layout.manifests.map((m) => m.digest)).toEqual([img.index.digest]);
  const blobs = new Set(await readdir(join(dest, "blobs", "sha256")));
  for (const d of [img.index.digest, ...img.platforms.flatMap((p) => [p.digest, ...p.blobs])]) {
    const hex = d.slice("sha256:".length);
    expect(blobs.has(hex)).toBe(true);
    expect(sha256(await readFile(join(dest, "blobs", "sha256", hex)))).toBe(d);
  }
}

/** skopeo copy of the linux/amd64 image only into a dir: layout. */
async function skopeoOne(conf: string, dest: string, img: HubImage): Promise<void> {
  await runSkopeo(
    { dir },
    [
      "--registries-conf",
      conf,
      "--override-os",
      "linux",
      "--override-arch",
      "amd64",
      "copy",
      "--preserve-digests",
      "--quiet",
      "docker://hub.test/library/multi:latest",
      `dir:${dest}`,
    ],
    { timeoutMs: 170_000 },
  );
  const amd64 = img.platforms[0]!;
  expect(sha256(await readFile(join(dest, "manifest.json")))).toBe(amd64.digest);
  for (const b of amd64.blobs)
    expect(sha256(await readFile(join(dest, b.slice("sha256:".length))))).toBe(b);
}

/** curl as containerd resolves and fetches: HEAD by tag (?ns=), then GETs by digest. */
async function curlContainerd(crm: TestCrm, dest: string, img: HubImage): Promise<void> {
  const base = `${crm.url}/v2/library/multi/manifests`;
  const curl = (args: string[]) =>
    run(["curl", "-sS", "--noproxy", "*", "-H", `Accept: ${HUB_ACCEPT}`, ...args]);
  const head = await curl(["-I", `${base}/latest?ns=hub.test`]);
  expect(head.code).toBe(0);
  const digest = /^docker-content-digest:\s*(\S+)/im.exec(head.stdout)?.[1];
  expect(digest).toBe(img.index.digest);
  expect(head.stdout).toMatch(/^content-length:\s*\d+/im);
  const indexFile = join(dest + "-index.json");
  expect((await curl(["-f", "-o", indexFile, `${base}/${digest}?ns=hub.test`])).code).toBe(0);
  expect(sha256(await readFile(indexFile))).toBe(img.index.digest);
  const index = JSON.parse(await readFile(indexFile, "utf8")) as {
    manifests: Array<{ digest: string; platform: { architecture: string } }>;
  };
  const amd64 = index.manifests.find((m) => m.platform.architecture === "amd64")!;
  const mFile = dest + "-amd64.json";
  expect((await curl(["-f", "-o", mFile, `${base}/${amd64.digest}?ns=hub.test`])).code).toBe(0);
  expect(sha256(await readFile(mFile))).toBe(img.platforms[0]!.digest);
  for (const b of img.platforms[0]!.blobs) {
    const f = `${dest}-${b.slice(7, 19)}`;
    expect(
      (await curl(["-f", "-o", f, `${crm.url}/v2/library/multi/blobs/${b}?ns=hub.test`])).code,
    ).toBe(0);
    expect(sha256(await readFile(f))).toBe(b);
  }
}

/** GETs the hub saw, by path. */
function getsByPath(hub: FakeHub): Map<string, number> {
  const m = new Map<string, number>();
  for (const r of hub.manifestRequests)
    if (r.startsWith("GET ")) m.set(r.slice(4), (m.get(r.slice(4)) ?? 0) + 1);
  return m;
}

describe.skipIf(skipTools)("real clients", () => {
  test("20 parallel pulls of one multi-arch image (skopeo --all, skopeo one platform, curl as containerd): one upstream GET per manifest, the rest HEADs", async () => {
    const { hub, crm } = await setup();
    const conf = await registriesConf(crm);
    const img = hub.image();
    const pulls: Array<Promise<void>> = [];
    for (let i = 0; i < 20; i++) {
      const dest = join(dir, `par-${i}`);
      if (i % 3 === 0) pulls.push(skopeoAll(conf, dest, img));
      else if (i % 3 === 1) pulls.push(skopeoOne(conf, dest, img));
      else pulls.push(curlContainerd(crm, dest, img));
    }
    await Promise.all(pulls);
    const base = "/v2/library/multi/manifests/";
    expect(getsByPath(hub)).toEqual(
      new Map(
        [img.index.digest, img.platforms[0]!.digest, img.platforms[1]!.digest].map((d) => [
          base + d,
          1,
        ]),
      ),
    );
    const heads = hub.manifestRequests.filter((r) => r.startsWith("HEAD "));
    expect(heads.length).toBeGreaterThan(0);
    // Every HEAD was a tag resolution; nothing else reached the hub.
    expect(new Set(heads)).toEqual(new Set([`HEAD ${base}latest`]));
    expect(hub.manifestRequests.length).toBe(3 + heads.length);
    expect(await metric(crm, 'crm_upstream_manifest_gets_total{registry="hub.test"}')).toBe(3);
    expect(await metric(crm, 'crm_mirror_manifest_cache_total{result="hit"}')).toBeGreaterThan(0);
    expect(await metric(crm, "crm_mirror_manifest_cache_entries")).toBe(3);
  }, 240_000);

  test("the tag moved upstream between two pulls: the second pull gets the new digest and its layers", async () => {
    const { hub, crm } = await setup();
    const conf = await registriesConf(crm);
    const first = hub.image();
    await skopeoAll(conf, join(dir, "move-1"), first);
    const moved = hub.moveTag();
    expect(moved.index.digest).not.toBe(first.index.digest);
    await skopeoAll(conf, join(dir, "move-2"), moved);
    await curlContainerd(crm, join(dir, "move-3"), moved);
    // Each manifest of each version was fetched once.
    const all = [first, moved].flatMap((i) => [
      i.index.digest,
      ...i.platforms.map((p) => p.digest),
    ]);
    expect(getsByPath(hub)).toEqual(
      new Map(all.map((d) => [`/v2/library/multi/manifests/${d}`, 1])),
    );
  }, 120_000);
});

describe("by digest and by tag", () => {
  test("a request by digest that hits the cache sends nothing upstream, with the upstream's headers", async () => {
    const { hub, crm } = await setup();
    const img = hub.image();
    const path = `/v2/library/multi/manifests/${img.index.digest}`;
    const first = await get(crm, path);
    expect(first.status).toBe(200);
    const firstBody = new Uint8Array(await first.arrayBuffer());
    expect(sha256(firstBody)).toBe(img.index.digest);
    const seen = hub.manifestRequests.length;
    for (const method of ["GET", "HEAD"]) {
      const again = await get(crm, path, { method });
      expect(again.status).toBe(200);
      expect(again.headers.get("content-type")).toBe(first.headers.get("content-type"));
      expect(again.headers.get("docker-content-digest")).toBe(img.index.digest);
      expect(again.headers.get("content-length")).toBe(String(img.index.bytes.byteLength));
      expect(again.headers.get("etag")).toBe(`"${img.index.digest}"`);
      expect(again.headers.get("docker-distribution-api-version")).toBe("registry/2.0");
      if (method === "GET") expect(new Uint8Array(await again.arrayBuffer())).toEqual(firstBody);
    }
    expect(hub.manifestRequests.length).toBe(seen);
    // If-None-Match with the upstream's ETag is answered 304 from memory.
    const cond = await get(crm, path, { headers: { "if-none-match": `"${img.index.digest}"` } });
    expect(cond.status).toBe(304);
    expect(hub.manifestRequests.length).toBe(seen);
  });

  test("a tag is resolved with a HEAD carrying the client's Accept on every request; HEAD by tag is free", async () => {
    const { hub, crm } = await setup();
    const img = hub.image();
    for (let i = 0; i < 3; i++) {
      const res = await get(crm, "/v2/library/multi/manifests/latest", {
        headers: { accept: "application/vnd.oci.image.index.v1+json" },
      });
      expect(res.status).toBe(200);
      expect(res.headers.get("docker-content-digest")).toBe(img.index.digest);
      expect(sha256(new Uint8Array(await res.arrayBuffer()))).toBe(img.index.digest);
    }
    const head = await get(crm, "/v2/library/multi/manifests/latest", { method: "HEAD" });
    expect(head.headers.get("docker-content-digest")).toBe(img.index.digest);
    expect(hub.manifestRequests).toEqual([
      "HEAD /v2/library/multi/manifests/latest",
      `GET /v2/library/multi/manifests/${img.index.digest}`,
      "HEAD /v2/library/multi/manifests/latest",
      "HEAD /v2/library/multi/manifests/latest",
      "HEAD /v2/library/multi/manifests/latest",
    ]);
    // A moved tag is seen on the very next request.
    const moved = hub.moveTag();
    const next = await get(crm, "/v2/library/multi/manifests/latest");
    expect(next.headers.get("docker-content-digest")).toBe(moved.index.digest);
    expect(sha256(new Uint8Array(await next.arrayBuffer()))).toBe(moved.index.digest);
  });

  test("50 concurrent GETs by tag cost one upstream GET (single flight)", async () => {
    const { hub, crm } = await setup();
    const img = hub.image();
    const answers = await Promise.all(
      Array.from({ length: 50 }, () =>
        get(crm, "/v2/library/multi/manifests/latest").then(async (r) => ({
          status: r.status,
          body: new Uint8Array(await r.arrayBuffer()),
        })),
      ),
    );
    for (const a of answers) {
      expect(a.status).toBe(200);
      expect(sha256(a.body)).toBe(img.index.digest);
    }
    expect(hub.gets()).toBe(1);
    expect(hub.heads()).toBeLessThanOrEqual(50);
  });

  for (const repo of ["nohead", "nodigest"]) {
    test(`an upstream without a usable HEAD (${repo === "nohead" ? "405" : "no Docker-Content-Digest"}) gets a plain GET; what it names by digest is then served from memory`, async () => {
      const { hub, crm } = await setup();
      const img = hub.image();
      for (let i = 0; i < 2; i++) {
        const res = await get(crm, `/v2/${repo}/x/manifests/latest`);
        expect(res.status).toBe(200);
        expect(res.headers.get("docker-content-digest")).toBe(img.index.digest);
        expect(sha256(new Uint8Array(await res.arrayBuffer()))).toBe(img.index.digest);
      }
      expect(hub.gets()).toBe(2); // a tag cannot be resolved without its GET here
      expect(
        hub.manifestRequests
          .filter((r) => r.startsWith("GET "))
          .every((r) => r.endsWith("/latest")),
      ).toBe(true);
      const byDigest = await get(crm, `/v2/${repo}/x/manifests/${img.index.digest}`);
      expect(sha256(new Uint8Array(await byDigest.arrayBuffer()))).toBe(img.index.digest);
      expect(hub.gets()).toBe(2);
    });
  }
});

describe("bad input is never served from memory", () => {
  test("bytes that do not match the requested digest: 502 with the reason, not cached", async () => {
    const { hub, crm } = await setup();
    const img = hub.image();
    for (let i = 0; i < 2; i++) {
      const res = await get(crm, `/v2/tampered/x/manifests/${img.index.digest}`);
      expect(res.status).toBe(502);
      const err = ((await res.json()) as { errors: Array<{ code: string; message: string }> })
        .errors[0]!;
      expect(err.code).toBe("DIGEST_INVALID");
      expect(err.message).toContain(`does not match the requested digest ${img.index.digest}`);
    }
    expect(hub.gets()).toBe(2);
    expect(await metric(crm, "crm_mirror_manifest_cache_entries")).toBe(0);
    // By tag: the HEAD names the real digest, the GET by it brings other bytes.
    const byTag = await get(crm, "/v2/tampered/x/manifests/latest");
    expect(byTag.status).toBe(502);
    await crm.waitLog(/upstream manifest does not match its digest; not served, not cached/);
  });

  test("an upstream that answers HEAD with one digest and GET with another: 502, not cached", async () => {
    const { hub, crm } = await setup();
    for (let i = 0; i < 2; i++) {
      const res = await get(crm, "/v2/liar/x/manifests/latest");
      expect(res.status).toBe(502);
      expect(((await res.json()) as { errors: Array<{ code: string }> }).errors[0]!.code).toBe(
        "DIGEST_INVALID",
      );
    }
    expect(hub.gets()).toBe(2);
    expect(await metric(crm, "crm_mirror_manifest_cache_entries")).toBe(0);
  });

  test("an unknown digest algorithm passes through and is never cached", async () => {
    const { hub, crm } = await setup();
    const ref = "blake3:" + "a".repeat(64);
    for (let i = 0; i < 2; i++) {
      const res = await get(crm, `/v2/library/multi/manifests/${ref}`);
      expect(res.status).toBe(404);
      expect(
        ((await res.json()) as { errors: Array<{ code: string; message: string }> }).errors[0],
      ).toMatchObject({ code: "MANIFEST_UNKNOWN", message: "manifest unknown" });
    }
    expect(hub.manifestRequests).toEqual([
      `GET /v2/library/multi/manifests/${ref}`,
      `GET /v2/library/multi/manifests/${ref}`,
    ]);
  });

  test("a manifest over 4 MiB is streamed byte-exact and never cached (with and without Content-Length)", async () => {
    const { hub, crm } = await setup();
    for (const tag of ["5000000-big", "5000000-chunked"]) {
      const res = await get(crm, `/v2/fill/x/manifests/${tag}`);
      expect(res.status).toBe(200);
      const body = new Uint8Array(await res.arrayBuffer());
      expect(body.byteLength).toBe(5_000_000);
      expect(sha256(body)).toBe(res.headers.get("docker-content-digest")!);
    }
    // The one sent without Content-Length was read up to the limit, then fetched again to stream.
    expect(hub.gets()).toBe(3);
    // Concurrent requests for one: the first streams the shared answer, the others their own.
    const together = await Promise.all(
      Array.from({ length: 5 }, () =>
        get(crm, "/v2/fill/x/manifests/5000000-together").then(async (r) =>
          sha256(new Uint8Array(await r.arrayBuffer())),
        ),
      ),
    );
    expect(new Set(together).size).toBe(1);
    expect(hub.gets()).toBe(3 + 5);
    expect(await metric(crm, "crm_mirror_manifest_cache_entries")).toBe(0);
  });
});

describe("the size bound", () => {
  test("filling past max_size evicts least recently used entries; bytes and RSS stay bounded", async () => {
    const max = 8 * 1024 * 1024;
    const { hub, crm } = await setup({ cache: { max_size: "8MiB" } });
    const pull = async (k: string): Promise<void> => {
      const res = await get(crm, `/v2/fill/x/manifests/1000000-${k}`);
      expect(res.status).toBe(200);
      expect((await res.arrayBuffer()).byteLength).toBe(1_000_000);
    };
    for (let k = 0; k < 16; k++) await pull(`w${k}`);
    Bun.gc(true);
    const rssBefore = process.memoryUsage.rss();
    for (let k = 0; k < 160; k++) await pull(`f${k}`);
    Bun.gc(true);
    const rssAfter = process.memoryUsage.rss();
    const bytes = await metric(crm, "crm_mirror_manifest_cache_bytes");
    const entries = await metric(crm, "crm_mirror_manifest_cache_entries");
    const evictions = await metric(crm, "crm_mirror_manifest_cache_evictions_total");
    expect(bytes).toBeLessThanOrEqual(max);
    expect(entries).toBeLessThanOrEqual(8);
    expect(entries).toBeGreaterThanOrEqual(7);
    expect(evictions).toBe(176 - entries);
    // 160 MB went through; the cache may keep 8 MiB of it.
    console.log(
      `manifest cache fill: ${bytes} bytes in ${entries} entries, ${evictions} evictions, RSS ${(rssBefore / 2 ** 20).toFixed(0)} → ${(rssAfter / 2 ** 20).toFixed(0)} MiB`,
    );
    expect(rssAfter - rssBefore).toBeLessThan(64 * 1024 * 1024);
    // LRU: the newest is a hit, an early one was evicted.
    const gets = hub.gets();
    await pull("f159");
    expect(hub.gets()).toBe(gets);
    await pull("f0");
    expect(hub.gets()).toBe(gets + 1);
  }, 60_000);

  test("reload applies mirror.manifest_cache: disabled passes every GET through and drops the entries", async () => {
    const { hub, crm } = await setup();
    const img = hub.image();
    const path = `/v2/library/multi/manifests/${img.index.digest}`;
    await (await get(crm, path)).arrayBuffer();
    await (await get(crm, path)).arrayBuffer();
    expect(hub.gets()).toBe(1);
    const raw = {
      listen: "127.0.0.1:0",
      allow_private_networks: true,
      log_level: "info",
      timeouts: { header: "300ms" },
    };
    const off = buildConfig(
      {
        ...raw,
        mirror: {
          default_registry: "hub.test",
          registries: { "hub.test": hub.url },
          manifest_cache: { enabled: false },
        },
      },
      "test.yaml",
    ).config;
    await crm.server.reload(off);
    expect(await metric(crm, "crm_mirror_manifest_cache_entries")).toBe(0);
    await (await get(crm, path)).arrayBuffer();
    await (await get(crm, path)).arrayBuffer();
    expect(hub.gets()).toBe(3);
    const on = buildConfig(
      { ...raw, mirror: { default_registry: "hub.test", registries: { "hub.test": hub.url } } },
      "test.yaml",
    ).config;
    await crm.server.reload(on);
    await (await get(crm, path)).arrayBuffer();
    await (await get(crm, path)).arrayBuffer();
    expect(hub.gets()).toBe(4);
  });
});

describe("quota you can see", () => {
  test("quota exhaustion: TOOMANYREQUESTS with Retry-After and the fix; gauges, counters, one warning, the index page; cached manifests still served", async () => {
    const { hub, crm } = await setup({ limit: 2 });
    const img = hub.image();
    const tag = await get(crm, "/v2/library/multi/manifests/latest");
    expect(tag.status).toBe(200);
    await tag.arrayBuffer();
    expect(await metric(crm, 'crm_upstream_ratelimit_remaining{registry="hub.test"}')).toBe(1);
    expect(await metric(crm, 'crm_upstream_ratelimit_limit{registry="hub.test"}')).toBe(2);
    const amd = await get(crm, `/v2/library/multi/manifests/${img.platforms[0]!.digest}`);
    expect(amd.status).toBe(200);
    await amd.arrayBuffer();
    expect(await metric(crm, 'crm_upstream_ratelimit_remaining{registry="hub.test"}')).toBe(0);

    const refused = await get(crm, `/v2/library/multi/manifests/${img.platforms[1]!.digest}`);
    expect(refused.status).toBe(429);
    expect(refused.headers.get("retry-after")).toBe("60");
    expect(refused.headers.get("ratelimit-remaining")).toBe("0;w=21600");
    const err = (
      (await refused.json()) as {
        errors: Array<{ code: string; message: string; detail: Record<string, unknown> }>;
      }
    ).errors[0]!;
    expect(err.code).toBe("TOOMANYREQUESTS");
    expect(err.message).toBe(
      "hub.test rate limit reached for this crm's address; configure credentials for hub.test under mirror.registries",
    );
    expect(err.detail).toMatchObject({
      registry: "hub.test",
      limit: 2,
      remaining: 0,
      upstream: "You have reached your pull rate limit.",
    });
    hub.retryAfter = "120";
    const again = await get(crm, `/v2/library/multi/manifests/${img.platforms[1]!.digest}`, {
      method: "GET",
    });
    expect(again.status).toBe(429);
    expect(again.headers.get("retry-after")).toBe("120");
    await again.arrayBuffer();
    expect(await metric(crm, 'crm_upstream_rate_limited_total{registry="hub.test"}')).toBe(2);
    expect(await metric(crm, 'crm_upstream_manifest_gets_total{registry="hub.test"}')).toBe(4);

    // Past the quota, what is cached still pulls: the tag resolves with a free HEAD.
    const cached = await get(crm, "/v2/library/multi/manifests/latest");
    expect(cached.status).toBe(200);
    expect(sha256(new Uint8Array(await cached.arrayBuffer()))).toBe(img.index.digest);

    expect(crm.logs.filter((l) => l.includes("upstream pull quota running low"))).toHaveLength(1);
    expect(crm.logs.find((l) => l.includes("upstream pull quota running low"))).toMatch(
      /registry=hub\.test remaining=0 limit=2 window_s=21600 source=127\.0\.0\.1/,
    );
    const page = await (await fetch(`${crm.url}/`, { proxy: false } as RequestInit)).text();
    expect(page).toContain("Upstream quota");
    expect(page).toContain("hub.test: 0 of 2 per 6 h left");
  });
});
