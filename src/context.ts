/**
 * What every request handler reads: the Config, the HostPolicy and AccessControl built from it,
 * the logger, and the metrics. A reload (SIGHUP) swaps the config-derived fields in one step
 * between two events; a request already running keeps the objects it read at its start.
 */
import type { Config } from "./config.ts";
import { AccessControl } from "./access.ts";
import { HostPolicy } from "./host-policy.ts";
import { Logger, type LogSink } from "./log.ts";
import { Metrics } from "./metrics.ts";
import { guardedResolver, systemResolver, type Resolver } from "./resolver.ts";

export interface Runtime {
  config: Config;
  policy: HostPolicy;
  log: Logger;
  access: AccessControl;
  /** How upstream names are looked up, behind the SSRF guard (tests map names to 127.0.0.1). */
  readonly resolve: Resolver;
  /**
   * The same lookup without the SSRF guard, only for hosts the operator named in the config
   * (a mirror's configured upstream): those are not chosen by a client.
   */
  readonly resolveConfigured: Resolver;
  readonly metrics: Metrics;
  /** Set on SIGTERM: /healthz answers 503 and kept-alive connections are closed after their response. */
  draining: boolean;
  readonly startedAt: number;
  readonly sink: LogSink | undefined;
}

export function createRuntime(config: Config, sink?: LogSink, resolve: Resolver = systemResolver): Runtime {
  const startedAt = Date.now();
  const rt: Runtime = {
    config,
    policy: new HostPolicy(config.allowedHosts, config.allowedPorts),
    log: loggerFor(config, sink),
    access: new AccessControl(config),
    // Read through rt so a reload that flips allow_private_networks applies at once.
    resolve: guardedResolver(resolve, () => rt.config.allowPrivateNetworks),
    resolveConfigured: resolve,
    metrics: new Metrics(startedAt),
    draining: false,
    startedAt,
    sink,
  };
  return rt;
}

function loggerFor(config: Config, sink: LogSink | undefined): Logger {
  return new Logger({ level: config.logLevel, format: config.logFormat, sink, secretPaths: [config.mirror.pathPrefix] });
}

/** Applies a new config to a running runtime (SIGHUP). */
export function applyConfig(rt: Runtime, config: Config): void {
  rt.config = config;
  rt.policy = new HostPolicy(config.allowedHosts, config.allowedPorts);
  rt.log = loggerFor(config, rt.sink);
  rt.access = new AccessControl(config);
}
