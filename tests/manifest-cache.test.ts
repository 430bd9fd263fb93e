/** The pieces of the manifest cache on their own: LRU bound, quota parsing, config, single flight. */
import { describe, expect, test } from "bun:test";
import { buildConfig } from "../src/config/load.ts";
import { ConfigErrors } from "../src/errors.ts";
import { Logger } from "../src/log.ts";
import {
  MAX_CACHED_MANIFEST,
  ManifestCache,
  type CachedManifest,
} from "../src/mirror/manifests/cache.ts";
import { parseRateLimit, QuotaTracker } from "../src/mirror/upstream/quota.ts";
import { SingleFlight } from "../src/mirror/manifests/single-flight.ts";
import { DEFAULT_REGISTRIES } from "../src/config/registries.ts";

const m = (digest: string, size: number): CachedManifest => ({
  digest,
  body: new Uint8Array(size),
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  etag: null,
});

describe("ManifestCache", () => {
  test("bounded in bytes, least recently used out first", () => {
    const c = new ManifestCache({ enabled: true, maxSize: 12_000 });
    for (let i = 0; i < 4; i++) expect(c.put("r", "repo", m(`sha256:${i}`, 3000))).toBe(true);
    // 4 × (3000 + overhead) > 12 000: the first went.
    expect(c.size).toBe(3);
    expect(c.evictions).toBe(1);
    expect(c.bytes).toBeLessThanOrEqual(12_000);
    expect(c.get("r", "repo", "sha256:0")).toBeNull();
    expect(c.get("r", "repo", "sha256:1")).not.toBeNull(); // now most recently used
    c.put("r", "repo", m("sha256:4", 3000));
    expect(c.get("r", "repo", "sha256:2")).toBeNull();
    expect(c.get("r", "repo", "sha256:1")).not.toBeNull();
    expect([c.hits, c.misses]).toEqual([2, 2]);
  });

  test("keyed by registry and repository too; over 4 MiB or over the bound is never kept", () => {
    const c = new ManifestCache({ enabled: true, maxSize: 64 * 1024 * 1024 });
    c.put("a", "x", m("sha256:1", 10));
    expect(c.get("b", "x", "sha256:1")).toBeNull();
    expect(c.get("a", "y", "sha256:1")).toBeNull();
    expect(c.get("a", "x", "sha256:1")).not.toBeNull();
    expect(c.put("a", "x", m("sha256:big", MAX_CACHED_MANIFEST + 1))).toBe(false);
    const small = new ManifestCache({ enabled: true, maxSize: 1000 });
    expect(small.put("a", "x", m("sha256:2", 1000))).toBe(false);
    expect(small.size).toBe(0);
  });

  test("configure: a smaller bound evicts at once, disabled empties it", () => {
    const c = new ManifestCache({ enabled: true, maxSize: 100_000 });
    for (let i = 0; i < 10; i++) c.put("r", "repo", m(`sha256:${i}`, 5000));
    c.configure({ enabled: true, maxSize: 20_000 });
    expect(c.bytes).toBeLessThanOrEqual(20_000);
    expect(c.get("r", "repo", "sha256:9")).not.toBeNull();
    c.configure({ enabled: false, maxSize: 20_000 });
    expect(c.size).toBe(0);
    expect(c.put("r", "repo", m("sha256:x", 10))).toBe(false);
  });
});

