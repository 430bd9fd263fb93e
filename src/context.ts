/**
 * What every request handler reads: the Config, the HostPolicy and AccessControl built from it,
 * the logger, and the metrics. A reload (SIGHUP) swaps the config-derived fields in one step
 * between two events; a request already running keeps the objects it read at its start.
 */
import { SelfTargets } from "./net/self-targets.ts";
import type { Config } from "./config/types.ts";
import { AccessControl } from "./access/access.ts";
import { Bandwidth } from "./limits/bandwidth.ts";
import { ClientAddress } from "./access/client-address.ts";
import { RequestRate } from "./limits/request-rate.ts";
import { HostPolicy } from "./host-policy.ts";
import { Logger, type LogSink } from "./log.ts";
import { Metrics } from "./metrics.ts";
import { RequestJournal } from "./status/journal.ts";
import { ActivityBoard } from "./status/activity.ts";
import type { StatusSources } from "./status/sources.ts";
import { certificateStateOf } from "./tls/certificate-state.ts";
import { UpstreamClient } from "./upstream/client.ts";
import { guardedResolver, systemResolver, type Resolver } from "./net/resolver.ts";

export interface Runtime {
  config: Config;
  policy: HostPolicy;
  log: Logger;
  access: AccessControl;
  /** Who a request is from behind a trusted front (access.trusted_proxies). */
  clientAddress: ClientAddress;
  /** Per-client request rate (limits.requests_per_second); keeps its buckets across reloads. */
  readonly rate: RequestRate;
  /** Per-client and total bandwidth (limits.*_bandwidth); keeps its state across reloads. */
  readonly bandwidth: Bandwidth;
  /** How upstream names are looked up, behind the SSRF guard (tests map names to 127.0.0.1). */
  readonly resolve: Resolver;
  /**
   * The same lookup without the SSRF guard, only for hosts the operator named in the config
   * (a mirror's configured upstream): those are not chosen by a client.
   */
  readonly resolveConfigured: Resolver;
  /** crm's own listeners, which no client's target may be (net/self-targets.ts). */
  readonly self: SelfTargets;
  readonly metrics: Metrics;
  /** Kept-alive upstream connections and the client that uses them (src/upstream/). */
  readonly upstream: UpstreamClient;
  /** Recent requests by id (X-Crm-Request-Id), for `client-config --check` and the status page. */
  readonly journal: RequestJournal;
  /** Requests and tunnels in flight, per-registry totals and throughput, for the status page. */
  readonly activity: ActivityBoard;
  /** State other features own (quota, manifest cache, certificate); absent ones are null. */
  sources: StatusSources;
  /** Set on SIGTERM: /healthz answers 503 and kept-alive connections are closed after their response. */
  draining: boolean;
  readonly startedAt: number;
  readonly sink: LogSink | undefined;
}

export function createRuntime(
  config: Config,
  sink?: LogSink,
  resolve: Resolver = systemResolver,
): Runtime {
  const startedAt = Date.now();
  const rt: Runtime = {
    config,
    policy: new HostPolicy(config.allowedHosts, config.allowedPorts),
    log: loggerFor(config, sink),
    access: new AccessControl(config),
    clientAddress: new ClientAddress(config.access.trustedProxies, config.access.forwardedHeader),
    rate: new RequestRate(config.limits),
    bandwidth: new Bandwidth(config.limits),
    // Read through rt so a reload that flips allow_private_networks applies at once.
    resolve: guardedResolver(resolve, () => rt.config.allowPrivateNetworks),
    resolveConfigured: resolve,
    self: new SelfTargets(),
    metrics: new Metrics(startedAt),
    upstream: new UpstreamClient(),
    journal: new RequestJournal(),
    activity: new ActivityBoard(),
    sources: {
      quota: null,
      manifestCache: null,
      certificate: () => certificateStateOf(rt.config),
      cluster: null,
    },
    draining: false,
    startedAt,
    sink,
  };
  return rt;
}

function loggerFor(config: Config, sink: LogSink | undefined): Logger {
  return new Logger({
    level: config.logLevel,
    format: config.logFormat,
    sink,
    secretPaths: [config.mirror.pathPrefix],
  });
}

/** Applies a new config to a running runtime (SIGHUP). */
export function applyConfig(rt: Runtime, config: Config): void {
  rt.config = config;
  rt.policy = new HostPolicy(config.allowedHosts, config.allowedPorts);
  rt.log = loggerFor(config, rt.sink);
  const shared = rt.access.shared;
  rt.access = new AccessControl(config);
  // The shared brake belongs to the cluster, which a reload does not restart.
  rt.access.shared = shared;
  rt.clientAddress = new ClientAddress(config.access.trustedProxies, config.access.forwardedHeader);
  rt.rate.configure(config.limits);
  rt.bandwidth.configure(config.limits);
}
