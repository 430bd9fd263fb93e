/**
 * The cluster (src/cluster/) against a hostile or sick store: what the adversarial review of
 * issue 20 found, each as a test that failed before its fix. Real crm, real registry, real
 * redis-server; the store's contents are written by hand the way a compromised or buggy peer
 * could.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { cacheScope } from "../src/mirror/manifests/cache.ts";
import { encodeManifest, SharedManifests } from "../src/cluster/manifests.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { MANIFEST_ACCEPT, startRegistry, type RegistryFixture } from "./support/registry.ts";
import { startRedis, type RedisFixture } from "./support/redis.ts";

let fx: RegistryFixture;
let redis: RedisFixture;
const running: TestCrm[] = [];
beforeAll(async () => {
  fx = await startRegistry({ auth: "token" });
  redis = await startRedis();
}, 90_000);
afterAll(async () => {
  for (const c of running) await c.stop();
  await redis?.stop();
  await fx?.stop();
}, 30_000);

async function crm(
  prefix: string,
  extra: Record<string, unknown> = {},
  cluster: Record<string, unknown> = {},
): Promise<TestCrm> {
  const c = await startCrm(
    {
      timeouts: { header: "300ms" },
      allowed_ports: [80, 443, Number(new URL(fx.token!.url).port)],
      mirror: { default_registry: "reg.test", registries: { "reg.test": fx.url } },
      cluster: { redis: redis.url, key_prefix: prefix, deadline: "2s", ...cluster },
      ...extra,
    },
    "info",
  );
  running.push(c);
  return c;
}
const get = (
  base: string,
  repo: string,
  ref: string,
  h: Record<string, string> = {},
): Promise<Response> =>
  fetch(`${base}/v2/${repo}/manifests/${ref}?ns=reg.test`, {
    proxy: false,
    headers: { accept: MANIFEST_ACCEPT, ...h },
  } as RequestInit);

test("concurrent first logins with the right password share one brake decision and one check", async () => {
  const hash = await Bun.password.hash("right", { algorithm: "bcrypt", cost: 4 });
  const a = await crm("f1:", { access: { users: { alice: hash } } });
  const good = { authorization: "Basic " + Buffer.from("alice:right").toString("base64") };
  const res = await Promise.all(
    Array.from({ length: 20 }, () =>
      fetch(`${a.url}/v2/`, { proxy: false, headers: good } as RequestInit),
    ),
  );
  await Promise.all(res.map((r) => r.arrayBuffer()));
  expect(res.map((r) => r.status).filter((s) => s === 429)).toEqual([]);
  expect(a.server.rt.access.fullChecks).toBe(1);
}, 30000);

test("a stopped store is marked down even while the event loop is busy", async () => {
  const own = await startRedis();
  try {
    const a = await crm(
      "f2:",
      { limits: { requests_per_second: 5000 } },
      { redis: own.url, deadline: "100ms" },
    );
    const img = fx.images.index;
    await (await get(a.url, img.repo, img.tag)).arrayBuffer();
    // Every timer fires late and replies are read late: each timeout has an excuse.
    const busy = setInterval(() => {
      const e = performance.now() + 60;
      while (performance.now() < e) {}
    }, 40);
    own.signal("SIGSTOP");
    try {
      for (let i = 0; i < 20 && a.server.cluster!.store.stats.downs === 0; i++)
        await (await get(a.url, img.repo, img.children[i % 2]!.digest)).arrayBuffer();
    } finally {
      clearInterval(busy);
      own.signal("SIGCONT");
    }
    expect(a.server.cluster!.store.stats.downs).toBeGreaterThan(0);
  } finally {
    await own.stop();
  }
}, 90000);

test("a right-digest entry with a wrong media type or a forged ETag is deleted, never served nor kept in memory", async () => {
  const prefix = "f4:";
  const a = await crm(prefix);
  const img = fx.images.index;
  const child = img.children[1]!;
  const reg = a.server.rt.config.mirror.registries.get("reg.test")!;
  const key = prefix + "m:" + SharedManifests.id(cacheScope(reg), img.repo, child.digest);
  const body = new Uint8Array(await (await get(a.url, img.repo, child.digest)).arrayBuffer());
  const s = await redis.client();
  const seen: string[] = [];
  const poisons: Array<[string, string | null]> = [
    ["application/vnd.oci.image.index.v1+json", null],
    ["x\r\nset-cookie: a=b", null],
    [child.mediaType, '"x"\r\nX-Evil: 1'],
  ];
  try {
    for (const [mediaType, etag] of poisons) {
      const b = await crm(prefix);
      await s.set(
        key,
        encodeManifest({ digest: child.digest, body, mediaType, etag }),
        "PX",
        60000,
      );
      const r = await get(b.url, img.repo, child.digest);
      await r.arrayBuffer();
      await s.del(key);
      const again = await get(b.url, img.repo, child.digest);
      await again.arrayBuffer();
      seen.push(
        `${r.status} ${r.headers.get("content-type")} ${r.headers.get("x-evil")} / ${again.status} ${again.headers.get("content-type")}`,
      );
      expect(b.server.cluster!.manifests.stats.poisoned).toBe(1);
    }
  } finally {
    s.close();
  }
  const want = `200 ${child.mediaType} null / 200 ${child.mediaType}`;
  expect(seen).toEqual([want, want, want]);
}, 60000);

test("a shared token that cannot be a Bearer credential is not used, nor kept past the store's cleaning", async () => {
  const prefix = "f5:";
  const a = await crm(prefix);
  const img = fx.images.multiLayer;
  await (await get(a.url, img.repo, img.tag)).arrayBuffer();
  const s = await redis.client();
  const statuses: number[] = [];
  try {
    const keys = (await s.send("KEYS", [prefix + "t:*"])) as string[];
    expect(keys.length).toBeGreaterThan(0);
    for (const bad of ["x\r\nX-Injected: 1", "tök€n"]) {
      for (const k of keys) await s.set(k, bad, "PX", 3_600_000_000);
      const b = await crm(prefix);
      statuses.push((await get(b.url, img.repo, img.tag)).status);
      for (const k of keys) await s.del(k);
      statuses.push((await get(b.url, img.repo, img.tag)).status);
    }
  } finally {
    s.close();
  }
  expect(statuses).toEqual([200, 200, 200, 200]);
}, 60000);

test("the shared quota hash: only configured registries, nothing dated in the future, no forged /metrics line", async () => {
  const prefix = "f6:";
  const a = await crm(prefix);
  await (await get(a.url, fx.images.multiLayer.repo, fx.images.multiLayer.tag)).arrayBuffer();
  const s = await redis.client();
  const future = JSON.stringify({
    limit: 100,
    remaining: 5,
    windowS: 60,
    source: "x",
    at: Date.now() + 1e12,
  });
  const many: Record<string, string> = {
    'evil"} 1\ncrm_forged_metric 42\n#': future,
    "reg.test": future,
  };
  for (let i = 0; i < 5000; i++)
    many["junk" + i] = JSON.stringify({
      limit: 100,
      remaining: 5,
      windowS: 60,
      source: "x",
      at: Date.now(),
    });
  await s.hset(prefix + "quota", many);
  s.close();
  await a.server.cluster!.quota.pull();
  const m = await (await fetch(`${a.url}/metrics`, { proxy: false } as RequestInit)).text();
  const lines = m.split("\n");
  expect(lines.filter((l) => l.startsWith("crm_forged_metric"))).toEqual([]);
  expect(lines.filter((l) => l.includes('registry="junk')).length).toBe(0);
  expect(
    lines.filter((l) => l.startsWith('crm_upstream_ratelimit_remaining{registry="reg.test"} 5')),
  ).toEqual([]);
}, 60000);

test("metric label values are escaped as the exposition format says", async () => {
  const { labelValue } = await import("../src/metrics.ts");
  expect(labelValue('a"} 1\ncrm_x 2\\')).toBe('a\\"} 1\\ncrm_x 2\\\\');
});

test("a GCRA state the script never wrote (huge, inf, text) starts the bucket over: the rate still holds", async () => {
  const prefix = "f8:";
  const a = await crm(prefix, { limits: { requests_per_second: 1, burst: 2 } });
  const s = await redis.client();
  const seen: string[] = [];
  try {
    for (const state of ["1e30", "inf", "abc", "-1e30"]) {
      await s.set(prefix + "r:127.0.0.1", state);
      const st: number[] = [];
      for (let i = 0; i < 6; i++) {
        const r = await fetch(`${a.url}/v2/`, { proxy: false } as RequestInit);
        await r.arrayBuffer();
        st.push(r.status);
      }
      const retry = await fetch(`${a.url}/v2/`, { proxy: false } as RequestInit);
      await retry.arrayBuffer();
      seen.push(
        `${state}: ${st.filter((x) => x === 429).length > 0} ${Number(retry.headers.get("retry-after")) <= 3}`,
      );
    }
  } finally {
    s.close();
  }
  expect(seen).toEqual(["1e30: true true", "inf: true true", "abc: true true", "-1e30: true true"]);
}, 30000);

test("a manifest lock without a TTL is taken over; a waiter that fetched for itself shares what it got", async () => {
  const prefix = "f9:";
  const a = await crm(prefix);
  const img = fx.images.index;
  const reg = a.server.rt.config.mirror.registries.get("reg.test")!;
  const s = await redis.client();
  const written = async (key: string): Promise<boolean> => {
    // The write follows the answer (the client is not kept waiting for it).
    for (let i = 0; i < 100; i++) {
      if (await s.exists(key)) return true;
      await Bun.sleep(20);
    }
    return false;
  };
  try {
    const [c0, c1] = [img.children[0]!, img.children[1]!];
    const id0 = SharedManifests.id(cacheScope(reg), img.repo, c0.digest);
    await s.send("SET", [prefix + "l:" + id0, "dead-replica"]);
    expect((await get(a.url, img.repo, c0.digest)).status).toBe(200);
    expect(a.server.cluster!.manifests.stats.led).toBe(1);
    expect(a.server.cluster!.manifests.stats.waited).toBe(0);
    expect(await written(prefix + "m:" + id0)).toBe(true);

    // A holder that died with its lock still timed: the waiter gives up, fetches, and shares.
    const id1 = SharedManifests.id(cacheScope(reg), img.repo, c1.digest);
    await s.send("SET", [prefix + "l:" + id1, "dead-replica", "PX", "60000"]);
    expect((await get(a.url, img.repo, c1.digest)).status).toBe(200);
    expect(a.server.cluster!.manifests.stats.waited).toBe(1);
    expect(await written(prefix + "m:" + id1)).toBe(true);
  } finally {
    s.close();
  }
}, 30000);

test("a huge replicas hash of ghosts dated ahead costs a beat a bounded read: the store stays up, the ghosts go", async () => {
  const prefix = "f7:";
  const s = await redis.client();
  const ghost = JSON.stringify({
    id: "g",
    version: "v",
    host: "h\u202e",
    uptimeS: 1,
    active: 1,
    config: "c",
    at: Date.now() + 1e12,
    pad: "x".repeat(300),
  });
  try {
    for (let j = 0; j < 10; j++) {
      const many: Record<string, string> = {};
      for (let i = 0; i < 10000; i++) many[`ghost-${j}-${i}`] = ghost;
      await s.hset(prefix + "replicas", many);
    }
    const a = await crm(prefix, {}, { deadline: "100ms" });
    const hb = a.server.cluster!.heartbeat;
    for (let i = 0; i < 3; i++) await hb.beat();
    expect(a.server.cluster!.store.stats.downs).toBe(0);
    expect(a.server.cluster!.store.stats.timeout).toBe(0);
    expect(hb.replicas.map((r) => r.id)).toEqual([a.server.cluster!.id]);
    // Each beat dropped the ghosts it read.
    expect(Number(await s.send("HLEN", [prefix + "replicas"]))).toBeLessThan(100_001);
  } finally {
    await s.del(prefix + "replicas");
    s.close();
  }
}, 60000);

test("a store slower than half the deadline: each request's hooks share one store budget", async () => {
  const delay = 80;
  // A TCP relay to redis-server that delays every reply by `delay` ms.
  type D = { up: Awaited<ReturnType<typeof Bun.connect>> | null; buf: Uint8Array[] };
  const relay = Bun.listen<D>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      async open(sock) {
        sock.data = { up: null, buf: [] };
        sock.data.up = await Bun.connect({
          hostname: "127.0.0.1",
          port: redis.port,
          socket: {
            data(_u, d) {
              const copy = new Uint8Array(d);
              setTimeout(() => {
                try {
                  sock.write(copy);
                } catch {}
              }, delay);
            },
            close() {
              setTimeout(() => sock.end(), delay);
            },
          },
        });
        for (const b of sock.data.buf) sock.data.up.write(b);
      },
      data(sock, d) {
        if (sock.data.up) sock.data.up.write(d);
        else sock.data.buf.push(new Uint8Array(d));
      },
      close(sock) {
        sock.data.up?.end();
      },
    },
  });
  try {
    const a = await crm(
      "f3:",
      { limits: { requests_per_second: 1000 } },
      { redis: `redis://127.0.0.1:${relay.port}/0`, deadline: "100ms" },
    );
    const img = fx.images.index;
    for (const ref of [
      img.tag,
      img.children[0]!.digest,
      img.children[1]!.digest,
      img.children[0]!.digest,
    ])
      expect((await get(a.url, img.repo, ref)).status).toBe(200);
    const { stats } = a.server.cluster!.store;
    // The rate took 80 ms of each request's 100: a later hook is not sent a full deadline again.
    expect(stats.overBudget).toBeGreaterThan(0);
    expect(stats.downs).toBe(0);
  } finally {
    relay.stop(true);
  }
}, 60000);

test("a store that refuses writes (OOM) counts as down, said once", async () => {
  const own = await startRedis();
  const admin = await own.client();
  try {
    const a = await crm("l1:", {}, { redis: own.url, deadline: "500ms" });
    const img = fx.images.index;
    await admin.send("CONFIG", ["SET", "maxmemory", "1"]);
    for (let i = 0; i < 6; i++) {
      expect((await get(a.url, img.repo, img.children[i % 2]!.digest)).status).toBe(200);
      await Bun.sleep(300);
    }
    const warned = a.logs.filter(
      (l) => /cluster store down/.test(l) && /OOM/.test(l) && /warn/i.test(l),
    );
    expect(a.server.cluster!.store.stats.downs).toBeGreaterThan(0);
    expect(warned.length).toBe(1);
  } finally {
    admin.close();
    await own.stop();
  }
}, 60000);

test("the logger escapes C0, C1 and bidi control characters in text and JSON lines", async () => {
  const { Logger } = await import("../src/log.ts");
  const lines: string[] = [];
  const evil = "ab\u202ecd\u0085\u001b[31m\u2066x";
  for (const format of ["text", "json"] as const) {
    const log = new Logger({ level: "info", format, sink: (l: string) => lines.push(l) });
    log.warn(`msg ${evil}`, { [`k${evil}`]: evil, plain: "ok" });
  }
  for (const l of lines)
    expect(l).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/);
  expect(lines[0]).toContain("\\u202e");
  expect(lines[0]).toContain("plain=ok");
  // The JSON line still parses to the same value.
  expect(JSON.parse(lines[1]!)[`k${evil}`]).toBe(evil);
});

test("a brake block longer than crm ever sets is cut to BLOCK_MS", async () => {
  const { BLOCK_MS } = await import("../src/access/access.ts");
  const prefix = "l4:";
  const hash = await Bun.password.hash("right", { algorithm: "bcrypt", cost: 4 });
  const a = await crm(prefix, { access: { users: { alice: hash } } });
  const s = await redis.client();
  try {
    const block = `${prefix}b:{127.0.0.1}:block`;
    await s.send("SET", [block, "1", "PX", String(365 * 24 * 3600 * 1000)]);
    const bad = { authorization: "Basic " + Buffer.from("alice:wrong").toString("base64") };
    const r = await fetch(`${a.url}/v2/`, { proxy: false, headers: bad } as RequestInit);
    await r.arrayBuffer();
    expect(r.status).toBe(429);
    expect(Number(r.headers.get("retry-after"))).toBeLessThanOrEqual(BLOCK_MS / 1000);
    expect(Number(await s.send("PTTL", [block]))).toBeLessThanOrEqual(BLOCK_MS);
  } finally {
    s.close();
  }
}, 30000);
