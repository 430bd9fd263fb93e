/**
 * Many replicas, one crm: three real crm replicas behind a real nginx (round robin), one real
 * redis-server, a real registry (docker-registry) and real skopeo pulls. What the replicas share
 * must hold across them (one upstream GET per manifest, one rate, one brake, tokens), a wrong
 * store entry must never be served, and a store that stops or dies must cost no pull.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { chromium } from "playwright-core";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { cacheScope } from "../src/mirror/manifests/cache.ts";
import { decodeManifest, encodeManifest, SharedManifests } from "../src/cluster/manifests.ts";
import { startBalancer, type Balancer } from "./support/balancer.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { deadPort } from "./support/mirror-upstreams.ts";
import { HUB_ACCEPT, startFakeHub } from "./support/fake-hub.ts";
import { missingNginx } from "./support/nginx.ts";
import {
  MANIFEST_ACCEPT,
  runSkopeo,
  sha256Digest,
  startRegistry,
  type RegistryFixture,
} from "./support/registry.ts";
import { startRedis, type RedisFixture } from "./support/redis.ts";
import { makeLeaf, makeTestCa } from "./support/tls.ts";
import { missingTools } from "./support/tools.ts";

const skip =
  missingTools("cluster (replicas sharing a Redis)", [
    "docker-registry",
    "skopeo",
    "redis-server",
  ]) || missingNginx();

let fx: RegistryFixture;
let redis: RedisFixture;
let prefixes = 0;
const running: Array<{ stop(): unknown }> = [];

beforeAll(async () => {
  if (skip) return;
  fx = await startRegistry({ auth: "token" });
  redis = await startRedis();
}, 90_000);

afterAll(async () => {
  await redis?.stop();
  await fx?.stop();
}, 30_000);

afterEach(async () => {
  for (const r of running.splice(0).reverse()) await r.stop();
}, 30_000);

interface Replicas {
  crms: TestCrm[];
  front: Balancer | null;
  prefix: string;
}

function mirrorConfig(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    timeouts: { header: "300ms" },
    allowed_ports: [80, 443, Number(new URL(fx.token!.url).port)],
    mirror: { default_registry: "reg.test", registries: { "reg.test": fx.url } },
    ...extra,
  };
}

async function replicas(
  opts: {
    n?: number;
    store?: RedisFixture;
    cluster?: Record<string, unknown>;
    extra?: Record<string, unknown>;
    front?: boolean;
  } = {},
): Promise<Replicas> {
  const prefix = `t${++prefixes}-${process.pid}:`;
  const store = opts.store ?? redis;
  const crms: TestCrm[] = [];
  for (let i = 0; i < (opts.n ?? 3); i++) {
    const crm = await startCrm(
      mirrorConfig({
        // What these tests count (GETs, refusals) must not hinge on a loaded machine answering
        // within 100 ms: a generous deadline here; the outage test runs with the default.
        cluster: { redis: store.url, key_prefix: prefix, deadline: "2s", ...opts.cluster },
        ...opts.extra,
      }),
      "info",
    );
    running.push(crm);
    crms.push(crm);
  }
  let front: Balancer | null = null;
  if (opts.front !== false) {
    front = await startBalancer(crms.map((c) => c.port));
    running.push(front);
  }
  return { crms, front, prefix };
}

async function registriesConf(port: number): Promise<string> {
  const file = join(fx.dir, `cluster-registries-${port}.conf`);
  // The primary is a dead port: a copy that left the mirror would fail, never reach the registry.
  await writeFile(
    file,
    [
      "unqualified-search-registries = []",
      "[[registry]]",
      'prefix = "reg.test"',
      `location = "127.0.0.1:${deadPort()}"`,
      "insecure = true",
      "[[registry.mirror]]",
      `location = "127.0.0.1:${port}/reg.test"`,
      "insecure = true",
      "",
    ].join("\n"),
  );
  return file;
}

let pulls = 0;
async function pullAll(conf: string, repo: string, tag: string): Promise<void> {
  const dest = join(fx.dir, `pull-${++pulls}`);
  await runSkopeo(
    fx,
    [
      "--registries-conf",
      conf,
      "copy",
      "--all",
      "--preserve-digests",
      "--quiet",
      `docker://reg.test/${repo}:${tag}`,
      `oci:${dest}:${tag}`,
    ],
    { timeoutMs: 120_000 },
  );
}

/**
 * Where the registry's log is now. The fixture keeps only its last 256 KiB, so a position is the
 * text just before it, found again later (a mark that scrolled out fails the test, never passes it).
 */
