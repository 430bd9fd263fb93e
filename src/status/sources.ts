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

export interface StatusSources {
  quota: QuotaSource | null;
  manifestCache: ManifestCacheSource | null;
  certificate(): CertificateState;
}
