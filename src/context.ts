/**
 * What every request handler reads: the immutable Config, the HostPolicy built from it, the
 * logger, and the few things that change at run time (draining on shutdown).
 */
import type { Config } from "./config.ts";
import { HostPolicy } from "./host-policy.ts";
import { Logger, type LogSink } from "./log.ts";
import { systemResolver, type Resolver } from "./resolver.ts";

export interface Runtime {
  readonly config: Config;
  readonly policy: HostPolicy;
  readonly log: Logger;
  /** How tunnel targets are looked up (tests map names to 127.0.0.1). */
  readonly resolve: Resolver;
  /** Set on SIGTERM: /healthz answers 503 and kept-alive connections are closed after their response. */
  draining: boolean;
  readonly startedAt: number;
}

export function createRuntime(config: Config, sink?: LogSink, resolve: Resolver = systemResolver): Runtime {
  return {
    config,
    resolve,
    policy: new HostPolicy(config.allowedHosts, config.allowedPorts),
    log: new Logger({ level: config.logLevel, sink }),
    draining: false,
    startedAt: Date.now(),
  };
}
