/**
 * `crm doctor` rows for the `cluster:` section: does the store answer (and accept crm's
 * credentials), how fast (the median of a few PINGs against cluster.deadline), which server
 * and version it is, and whether the key prefix is also used by live replicas of another config
 * (their heartbeats carry a fingerprint of the config they run: heartbeat.ts, index.ts).
 */
import type { Config } from "../config/types.ts";
import type { Report } from "../doctor/report.ts";
import { Logger } from "../log.ts";
import { configFingerprint } from "./index.ts";
import { readReplicas } from "./heartbeat.ts";
import { isAuthRefusal, probeStore } from "./probe.ts";
import { Store } from "./store.ts";

const PINGS = 5;

export async function checkCluster(config: Config, report: Report): Promise<void> {
  const k = config.cluster;
  if (k === null) return;
  const where = `${k.url.href} (prefix ${JSON.stringify(k.keyPrefix)})`;
  const probe = await probeStore(k, 3000);
  if (probe.kind !== "ok") {
    const auth = probe.kind === "refused" && isAuthRefusal(probe.message);
    report.fail(
      "cluster store",
      `${where}: ${probe.message}`,
      auth
        ? "fix cluster.password_file (and cluster.username), or the store's ACL"
        : "start the store or fix cluster.redis; until it answers every replica decides alone (pulls still work)",
    );
    report.skip("cluster key prefix", "the store did not answer");
    return;
  }
  const silent = new Logger({ level: "error", format: "text", sink: () => {} });
  let store: Store;
  try {
    store = await Store.open(k, () => silent);
  } catch (e) {
    report.fail(
      "cluster store",
      `${where}: ${(e as Error).message}`,
      "fix cluster.password_file (and cluster.username)",
    );
    return;
  }
  try {
    if (!store.up) {
      report.fail(
        "cluster store",
        `${where}: answers a plain command but crm's client cannot connect: ${store.lastError ?? "?"}`,
        "check cluster.redis (rediss:// and ca_file for TLS)",
      );
      return;
    }
    const times: number[] = [];
    for (let i = 0; i < PINGS; i++) {
      const t = performance.now();
      // A doctor's PING may take longer than a request's deadline: it is measured, not bounded.
      const pong = await store.call((c) => c.ping(), 2000);
      if (pong === undefined) break;
      times.push(performance.now() - t);
    }
    const info = (await store.call((c) => c.send("INFO", ["server"]), 2000)) as string | undefined;
    const version = /(?:valkey_version|redis_version):([\d.]+)/.exec(info ?? "")?.[1] ?? "?";
    const server =
      /valkey_version/.test(info ?? "") || /server_name:valkey/.test(info ?? "")
        ? "Valkey"
        : "Redis";
    times.sort((a, b) => a - b);
    const median = times[times.length >> 1];
    if (median === undefined)
      report.fail(
        "cluster store",
        `${where}: connected, then no answer to PING`,
        "check the store's load and the network to it",
      );
    else if (median > k.deadlineMs / 2)
      report.fail(
        "cluster store",
        `${where}: ${server} ${version} answers in ${median.toFixed(1)} ms (median of ${times.length}), over half of cluster.deadline ${k.deadlineMs} ms: replicas will often decide alone`,
        "put the store closer to crm (same zone) or raise cluster.deadline",
      );
    else
      report.pass(
        "cluster store",
        `${where}: ${server} ${version}, PING ${median.toFixed(1)} ms (median of ${times.length}; deadline ${k.deadlineMs} ms)`,
      );
    const major = Number(version.split(".")[0]);
    if (server === "Redis" && major > 0 && major < 6)
      report.fail(
        "cluster store version",
        `Redis ${version}`,
        "crm needs Redis 6 or later (or Valkey 7+)",
      );

    const mine = configFingerprint(config);
    const replicas = (await readReplicas(store)) ?? [];
    const foreign = replicas.filter((r) => r.config !== mine);
    if (foreign.length === 0)
      report.pass(
        "cluster key prefix",
        `${replicas.length} live ${replicas.length === 1 ? "replica" : "replicas"} under ${JSON.stringify(k.keyPrefix)}, all with this config (fingerprint ${mine})`,
      );
    else
      report.fail(
        "cluster key prefix",
        `${foreign.length} live ${foreign.length === 1 ? "replica runs" : "replicas run"} another config under ${JSON.stringify(k.keyPrefix)} (${foreign.map((r) => `${r.id} on ${r.host}: ${r.config}`).join(", ")}; this config: ${mine}): they would share manifests, limits and tokens with this one`,
        "give each deployment its own cluster.key_prefix (or its own database in cluster.redis), or run the same config everywhere",
      );
  } finally {
    store.close();
  }
}
