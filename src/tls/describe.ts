/**
 * The `tls` lines of `crm -t`: where the certificate comes from and, for ACME, the set-up and
 * what state_dir holds now (names, expiry), so an operator sees before starting what will be
 * served and whether a new order is needed.
 */
import type { Config } from "../config/types.ts";
import { CertStore } from "./cert-store.ts";
import { renewalTime } from "./renewal.ts";

export function describeTls(c: Config, now = Date.now()): string[] {
  const t = c.tls;
  if (t === null) return ["tls: off"];
  const redirect = t.redirectHttp ? "; plain listeners redirect to https" : "";
  if (t.acme === null) return [`tls: certificate ${t.certPath}, key ${t.keyPath}${redirect}`];
  const a = t.acme;
  const lines = [
    `tls: ACME ${a.challenge} for ${a.domains.join(", ")}${redirect}`,
    `  directory ${a.directory}${a.caBundlePath ? ` (trusting ${a.caBundlePath})` : ""}; account e-mail ${a.email ?? "(none)"}`,
    `  state_dir ${a.stateDir}; renew ${a.renewBeforeMs === null ? "when a third of the lifetime is left" : `${Math.round(a.renewBeforeMs / 3600_000)}h before expiry`}`,
  ];
  const store = new CertStore(a.stateDir);
  let stored;
  try {
    stored = store.readCertificate(a.domains[0] as string);
    lines.push(
      `  account key: ${store.readAccountKey() === null ? "none yet (created at the first order)" : "stored"}`,
    );
  } catch (e) {
    lines.push(
      `  state_dir unreadable: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
    return lines;
  }
  if (stored === null) {
    lines.push(
      "  stored certificate: none; crm serves a temporary self-signed one and orders at start",
    );
    return lines;
  }
  const missing = a.domains.filter((d) => !stored.names.includes(d));
  const state =
    stored.notAfter <= now
      ? "EXPIRED"
      : missing.length > 0
        ? `lacks ${missing.join(", ")}: a new order at start`
        : `renewal due ${new Date(renewalTime(stored, a.renewBeforeMs)).toISOString()}`;
  lines.push(
    `  stored certificate: ${stored.names.join(", ")}, expires ${new Date(stored.notAfter).toISOString()}, issuer ${stored.issuer}; ${state}`,
  );
  return lines;
}
