/**
 * The one immutable Config: load (find and parse the file) → validate (every error names its key
 * path, the bad value and the rule) → defaults. Nothing else reads the file or the raw object.
 */
import { existsSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import YAML from "yaml";
import { ConfigError, ConfigErrors } from "./errors.ts";
import { parseDuration } from "./config/duration.ts";
import { compileHostPattern } from "./host-policy.ts";
import { parseCidr } from "./access/cidr.ts";
import { nearest } from "./config/did-you-mean.ts";
import { LOG_LEVELS, type LogFormat, type LogLevel } from "./log.ts";
import { DEFAULT_REGISTRIES, type RegistryConfig } from "./registries.ts";
import { buildListen, checkProxyProtocolTls, checkProxyProtocolTrust, type ListenAddress } from "./config/listen.ts";
import { buildTls, checkTlsListeners, type TlsListenConfig } from "./tls/config.ts";
import { buildManifestCache, type ManifestCacheConfig } from "./mirror/manifests/config.ts";
import { buildFairShare, FAIR_SHARE_KEYS, type FairShareLimits } from "./limits/config.ts";
import { buildForwardedHeader, buildTrustedProxies, type ForwardedHeader } from "./access/client-address.ts";
import { buildRules, type ImageRules } from "./mirror/rules.ts";
import { buildDoctorConfig, type DoctorConfig } from "./doctor/config.ts";
import { buildCluster, type ClusterConfig } from "./cluster/config.ts";

export { parseListen, type ListenAddress } from "./config/listen.ts";
export type { AcmeConfig, TlsListenConfig } from "./tls/config.ts";

export interface Timeouts {
  /** From a connection's first byte to the end of its request head (slow-loris bound). */
  headerMs: number;
  /** TCP (and TLS) dial to an upstream. */
  connectMs: number;
  /** A tunnel, kept-alive connection or request in flight with no traffic either way is closed after this. */
  idleMs: number;
  /** On SIGTERM, how long running requests and tunnels get before they are cut. */
  shutdownGraceMs: number;
  /** From sending a request upstream to receiving its response head. */
  upstreamHeaderMs: number;
}

export interface MitmConfig {
  enabled: boolean;
  caCertPath: string | null;
  caKeyPath: string | null;
  /** Intercept only these (allow-list syntax); null means every allowed host. */
  hosts: readonly string[] | null;
}

export interface MirrorConfig {
  enabled: boolean;
  /** Serve the mirror under this path only (`/SECRET/v2/...`), or "" for `/v2/`. */
  pathPrefix: string;
  defaultRegistry: string;
  registries: ReadonlyMap<string, RegistryConfig>;
  manifestCache: ManifestCacheConfig;
  /** Image rules for registries without their own (mirror.rules). */
  rules: ImageRules | null;
}

export interface AccessConfig {
  /** CIDR ranges whose clients may connect; empty means everyone. */
  clients: readonly string[];
  /** name → password hash (argon2id or bcrypt, from `crm passwd NAME`). */
  users: ReadonlyMap<string, string>;
  /** Whether the mirror also needs users' credentials (Docker's registry-mirrors cannot send any). */
  mirrorAuth: boolean;
  /** Peers (CIDR ranges, "unix") whose X-Forwarded-For / Forwarded name the real client. */
  trustedProxies: readonly string[];
  /** The one field those peers set to name the client. */
  forwardedHeader: ForwardedHeader;
}

export interface Limits extends FairShareLimits {
  maxConnections: number;
  maxConnectionsPerClient: number;
  /** Largest request body on the forward and MITM paths, in bytes. */
  maxBody: number;
}

export interface MetricsConfig {
  enabled: boolean;
  /** CIDR ranges that may read /metrics. */
  clients: readonly string[];
}

export interface Config {
  /** The file this came from, for messages. */
  file: string;
  /** Serve the listen port(s) over TLS (HTTPS mirror, HTTPS proxy); null for plain TCP. */
  tls: TlsListenConfig | null;
  /** File mode for unix-socket listeners. */
  unixSocketMode: number;
  metrics: MetricsConfig;
  /** How clients reach this instance (for the index page), e.g. https://crm.example.com */
  publicUrl: string | null;
  access: AccessConfig;
  limits: Limits;
  /** Let names resolve to loopback/private/link-local addresses (off: the SSRF guard). */
  allowPrivateNetworks: boolean;
  listen: readonly ListenAddress[];
  allowedHosts: readonly string[];
  allowedPorts: readonly number[];
  insecureTls: boolean;
  logLevel: LogLevel;
  logFormat: LogFormat;
  mitm: MitmConfig;
  mirror: MirrorConfig;
  timeouts: Timeouts;
  /** What `crm doctor` checks with (doctor/config.ts). */
  doctor: DoctorConfig;
  /** State shared with other replicas (cluster/config.ts); null: every replica keeps its own. */
  cluster: ClusterConfig | null;
}

export const DEFAULT_ALLOWED_HOSTS: readonly string[] = [
  "docker.io",
  "registry-1.docker.io",
  "auth.docker.io",
  "production.cloudflare.docker.com",
  "production.cloudfront.docker.com",
  "gcr.io",
  "k8s.io",
  "registry.k8s.io",
  "docker.elastic.co",
  "ghcr.io",
];
export const DEFAULT_ALLOWED_PORTS: readonly number[] = [80, 443];
export const DEFAULT_TIMEOUTS: Timeouts = { headerMs: 10_000, connectMs: 10_000, idleMs: 300_000, shutdownGraceMs: 30_000, upstreamHeaderMs: 60_000 };

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
      throw new ConfigError("", `${file} is not valid JSON: ${(cause as Error).message}`, { cause });
    }
  }
  const doc = YAML.parseDocument(text, { uniqueKeys: true });
  const first = doc.errors[0];
  if (first) throw new ConfigError("", `${file} is not valid YAML: ${first.message.split("\n")[0]}`, { cause: first });
  return doc.toJS() as unknown;
}

