/**
 * The state of the certificates crm serves, in one shape for /metrics, the index page and
 * `crm -t`: from files, from ACME, or the temporary self-signed one.
 */

export interface CertificateStatus {
  /** The first domain (ACME) or the file name: the metric's `name` label. */
  name: string;
  source: "files" | "acme" | "self-signed";
  names: readonly string[];
  /** Expiry (ms since the epoch); null for the temporary certificate. */
  notAfter: number | null;
  issuer: string | null;
  state: "valid" | "issuing" | "renewing" | "renewal failing" | "expired";
  lastError: string | null;
  nextAttemptAt: number | null;
  renewalFailures: number;
}

/** "89d", "5h", "12m": enough to see at a glance how long is left. */
function roughly(ms: number): string {
  if (ms >= 86_400_000) return `${Math.floor(ms / 86_400_000)}d`;
  if (ms >= 3_600_000) return `${Math.floor(ms / 3_600_000)}h`;
  return `${Math.max(1, Math.floor(ms / 60_000))}m`;
}

const label = (s: string): string => s.replace(/[\\"\n]/g, (c) => (c === "\n" ? "\\n" : `\\${c}`));

/** Prometheus lines for crm_tls_* (families always present, so alerts can rely on them). */
export function renderTlsMetrics(list: readonly CertificateStatus[]): string[] {
  const out = [
    "# HELP crm_tls_certificate_expiry_seconds Expiry of the certificate served on TLS listeners (Unix time in seconds).",
    "# TYPE crm_tls_certificate_expiry_seconds gauge",
  ];
  for (const s of list)
    if (s.notAfter !== null)
      out.push(
        `crm_tls_certificate_expiry_seconds{name="${label(s.name)}"} ${Math.floor(s.notAfter / 1000)}`,
      );
  out.push(
    "# HELP crm_tls_renewal_failures_total Failed ACME orders (first issue and renewals).",
    "# TYPE crm_tls_renewal_failures_total counter",
  );
  for (const s of list)
    if (s.source !== "files")
      out.push(`crm_tls_renewal_failures_total{name="${label(s.name)}"} ${s.renewalFailures}`);
  out.push(
    "# HELP crm_tls_renewal_failing 1 while the last ACME order for this certificate failed.",
    "# TYPE crm_tls_renewal_failing gauge",
  );
  for (const s of list)
    if (s.source !== "files")
      out.push(`crm_tls_renewal_failing{name="${label(s.name)}"} ${s.lastError !== null ? 1 : 0}`);
  return out;
}

/** One line per certificate, for the index page and logs. */
export function describeStatus(s: CertificateStatus, now = Date.now()): string {
  const names = s.names.join(", ");
  if (s.source === "self-signed")
    return `${names}: temporary self-signed certificate, ACME issuance under way${s.lastError ? `; last error: ${s.lastError}` : ""}`;
  const left =
    s.notAfter !== null
      ? s.notAfter > now
        ? `expires ${new Date(s.notAfter).toISOString()} (in ${roughly(s.notAfter - now)})`
        : `EXPIRED ${new Date(s.notAfter).toISOString()}`
      : "";
  const from = s.source === "acme" ? `ACME, issuer ${s.issuer ?? "?"}` : "from files";
  return `${names}: ${s.state}, ${left}, ${from}${s.lastError ? `; renewal failing: ${s.lastError}` : ""}`;
}
