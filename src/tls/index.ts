/**
 * The certificate TLS listeners serve, whichever its source: files (`tls.cert_path`) or ACME
 * (`tls.acme`, renewed by AcmeCertificates). The server asks it what to serve, routes http-01
 * challenges to it, and reads its status for /metrics and the index page.
 */
import type { Config } from "../config/types.ts";
import type { Runtime } from "../context.ts";
import { describePem } from "./cert-store.ts";
import { AcmeCertificates, type ServedCertificate } from "./renewal.ts";
import type { CertificateStatus } from "./status.ts";

export type { CertificateStatus } from "./status.ts";

export class TlsCertificates {
  private acme: AcmeCertificates | null = null;
  private files: { pem: ServedCertificate; status: CertificateStatus } | null = null;

  constructor(
    private readonly rt: Runtime,
    private readonly onSwap: (pem: ServedCertificate) => void,
  ) {}

  /** Start-up and reload: keeps a running ACME manager whose section did not change. */
  async configure(config: Config, filePem: ServedCertificate | null): Promise<void> {
    const acme = config.tls?.acme ?? null;
    if (acme !== null) {
      if (this.acme === null || JSON.stringify(this.acme.config) !== JSON.stringify(acme)) {
        const next = await AcmeCertificates.load(acme, this.rt, (pem) => this.onSwap(pem));
        this.acme?.stop();
        this.acme = next;
      }
    } else {
      this.acme?.stop();
      this.acme = null;
    }
    this.files = filePem === null ? null : { pem: filePem, status: fileStatus(config, filePem) };
  }

  get served(): ServedCertificate | null {
    return this.acme?.served ?? this.files?.pem ?? null;
  }

  /** Schedules the ACME order or renewal, if any. */
  start(): void {
    this.acme?.start();
  }

  /** Forces an ACME renewal now; false without ACME or when it failed. */
  renewNow(): Promise<boolean> {
    return this.acme?.renewNow() ?? Promise.resolve(false);
  }

  challenge(token: string): string | null {
    return this.acme?.challenge(token) ?? null;
  }

  status(): CertificateStatus[] {
    if (this.acme) return [this.acme.status()];
    return this.files ? [this.files.status] : [];
  }

  stop(): void {
    this.acme?.stop();
  }
}

function fileStatus(config: Config, pem: ServedCertificate): CertificateStatus {
  let names: string[] = [];
  let notAfter: number | null = null;
  let issuer: string | null = null;
  try {
    const d = describePem(pem.cert, pem.key);
    names = d.names;
    notAfter = d.notAfter;
    issuer = d.issuer;
  } catch {
    // Bun.listen is the judge of a certificate it cannot load; the status just stays empty.
  }
  const name = names[0] ?? config.tls?.certPath ?? "tls";
  const state = notAfter !== null && notAfter <= Date.now() ? "expired" : "valid";
  return {
    name,
    source: "files",
    names,
    notAfter,
    issuer,
    state,
    lastError: null,
    nextAttemptAt: null,
    renewalFailures: 0,
  };
}