type Obj = Record<string, unknown>;

/** Collects every problem instead of stopping at the first (section modules get one too). */
export class Checker {
  readonly errors: ConfigError[] = [];
  readonly warnings: string[] = [];

  fail(path: string, value: unknown, rule: string): void {
    this.errors.push(new ConfigError(path, `${show(value)} ${rule}`));
  }

  /** An error about a key as a whole (missing, incomplete, secret): no value is shown for it. */
  rule(path: string, message: string): void {
    this.errors.push(new ConfigError(path, message));
  }

  /**
   * A mapping whose keys must all be in `known`: the one list of keys for that section, so a new
   * key is added in exactly one place. An unknown key is an error, not a warning: a config written
   * for a newer crm, or a typo such as `mirror.rule`, must not run with that policy silently off.
   */
  object(path: string, value: unknown, known: readonly string[]): Obj | null {
    if (value === undefined || value === null) return null;
    if (typeof value !== "object" || Array.isArray(value)) {
      this.fail(path, value, "must be a mapping");
      return null;
    }
    const obj = value as Obj;
    for (const k of Object.keys(obj)) if (!known.includes(k)) this.unknownKey(path, k, known);
    return obj;
  }

  private unknownKey(section: string, key: string, known: readonly string[]): void {
    const full = (k: string): string => (section ? `${section}.${k}` : k);
    const near = nearest(key, known);
    const where = section ? `in ${section}` : "at the top level";
    const hint = near !== null ? `did you mean ${full(near)}?` : `known keys: ${known.join(", ")}`;
    this.rule(full(key.slice(0, 100)), `unknown key ${show(key.slice(0, 100))} ${where} (${hint}); crm refuses to run with a setting it does not understand`);
  }

  bool(path: string, value: unknown, dflt: boolean): boolean {
    if (value === undefined || value === null) return dflt;
    if (typeof value === "boolean") return value;
    this.fail(path, value, "must be true or false");
    return dflt;
  }

  string(path: string, value: unknown): string | null {
    if (value === undefined || value === null) return null;
    if (typeof value === "string" && value.trim() !== "") return value.trim();
    this.fail(path, value, "must be a non-empty string");
    return null;
  }

  stringList(path: string, value: unknown): string[] | null {
    if (value === undefined || value === null) return null;
    if (!Array.isArray(value)) {
      this.fail(path, value, "must be a list");
      return null;
    }
    const out: string[] = [];
    value.forEach((v, i) => {
      const s = this.string(`${path}[${i}]`, v);
      if (s !== null) out.push(s);
    });
    return out;
  }

