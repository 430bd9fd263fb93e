/**
 * What every request handler reads: the immutable Config, the HostPolicy built from it, the
 * logger, and the few things that change at run time (draining on shutdown).
 */
import type { Config } from "./config.ts";
import { HostPolicy } from "./host-policy.ts";
import { Logger, type LogSink } from "./log.ts";
import { guardedResolver, systemResolver, type Resolver } from "./resolver.ts";
import { AccessControl } from "./access.ts";

export interface Runtime {
  readonly config: Config;
  readonly policy: HostPolicy;
  readonly log: Logger;
  /** How upstream names are looked up, behind the SSRF guard (tests map names to 127.0.0.1). */
  readonly resolve: Resolver;
  readonly access: AccessControl;
  /** Set on SIGTERM: /healthz answers 503 and kept-alive connections are closed after their response. */
  draining: boolean;
  readonly startedAt: number;
}

export function createRuntime(config: Config, sink?: LogSink, resolve: Resolver = systemResolver): Runtime {
  return {
    config,
    resolve: guardedResolver(resolve, () => config.allowPrivateNetworks),
    access: new AccessControl(config),
    policy: new HostPolicy(config.allowedHosts, config.allowedPorts),
    log: new Logger({ level: config.logLevel, sink }),
    draining: false,
    startedAt: Date.now(),
  };
}
