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

/** Upstream failover and blob resumes (mirror/resilience.ts); absent while the mirror is off. */
export interface ResilienceState {
  /** `upstream`: its place in the registry's list, from 1 (the page shows no upstream URL or host). */
  upstreams: Array<{ registry: string; upstream: number; state: "healthy" | "backoff"; failures: number; retryInS: number; reason: string | null }>;
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
}
