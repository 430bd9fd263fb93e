/**
 * The `cluster` rows of `npm run bench` (issue 20): crm replicas sharing one redis-server.
 *   12  manifest GET by digest with the memory cache cold (too small to hold it) and the manifest
 *       in Redis, against the registry direct (req/s, wrk).
 *   12b upstream manifest GETs for 50 parallel pulls spread over 3 replicas, with the cluster and
 *       without it (target: 1 per manifest).
 * The registry is the fake Docker Hub (scripts/bench/hub.ts); redis-server runs without
 * persistence on a loopback port; everything is a child process stopped by the bench.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { median, spawnChild, wrk, type Child } from "./lib.ts";

export interface ClusterBenchContext {
  root: string;
  bun: string;
  tmp: string;
  lifetimeMs: number;
  rateSeconds: number;
  rateRuns: number;
  startCrm(raw: Record<string, unknown>): Promise<{ port: number; stop(): Promise<void> }>;
  row(r: {
    id: string;
    metric: string;
    crm: string;
    direct: string;
    ratio: string;
    target: string;
    result: string;
  }): void;
  note(s: string): void;
}

const ACCEPT =
  "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";

async function startRedis(): Promise<{ port: number; child: Child }> {
  for (let attempt = 0; attempt < 3; attempt++) {
    const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const port = probe.port;
    probe.stop(true);
    const child = spawnChild([
      "redis-server",
      "--bind",
      "127.0.0.1",
      "--port",
      String(port),
      "--save",
      "",
      "--appendonly",
      "no",
      "--loglevel",
      "warning",
    ]);
    const end = performance.now() + 10_000;
    for (;;) {
      try {
        const s = await Bun.connect({
          hostname: "127.0.0.1",
          port,
          socket: { data() {}, error() {} },
        });
        s.end();
        return { port, child };
      } catch {
        if (child.proc.exitCode !== null || performance.now() > end) break;
        await Bun.sleep(20);
      }
    }
    await child.stop();
  }
  throw new Error("redis-server did not start");
}

export async function sectionCluster(ctx: ClusterBenchContext): Promise<void> {
  if (Bun.which("redis-server") === null) {
    ctx.row({
      id: "12",
      metric: "cluster rows",
      crm: "redis-server not installed",
      direct: "—",
      ratio: "—",
      target: "info",
      result: "n/a",
    });
    return;
  }
  const hubChild = spawnChild(
    [ctx.bun, join(ctx.root, "scripts/bench/hub.ts"), String(ctx.lifetimeMs)],
    { cwd: ctx.root },
  );
  const hub = JSON.parse(await hubChild.firstLine(15_000)) as {
    port: number;
    control: number;
    index: string;
    amd64: string;
  };
  const redis = await startRedis();
  const stops: Array<() => Promise<void>> = [() => hubChild.stop(), () => redis.child.stop()];
  const counts = async (path: "counts" | "reset"): Promise<{ gets: number }> =>
    (await fetch(`http://127.0.0.1:${hub.control}/${path}`)).json() as Promise<{ gets: number }>;
  const mirror = {
    registries: { "hub.test": `http://127.0.0.1:${hub.port}` },
    default_registry: "hub.test",
  };
  const n = (v: number): string => Math.round(v).toLocaleString("en-US");
  const x = (v: number): string => (Number.isFinite(v) ? `${v.toFixed(2)}×` : "—");
  try {
    // 12: every request misses memory (max_size 1 holds nothing) and is served from Redis.
    const cold = await ctx.startCrm({
      mirror: { ...mirror, manifest_cache: { max_size: 1 } },
      cluster: { redis: `redis://127.0.0.1:${redis.port}/0`, key_prefix: "bench10:" },
    });
    stops.push(() => cold.stop());
    const viaCrm = `http://127.0.0.1:${cold.port}/v2/library/multi/manifests/${hub.amd64}`;
    const direct = `http://127.0.0.1:${hub.port}/v2/library/multi/manifests/${hub.amd64}`;
    const first = await fetch(viaCrm, { headers: { accept: ACCEPT } });
    const body = new Uint8Array(await first.arrayBuffer());
    if (
      first.status !== 200 ||
      "sha256:" + createHash("sha256").update(body).digest("hex") !== hub.amd64
    )
      throw new Error(`GET by digest through crm answered ${first.status} with other bytes`);
    const script = join(ctx.tmp, "cluster-accept.lua");
    await Bun.write(script, `wrk.headers["Accept"] = ${JSON.stringify(ACCEPT)}\n`);
    const opts = { threads: 2, conns: 32, seconds: ctx.rateSeconds, script };
    await wrk(viaCrm, { ...opts, seconds: 1 });
    const rps = new Map<string, number[]>([
      ["crm", []],
      ["direct", []],
    ]);
    let upstreamDuring = 0;
    let crmRequests = 0;
    for (let r = 0; r < ctx.rateRuns; r++) {
      for (const [name, url] of (r % 2 === 0
        ? [
            ["crm", viaCrm],
            ["direct", direct],
          ]
        : [
            ["direct", direct],
            ["crm", viaCrm],
          ]) as Array<[string, string]>) {
        await counts("reset");
        const w = await wrk(url, opts);
        if (w.errors) throw new Error(`wrk ${name}: ${w.errors}`);
        rps.get(name)?.push(w.rps);
        if (name === "crm") {
          upstreamDuring += (await counts("counts")).gets;
          crmRequests += w.requests;
        }
      }
    }
    const metrics = await (await fetch(`http://127.0.0.1:${cold.port}/metrics`)).text();
    const hits = Number(
      /crm_cluster_manifests_total\{result="hit"\} (\d+)/.exec(metrics)?.[1] ?? "NaN",
    );
    const c = median(rps.get("crm") ?? []);
    const d = median(rps.get("direct") ?? []);
    ctx.row({
      id: "12",
      metric: `manifest GET by digest, memory cache cold (max_size 1), manifest in Redis (wrk ${opts.threads}t ${opts.conns}c ${opts.seconds}s)`,
      crm: `${n(c)} req/s`,
      direct: `${n(d)} req/s (registry direct)`,
      ratio: x(c / d),
      target: "info",
      result: "—",
    });
    ctx.note(
      `cluster: during row 12's crm runs (${n(crmRequests)} requests) the registry saw ${upstreamDuring} manifest GETs; crm read the manifest from Redis ${n(hits)} times (concurrent identical requests share one read: single flight)`,
    );
    await cold.stop();

    // 12b: 50 pulls (HEAD by tag, GET index, GET amd64) spread over 3 replicas.
    const N = 50;
    const pull = async (base: string): Promise<void> => {
      const head = await fetch(`${base}/v2/library/multi/manifests/latest`, {
        method: "HEAD",
        headers: { accept: ACCEPT },
      });
      if (head.status !== 200 || head.headers.get("docker-content-digest") !== hub.index)
        throw new Error(`HEAD by tag answered ${head.status}`);
      for (const digest of [hub.index, hub.amd64]) {
        const r = await fetch(`${base}/v2/library/multi/manifests/${digest}`, {
          headers: { accept: ACCEPT },
        });
        const b = new Uint8Array(await r.arrayBuffer());
        if (r.status !== 200 || "sha256:" + createHash("sha256").update(b).digest("hex") !== digest)
          throw new Error(`GET ${digest} answered ${r.status} with other bytes`);
      }
    };
    const gets: Record<string, number> = {};
    for (const [name, cluster] of [
      ["alone", null],
      ["cluster", { redis: `redis://127.0.0.1:${redis.port}/0`, key_prefix: "bench11:" }],
    ] as const) {
      const replicas: Array<{ port: number; stop(): Promise<void> }> = [];
      for (let i = 0; i < 3; i++)
        replicas.push(await ctx.startCrm({ mirror, ...(cluster ? { cluster } : {}) }));
      try {
        await counts("reset");
        await Promise.all(
          Array.from({ length: N }, (_, i) => pull(`http://127.0.0.1:${replicas[i % 3]!.port}`)),
        );
        gets[name] = (await counts("counts")).gets;
      } finally {
        await Promise.all(replicas.map((r) => r.stop()));
      }
    }
    const per = (gets.cluster ?? NaN) / 2;
    ctx.row({
      id: "12b",
      metric: `upstream manifest GETs for ${N} parallel pulls over 3 replicas (index + 1 platform manifest)`,
      crm: `${gets.cluster} with cluster (${per} per manifest)`,
      direct: `${gets.alone} without cluster`,
      ratio: x((gets.cluster ?? NaN) / (gets.alone ?? NaN)),
      target: "1 per manifest",
      result: Number.isFinite(per) ? (per <= 1 ? "PASS" : "MISS") : "n/a",
    });
  } finally {
    for (const s of stops.reverse()) await s().catch(() => {});
  }
}
