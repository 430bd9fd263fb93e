/**
 * Where one registry's traffic may go besides its upstream: token realms and redirect targets
 * named by the upstream's own answers. An upstream must not be able to steer crm (and the
 * registry's credentials) to arbitrary hosts, so a target must be
 *  - https, or http only when the configured upstream itself is http (a plain-http registry
 *    could redirect anywhere over http anyway; this is what lets tests run on loopback without
 *    TLS, and https upstreams can never be downgraded);
 *  - the upstream's own host name, one of its `redirect_hosts`, or globally allowed;
 *  - on the registry's own port, 443 (80 only for an http upstream) or one of `allowed_ports`,
 *    so a trusted host name cannot be used to reach any service on that host.
 */
import { HostMatcher, normalizeHost, type HostPolicy } from "../../host-policy.ts";
import type { RegistryConfig } from "../../config/registries.ts";

/** A refusal says why, and what the operator changes if the target is genuine (`fix`). */
export type TargetCheck =
  { ok: true; host: string } | { ok: false; host: string; reason: string; fix: string };

function effectivePort(url: URL): number {
  return Number(url.port) || (url.protocol === "https:" ? 443 : 80);
}

export class RegistryTrust {
  private readonly redirectHosts: HostMatcher;
  private readonly ownHost: string;
  private readonly plainHttpUpstream: boolean;
  private readonly ports: ReadonlySet<number>;

  constructor(
    private readonly registry: RegistryConfig,
    private readonly policy: HostPolicy,
  ) {
    this.redirectHosts = new HostMatcher(registry.redirectHosts);
    this.ownHost = normalizeHost(registry.upstream.hostname);
    this.plainHttpUpstream = registry.upstream.protocol === "http:";
    this.ports = new Set([
      effectivePort(registry.upstream),
      443,
      ...(this.plainHttpUpstream ? [80] : []),
    ]);
  }

  check(url: URL): TargetCheck {
    const host = normalizeHost(url.hostname);
    const shown = host || url.hostname.slice(0, 100);
    const upstreamFix = "the upstream is misconfigured or hostile";
    if (url.username || url.password)
      return { ok: false, host: shown, reason: "URL carries credentials", fix: upstreamFix };
    if (url.protocol !== "https:" && !(url.protocol === "http:" && this.plainHttpUpstream)) {
      return {
        ok: false,
        host: shown,
        reason: `${url.protocol.replace(/:$/, "")} is not allowed (https only)`,
        fix: upstreamFix,
      };
    }
    if (host === "")
      return { ok: false, host: shown, reason: "invalid host name", fix: upstreamFix };
    if (!(
      host === this.ownHost ||
      this.redirectHosts.matches(host) ||
      this.policy.hostAllowed(host)
    )) {
      return {
        ok: false,
        host,
        reason: `not ${this.registry.name}'s own host, not in its redirect_hosts, not in allowed_hosts`,
        fix: `add "${host}" to mirror.registries.${this.registry.name}.redirect_hosts if it is genuine`,
      };
    }
    const port = effectivePort(url);
    if (!this.ports.has(port) && !this.policy.portAllowed(port)) {
      return {
        ok: false,
        host,
        reason: `port ${port} is not ${this.registry.name}'s own port, 443${this.plainHttpUpstream ? ", 80" : ""} or in allowed_ports`,
        fix: `add ${port} to allowed_ports if it is genuine`,
      };
    }
    return { ok: true, host };
  }

  /**
   * Whether `url` is the operator-named upstream itself (same scheme, host and port), which may
   * be on a private network: its token realm (a LAN registry's `http://localhost:5000/token`) is
   * treated like the upstream. Anything else the upstream names stays behind the SSRF guard.
   */
  exemptFromGuard(url: URL): boolean {
    const up = this.registry.upstream;
    return this.registry.operatorNamed && url.protocol === up.protocol && url.host === up.host;
  }
}
