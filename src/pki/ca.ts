// Loading the MITM CA: every way the two files can be wrong gets its own error, because the
// operator's next step differs for each (fix a path, a permission, a swapped file, regenerate…).

import { X509Certificate, createPrivateKey, createPublicKey, type KeyObject } from "node:crypto";
import { statSync } from "node:fs";
import { readFile } from "node:fs/promises";
import * as E from "./errors.ts";
import {
  KU,
  OID,
  hasKeyUsage,
  keyId,
  parseCertificate,
  pemBlocks,
  readBasicConstraints,
  readSubjectKeyId,
  toPem,
  type SigAlg,
} from "./x509.ts";

export interface Ca {
  /** The CA certificate, re-encoded as a single PEM block. */
  certPem: string;
  cert: X509Certificate;
  key: KeyObject;
  sigAlg: SigAlg;
  /** DER Name copied verbatim into leaf issuers: chain building compares names byte for byte. */
  subjectDer: Buffer;
  /** The CA's subjectKeyIdentifier (or RFC 5280 method-1 hash when absent), used as leaf AKI. */
  keyId: Buffer;
  notBefore: Date;
  notAfter: Date;
  /** PEM appended after each leaf: the CA itself when it is an intermediate, "" for a root. */
  chainPem: string;
  certPath?: string;
  keyPath?: string;
  /** Certificates after the first in the cert file; they are not used. */
  ignoredCertificates: number;
}

const KEY_LABELS = new Set(["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"]);
const CURVES = new Set(["prime256v1", "secp384r1"]);

async function readCaFile(path: string, what: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR")
      throw new E.CaFileMissingError(path, `${what} file does not exist`, { cause: err });
    const why =
      code === "EISDIR"
        ? "is a directory"
        : code === "EACCES" || code === "EPERM"
          ? "permission denied"
          : String(code ?? err);
    throw new E.CaFileUnreadableError(path, `cannot read ${what} file: ${why}`, { cause: err });
  }
}

export async function loadCa(
  certPath: string,
  keyPath: string,
  now: Date = new Date(),
): Promise<Ca> {
  const certFile = await readCaFile(certPath, "CA certificate");
  const keyFile = await readCaFile(keyPath, "CA key");
  return parseCa(certFile, keyFile, { certPath, keyPath, now });
}

/** Same checks as loadCa, for PEM already in memory; paths are only used in messages. */
export function parseCa(
  certPem: string | Buffer,
  keyPem: string | Buffer,
  opts: { certPath?: string; keyPath?: string; now?: Date } = {},
): Ca {
  const certName = opts.certPath ?? "<CA certificate>";
  const keyName = opts.keyPath ?? "<CA key>";
  const { der: certDer, ignored } = certificateDer(certPem, certName);
  let cert: X509Certificate;
  let parsed: ReturnType<typeof parseCertificate>;
  let isCa: boolean;
  let mayCertSign: boolean;
  let ski: Buffer | undefined;
  try {
    cert = new X509Certificate(certDer);
    parsed = parseCertificate(certDer);
    const { basicConstraints: bc, keyUsage: ku, subjectKeyId } = extensionsOf(parsed);
    isCa = bc !== undefined && readBasicConstraints(bc).ca;
    mayCertSign = ku === undefined || hasKeyUsage(ku, KU.keyCertSign);
    ski = subjectKeyId && readSubjectKeyId(subjectKeyId);
  } catch (err) {
    throw new E.CaCertInvalidError(
      certName,
      `cannot parse certificate: ${(err as Error).message}`,
      { cause: err },
    );
  }

  const key = privateKey(keyPem, keyName);
  const sigAlg = signatureAlgorithm(key, keyName);

  if (!isCa)
    throw new E.CaNotCaError(
      certName,
      `certificate "${cert.subject}" is not a CA (basicConstraints CA:TRUE is missing); use a CA certificate, not a server certificate`,
    );
  if (!mayCertSign)
    throw new E.CaNoKeyCertSignError(
      certName,
      `certificate "${cert.subject}" has a keyUsage extension without keyCertSign, so it may not sign certificates`,
    );

  const spki = (k: KeyObject): Buffer => k.export({ type: "spki", format: "der" });
  if (!spki(createPublicKey(key)).equals(spki(cert.publicKey)))
    throw new E.CaKeyMismatchError(
      keyName,
      `private key does not match the certificate in ${certName}`,
    );

  const now = opts.now ?? new Date();
  if (now < parsed.notBefore)
    throw new E.CaNotYetValidError(
      certName,
      `CA certificate is not valid until ${parsed.notBefore.toISOString()} (check the system clock)`,
    );
  if (now > parsed.notAfter)
    throw new E.CaExpiredError(
      certName,
      `CA certificate expired on ${parsed.notAfter.toISOString()}; generate a new CA and trust it again`,
    );

  const pem = toPem(certDer);
  return {
    certPem: pem,
    cert,
    key,
    sigAlg,
    subjectDer: parsed.subject,
    keyId: ski ?? keyId(parsed.spki),
    notBefore: parsed.notBefore,
    notAfter: parsed.notAfter,
    chainPem: parsed.issuer.equals(parsed.subject) ? "" : pem,
    certPath: opts.certPath,
    keyPath: opts.keyPath,
    ignoredCertificates: ignored,
  };
}

