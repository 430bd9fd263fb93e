/** A CA and leaf certificates made in the test, so TLS cases verify for real. */
import selfsigned from "selfsigned";

export interface Pem {
  cert: string;
  key: string;
}

export async function makeTestCa(cn = "crm test CA"): Promise<Pem> {
  const now = new Date(Date.now() - 3600_000);
  const r = await selfsigned.generate([{ name: "commonName", value: cn }], {
    keyType: "ec",
    curve: "P-256",
    algorithm: "sha256",
    notBeforeDate: now,
    notAfterDate: new Date(now.getTime() + 7 * 86400_000),
    extensions: [
      { name: "basicConstraints", cA: true, critical: true },
      {
        name: "keyUsage",
        keyCertSign: true,
        cRLSign: true,
        digitalSignature: true,
        critical: true,
      },
    ],
  });
  return { cert: r.cert, key: r.private };
}

/** A server certificate for `names` (DNS names and IP literals) signed by `ca`. */
export async function makeLeaf(ca: Pem, names: string[]): Promise<Pem> {
  const now = new Date(Date.now() - 3600_000);
  const altNames = names.map((n) =>
    /^[\d.]+$|:/.test(n) ? { type: 7 as const, ip: n } : { type: 2 as const, value: n },
  );
  const r = await selfsigned.generate([{ name: "commonName", value: names[0] ?? "localhost" }], {
    keyType: "ec",
    curve: "P-256",
    algorithm: "sha256",
    notBeforeDate: now,
    notAfterDate: new Date(now.getTime() + 7 * 86400_000),
    ca: { key: ca.key, cert: ca.cert },
    extensions: [
      { name: "basicConstraints", cA: false },
      { name: "keyUsage", digitalSignature: true, keyEncipherment: true },
      { name: "extKeyUsage", serverAuth: true },
      { name: "subjectAltName", altNames },
    ],
  });
  return { cert: r.cert, key: r.private };
}