  hostPatterns(path: string, value: unknown): string[] | null {
    const list = this.stringList(path, value);
    if (list === null) return null;
    list.forEach((entry, i) => {
      try {
        const p = compileHostPattern(entry);
        if (p.kind === "exact" && p.name === "") this.fail(`${path}[${i}]`, entry, "is not a valid host name");
      } catch (cause) {
        this.errors.push(new ConfigError(`${path}[${i}]`, `invalid regular expression ${show(entry)}: ${(cause as Error).message}`, { cause }));
      }
    });
    return list;
  }

  duration(path: string, value: unknown, dflt: number): number {
    if (value === undefined || value === null) return dflt;
    const ms = parseDuration(value);
    if (typeof ms === "string") {
      this.fail(path, value, ms);
      return dflt;
    }
    return ms;
  }
}

function show(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

const TOP_KEYS = ["listen", "allowed_hosts", "allowed_ports", "allow_private_networks", "insecure_tls", "log_level", "log_format", "access", "metrics", "tls", "unix_socket_mode", "public_url", "limits", "mitm", "mirror", "timeouts", "doctor", "cluster"] as const;

export const DEFAULT_LIMITS: Limits = {
  maxConnections: 4096,
  maxConnectionsPerClient: 256,
  maxBody: 10 * 1024 ** 3,
  requestsPerSecond: null,
  burst: 0,
  clientBandwidth: null,
  totalBandwidth: null,
  exemptClients: [],
};

const SIZE_UNITS: Record<string, number> = { "": 1, b: 1, k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, tib: 1024 ** 4 };

/** "512MiB", "10GiB", "1GB" or a number of bytes. */
export function parseSize(value: unknown): number | string {
  if (typeof value === "number" && Number.isInteger(value) && value >= 0) return value;
  const m = typeof value === "string" ? /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(value) : null;
  const unit = SIZE_UNITS[(m?.[2] ?? "x").toLowerCase()];
  if (!m || unit === undefined) return 'must be a size such as "512MiB", "10GiB" or a number of bytes';
  return Math.round(Number(m[1]) * unit);
}

const HASH_PREFIX = /^\$(argon2id|argon2i|argon2d|2a|2b|2y)\$/;

/** Validates a parsed document and fills defaults. Throws ConfigErrors listing every problem. */
export function buildConfig(raw: unknown, file: string): LoadedConfig {
  const c = new Checker();
  const root = c.object("", raw ?? {}, TOP_KEYS) ?? {};

  const listen: ListenAddress[] = buildListen(c, root.listen);

  const allowedHosts = c.hostPatterns("allowed_hosts", root.allowed_hosts) ?? [...DEFAULT_ALLOWED_HOSTS];
  if (Array.isArray(root.allowed_hosts) && root.allowed_hosts.length === 0) {
    c.warnings.push("allowed_hosts: empty list; every forward and CONNECT request will be refused");
  }

  let allowedPorts = [...DEFAULT_ALLOWED_PORTS];
  if (root.allowed_ports !== undefined && root.allowed_ports !== null) {
    if (!Array.isArray(root.allowed_ports)) c.fail("allowed_ports", root.allowed_ports, "must be a list of ports");
    else {
      allowedPorts = [];
      root.allowed_ports.forEach((p, i) => {
        if (typeof p === "number" && Number.isInteger(p) && p >= 1 && p <= 65535) allowedPorts.push(p);
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

  const t = c.object("timeouts", root.timeouts, ["header", "connect", "idle", "shutdown_grace", "upstream_header"]) ?? {};
  const timeouts: Timeouts = {
    headerMs: c.duration("timeouts.header", t.header, DEFAULT_TIMEOUTS.headerMs),
    connectMs: c.duration("timeouts.connect", t.connect, DEFAULT_TIMEOUTS.connectMs),
    idleMs: c.duration("timeouts.idle", t.idle, DEFAULT_TIMEOUTS.idleMs),
    shutdownGraceMs: c.duration("timeouts.shutdown_grace", t.shutdown_grace, DEFAULT_TIMEOUTS.shutdownGraceMs),
    upstreamHeaderMs: c.duration("timeouts.upstream_header", t.upstream_header, DEFAULT_TIMEOUTS.upstreamHeaderMs),
  };
  const positive = [["header", timeouts.headerMs], ["connect", timeouts.connectMs], ["idle", timeouts.idleMs], ["upstream_header", timeouts.upstreamHeaderMs]] as const;
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
    if (mitm.caCertPath === null && m.ca_cert_path == null) c.rule("mitm.ca_cert_path", "missing; it is required when mitm.enabled is true (create one with `crm ca init`)");
    if (mitm.caKeyPath === null && m.ca_key_path == null) c.rule("mitm.ca_key_path", "missing; it is required when mitm.enabled is true (create one with `crm ca init`)");
  }

  const mirror = buildMirror(c, root.mirror, file);

  const mt = c.object("metrics", root.metrics, ["enabled", "clients"]) ?? {};
  const metricsClients = c.stringList("metrics.clients", mt.clients) ?? ["127.0.0.0/8", "::1/128"];
  metricsClients.forEach((entry, i) => {
    const r = parseCidr(entry);
    if (typeof r === "string") c.fail(`metrics.clients[${i}]`, entry, r);
  });
  const metrics: MetricsConfig = { enabled: c.bool("metrics.enabled", mt.enabled, true), clients: metricsClients };

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
      c.errors.push(new ConfigError("public_url", `${show(pu)} must be an http:// or https:// URL`, { cause }));
    }
  }

  const doctor = buildDoctorConfig(c, root.doctor);
  const cluster = buildCluster(c, root.cluster, file);

  if (c.errors.length > 0) throw new ConfigErrors(file, c.errors);
  const config: Config = Object.freeze({ file, tls, unixSocketMode, metrics, publicUrl, listen, allowedHosts, allowedPorts, allowPrivateNetworks, insecureTls, logLevel, logFormat, access, limits, mitm, mirror, timeouts, doctor, cluster });
  return { config, warnings: c.warnings };
}

function buildAccess(c: Checker, raw: unknown): AccessConfig {
  const a = c.object("access", raw, ["clients", "users", "mirror_auth", "trusted_proxies", "forwarded_header"]) ?? {};
  const clients = c.stringList("access.clients", a.clients) ?? [];
  clients.forEach((entry, i) => {
    const r = parseCidr(entry);
    if (typeof r === "string") c.fail(`access.clients[${i}]`, entry, r);
  });
  const users = new Map<string, string>();
  const u = c.object("access.users", a.users, Object.keys((a.users as Obj | undefined) ?? {}));
  for (const [name, hash] of Object.entries(u ?? {})) {
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(name)) c.fail("access.users", name, "user names are 1-64 letters, digits, '.', '_' or '-'");
    else if (typeof hash !== "string" || !HASH_PREFIX.test(hash)) {
      // The value is a hash, so showing it is safe; a plain password here must not be echoed.
      c.rule(`access.users.${name}`, "must be a password hash from `crm passwd NAME` (argon2id or bcrypt), never a plain password (the value is not shown)");
    } else users.set(name, hash);
  }
  return { clients, users, mirrorAuth: c.bool("access.mirror_auth", a.mirror_auth, true), trustedProxies: buildTrustedProxies(c, a.trusted_proxies), forwardedHeader: buildForwardedHeader(c, a.forwarded_header) };
}

function buildLimits(c: Checker, raw: unknown): Limits {
  const l = c.object("limits", raw, ["max_connections", "max_connections_per_client", "max_body", ...FAIR_SHARE_KEYS]) ?? {};
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
    maxConnectionsPerClient: count("max_connections_per_client", DEFAULT_LIMITS.maxConnectionsPerClient),
    maxBody,
    ...buildFairShare(c, l),
  };
}