function extensionsOf(
  p: ReturnType<typeof parseCertificate>,
): Record<"basicConstraints" | "keyUsage" | "subjectKeyId", Buffer | undefined> {
  return {
    basicConstraints: p.extensions.get(OID.basicConstraints)?.value,
    keyUsage: p.extensions.get(OID.keyUsage)?.value,
    subjectKeyId: p.extensions.get(OID.subjectKeyId)?.value,
  };
}

function certificateDer(input: string | Buffer, file: string): { der: Buffer; ignored: number } {
  const text = input.toString("latin1");
  const blocks = pemBlocks(text);
  const certs = blocks.filter((b) => b.label === "CERTIFICATE" || b.label === "X509 CERTIFICATE");
  const first = certs[0];
  if (first) return { der: first.der, ignored: certs.length - 1 };
  if (blocks.some((b) => b.label.endsWith("PRIVATE KEY")))
    throw new E.CaCertInvalidError(
      file,
      "contains a private key but no certificate (are the certificate and key paths swapped?)",
    );
  if (input.length > 0 && (typeof input === "string" ? input.charCodeAt(0) : input[0]) === 0x30)
    throw new E.CaCertInvalidError(
      file,
      `looks like DER, not PEM; convert it with: openssl x509 -inform der -in ${file} -out ca.crt`,
    );
  throw new E.CaCertInvalidError(
    file,
    "no PEM certificate found (expected a -----BEGIN CERTIFICATE----- block)",
  );
}

function privateKey(input: string | Buffer, file: string): KeyObject {
  const blocks = pemBlocks(input.toString("latin1"));
  if (
    blocks.some(
      (b) => b.label === "ENCRYPTED PRIVATE KEY" || (KEY_LABELS.has(b.label) && b.hasHeaders),
    )
  )
    throw new E.CaKeyInvalidError(
      file,
      `private key is encrypted, which is not supported; decrypt it with: openssl pkey -in ${file} -out ca.key`,
    );
  const block = blocks.find((b) => KEY_LABELS.has(b.label));
  if (!block) {
    const hint = blocks.some((b) => b.label === "CERTIFICATE")
      ? " (it contains a certificate: are the certificate and key paths swapped?)"
      : "";
    throw new E.CaKeyInvalidError(
      file,
      `no PEM private key found (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)${hint}`,
    );
  }
  try {
    return createPrivateKey({ key: block.text, format: "pem" });
  } catch (err) {
    throw new E.CaKeyInvalidError(file, `cannot parse ${block.label}: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

function signatureAlgorithm(key: KeyObject, file: string): SigAlg {
  if (key.asymmetricKeyType === "rsa") return "rsa-sha256";
  const curve = key.asymmetricKeyDetails?.namedCurve ?? "";
  if (key.asymmetricKeyType === "ec" && CURVES.has(curve)) return "ecdsa-sha256";
  const what =
    key.asymmetricKeyType === "ec"
      ? `EC curve ${curve || "(unnamed)"}`
      : `${key.asymmetricKeyType ?? "unknown"} key`;
  throw new E.CaKeyUnsupportedError(file, `${what} is not supported; use RSA or EC P-256/P-384`);
}

const DAY = 86_400_000;

/** Problems worth telling the operator about that do not stop crm; the caller decides how to log. */
export function caWarnings(ca: Ca, now: Date = new Date()): string[] {
  const out: string[] = [];
  if (ca.keyPath && process.platform !== "win32") {
    try {
      const mode = statSync(ca.keyPath).mode & 0o777;
      if (mode & 0o077)
        out.push(
          `${ca.keyPath}: CA key is readable by group/others (mode ${mode.toString(8).padStart(4, "0")}); run: chmod 600 ${ca.keyPath}`,
        );
    } catch {
      // The key was read a moment ago; a vanished file is not worth a second error here.
    }
  }
  const daysLeft = Math.floor((ca.notAfter.getTime() - now.getTime()) / DAY);
  if (daysLeft < 30)
    out.push(
      `${ca.certPath ?? "CA certificate"}: expires in ${daysLeft} day(s), on ${ca.notAfter.toISOString()}`,
    );
  const bits = ca.key.asymmetricKeyDetails?.modulusLength;
  if (ca.sigAlg === "rsa-sha256" && bits !== undefined && bits < 2048)
    out.push(`${ca.keyPath ?? "CA key"}: RSA-${bits} is weak; current clients may reject it`);
  if (ca.ignoredCertificates > 0)
    out.push(
      `${ca.certPath ?? "CA certificate"}: ${ca.ignoredCertificates} further certificate(s) after the first are ignored`,
    );
  if (ca.chainPem)
    out.push(
      `${ca.certPath ?? "CA certificate"}: CA is not self-signed; it is sent with every leaf, and clients must trust its root`,
    );
  return out;
}
