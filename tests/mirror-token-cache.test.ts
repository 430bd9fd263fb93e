/**
 * Token reuse: the cache's rules on a fake clock, then the count that matters in production,
 * at a real token service: parallel pulls of one image cost one token fetch per scope per
 * expiry window.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { TokenCache, refreshAt, type IssuedToken } from "../src/mirror/auth/token-cache.ts";
import { parseTokenAnswer } from "../src/mirror/auth/token-fetch.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import {
  CONFIG_DIGEST,
  LAYER_BLOB,
  LAYER_DIGEST,
  MANIFEST,
  startFakeRegistry,
  startTokenServer,
  type FakeRegistry,
  type TokenServer,
} from "./support/mirror-upstreams.ts";

describe("TokenCache on a fake clock", () => {
  const setup = () => {
    const clock = { t: 1_000_000 };
    const cache = new TokenCache(() => clock.t, 3);
    let n = 0;
    const fetches: string[] = [];
    const fetcher = (expiresIn: number) => async (): Promise<IssuedToken> => {
      await Bun.sleep(5);
      fetches.push(`t${++n}`);
      return { token: `t${n}`, expiresIn };
    };
    return { clock, cache, fetcher, fetches };
  };

  test("refresh margin is min(30 s, 10 % of the lifetime)", () => {
    expect(refreshAt(0, 300)).toBe(270_000);
    expect(refreshAt(0, 3600)).toBe(3_570_000);
    expect(refreshAt(0, 2)).toBe(1_800);
    expect(refreshAt(0, 60)).toBe(54_000);
  });

  test("concurrent gets share one fetch; later gets hit the cache until the margin", async () => {
    const { clock, cache, fetcher, fetches } = setup();
    const got = await Promise.all(Array.from({ length: 10 }, () => cache.get("k", fetcher(60))));
    expect(fetches).toEqual(["t1"]);
    expect(new Set(got.map((g) => g.token))).toEqual(new Set(["t1"]));
    expect(got.filter((g) => g.source === "fetched")).toHaveLength(1);
    clock.t += 53_999;
    expect(await cache.get("k", fetcher(60))).toEqual({ token: "t1", source: "cached" });
    clock.t += 1;
    expect(await cache.get("k", fetcher(60))).toEqual({ token: "t2", source: "fetched" });
  });

  test("keys are independent", async () => {
    const { cache, fetcher, fetches } = setup();
    await Promise.all([
      cache.get("a", fetcher(60)),
      cache.get("b", fetcher(60)),
      cache.get("a", fetcher(60)),
    ]);
    expect(fetches).toHaveLength(2);
  });

  test("invalidate drops only the token that was rejected", async () => {
    const { cache, fetcher } = setup();
    await cache.get("k", fetcher(60));
    cache.invalidate("k", "stale-other-token");
    expect((await cache.get("k", fetcher(60))).token).toBe("t1");
    cache.invalidate("k", "t1");
    expect(await cache.get("k", fetcher(60))).toEqual({ token: "t2", source: "fetched" });
  });

  test("a failed fetch reaches every waiter and is not cached", async () => {
    const { cache, fetcher } = setup();
    const failing = async (): Promise<IssuedToken> => {
      await Bun.sleep(5);
      throw new Error("token service down");
    };
    const results = await Promise.allSettled([cache.get("k", failing), cache.get("k", failing)]);
    expect(results.map((r) => r.status)).toEqual(["rejected", "rejected"]);
    expect((await cache.get("k", fetcher(60))).source).toBe("fetched");
  });

  test("the map stays bounded, expired entries going first", async () => {
    const { clock, cache, fetcher } = setup();
    await cache.get("short", fetcher(1));
    await cache.get("a", fetcher(60));
    await cache.get("b", fetcher(60));
    clock.t += 5_000;
    await cache.get("c", fetcher(60));
    expect(cache.size).toBe(3);
    expect((await cache.get("a", fetcher(60))).source).toBe("cached");
    await cache.get("d", fetcher(60));
    expect(cache.size).toBe(3);
  });

  test("token answers: token or access_token, expires_in defaulting to 60", () => {
    const enc = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));
    expect(parseTokenAnswer(enc({ token: "a", expires_in: 300 }))).toEqual({
      token: "a",
      expiresIn: 300,
    });
    expect(parseTokenAnswer(enc({ access_token: "b" }))).toEqual({ token: "b", expiresIn: 60 });
    expect(parseTokenAnswer(enc({ token: "", access_token: "c", expires_in: -5 }))).toEqual({
      token: "c",
      expiresIn: 60,
    });
    expect(parseTokenAnswer(enc({ expires_in: 5 }))).toBeNull();
    expect(parseTokenAnswer(new TextEncoder().encode("<html>"))).toBeNull();
  });
});

describe("parallel pulls through crm", () => {
  const EXPIRES_IN = 2;
  let tokens: TokenServer;
  let registry: FakeRegistry;
  let crm: TestCrm;

  beforeAll(async () => {
    // The delay makes the 20 pulls really overlap the first token fetch.
    tokens = startTokenServer({ expiresIn: EXPIRES_IN, delayMs: 100 });
    registry = startFakeRegistry({ auth: { kind: "bearer", tokens } });
    crm = await startCrm(
      {
        allowed_ports: [80, 443, Number(new URL(tokens.url).port)],
        mirror: { default_registry: "reg.test", registries: { "reg.test": registry.url } },
      },
      "info",
    );
  });

  afterAll(async () => {
    await crm.stop();
    registry.stop();
    tokens.stop();
  });

  /** What a client does for one image: resolve, manifest, config, layer. */
  async function pullImage(repo: string): Promise<void> {
    const get = async (path: string, method = "GET"): Promise<Response> => {
      const res = await fetch(`${crm.url}/v2/${repo}/${path}`, {
        method,
        proxy: false,
      } as RequestInit);
      if (res.status !== 200)
        throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
      return res;
    };
    await (await get("manifests/v1", "HEAD")).arrayBuffer();
    expect(await (await get("manifests/v1")).text()).toBe(MANIFEST);
    await (await get(`blobs/${CONFIG_DIGEST}`)).arrayBuffer();
    expect((await (await get(`blobs/${LAYER_DIGEST}`)).arrayBuffer()).byteLength).toBe(
      LAYER_BLOB.byteLength,
    );
  }

  test("20 parallel pulls of one image (and 20 of another) fetch one token per scope; after expiry, one more", async () => {
    const a = "repository:team/one:pull";
    const b = "repository:team/two:pull";
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: 20 }, (_, i) => pullImage(i % 2 === 0 ? "team/one" : "team/two")),
    );
    await Promise.all(Array.from({ length: 20 }, () => pullImage("team/one")));
    // Everything so far must fit in the first window for the count to mean anything.
    expect(performance.now() - t0).toBeLessThan(EXPIRES_IN * 900);
    expect(tokens.callsFor(a)).toBe(1);
    expect(tokens.callsFor(b)).toBe(1);
    expect(tokens.calls()).toBe(2);

    await Bun.sleep(EXPIRES_IN * 1000);
    await Promise.all(Array.from({ length: 20 }, () => pullImage("team/one")));
    expect(tokens.callsFor(a)).toBe(2);
    expect(tokens.callsFor(b)).toBe(1);
    const infos = crm.logs.filter((l) => / INFO .*repo=team\/one /.test(l));
    expect(infos.filter((l) => l.includes("token=fetched"))).toHaveLength(2);
    // A blob GET that joined another one's download (mirror.fanout) used no token of its own.
    expect(
      infos.filter((l) => l.includes("token=cached") || l.includes("fanout=joined")).length,
    ).toBeGreaterThan(100);
  }, 10_000);
});
