/**
 * The one immutable Config: load (find and parse the file) → validate (every error names its key
 * path, the bad value and the rule) → defaults. Nothing else reads the file or the raw object.
 */
import { existsSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import YAML from "yaml";
import { parseCidr } from "../access/cidr.ts";
import { buildForwardedHeader, buildTrustedProxies } from "../access/client-address.ts";
import { buildCluster } from "../cluster/config.ts";
import { buildDoctorConfig } from "../doctor/config.ts";
import { ConfigError, ConfigErrors } from "../errors.ts";
import { buildFairShare, FAIR_SHARE_KEYS } from "../limits/config.ts";
import { LOG_LEVELS, type LogFormat, type LogLevel } from "../log.ts";
import { buildFanout } from "../mirror/fanout/config.ts";
import { buildManifestCache } from "../mirror/manifests/config.ts";
import { buildRules } from "../mirror/rules.ts";
import { buildFailover } from "../mirror/upstream/failover-config.ts";
import { buildStatusConfig } from "../status/config.ts";
import { buildTls, checkTlsListeners } from "../tls/config.ts";
import { Checker, parseSize, show, type Obj } from "./checker.ts";
import {
  buildListen,
  checkProxyProtocolTls,
  checkProxyProtocolTrust,
  type ListenAddress,
} from "./listen.ts";
import { buildRegistry, DEFAULT_REGISTRIES, type RegistryConfig } from "./registries.ts";
import {
  DEFAULT_ALLOWED_HOSTS,
  DEFAULT_ALLOWED_PORTS,
  DEFAULT_LIMITS,
  DEFAULT_TIMEOUTS,
  type AccessConfig,
  type Config,
  type Limits,
  type MetricsConfig,
  type MirrorConfig,
  type MitmConfig,
  type Timeouts,
} from "./types.ts";

export const CONFIG_CANDIDATES = ["config.yaml", "config.yml", "config.json"] as const;

/** Finds the config file: an explicit path, else the first candidate in `cwd`. */
export function findConfigFile(explicit: string | null, cwd: string): string {
  if (explicit !== null) {
    const p = resolve(cwd, explicit);
    if (!existsSync(p)) throw new ConfigError("", `config file ${p} does not exist`);
    return p;
  }
  for (const name of CONFIG_CANDIDATES) {
    const p = resolve(cwd, name);
    if (existsSync(p)) return p;
  }
  throw new ConfigError(
    "",
    `no config file found: looked for ${CONFIG_CANDIDATES.join(", ")} in ${cwd}; pass one with -config PATH (see config.example.yaml)`,
  );
}

export interface LoadedConfig {
  config: Config;
  /** Things worth a warning but not a refusal (an unknown key is an error). */
  warnings: string[];
}

export function loadConfigFile(file: string): LoadedConfig {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (cause) {
    throw new ConfigError("", `cannot read ${file}: ${(cause as Error).message}`, { cause });
  }
  return buildConfig(parseConfigText(text, file), file);
}

export function parseConfigText(text: string, file: string): unknown {
  if (file.endsWith(".json")) {
    try {
      return JSON.parse(text) as unknown;
    } catch (cause) {
      throw new ConfigError("", `${file} is not valid JSON: ${(cause as Error).message}`, {
        cause,
      });
    }
  }
  const doc = YAML.parseDocument(text, { uniqueKeys: true });
  const first = doc.errors[0];
  if (first)
    throw new ConfigError("", `${file} is not valid YAML: ${first.message.split("\n")[0]}`, {
      cause: first,
    });
  return doc.toJS() as unknown;
}

const TOP_KEYS = [
  "listen",
  "allowed_hosts",
  "allowed_ports",
  "allow_private_networks",
  "insecure_tls",
  "log_level",
  "log_format",
  "access",
  "metrics",
  "tls",
  "unix_socket_mode",
  "public_url",
  "limits",
  "mitm",
  "mirror",
  "timeouts",
  "doctor",
  "status",
  "cluster",
] as const;

const HASH_PREFIX = /^\$(argon2id|argon2i|argon2d|2a|2b|2y)\$/;

/** Validates a parsed document and fills defaults. Throws ConfigErrors listing every problem. */
export function buildConfig(raw: unknown, file: string): LoadedConfig {
  const c = new Checker();
  const root = c.object("", raw ?? {}, TOP_KEYS) ?? {};

  const listen: ListenAddress[] = buildListen(c, root.listen);

  const allowedHosts = c.hostPatterns("allowed_hosts", root.allowed_hosts) ?? [
    ...DEFAULT_ALLOWED_HOSTS,
  ];
  if (Array.isArray(root.allowed_hosts) && root.allowed_hosts.length === 0) {
    c.warnings.push("allowed_hosts: empty list; every forward and CONNECT request will be refused");
  }

  let allowedPorts = [...DEFAULT_ALLOWED_PORTS];
  if (root.allowed_ports !== undefined && root.allowed_ports !== null) {
    if (!Array.isArray(root.allowed_ports))
      c.fail("allowed_ports", root.allowed_ports, "must be a list of ports");
    else {
      allowedPorts = [];
      root.allowed_ports.forEach((p, i) => {
        if (typeof p === "number" && Number.isInteger(p) && p >= 1 && p <= 65535)
          allowedPorts.push(p);
        else c.fail(`allowed_ports[${i}]`, p, "must be a port number from 1 to 65535");
      });
    }
  }

  const insecureTls = c.bool("insecure_tls", root.insecure_tls, false);
  const allowPrivateNetworks = c.bool("allow_private_networks", root.allow_private_networks, false);
  const access = buildAccess(c, root.access);
  const limits = buildLimits(c, root.limits);

  let logLevel: LogLevel = "info";
  if (root.log_level !== undefined && root.log_level !== null) {
    const l = typeof root.log_level === "string" ? root.log_level.trim().toLowerCase() : "";
    if ((LOG_LEVELS as readonly string[]).includes(l)) logLevel = l as LogLevel;
    else c.fail("log_level", root.log_level, `must be one of ${LOG_LEVELS.join(", ")}`);
  }

  let logFormat: LogFormat = "text";
  if (root.log_format !== undefined && root.log_format !== null) {
    if (root.log_format === "json" || root.log_format === "text") logFormat = root.log_format;
    else c.fail("log_format", root.log_format, "must be text or json");
  }

  const t =
    c.object("timeouts", root.timeouts, [
      "header",
      "connect",
      "idle",
      "shutdown_grace",
      "upstream_header",
    ]) ?? {};
  const timeouts: Timeouts = {
    headerMs: c.duration("timeouts.header", t.header, DEFAULT_TIMEOUTS.headerMs),
    connectMs: c.duration("timeouts.connect", t.connect, DEFAULT_TIMEOUTS.connectMs),
    idleMs: c.duration("timeouts.idle", t.idle, DEFAULT_TIMEOUTS.idleMs),
    shutdownGraceMs: c.duration(
      "timeouts.shutdown_grace",
      t.shutdown_grace,
      DEFAULT_TIMEOUTS.shutdownGraceMs,
    ),
    upstreamHeaderMs: c.duration(
      "timeouts.upstream_header",
      t.upstream_header,
      DEFAULT_TIMEOUTS.upstreamHeaderMs,
    ),
  };
  const positive = [
    ["header", timeouts.headerMs],
    ["connect", timeouts.connectMs],
    ["idle", timeouts.idleMs],
    ["upstream_header", timeouts.upstreamHeaderMs],
  ] as const;
  for (const [k, v] of positive) {
    if (v === 0) c.fail(`timeouts.${k}`, t[k], "must be greater than zero");
  }

  const m = c.object("mitm", root.mitm, ["enabled", "ca_cert_path", "ca_key_path", "hosts"]) ?? {};
  const mitm: MitmConfig = {
    enabled: c.bool("mitm.enabled", m.enabled, false),
    caCertPath: c.string("mitm.ca_cert_path", m.ca_cert_path),
    caKeyPath: c.string("mitm.ca_key_path", m.ca_key_path),
    hosts: c.hostPatterns("mitm.hosts", m.hosts),
  };
  if (mitm.enabled) {
    if (mitm.caCertPath === null && m.ca_cert_path == null)
      c.rule(
        "mitm.ca_cert_path",
        "missing; it is required when mitm.enabled is true (create one with `crm ca init`)",
      );
    if (mitm.caKeyPath === null && m.ca_key_path == null)
      c.rule(
        "mitm.ca_key_path",
        "missing; it is required when mitm.enabled is true (create one with `crm ca init`)",
      );
  }

  const mirror = buildMirror(c, root.mirror, file);

  const mt = c.object("metrics", root.metrics, ["enabled", "clients"]) ?? {};
  const metricsClients = c.stringList("metrics.clients", mt.clients) ?? ["127.0.0.0/8", "::1/128"];
  metricsClients.forEach((entry, i) => {
    const r = parseCidr(entry);
    if (typeof r === "string") c.fail(`metrics.clients[${i}]`, entry, r);
  });
  const metrics: MetricsConfig = {
    enabled: c.bool("metrics.enabled", mt.enabled, true),
    clients: metricsClients,
  };

  const tls = buildTls(c, root.tls, file);
  checkTlsListeners(c, tls, listen);
  checkProxyProtocolTls(c, listen, tls !== null, Array.isArray(root.listen));
  checkProxyProtocolTrust(c, listen, access.trustedProxies, Array.isArray(root.listen));

  let unixSocketMode = 0o660;
  if (root.unix_socket_mode !== undefined && root.unix_socket_mode !== null) {
    const v = String(root.unix_socket_mode);
    if (/^0?[0-7]{3}$/.test(v)) unixSocketMode = parseInt(v, 8);
    else c.fail("unix_socket_mode", root.unix_socket_mode, 'must be an octal mode such as "0660"');
  }

  let publicUrl: string | null = null;
  const pu = c.string("public_url", root.public_url);
  if (pu !== null) {
    try {
      const u = new URL(pu);
      if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error("not http(s)");
      publicUrl = u.href.replace(/\/$/, "");
    } catch (cause) {
      c.errors.push(
        new ConfigError("public_url", `${show(pu)} must be an http:// or https:// URL`, { cause }),
      );
    }
  }

  const doctor = buildDoctorConfig(c, root.doctor);
  const status = buildStatusConfig(c, root.status);
  const cluster = buildCluster(c, root.cluster, file);

  if (c.errors.length > 0) throw new ConfigErrors(file, c.errors);
  const config: Config = Object.freeze({
    file,
    tls,
    unixSocketMode,
    metrics,
    publicUrl,
    listen,
    allowedHosts,
    allowedPorts,
    allowPrivateNetworks,
    insecureTls,
    logLevel,
    logFormat,
    access,
    limits,
    mitm,
    mirror,
    timeouts,
    doctor,
    status,
    cluster,
  });
  return { config, warnings: c.warnings };
}

function buildAccess(c: Checker, raw: unknown): AccessConfig {
  const a =
    c.object("access", raw, [
      "clients",
      "users",
      "mirror_auth",
      "trusted_proxies",
      "forwarded_header",
    ]) ?? {};
  const clients = c.stringList("access.clients", a.clients) ?? [];
  clients.forEach((entry, i) => {
    const r = parseCidr(entry);
    if (typeof r === "string") c.fail(`access.clients[${i}]`, entry, r);
  });
  const users = new Map<string, string>();
  const u = c.object("access.users", a.users, Object.keys((a.users as Obj | undefined) ?? {}));
  for (const [name, hash] of Object.entries(u ?? {})) {
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(name))
      c.fail("access.users", name, "user names are 1-64 letters, digits, '.', '_' or '-'");
    else if (typeof hash !== "string" || !HASH_PREFIX.test(hash)) {
      // The value is a hash, so showing it is safe; a plain password here must not be echoed.
      c.rule(
        `access.users.${name}`,
        "must be a password hash from `crm passwd NAME` (argon2id or bcrypt), never a plain password (the value is not shown)",
      );
    } else users.set(name, hash);
  }
  return {
    clients,
    users,
    mirrorAuth: c.bool("access.mirror_auth", a.mirror_auth, true),
    trustedProxies: buildTrustedProxies(c, a.trusted_proxies),
    forwardedHeader: buildForwardedHeader(c, a.forwarded_header),
  };
}