function logMark(): string {
  return fx.logs().slice(-400);
}

/** Manifest GETs the registry logged after `mark`, by reference. */
function registryManifestGets(mark: string): Map<string, number> {
  const out = new Map<string, number>();
  const text = fx.logs();
  const at = mark === "" ? 0 : text.lastIndexOf(mark);
  if (at < 0)
    throw new Error("the registry log scrolled past the mark: too much logged in between");
  for (const line of text.slice(at + mark.length).split("\n")) {
    if (!/http\.request\.method=GET\b/.test(line)) continue;
    const m = /http\.request\.uri="?\/v2\/[^"\s]*\/manifests\/([^"\s?]+)/.exec(line);
    if (m && /response completed/.test(line))
      out.set(m[1] as string, (out.get(m[1] as string) ?? 0) + 1);
  }
  return out;
}

async function metric(crm: TestCrm, name: string): Promise<number> {
  const text = await (await fetch(`${crm.url}/metrics`, { proxy: false } as RequestInit)).text();
  const hit = text.split("\n").find((l) => l.startsWith(name + " "));
  return hit === undefined ? NaN : Number(hit.slice(name.length + 1));
}

const getManifest = (
  base: string,
  repo: string,
  ref: string,
  init: RequestInit = {},
): Promise<Response> =>
  fetch(`${base}/v2/${repo}/manifests/${ref}?ns=reg.test`, {
    proxy: false,
    ...init,
    headers: { accept: MANIFEST_ACCEPT, ...(init.headers as Record<string, string> | undefined) },
  } as RequestInit);

/** Copies an image inside the registry (anonymous push is allowed by the fixture). */
async function copyInRegistry(from: string, to: string): Promise<void> {
  await runSkopeo(
    fx,
    [
      "copy",
      "--all",
      "--preserve-digests",
      "--quiet",
      "--src-tls-verify=false",
      "--dest-tls-verify=false",
      `docker://${fx.host}/${from}`,
      `docker://${fx.host}/${to}`,
    ],
    { timeoutMs: 60_000 },
  );
}

describe.skipIf(skip)("cluster: replicas sharing one Redis", () => {
  test("30 skopeo pulls of a multi-arch image over 3 replicas: one upstream GET per manifest", async () => {
    const r = await replicas();
    const conf = await registriesConf(r.front!.port);
    const img = fx.images.index;
    const mark = logMark();
    // Three rounds of ten at once: concurrent misses on different replicas must share one GET.
    for (let round = 0; round < 3; round++)
      await Promise.all(Array.from({ length: 10 }, () => pullAll(conf, img.repo, img.tag)));
    const gets = registryManifestGets(mark);
    console.log(
      `[cluster] registry log for 30 pulls: ${fx.logs().length - fx.logs().lastIndexOf(mark)} bytes of the 256 KiB kept`,
    );
    const manifests = [img.digest, ...img.children.map((c) => c.digest)];
    for (const d of manifests)
      expect({ digest: d, gets: gets.get(d) ?? 0 }).toEqual({ digest: d, gets: 1 });
    // Nothing else of this image was fetched with a GET (tags are resolved with HEAD).
    expect([...gets.entries()].filter(([ref]) => !manifests.includes(ref))).toEqual([]);
    // crm's own count agrees: over all replicas, one GET per manifest.
    let counted = 0;
    for (const c of r.crms) counted += c.server.cluster!.manifests.stats.led;
    expect(counted).toBe(manifests.length);
    // Every replica served some of it (the balancer spreads), and each knows the others.
    for (const c of r.crms) {
      await c.server.cluster!.heartbeat.beat();
      expect(c.server.cluster!.heartbeat.replicas.length).toBe(3);
    }
    const status = (await (
      await fetch(`${r.crms[0]!.url}/status.json`, { proxy: false } as RequestInit)
    ).json()) as { cluster: { up: boolean; replicas: Array<{ id: string; version: string }> } };
    expect(status.cluster.up).toBe(true);
    expect(status.cluster.replicas.map((x) => x.id).sort()).toEqual(
      r.crms.map((c) => c.server.cluster!.id).sort(),
    );
    const page = await (await fetch(`${r.crms[0]!.url}/`, { proxy: false } as RequestInit)).text();
    expect(page).toContain("<h2>Replicas</h2>");
    expect(page).toContain("3 live replicas");
    expect(page).not.toContain(redis.url.replace(/\/0$/, ""));
  }, 300_000);

  test("a tag moved upstream is seen by every replica on its next request", async () => {
    const r = await replicas({ front: false });
    await copyInRegistry(`${fx.images.index.repo}:${fx.images.index.tag}`, "team/moving:v1");
    for (const c of r.crms) {
      const res = await getManifest(c.url, "team/moving", "v1");
      expect(res.status).toBe(200);
      expect(res.headers.get("docker-content-digest")).toBe(fx.images.index.digest);
      expect(sha256Digest(new Uint8Array(await res.arrayBuffer()))).toBe(fx.images.index.digest);
    }
    await copyInRegistry(
      `${fx.images.multiLayer.repo}:${fx.images.multiLayer.tag}`,
      "team/moving:v1",
    );
    for (const c of r.crms) {
      const res = await getManifest(c.url, "team/moving", "v1");
      expect(res.status).toBe(200);
      expect(res.headers.get("docker-content-digest")).toBe(fx.images.multiLayer.digest);
      expect(sha256Digest(new Uint8Array(await res.arrayBuffer()))).toBe(
        fx.images.multiLayer.digest,
      );
    }
  }, 120_000);

  test("upstream tokens are shared: a second replica fetches none for the same scope", async () => {
    const r = await replicas({ front: false });
    const img = fx.images.multiLayer;
    const before = fx.token!.calls();
    const a = await getManifest(r.crms[0]!.url, img.repo, img.digest);
    expect(a.status).toBe(200);
    await a.arrayBuffer();
    const afterFirst = fx.token!.calls();
    expect(afterFirst).toBeGreaterThan(before);
    for (const c of r.crms.slice(1)) {
      const res = await fetch(`${c.url}/v2/${img.repo}/blobs/${img.config!.digest}?ns=reg.test`, {
        proxy: false,
      } as RequestInit);
      expect(res.status).toBe(200);
      await res.arrayBuffer();
    }
    expect(fx.token!.calls()).toBe(afterFirst);
  }, 60_000);

  test("share_tokens: false keeps tokens per replica", async () => {
    const r = await replicas({ front: false, n: 2, cluster: { share_tokens: false } });
    const img = fx.images.multiLayer;
    const before = fx.token!.calls();
    for (const c of r.crms) {
      const res = await fetch(`${c.url}/v2/${img.repo}/blobs/${img.config!.digest}?ns=reg.test`, {
        proxy: false,
      } as RequestInit);
      expect(res.status).toBe(200);
      await res.arrayBuffer();
    }
    expect(fx.token!.calls() - before).toBe(2);
  }, 60_000);

  test("requests_per_second is refused by whichever replica the client reaches", async () => {
    // One request per 100 s after a burst of 3: only the store's count can refuse the 4th.
    const r = await replicas({
      front: false,
      extra: { limits: { requests_per_second: 0.01, burst: 3 } },
    });
    const statuses: number[][] = r.crms.map(() => []);
    for (let i = 0; i < 9; i++) {
      const res = await fetch(`${r.crms[i % 3]!.url}/v2/`, { proxy: false } as RequestInit);
      await res.arrayBuffer();
      statuses[i % 3]!.push(res.status);
    }
    // Alone, each replica would have let 3 through (9 in all).
    expect(statuses.flat().filter((s) => s === 200).length).toBe(3);
    for (const s of statuses) expect(s.slice(1)).toEqual([429, 429]);
    // Forward-proxy requests draw on the same shared bucket.
    const origin = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: () => new Response("origin"),
    });
    try {
      const fwd = await fetch(`http://127.0.0.1:${origin.port}/`, {
        proxy: r.crms[2]!.url,
      } as RequestInit);
      expect(fwd.status).toBe(429);
      await fwd.arrayBuffer();
    } finally {
      origin.stop(true);
    }
  }, 60_000);

  test("a forward-proxy request under a shared rate is relayed whole (the paused connection resumes)", async () => {
    const body = "x".repeat(200_000);
    const origin = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: async (req) => new Response(req.method === "POST" ? await req.text() : body),
    });
    try {
      const r = await replicas({
        front: false,
        n: 1,
        extra: {
          allowed_hosts: ["127.0.0.1"],
          allowed_ports: [origin.port],
          limits: { requests_per_second: 100, burst: 100 },
        },
      });
      const get = await fetch(`http://127.0.0.1:${origin.port}/`, {
        proxy: r.crms[0]!.url,
      } as RequestInit);
      expect(get.status).toBe(200);
      expect((await get.text()).length).toBe(body.length);
      const post = await fetch(`http://127.0.0.1:${origin.port}/echo`, {
        method: "POST",
        body,
        proxy: r.crms[0]!.url,
      } as RequestInit);
      expect(post.status).toBe(200);
      expect((await post.text()).length).toBe(body.length);
    } finally {
      origin.stop(true);
    }
  }, 60_000);

  test("40 wrong passwords spread over the replicas are braked after 10 in total", async () => {
    const hash = await Bun.password.hash("right", { algorithm: "bcrypt", cost: 4 });
    const r = await replicas({ front: false, extra: { access: { users: { alice: hash } } } });
    const wrong = "Basic " + Buffer.from("alice:wrong").toString("base64");
    const statuses: number[] = [];
    for (let i = 0; i < 40; i++) {
      const res = await fetch(`${r.crms[i % 3]!.url}/v2/`, {
        proxy: false,
        headers: { authorization: wrong },
      } as RequestInit);
      await res.arrayBuffer();
      statuses.push(res.status);
    }
    expect(statuses.slice(0, 10)).toEqual(Array(10).fill(401));
    expect(statuses.slice(10)).toEqual(Array(30).fill(429));
    expect(r.crms.reduce((n, c) => n + c.server.rt.access.fullChecks, 0)).toBe(10);
  }, 60_000);

  test("a poisoned manifest entry written into Redis is never served, and is replaced", async () => {
    const r = await replicas({ front: false, n: 2 });
    const img = fx.images.index;
    const child = img.children[1]!;
    const reg = r.crms[0]!.server.rt.config.mirror.registries.get("reg.test")!;
    const key = r.prefix + "m:" + SharedManifests.id(cacheScope(reg), img.repo, child.digest);
    const store = await redis.client();
    try {
      // Right digest in the header, other bytes: what a tampered or corrupted entry looks like.
      const evil = new TextEncoder().encode('{"schemaVersion":2,"layers":["evil"]}');
      await store.set(
        key,
        encodeManifest({
          digest: child.digest,
          body: evil,
          mediaType: child.mediaType,
          etag: null,
        }),
        "PX",
        60_000,
      );
      const mark = logMark();
      const res = await getManifest(r.crms[0]!.url, img.repo, child.digest);
      expect(res.status).toBe(200);
      expect(sha256Digest(new Uint8Array(await res.arrayBuffer()))).toBe(child.digest);
      expect(registryManifestGets(mark).get(child.digest)).toBe(1);
      expect(r.crms[0]!.server.cluster!.manifests.stats.poisoned).toBe(1);
      await r.crms[0]!.waitLog(/held a wrong manifest entry/);
      // The entry now holds the verified bytes: the other replica serves them without a GET.
      // Written after the client was answered: wait for it (a wrong entry would fail the decode below).
      let stored: Uint8Array | null = null;
      for (let i = 0; i < 200 && stored === null; i++) {
        const b = await store.getBuffer(key);
        if (b !== null && typeof decodeManifest(b, child.digest) !== "string") stored = b;
        else await Bun.sleep(10);
      }
      expect(stored).not.toBeNull();
      const again = await getManifest(r.crms[1]!.url, img.repo, child.digest);
      expect(sha256Digest(new Uint8Array(await again.arrayBuffer()))).toBe(child.digest);
      expect(registryManifestGets(mark).get(child.digest)).toBe(1);
      expect(r.crms[1]!.server.cluster!.manifests.stats.hit).toBe(1);

      // Garbage, and an entry naming another digest: deleted, never served.
      const other = img.children[0]!;
      const otherKey =
        r.prefix + "m:" + SharedManifests.id(cacheScope(reg), img.repo, other.digest);
      await store.set(
        otherKey,
        encodeManifest({
          digest: child.digest,
          body: new Uint8Array(
            await (await getManifest(r.crms[1]!.url, img.repo, child.digest)).arrayBuffer(),
          ),
          mediaType: null,
          etag: null,
        }),
        "PX",
        60_000,
      );
      const third = await getManifest(r.crms[1]!.url, img.repo, other.digest);
      expect(sha256Digest(new Uint8Array(await third.arrayBuffer()))).toBe(other.digest);
      await store.set(key, "not a manifest at all", "PX", 60_000);
      const fresh = await startCrm(
        mirrorConfig({ cluster: { redis: redis.url, key_prefix: r.prefix, deadline: "2s" } }),
        "info",
      );
      running.push(fresh);
      const fourth = await getManifest(fresh.url, img.repo, child.digest);
      expect(sha256Digest(new Uint8Array(await fourth.arrayBuffer()))).toBe(child.digest);
      expect(fresh.server.cluster!.manifests.stats.poisoned).toBe(1);
    } finally {
      store.close();
    }
  }, 60_000);

  test("Redis stopped (SIGSTOP, then SIGKILL) mid-run: pulls go on; warning and gauge; restarted: sharing resumes", async () => {
    const own = await startRedis();
    running.push(own);
    const r = await replicas({ store: own, cluster: { deadline: "100ms" } });
    const conf = await registriesConf(r.front!.port);
    const img = fx.images.index;
    await pullAll(conf, img.repo, img.tag);
    for (const c of r.crms) expect(await metric(c, "crm_cluster_up")).toBe(1);

    // Repositories no replica has in memory: their manifests make every replica ask the store.
    await copyInRegistry(`${img.repo}:${img.tag}`, "team/outage-a:v1");
    await copyInRegistry(`${img.repo}:${img.tag}`, "team/outage-b:v1");
    // Stopped: its sockets stay open, it just never answers.
    own.signal("SIGSTOP");
    const latencies: number[] = [];
    const timed = (repo: string) => async (): Promise<void> => {
      const t = performance.now();
      await pullAll(conf, repo, "v1");
      latencies.push(performance.now() - t);
    };
    await Promise.all(Array.from({ length: 6 }, timed("team/outage-a")));
    // Direct manifest GETs on each replica: answered (each from memory, or upstream).
    for (const c of r.crms) {
      const res = await getManifest(c.url, img.repo, img.digest);
      expect(res.status).toBe(200);
      await res.arrayBuffer();
    }
    for (const c of r.crms) {
      await c.waitLog(/cluster store down/, 10_000);
      expect(await metric(c, "crm_cluster_up")).toBe(0);
      // Each replica paid the deadline for at most the calls it had in flight when the store stopped.
      const s = c.server.cluster!.store;
      expect(s.stats.timeout + s.stats.skipped).toBeGreaterThan(0);
    }
    own.signal("SIGKILL");
    await Promise.all(Array.from({ length: 6 }, timed("team/outage-b")));
    const maxWait = Math.max(...r.crms.map((c) => c.server.cluster!.store.maxWaitMs));
    for (const c of r.crms)
      console.log(
        `[cluster] replica store calls: ${JSON.stringify(c.server.cluster!.store.stats)}`,
      );
    console.log(
      `[cluster] pulls with the store stopped/killed: ${latencies.length}, slowest ${Math.round(Math.max(...latencies))} ms, median ${Math.round(latencies.sort((a, b) => a - b)[latencies.length >> 1]!)} ms; longest store call ${Math.round(maxWait)} ms (deadline 100 ms)`,
    );
    // One warning per outage per replica, not one per request.
    for (const c of r.crms)
      expect(c.logs.filter((l) => /cluster store down/.test(l)).length).toBe(1);

    // Back: every replica reconnects by itself, and a new manifest is fetched upstream once.
    await own.restart();
    for (const c of r.crms) {
      await c.waitLog(/cluster store back/, 15_000);
      expect(await metric(c, "crm_cluster_up")).toBe(1);
    }
    await copyInRegistry(
      `${fx.images.multiLayer.repo}:${fx.images.multiLayer.tag}`,
      "team/after-restart:v1",
    );
    const mark = logMark();
    for (const c of r.crms) {
      const res = await getManifest(c.url, "team/after-restart", fx.images.multiLayer.digest);
      expect(res.status).toBe(200);
      await res.arrayBuffer();
    }
    expect(registryManifestGets(mark).get(fx.images.multiLayer.digest)).toBe(1);
  }, 300_000);

  test("upstream quota figures seen by one replica are on every replica's /metrics and status page", async () => {
    const hub = startFakeHub({ limit: 100 });
    running.push(hub);
    const prefix = `quota-${process.pid}:`;
    const crms: TestCrm[] = [];
    for (let i = 0; i < 2; i++) {
      const crm = await startCrm(
        {
          mirror: { default_registry: "hub.test", registries: { "hub.test": hub.url } },
          cluster: { redis: redis.url, key_prefix: prefix, deadline: "2s" },
        },
        "info",
      );
      running.push(crm);
      crms.push(crm);
    }
    const [a, b] = crms as [TestCrm, TestCrm];
    const res = await fetch(`${a.url}/v2/library/multi/manifests/${hub.image().index.digest}`, {
      proxy: false,
      headers: { accept: HUB_ACCEPT },
    } as RequestInit);
    expect(res.status).toBe(200);
    await res.arrayBuffer();
    expect(await metric(a, 'crm_upstream_ratelimit_remaining{registry="hub.test"}')).toBe(99);
    // b sent nothing upstream; it learns the figure with its next heartbeat.
    expect(await metric(b, 'crm_upstream_ratelimit_remaining{registry="hub.test"}')).toBeNaN();
    // a writes the figure just after it saw it: beat until b has read it (bounded by tries).
    for (let i = 0; i < 100; i++) {
      await b.server.cluster!.heartbeat.beat();
      if ((await metric(b, 'crm_upstream_ratelimit_remaining{registry="hub.test"}')) === 99) break;
      await Bun.sleep(10);
    }
    expect(await metric(b, 'crm_upstream_ratelimit_remaining{registry="hub.test"}')).toBe(99);
    expect(await metric(b, 'crm_upstream_ratelimit_limit{registry="hub.test"}')).toBe(100);
    const page = (await (
      await fetch(`${b.url}/status.json`, { proxy: false } as RequestInit)
    ).json()) as { quota: Array<{ registry: string; remaining: number }> };
    expect(page.quota).toEqual([expect.objectContaining({ registry: "hub.test", remaining: 99 })]);
  }, 60_000);

  test("rediss:// with a CA made in the test", async () => {
    const ca = await makeTestCa("crm redis test CA");
    const leaf = await makeLeaf(ca, ["127.0.0.1"]);
    const tls = await startRedis({ tls: { ca, leaf }, password: "tls-secret" });
    running.push(tls);
    await writeFile(join(tls.dir, "crm-ca.crt"), ca.cert);
    await writeFile(join(tls.dir, "crm-password"), "tls-secret\n");
    const r = await replicas({
      store: tls,
      front: false,
      n: 2,
      cluster: {
        ca_file: join(tls.dir, "crm-ca.crt"),
        password_file: join(tls.dir, "crm-password"),
      },
    });
    for (const c of r.crms) expect(c.server.cluster!.store.up).toBe(true);
    const img = fx.images.multiLayer;
    const mark = logMark();
    for (const c of r.crms) {
      const res = await getManifest(c.url, img.repo, img.digest);
      expect(sha256Digest(new Uint8Array(await res.arrayBuffer()))).toBe(img.digest);
    }
    expect(registryManifestGets(mark).get(img.digest)).toBe(1);
  }, 60_000);

  test("a wrong or missing store password is a clear start-up error", async () => {
    const locked = await startRedis({ password: "right-one" });
    running.push(locked);
    await writeFile(join(locked.dir, "wrong"), "not-it\n");
    const wrong = startCrm(
      mirrorConfig({ cluster: { redis: locked.url, password_file: join(locked.dir, "wrong") } }),
      "info",
    );
    await expect(wrong).rejects.toThrow(
      /cluster\.redis: redis:\/\/127\.0\.0\.1:\d+\/0 refused crm's credentials: WRONGPASS.*cluster\.password_file/,
    );
    const none = startCrm(mirrorConfig({ cluster: { redis: locked.url } }), "info");
    await expect(none).rejects.toThrow(
      /refused crm's credentials: NOAUTH.*no cluster\.password_file is set/,
    );
  }, 60_000);
});