describe("rate-limit headers", () => {
  test("Docker Hub's fields, the older comma form, and garbage", () => {
    const h = (o: Record<string, string>) => new Headers(o);
    expect(
      parseRateLimit(
        h({
          "ratelimit-limit": "100;w=21600",
          "ratelimit-remaining": "76;w=21600",
          "docker-ratelimit-source": "192.0.2.1",
        }),
        5,
      ),
    ).toEqual({
      limit: 100,
      remaining: 76,
      windowS: 21600,
      source: "192.0.2.1",
      at: 5,
    });
    expect(
      parseRateLimit(h({ "ratelimit-limit": "100, 100;w=21600", "ratelimit-remaining": "3" })),
    ).toMatchObject({ limit: 100, remaining: 3, windowS: null, source: null });
    expect(parseRateLimit(h({ "ratelimit-limit": "lots", "ratelimit-remaining": "1" }))).toBeNull();
    expect(parseRateLimit(h({ "ratelimit-remaining": "1" }))).toBeNull();
    expect(
      parseRateLimit(h({ "ratelimit-limit": "9".repeat(300), "ratelimit-remaining": "1" })),
    ).toBeNull();
  });

  test("one warning when remaining falls under 10 %, again only after it recovered", () => {
    const lines: string[] = [];
    const log = new Logger({ level: "info", format: "text", sink: (l) => lines.push(l) });
    const q = new QuotaTracker();
    const at = (n: number) =>
      new Headers({ "ratelimit-limit": "100;w=21600", "ratelimit-remaining": `${n};w=21600` });
    for (const n of [50, 10, 9, 5, 0]) q.observe("docker.io", at(n), log);
    expect(lines.filter((l) => l.includes("quota running low"))).toHaveLength(1);
    q.observe("docker.io", at(100), log);
    q.observe("docker.io", at(8), log);
    expect(lines.filter((l) => l.includes("quota running low"))).toHaveLength(2);
    expect(q.views()).toMatchObject([{ registry: "docker.io", remaining: 8, limit: 100 }]);
  });

  test("a 429 names the fix: credentials for anonymous crm, a better account otherwise", () => {
    const q = new QuotaTracker();
    const hub = DEFAULT_REGISTRIES.find((r) => r.name === "docker.io")!;
    const anon = q.tooManyRequests(
      { ...hub, username: null, password: null },
      new Headers({ "retry-after": "30" }),
    );
    expect(anon.status).toBe(429);
    expect(anon.code).toBe("TOOMANYREQUESTS");
    expect(anon.message).toBe(
      "docker.io rate limit reached for this crm's address; configure credentials for docker.io under mirror.registries",
    );
    expect(anon.headers["retry-after"]).toBe("30");
    const withUser = q.tooManyRequests(
      { ...hub, username: "robot", password: "secret" },
      new Headers(),
    );
    expect(withUser.message).toContain("for the account configured for docker.io");
    expect(withUser.message).not.toContain("secret");
    expect(withUser.headers["retry-after"]).toBe("60");
    expect(q.metricLines()).toContain('crm_upstream_rate_limited_total{registry="docker.io"} 2');
  });
});

describe("mirror.manifest_cache config", () => {
  const build = (mc: unknown) =>
    buildConfig({ mirror: { manifest_cache: mc } }, "t.yaml").config.mirror.manifestCache;
  test("on by default with 64 MiB; sizes in units", () => {
    expect(buildConfig({}, "t.yaml").config.mirror.manifestCache).toEqual({
      enabled: true,
      maxSize: 64 * 1024 * 1024,
    });
    expect(build({ max_size: "16MiB" })).toEqual({ enabled: true, maxSize: 16 * 1024 * 1024 });
    expect(build({ enabled: false })).toEqual({ enabled: false, maxSize: 64 * 1024 * 1024 });
  });
  test("bad values and unknown keys are errors naming the key", () => {
    const fails = (mc: unknown): string => {
      try {
        build(mc);
      } catch (e) {
        expect(e).toBeInstanceOf(ConfigErrors);
        return (e as Error).message;
      }
      throw new Error("accepted");
    };
    expect(fails({ max_size: "lots" })).toContain("mirror.manifest_cache.max_size");
    expect(fails({ enabled: "yes" })).toContain("mirror.manifest_cache.enabled");
    expect(fails({ max_szie: "1MiB" })).toContain("mirror.manifest_cache.max_szie: unknown key");
    expect(fails("big")).toContain("mirror.manifest_cache");
  });
});

describe("SingleFlight", () => {
  test("concurrent callers share one run; the next call after it settles runs again", async () => {
    const f = new SingleFlight<number>();
    let runs = 0;
    const work = async () => {
      runs++;
      await Bun.sleep(20);
      return runs;
    };
    const sig = new AbortController().signal;
    const all = await Promise.all(Array.from({ length: 10 }, () => f.run("k", sig, work)));
    expect(runs).toBe(1);
    expect(all.filter((r) => r.leader)).toHaveLength(1);
    expect(new Set(all.map((r) => r.value))).toEqual(new Set([1]));
    await f.run("k", sig, work);
    expect(runs).toBe(2);
    expect(f.size).toBe(0);
  });

  test("one caller leaving does not cancel the work; all leaving does", async () => {
    const f = new SingleFlight<string>();
    let aborted = 0;
    const work = (signal: AbortSignal) =>
      new Promise<string>((resolve, reject) => {
        const t = setTimeout(() => resolve("done"), 50);
        signal.addEventListener("abort", () => {
          aborted++;
          clearTimeout(t);
          reject(new Error("aborted"));
        });
      });
    const a = new AbortController();
    const b = new AbortController();
    const pa = f.run("k", a.signal, work);
    const pb = f.run("k", b.signal, work);
    a.abort();
    await expect(pa).rejects.toThrow(/went away/);
    expect((await pb).value).toBe("done");
    expect(aborted).toBe(0);

    const c = new AbortController();
    const d = new AbortController();
    const both = Promise.allSettled([f.run("j", c.signal, work), f.run("j", d.signal, work)]);
    c.abort();
    d.abort();
    expect((await both).map((r) => r.status)).toEqual(["rejected", "rejected"]);
    expect(aborted).toBe(1);
  });
});
