/**
 * Many replicas, one crm: what the replicas of one config share through a Redis or Valkey store
 * (the `cluster:` section). Each concern has its module: manifests and their cross-replica single
 * flight (manifests.ts), upstream tokens (tokens.ts), request rate (rate.ts), the password brake
 * (brake.ts), upstream quota figures (quota.ts), heartbeats (heartbeat.ts). This one assembles
 * them and plugs them into the runtime with small hooks; every hook falls back to the local state
 * when the store does not answer within cluster.deadline (store.ts). Connection caps and
 * bandwidth pacing stay per replica.
 */
import { createHash, randomBytes } from "node:crypto";
import { hostname } from "node:os";
import type { Config } from "../config/types.ts";
import type { Runtime } from "../context.ts";
import type { ClusterConfig } from "./config.ts";
import { Heartbeat, VERSION } from "./heartbeat.ts";
import { shareMirrorState } from "../mirror/state.ts";
import type { ClusterStatus } from "../status/sources.ts";
import { SharedBrake } from "./brake.ts";
import { SharedManifests } from "./manifests.ts";
import { SharedQuota } from "./quota.ts";
import { SharedRate } from "./rate.ts";
import { Store } from "./store.ts";
import { SharedTokens } from "./tokens.ts";

/**
 * What must be the same for replicas to share a prefix: the registries (name, upstream,
 * account) and the rate settings. Two configs with different fingerprints under one prefix
 * would serve each other's manifests and count each other's clients (doctor says so).
 */
export function configFingerprint(config: Config): string {
  const registries = [...config.mirror.registries.values()]
    .map((r) => [r.name, r.upstream.href, r.username ?? ""])
    .sort();
  const shape = {
    registries,
    rate: [config.limits.requestsPerSecond, config.limits.burst],
    users: [...config.access.users.keys()].sort(),
  };
  return createHash("sha256").update(JSON.stringify(shape)).digest("hex").slice(0, 12);
}

export class Cluster {
  readonly id: string;
  readonly manifests: SharedManifests;
  /** null with share_tokens: false. */
  readonly tokens: SharedTokens | null;
  readonly rate: SharedRate;
  readonly brake: SharedBrake;
  readonly quota: SharedQuota;
  readonly heartbeat: Heartbeat;

  private constructor(
    readonly store: Store,
    readonly config: ClusterConfig,
    private readonly rt: Runtime,
  ) {
    this.id = `${hostname().slice(0, 40)}-${process.pid}-${randomBytes(3).toString("hex")}`;
    const log = (): Runtime["log"] => rt.log;
    this.manifests = new SharedManifests(store, this.id, log);
    this.tokens = config.shareTokens ? new SharedTokens(store) : null;
    this.rate = new SharedRate(store);
    this.brake = new SharedBrake(store, this.id);
    this.quota = new SharedQuota(store, () => rt.config.mirror.registries);
    // Read each beat: a reload may change what this replica runs.
    this.heartbeat = new Heartbeat(
      store,
      () => ({
        id: this.id,
        version: VERSION,
        host: hostname().slice(0, 100),
        uptimeS: Math.round((Date.now() - rt.startedAt) / 1000),
        active: rt.activity.activeView().filter((a) => a.kind !== "local").length,
        config: configFingerprint(rt.config),
        at: Date.now(),
      }),
      () => this.afterBeat(),
    );
  }

  /** Connects (a refused password throws: start-up stops), then plugs the shared state in. */
  static async start(rt: Runtime, config: ClusterConfig): Promise<Cluster> {
    const store = await Store.open(config, () => rt.log);
    const c = new Cluster(store, config, rt);
    rt.rate.shared = c.rate;
    rt.access.shared = c.brake;
    shareMirrorState(rt, {
      manifests: c.manifests,
      tokens: c.tokens,
      quota: (tracker) => c.quota.attach(tracker),
    });
    rt.metrics.sections.push(() => [
      ...store.metricLines(),
      ...c.manifests.metricLines(),
      "# HELP crm_cluster_replicas Live replicas under this key prefix, as last read.",
      "# TYPE crm_cluster_replicas gauge",
      `crm_cluster_replicas ${c.heartbeat.replicas.length}`,
    ]);
    rt.sources.cluster = () => c.status();
    c.heartbeat.start();
    return c;
  }

  /** Replicas of another config under this prefix are named once per distinct set. */
  private foreignSeen = "";

  private async afterBeat(): Promise<void> {
    await this.quota.pull();
    const mine = configFingerprint(this.rt.config);
    const foreign = this.heartbeat.replicas.filter((r) => r.config !== mine);
    const seen = foreign
      .map((r) => r.id)
      .sort()
      .join(",");
    if (seen !== "" && seen !== this.foreignSeen) {
      this.rt.log.warn(
        "replicas of another config share this cluster.key_prefix: they share manifests, limits and tokens with this one (crm doctor names them)",
        {
          prefix: this.config.keyPrefix,
          replicas: foreign.map((r) => `${r.id}@${r.host}`).join(" "),
        },
      );
    }
    this.foreignSeen = seen;
  }

  status(): ClusterStatus {
    // The page names no upstream URL, and no store address either: only what kind it is.
    return {
      up: this.store.up,
      store: this.config.tls ? "redis over TLS" : "redis",
      prefix: this.config.keyPrefix,
      // A connection error may name the store's address: it is left out like the URL.
      lastError: this.store.lastError?.replace(/\[?[\w.:-]+\]?:\d{1,5}\b/g, "<store>") ?? null,
      replicas: this.heartbeat.replicas,
    };
  }

  async stop(): Promise<void> {
    await this.heartbeat.stop(this.id);
    this.store.close();
  }
}
