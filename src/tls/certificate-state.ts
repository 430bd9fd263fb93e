/**
 * The listener's certificate as the status page and `crm doctor` show it (status/sources.ts
 * defines the shape): what ACME serves now, or what tls.cert_path / state_dir hold.
 */
import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import type { Config } from "../config/types.ts";
import type { CertificateState } from "../status/sources.ts";
import { CertStore } from "./cert-store.ts";
import type { CertificateStatus } from "./status.ts";

/** What the running ACME manager (src/tls/) says about the certificate it serves. */
export function acmeCertificateState(s: CertificateStatus, now = Date.now()): CertificateState {
  const state: CertificateState = {
    mode: s.source === "files" ? "static" : "acme",
    names: [...s.names],
  };
  if (s.notAfter !== null) {
    state.notAfter = new Date(s.notAfter).toISOString();
    state.daysLeft = Math.floor((s.notAfter - now) / 86_400_000);
  }
  if (s.source === "self-signed")
    state.error = `no certificate issued yet: a temporary self-signed one is served while the order runs${s.lastError ? ` (last error: ${s.lastError})` : ""}`;
  else if (s.state === "expired") state.error = `expired on ${state.notAfter}`;
  else if (s.lastError !== null) state.error = `renewal failing: ${s.lastError}`;
  return state;
}

/** The listener's certificate as stored: tls.cert_path, or what ACME keeps in state_dir. */
export function staticCertificateState(config: Config, now = Date.now()): CertificateState {
  if (config.tls === null) return { mode: "none" };
  const { acme, certPath } = config.tls;
  if (acme !== null) {
    try {
      const stored = new CertStore(acme.stateDir).readCertificate(acme.domains[0] as string);
      if (stored === null)
        return {
          mode: "acme",
          names: [...acme.domains],
          error: `no certificate in ${acme.stateDir} yet: crm orders one at start`,
        };
      const daysLeft = Math.floor((stored.notAfter - now) / 86_400_000);
      const state: CertificateState = {
        mode: "acme",
        names: [...stored.names],
        notAfter: new Date(stored.notAfter).toISOString(),
        daysLeft,
      };
      if (daysLeft < 0) state.error = `expired on ${state.notAfter}`;
      return state;
    } catch (cause) {
      return {
        mode: "acme",
        error: `cannot read ${acme.stateDir}: ${(cause as NodeJS.ErrnoException).code ?? (cause as Error).message}`,
      };
    }
  }
  if (certPath === null) return { mode: "none" };
  try {
    const cert = new X509Certificate(readFileSync(certPath));
    const notAfter = new Date(cert.validTo);
    const daysLeft = Math.floor((notAfter.getTime() - now) / 86_400_000);
    const names = (cert.subjectAltName ?? "")
      .split(/,\s*/)
      .filter((n) => n !== "")
      .map((n) => n.replace(/^(DNS|IP Address):/, ""));
    const state: CertificateState = {
      mode: "static",
      subject: cert.subject.replace(/\n/g, ", "),
      names,
      notAfter: notAfter.toISOString(),
      daysLeft,
    };
    if (now < new Date(cert.validFrom).getTime())
      state.error = `not valid before ${new Date(cert.validFrom).toISOString()} (is this host's clock right?)`;
    else if (daysLeft < 0) state.error = `expired on ${notAfter.toISOString()}`;
    return state;
  } catch (cause) {
    return {
      mode: "static",
      error: `cannot read ${certPath}: ${(cause as NodeJS.ErrnoException).code ?? (cause as Error).message}`,
    };
  }
}

const certificateCache = new WeakMap<Config, { state: CertificateState; at: number }>();

/** staticCertificateState, read at most once a minute per config (the page polls). */
export function certificateStateOf(config: Config): CertificateState {
  const hit = certificateCache.get(config);
  if (hit && Date.now() - hit.at < 60_000) return hit.state;
  const state = staticCertificateState(config);
  certificateCache.set(config, { state, at: Date.now() });
  return state;
}
