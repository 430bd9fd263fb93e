/** What `crm -t` prints: the effective configuration, secrets left out. */
import type { Config } from "./types.ts";
import { formatDuration } from "./duration.ts";
import { formatHostPort } from "../net/host-port.ts";
import { listenerIsTls } from "./listen.ts";
import { describeTls } from "../tls/describe.ts";
import { DEFAULT_STALE_IF_ERROR_MS } from "../mirror/manifests/config.ts";
import { describeCluster } from "../cluster/config.ts";

export function describeConfig(c: Config): string {
  const t = c.timeouts;
  const lines = [
    `config: ${c.file}`,
    `listen: ${c.listen.map((l) => (l.unix ?? formatHostPort(l.hostname, l.port)) + (c.tls !== null ? (listenerIsTls(l, true) ? " (tls)" : " (plain)") : "") + (l.proxyProtocol ? " (proxy_protocol)" : "")).join(", ")}`,
    ...describeTls(c),
    `allowed_hosts (${c.allowedHosts.length}): ${c.allowedHosts.join(", ") || "(none: every proxy request is refused)"}`,
    `allowed_ports: ${c.allowedPorts.join(", ")}`,
    `insecure_tls: ${c.insecureTls}`,
    `allow_private_networks: ${c.allowPrivateNetworks}`,
    `access: clients ${c.access.clients.join(", ") || "any"}; users ${[...c.access.users.keys()].join(", ") || "none"}${c.access.users.size > 0 ? `; mirror_auth ${c.access.mirrorAuth}` : ""}`,
    `limits: max_connections ${c.limits.maxConnections}, per client ${c.limits.maxConnectionsPerClient}, max_body ${c.limits.maxBody} bytes`,
    `log_level: ${c.logLevel}`,
    `timeouts: header ${formatDuration(t.headerMs)}, connect ${formatDuration(t.connectMs)}, idle ${formatDuration(t.idleMs)}, upstream_header ${formatDuration(t.upstreamHeaderMs)}, shutdown_grace ${formatDuration(t.shutdownGraceMs)}`,
    c.mitm.enabled
      ? `mitm: enabled, CA ${c.mitm.caCertPath} (key ${c.mitm.caKeyPath}), intercepting ${c.mitm.hosts ? c.mitm.hosts.join(", ") : "every allowed host"}`
      : "mitm: disabled",
  ];
  if (c.mirror.enabled) {
    // The prefix is a credential (Docker's registry-mirrors URL): -t output ends up in CI logs.
    lines.push(
      `mirror: enabled at ${c.mirror.pathPrefix !== "" ? "/<prefix>" : ""}/v2/, default registry ${c.mirror.defaultRegistry}`,
    );
    const mc = c.mirror.manifestCache;
    lines.push(`  manifest cache: ${mc.enabled ? `on, max_size ${mc.maxSize} bytes` : "off"}`);
    const fo = c.mirror.fanout;
    lines.push(
      `  blob fan-out: ${fo.enabled ? `on, window ${fo.window} bytes, budget ${fo.budget} bytes, lag_grace ${fo.lagGraceMs} ms` : "off"}`,
    );
    if (mc.enabled)
      lines.push(
        `  stale tags when every upstream fails: ${mc.staleIfErrorMs === 0 ? "off" : `within ${formatDuration(mc.staleIfErrorMs ?? DEFAULT_STALE_IF_ERROR_MS)}`}`,
      );
    if ([...c.mirror.registries.values()].some((r) => (r.upstreams?.length ?? 1) > 1)) {
      const f = c.mirror.failover;
      lines.push(
        `  failover: attempt_timeout ${formatDuration(f.attemptTimeoutMs)}, backoff ${formatDuration(f.backoffMs)} doubling to ${formatDuration(f.maxBackoffMs)}`,
      );
    }
    for (const r of c.mirror.registries.values()) {
      const creds = r.username ? ` (credentials: ${r.username}, password set)` : "";
      lines.push(
        `  ${r.name} -> ${(r.upstreams ?? [r.upstream]).map((u) => u.href).join(", then ")}${creds}`,
      );
    }
  } else lines.push("mirror: disabled");
  lines.push(...describePublic(c));
  if (c.cluster !== null) lines.push(...describeCluster(c.cluster));
  return lines.join("\n");
}

/** The public-mirror controls, only when set. */
function describePublic(c: Config): string[] {
  const out: string[] = [];
  const l = c.limits;
  if (c.access.trustedProxies.length > 0)
    out.push(`trusted_proxies: ${c.access.trustedProxies.join(", ")}`);
  const fair = [
    l.requestsPerSecond !== null
      ? `requests_per_second ${l.requestsPerSecond} (burst ${l.burst})`
      : null,
    l.clientBandwidth !== null ? `client_bandwidth ${l.clientBandwidth} B/s` : null,
    l.totalBandwidth !== null ? `total_bandwidth ${l.totalBandwidth} B/s` : null,
    l.exemptClients.length > 0 ? `exempt ${l.exemptClients.join(", ")}` : null,
  ].filter((v) => v !== null);
  if (fair.length > 0) out.push(`fair shares: ${fair.join(", ")}`);
  const rules = (
    name: string,
    r: { allow: readonly string[]; deny: readonly string[] } | null | undefined,
  ): void => {
    if (r)
      out.push(
        `${name}: allow ${r.allow.join(", ") || "all"}; deny ${r.deny.join(", ") || "none"}`,
      );
  };
  rules("mirror.rules", c.mirror.rules);
  for (const r of c.mirror.registries.values()) rules(`mirror.registries.${r.name}.rules`, r.rules);
  return out;
}
