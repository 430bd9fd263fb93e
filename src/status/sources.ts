/**
 * State other features own, read by the status page and `crm doctor` through small interfaces:
 * the upstream pull quota and the manifest cache (mirror/state.ts plugs them in when the mirror
 * starts; absent while it is off), and the listener's TLS certificate (tls/certificate-state.ts).
 * Interfaces only: status defines what it reads and is handed the implementations. Nothing here holds a secret: no key, no URL with credentials.
 */
import type { QuotaView } from "./quota.ts";

export interface QuotaSource {
  quotas(): QuotaView[];
}

export interface ManifestCacheState {
  entries: number;
  bytes: number;
  hits: number;
  misses: number;
}

export interface ManifestCacheSource {
  state(): ManifestCacheState;
}

export interface CertificateState {
  mode: "none" | "static" | "acme";
  subject?: string;
  names?: string[];
  notAfter?: string;
  daysLeft?: number;
  /** Why the certificate is unusable (unreadable, expired), for doctor and the page. */
  error?: string;
}

/** Upstream failover and blob resumes (mirror/upstream/resilience.ts); absent while the mirror is off. */
export interface ResilienceState {
  /** `upstream`: its place in the registry's list, from 1 (the page shows no upstream URL or host). */
  upstreams: Array<{
    registry: string;
    upstream: number;
    state: "healthy" | "backoff";
    failures: number;
    retryInS: number;
    reason: string | null;
  }>;
  resumes: Array<{ registry: string; continued: number; refused: number; exhausted: number }>;
}

export interface ResilienceSource {
  state(): ResilienceState;
}

export interface StatusSources {
  quota: QuotaSource | null;
  manifestCache: ManifestCacheSource | null;
  resilience?: ResilienceSource | null;
  certificate(): CertificateState;
  /** The shared store and the live replicas (cluster/index.ts); null without a cluster section. */
  cluster: (() => ClusterStatus) | null;
}

/** One live replica, as its heartbeat says (cluster/heartbeat.ts). */
export interface ReplicaView {
  id: string;
  version: string;
  host: string;
  uptimeS: number;
  active: number;
  /** A fingerprint of the config it runs (cluster/index.ts configFingerprint). */
  config: string;
  /** When it last said so (ms since the epoch, its own clock). */
  at: number;
}

/** The shared store as this replica sees it (cluster/index.ts). */
export interface ClusterStatus {
  up: boolean;
  /** "redis" or "redis over TLS": never the address. */
  store: string;
  prefix: string;
  lastError: string | null;
  replicas: ReplicaView[];
}