function buildLimits(c: Checker, raw: unknown): Limits {
  const l =
    c.object("limits", raw, [
      "max_connections",
      "max_connections_per_client",
      "max_body",
      ...FAIR_SHARE_KEYS,
    ]) ?? {};
  const count = (key: "max_connections" | "max_connections_per_client", dflt: number): number => {
    const v = l[key];
    if (v === undefined || v === null) return dflt;
    if (typeof v === "number" && Number.isInteger(v) && v >= 1) return v;
    c.fail(`limits.${key}`, v, "must be a whole number of at least 1");
    return dflt;
  };
  let maxBody = DEFAULT_LIMITS.maxBody;
  if (l.max_body !== undefined && l.max_body !== null) {
    const v = parseSize(l.max_body);
    if (typeof v === "string") c.fail("limits.max_body", l.max_body, v);
    else maxBody = v;
  }
  return {
    maxConnections: count("max_connections", DEFAULT_LIMITS.maxConnections),
    maxConnectionsPerClient: count(
      "max_connections_per_client",
      DEFAULT_LIMITS.maxConnectionsPerClient,
    ),
    maxBody,
    ...buildFairShare(c, l),
  };
}

function buildMirror(c: Checker, raw: unknown, file: string): MirrorConfig {
  const m =
    c.object("mirror", raw, [
      "enabled",
      "default_registry",
      "registries",
      "path_prefix",
      "manifest_cache",
      "rules",
      "fanout",
      "failover",
    ]) ?? {};
  const enabled = c.bool("mirror.enabled", m.enabled, true);
  let pathPrefix =
    m.path_prefix === "" ? "" : (c.string("mirror.path_prefix", m.path_prefix) ?? "");
  if (pathPrefix !== "") {
    pathPrefix = "/" + pathPrefix.replace(/^\/+|\/+$/g, "");
    if (!/^(\/[A-Za-z0-9._~-]+)+$/.test(pathPrefix) || pathPrefix === "/v2") {
      c.fail(
        "mirror.path_prefix",
        m.path_prefix,
        'must be a path such as "/SECRET" (letters, digits, . _ ~ -), not /v2',
      );
    }
  }
  let registries: Map<string, RegistryConfig>;
  const r = c.object(
    "mirror.registries",
    m.registries,
    Object.keys((m.registries as Obj | undefined) ?? {}),
  );
  if (r === null) registries = new Map(DEFAULT_REGISTRIES.map((d) => [d.name, d]));
  else {
    registries = new Map();
    for (const [name, v] of Object.entries(r)) {
      const reg = buildRegistry(c, `mirror.registries.${name}`, name, v, file);
      if (reg) registries.set(reg.name, reg);
    }
  }
  const defaultRegistry = (
    c.string("mirror.default_registry", m.default_registry) ?? "docker.io"
  ).toLowerCase();
  if (enabled && registries.size > 0 && !registries.has(defaultRegistry)) {
    c.fail(
      "mirror.default_registry",
      defaultRegistry,
      `must be one of the mirrored registries (${[...registries.keys()].join(", ")})`,
    );
  }
  const manifestCache = buildManifestCache(c, m.manifest_cache);
  return {
    enabled,
    pathPrefix,
    defaultRegistry,
    registries,
    manifestCache,
    rules: buildRules(c, "mirror.rules", m.rules),
    fanout: buildFanout(c, m.fanout),
    failover: buildFailover(c, m.failover),
  };
}
