/**
 * The one immutable Config's shape. Section modules own their section's type (listen, tls,
 * limits, mirror, doctor); this file only assembles them, so it imports types and nothing else.
 */
import type { ForwardedHeader } from "../access/client-address.ts";
import type { ClusterConfig } from "../cluster/config.ts";
import type { DoctorConfig } from "../doctor/config.ts";
import type { FairShareLimits } from "../limits/config.ts";
import type { LogFormat, LogLevel } from "../log.ts";
import type { FanoutConfig } from "../mirror/fanout/config.ts";
import type { ManifestCacheConfig } from "../mirror/manifests/config.ts";
import type { ImageRules } from "../mirror/rules.ts";
import type { FailoverConfig } from "../mirror/upstream/failover-config.ts";
import type { StatusConfig } from "../status/config.ts";
import type { TlsListenConfig } from "../tls/config.ts";
import type { ListenAddress } from "./listen.ts";
import type { RegistryConfig } from "./registries.ts";

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
  /** One upstream download per blob in flight (mirror.fanout, src/mirror/fanout/). */
  fanout: FanoutConfig;
  /** Image rules for registries without their own (mirror.rules). */
  rules: ImageRules | null;
  /** Back-off and per-attempt deadline for registries with several upstreams (mirror.failover). */
  failover: FailoverConfig;
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
  /** Who may read the status page (status/config.ts). */
  status: StatusConfig;
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
export const DEFAULT_TIMEOUTS: Timeouts = {
  headerMs: 10_000,
  connectMs: 10_000,
  idleMs: 300_000,
  shutdownGraceMs: 30_000,
  upstreamHeaderMs: 60_000,
};

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
