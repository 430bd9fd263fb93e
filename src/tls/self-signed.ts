/**
 * The certificate served while the first ACME order runs: self-signed for the configured names,
 * so the TLS port is up at once (start-up never waits on a CA) and clients get a clear
 * "self-signed" error instead of a refused connection. Swapped out the moment the real one lands.
 */
import { describePem, type StoredCertificate } from "./cert-store.ts";

export async function temporaryCertificate(names: readonly string[]): Promise<StoredCertificate> {
  // Loaded only when needed: its WebCrypto X.509 stack costs memory every crm would pay.
  const { default: selfsigned } = await import("selfsigned");
  const now = Date.now();
  const r = await selfsigned.generate(
    [
      {
        name: "commonName",
        value: `${names[0] ?? "crm"} (crm: temporary, ACME issuance under way)`,
      },
    ],
    {
      keyType: "ec",
      curve: "P-256",
      algorithm: "sha256",
      notBeforeDate: new Date(now - 60_000),
      notAfterDate: new Date(now + 7 * 86400_000),
      extensions: [
        { name: "basicConstraints", cA: false },
        { name: "keyUsage", digitalSignature: true, critical: true },
        { name: "extKeyUsage", serverAuth: true },
        { name: "subjectAltName", altNames: names.map((value) => ({ type: 2 as const, value })) },
      ],
    },
  );
  return describePem(r.cert, r.private);
}