const skipBrowser = missingTools("cluster: the replicas table in a browser", [
  "redis-server",
  "chromium",
]);

describe.skipIf(skipBrowser)("cluster: the status page in Chromium", () => {
  test("lists the live replicas and says when the store stops answering", async () => {
    const own = await startRedis();
    running.push(own);
    const crms: TestCrm[] = [];
    for (let i = 0; i < 2; i++) {
      const crm = await startCrm(
        { mirror: { enabled: false }, cluster: { redis: own.url, key_prefix: "page:" } },
        "warn",
      );
      running.push(crm);
      crms.push(crm);
    }
    for (const c of crms) await c.server.cluster!.heartbeat.beat();
    const browser = await chromium.launch({
      executablePath: "/usr/bin/chromium",
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
      ],
    });
    try {
      const page = await browser.newPage();
      await page.goto(`${crms[0]!.url}/`);
      await page.locator("#live", { hasText: /^live, updated/ }).waitFor({ timeout: 10_000 });
      const table = await page.textContent("#replicas");
      for (const c of crms) expect(table).toContain(c.server.cluster!.id);
      expect(await page.textContent("#cluster")).toContain(
        "store answering (prefix page:); 2 live",
      );
      // Stopped: the next call that needs it marks it down, and the page says so on its next poll.
      own.signal("SIGSTOP");
      await crms[0]!.server.cluster!.heartbeat.beat();
      await page.locator("#cluster", { hasText: /NOT answering/ }).waitFor({ timeout: 10_000 });
      expect(await page.getAttribute("#cluster", "class")).toBe("bad");
    } finally {
      own.signal("SIGCONT");
      await browser.close();
    }
  }, 60_000);
});