function buildMirror(c: Checker, raw: unknown, file: string): MirrorConfig {
  const m = c.object("mirror", raw, ["enabled", "default_registry", "registries", "path_prefix", "manifest_cache", "rules"]) ?? {};
  const enabled = c.bool("mirror.enabled", m.enabled, true);
  let pathPrefix = m.path_prefix === "" ? "" : (c.string("mirror.path_prefix", m.path_prefix) ?? "");
  if (pathPrefix !== "") {
    pathPrefix = "/" + pathPrefix.replace(/^\/+|\/+$/g, "");
    if (!/^(\/[A-Za-z0-9._~-]+)+$/.test(pathPrefix) || pathPrefix === "/v2") {
      c.fail("mirror.path_prefix", m.path_prefix, 'must be a path such as "/SECRET" (letters, digits, . _ ~ -), not /v2');
    }
  }
  let registries: Map<string, RegistryConfig>;
  const r = c.object("mirror.registries", m.registries, Object.keys((m.registries as Obj | undefined) ?? {}));
  if (r === null) registries = new Map(DEFAULT_REGISTRIES.map((d) => [d.name, d]));
  else {
    registries = new Map();
    for (const [name, v] of Object.entries(r)) {
      const reg = buildRegistry(c, `mirror.registries.${name}`, name, v, file);
      if (reg) registries.set(reg.name, reg);
    }
  }
  const defaultRegistry = (c.string("mirror.default_registry", m.default_registry) ?? "docker.io").toLowerCase();
  if (enabled && registries.size > 0 && !registries.has(defaultRegistry)) {
    c.fail("mirror.default_registry", defaultRegistry, `must be one of the mirrored registries (${[...registries.keys()].join(", ")})`);
  }
  const manifestCache = buildManifestCache(m.manifest_cache);
  c.errors.push(...manifestCache.errors);
  return { enabled, pathPrefix, defaultRegistry, registries, manifestCache: manifestCache.config, rules: buildRules(c, "mirror.rules", m.rules) };
}

