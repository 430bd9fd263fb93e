/**
 * Issue 19 §3: a registry with several upstreams. The first refuses connections, answers 503, or
 * answers 429: pulls succeed from the second, the failing one is skipped for its back-off and
 * probed again after it. And stale-if-error: when every upstream fails for a tag, a tag resolved
 * within the window is answered from memory with a Warning; without a failure, never.
 * Real parts: Debian's docker-registry behind relays (tests/support/cutting-relay.ts), crm, skopeo.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { startCuttingRelay, type CuttingRelay } from "./support/cutting-relay.ts";
import { deadPort } from "./support/mirror-upstreams.ts";
import {
  MANIFEST_ACCEPT,
  runSkopeo,
  startRegistry,
  type RegistryFixture,
} from "./support/registry.ts";
import { makeLeaf, makeTestCa } from "./support/tls.ts";
import { missingTools } from "./support/tools.ts";

const skip = missingTools("mirror failover", ["docker-registry", "skopeo"]);

const BACKOFF_MS = 1500;

describe.skipIf(skip)("more than one upstream per registry", () => {
  let fx: RegistryFixture;
  let crm: TestCrm;
  let dir: string;
  /** The healthy second upstream every registry shares; it counts what reached it. */
  let second: CuttingRelay;
  let busy: CuttingRelay;
  let quota: CuttingRelay;
  let staleA: CuttingRelay;
  let staleB: CuttingRelay;
  const repo = "library/multi";

  const metric = async (re: RegExp): Promise<number | null> => {
    const text = await (await fetch(`${crm.url}/metrics`)).text();
    const m = re.exec(text);
    return m ? Number(m[1]) : null;
  };
  const pull = async (registry: string, name: string): Promise<void> => {
    await runSkopeo(
      fx,
      [
        "copy",
        "--src-tls-verify=false",
        "--preserve-digests",
        `docker://127.0.0.1:${crm.port}/${registry}/${repo}:v1`,
        `dir:${join(dir, name)}`,
      ],
      { timeoutMs: 120_000 },
    );
  };
  const head = (registry: string, tag = "v1"): Promise<Response> =>
    fetch(`${crm.url}/v2/${registry}/${repo}/manifests/${tag}`, {
      method: "HEAD",
      headers: { accept: MANIFEST_ACCEPT },
    });
  const get = (registry: string, tag = "v1"): Promise<Response> =>
    fetch(`${crm.url}/v2/${registry}/${repo}/manifests/${tag}`, {
      headers: { accept: MANIFEST_ACCEPT },
    });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "crm-failover-"));
    fx = await startRegistry({ auth: "token" });
    const u = new URL(fx.url);
    const target = { host: u.hostname, port: Number(u.port) };
    second = await startCuttingRelay(target);
    busy = await startCuttingRelay(target, () => ({ kind: "status", status: 503 }));
    quota = await startCuttingRelay(target, () => ({
      kind: "status",
      status: 429,
      headers: {
        "retry-after": "60",
        "ratelimit-limit": "100;w=21600",
        "ratelimit-remaining": "0;w=21600",
      },
    }));
    staleA = await startCuttingRelay(target);
    staleB = await startCuttingRelay(target);
    crm = await startCrm(
      {
        timeouts: { header: "300ms" },
        allowed_ports: [80, 443, ...(fx.token ? [Number(new URL(fx.token.url).port)] : [])],
        mirror: {
          default_registry: "refused.test",
          failover: {
            backoff: `${BACKOFF_MS}ms`,
            max_backoff: `${BACKOFF_MS * 2}ms`,
            attempt_timeout: "10s",
          },
          registries: {
            "refused.test": { upstreams: [`http://127.0.0.1:${deadPort()}`, second.url] },
            "busy.test": { upstreams: [busy.url, second.url] },
            "quota.test": { upstreams: [quota.url, second.url] },
            "stale.test": { upstreams: [staleA.url, staleB.url] },
          },
        },
      },
      "info",
    );
  }, 60_000);

  afterAll(async () => {
    await crm?.stop();
    for (const r of [second, busy, quota, staleA, staleB]) r?.stop();
    await fx?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 30_000);

  test("first upstream refusing connections: skopeo pulls from the second; the failover is logged with its reason", async () => {
    const before = second.requests.length;
    await pull("refused.test", "refused");
    expect(second.requests.length).toBeGreaterThan(before);
    expect(
      crm.logs.some(
        (l) =>
          l.includes("mirror upstream failed; trying the next") &&
          l.includes("refused.test") &&
          l.includes("reason=refused"),
      ),
    ).toBe(true);
    expect(
      crm.logs.some((l) => l.includes("mirror failover answered") && l.includes("refused.test")),
    ).toBe(true);
    expect(
      await metric(
        /crm_mirror_upstream_failovers_total\{registry="refused\.test",reason="refused"\} (\d+)/,
      ),
    ).toBeGreaterThan(0);
  }, 120_000);

  for (const [name, status] of [
    ["busy", 503],
    ["quota", 429],
  ] as const) {
    test(`first upstream answering ${status}: the pull succeeds from the second; skipped for its back-off, then probed again`, async () => {
      const first = name === "busy" ? busy : quota;
      const registry = `${name}.test`;
      const started = Date.now();
      const fromSecond = second.requests.length;
      await pull(registry, name);
      expect(first.requests.length).toBeGreaterThan(0);
      expect(second.requests.filter((r) => r.path.includes("/blobs/")).length).toBeGreaterThan(0);
      expect(second.requests.length).toBeGreaterThan(fromSecond);
      expect(
        crm.logs.some(
          (l) =>
            l.includes("mirror upstream failed; trying the next") &&
            l.includes(registry) &&
            l.includes(`reason=${status}`),
        ),
      ).toBe(true);
      // The quota a failed-over 429 reported is still what /metrics shows for the registry.
      if (status === 429)
        expect(
          await metric(/crm_upstream_ratelimit_remaining\{registry="quota\.test"\} (\d+)/),
        ).toBe(0);

      // Within the back-off the first upstream is not asked at all (checked only when this run is
      // fast enough to still be inside it: no wall-clock bound on the test itself).
      const asked = first.requests.length;
      const r = await head(registry);
      expect(r.status).toBe(200);
      if (Date.now() - started < BACKOFF_MS) {
        expect(first.requests.length).toBe(asked);
        expect(
          await metric(
            new RegExp(
              `crm_mirror_upstream_up\\{registry="${name}\\.test",upstream="127\\.0\\.0\\.1:${first.port}"\\} (\\d)`,
            ),
          ),
        ).toBe(0);
      }
      // After the back-off (at most max_backoff, had the pull failed it more than once) the next
      // request probes it again: it still fails, and the second answers.
      await Bun.sleep(BACKOFF_MS * 2 + 200);
      const probe = await head(registry);
      expect(probe.status).toBe(200);
      expect(first.requests.length).toBeGreaterThan(asked);
      // /metrics names each upstream by host: the first is failing, the second is in use.
      expect(
        await metric(
          new RegExp(
            `crm_mirror_upstream_failures\\{registry="${name}\\.test",upstream="127\\.0\\.0\\.1:${first.port}"\\} (\\d+)`,
          ),
        ),
      ).toBeGreaterThan(0);
      expect(
        await metric(
          new RegExp(
            `crm_mirror_upstream_up\\{registry="${name}\\.test",upstream="127\\.0\\.0\\.1:${second.port}"\\} (\\d)`,
          ),
        ),
      ).toBe(1);
      // The status page names it by its place in the list (never its URL); /metrics by host.
      const page = (await (await fetch(`${crm.url}/status.json`)).json()) as {
        resilience?: {
          upstreams: Array<{ registry: string; upstream: number; state: string; failures: number }>;
        };
      };
      const view = page.resilience?.upstreams.find(
        (u) => u.registry === registry && u.upstream === 1,
      );
      expect(view?.failures).toBeGreaterThan(0);
      expect(
        page.resilience?.upstreams.find((u) => u.registry === registry && u.upstream === 2)?.state,
      ).toBe("healthy");
    }, 120_000);
  }

  test("a first upstream that never answers is left after mirror.failover.attempt_timeout; the second answers", async () => {
    const silent = await startCuttingRelay({ host: "127.0.0.1", port: deadPort() }, () => ({
      kind: "stall",
    }));
    const own = await startCrm(
      {
        allowed_ports: [80, 443, ...(fx.token ? [Number(new URL(fx.token.url).port)] : [])],
        mirror: {
          default_registry: "slow.test",
          failover: { attempt_timeout: "500ms" },
          registries: { "slow.test": { upstreams: [silent.url, second.url] } },
        },
      },
      "info",
    );
    try {
      const r = await fetch(`${own.url}/v2/slow.test/${repo}/manifests/v1`, {
        headers: { accept: MANIFEST_ACCEPT },
      });
      expect(r.status).toBe(200);
      await r.arrayBuffer();
      expect(silent.requests.length).toBeGreaterThan(0);
      expect(
        own.logs.some(
          (l) =>
            l.includes("mirror upstream failed; trying the next") && l.includes("reason=timeout"),
        ),
      ).toBe(true);
    } finally {
      await own.stop();
      silent.stop();
    }
  });

  test("a first upstream whose TLS certificate is not trusted: the second answers; the reason is tls", async () => {
    const ca = await makeTestCa("untrusted test CA");
    const leaf = await makeLeaf(ca, ["127.0.0.1"]);
    const tls = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      tls: { cert: leaf.cert, key: leaf.key },
      fetch: () => new Response("{}"),
    });
    const own = await startCrm(
      {
        allowed_ports: [80, 443, ...(fx.token ? [Number(new URL(fx.token.url).port)] : [])],
        mirror: {
          default_registry: "tls.test",
          registries: { "tls.test": { upstreams: [`https://127.0.0.1:${tls.port}`, second.url] } },
        },
      },
      "info",
    );
    try {
      const r = await fetch(`${own.url}/v2/tls.test/${repo}/manifests/v1`, {
        headers: { accept: MANIFEST_ACCEPT },
      });
      expect(r.status).toBe(200);
      await r.arrayBuffer();
      expect(
        own.logs.some(
          (l) => l.includes("mirror upstream failed; trying the next") && l.includes("reason=tls"),
        ),
      ).toBe(true);
    } finally {
      await own.stop();
      tls.stop(true);
    }
  });

  test("the status page lists each upstream of a registry with several by its place, never its address", async () => {
    const html = await (await fetch(`${crm.url}/`)).text();
    expect(html).toMatch(
      /busy\.test upstream 1: skipped, probed again in \d+ s \(\d+ failures; answered 503\)|busy\.test upstream 1: in use/,
    );
    expect(html).toContain("quota.test upstream 2: in use");
    expect(html).not.toContain(`127.0.0.1:${busy.port}`);
  });

  describe("stale-if-error for tags", () => {
    test("no upstream failure: never stale", async () => {
      const r = await get("stale.test");
      expect(r.status).toBe(200);
      expect(r.headers.get("warning")).toBeNull();
      await r.arrayBuffer();
      const h = await head("stale.test");
      expect(h.status).toBe(200);
      expect(h.headers.get("warning")).toBeNull();
    });

    test("every upstream answers 429: the tag resolved before is answered from memory with a Warning", async () => {
      // Resolved (and its manifest kept) while the upstreams were healthy.
      const ok = await get("stale.test");
      expect(ok.status).toBe(200);
      const digest = ok.headers.get("docker-content-digest");
      const body = await ok.text();
      staleA.plan = () => ({ kind: "status", status: 429 });
      staleB.plan = () => ({ kind: "status", status: 429 });
      try {
        const r = await get("stale.test");
        expect(r.status).toBe(200);
        expect(r.headers.get("docker-content-digest")).toBe(digest);
        expect(r.headers.get("warning")).toMatch(/^110 - "stale: .*429.*"$/);
        expect(await r.text()).toBe(body);
        const h = await head("stale.test");
        expect(h.status).toBe(200);
        expect(h.headers.get("warning")).toMatch(/^110 - "stale: /);
        expect(crm.logs.some((l) => l.includes("mirror tag answered stale"))).toBe(true);
        expect(
          await metric(
            /crm_mirror_stale_manifests_total\{registry="stale\.test",reason="429"\} (\d+)/,
          ),
        ).toBeGreaterThan(0);
        // A tag crm never resolved has nothing to fall back on: the failure is the answer.
        const other = await get("stale.test", "never-resolved");
        expect(other.status).toBe(429);
        expect(other.headers.get("warning")).toBeNull();
      } finally {
        staleA.plan = () => ({ kind: "pass" });
        staleB.plan = () => ({ kind: "pass" });
      }
    });

    test("stale_if_error: 0 turns it off", async () => {
      const off = await startCrm(
        {
          allowed_ports: [80, 443, ...(fx.token ? [Number(new URL(fx.token.url).port)] : [])],
          mirror: {
            default_registry: "stale.test",
            manifest_cache: { stale_if_error: 0 },
            registries: { "stale.test": { upstreams: [staleA.url, staleB.url] } },
          },
        },
        "info",
      );
      try {
        const ok = await fetch(`${off.url}/v2/stale.test/${repo}/manifests/v1`, {
          headers: { accept: MANIFEST_ACCEPT },
        });
        expect(ok.status).toBe(200);
        await ok.arrayBuffer();
        staleA.plan = () => ({ kind: "status", status: 503 });
        staleB.plan = () => ({ kind: "status", status: 503 });
        const r = await fetch(`${off.url}/v2/stale.test/${repo}/manifests/v1`, {
          headers: { accept: MANIFEST_ACCEPT },
        });
        expect(r.status).toBe(503);
        expect(r.headers.get("warning")).toBeNull();
      } finally {
        staleA.plan = () => ({ kind: "pass" });
        staleB.plan = () => ({ kind: "pass" });
        await off.stop();
      }
    });
  });

  test("config: upstream and upstreams together is an error; an empty list too", async () => {
    const { buildConfig } = await import("../src/config/load.ts");
    expect(() =>
      buildConfig(
        {
          mirror: {
            registries: { "a.test": { upstream: "https://a.test", upstreams: ["https://b.test"] } },
          },
        },
        "t.yaml",
      ),
    ).toThrow(/either upstream .* or upstreams/);
    expect(() =>
      buildConfig({ mirror: { registries: { "a.test": { upstreams: [] } } } }, "t.yaml"),
    ).toThrow(/non-empty list/);
    expect(() => buildConfig({ mirror: { failover: { backof: "1s" } } }, "t.yaml")).toThrow(
      /did you mean mirror\.failover\.backoff/,
    );
    const { config } = buildConfig(
      {
        mirror: {
          default_registry: "docker.io",
          registries: {
            "docker.io": { upstreams: ["https://registry-1.docker.io", "https://mirror.gcr.io/"] },
          },
        },
      },
      "t.yaml",
    );
    const reg = config.mirror.registries.get("docker.io");
    expect(reg?.upstream.href).toBe("https://registry-1.docker.io/");
    expect(reg?.upstreams?.map((u) => u.host)).toEqual(["registry-1.docker.io", "mirror.gcr.io"]);
    expect(config.mirror.failover).toEqual({
      backoffMs: 30_000,
      maxBackoffMs: 600_000,
      attemptTimeoutMs: 10_000,
    });
    expect(config.mirror.manifestCache.staleIfErrorMs).toBeUndefined();
    expect(
      buildConfig({ mirror: { manifest_cache: { stale_if_error: "10m" } } }, "t.yaml").config.mirror
        .manifestCache.staleIfErrorMs,
    ).toBe(600_000);
    expect(() =>
      buildConfig({ mirror: { manifest_cache: { stale_if_error: "soon" } } }, "t.yaml"),
    ).toThrow(/stale_if_error/);
  });
});