const REGISTRY_NAME = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:\d+)?$/;

function buildRegistry(c: Checker, path: string, name: string, v: unknown, file: string): RegistryConfig | null {
  if (!REGISTRY_NAME.test(name)) {
    c.fail(path, name, "registry name must be a host name such as docker.io or quay.io");
    return null;
  }
  const o: Obj = typeof v === "string" ? { upstream: v } : (c.object(path, v, ["upstream", "username", "password", "password_file", "redirect_hosts", "rules"]) ?? {});
  const upstreamText = c.string(`${path}.upstream`, o.upstream);
  if (upstreamText === null) {
    if (o.upstream === undefined) c.rule(`${path}.upstream`, "missing; it is required (an https:// URL)");
    return null;
  }
  let upstream: URL;
  try {
    upstream = new URL(upstreamText);
  } catch (cause) {
    c.errors.push(new ConfigError(`${path}.upstream`, `${show(upstreamText)} is not a URL`, { cause }));
    return null;
  }
  if (upstream.protocol !== "https:" && upstream.protocol !== "http:") {
    c.fail(`${path}.upstream`, upstreamText, "must be an https:// (or http://) URL");
    return null;
  }
  if (upstream.username || upstream.password) {
    c.rule(`${path}.upstream`, "must not carry user:password (the URL is not shown); use username and password_file");
    return null;
  }
  const username = c.string(`${path}.username`, o.username);
  let password = c.string(`${path}.password`, o.password === undefined ? undefined : String(o.password));
  const passwordFile = c.string(`${path}.password_file`, o.password_file);
  if (passwordFile !== null) {
    const p = resolve(file, "..", passwordFile);
    try {
      password = readFileSync(p, "utf8").replace(/\r?\n$/, "");
    } catch (cause) {
      c.errors.push(new ConfigError(`${path}.password_file`, `cannot read ${p}: ${(cause as NodeJS.ErrnoException).code ?? (cause as Error).message}`, { cause }));
    }
  }
  if ((username === null) !== (password === null)) {
    c.rule(path, `username and password (or password_file) must be given together; ${username === null ? "username" : "password"} is missing`);
  }
  const redirectHosts = c.hostPatterns(`${path}.redirect_hosts`, o.redirect_hosts) ?? [];
  return {
    name,
    upstream: new URL(upstream.origin + upstream.pathname.replace(/\/+$/, "")),
    username,
    password,
    redirectHosts,
    operatorNamed: true,
    rules: buildRules(c, `${path}.rules`, o.rules),
  };
}
