// Building and reading the parts of X.509 certificates that crm needs (RFC 5280).
// Signing goes through node:crypto so EC keys work and a leaf costs well under a millisecond.

import { createHash, randomBytes, sign, type KeyObject } from "node:crypto";
import * as der from "./der.ts";

export const OID = {
  commonName: "2.5.4.3",
  basicConstraints: "2.5.29.19",
  keyUsage: "2.5.29.15",
  extKeyUsage: "2.5.29.37",
  subjectAltName: "2.5.29.17",
  subjectKeyId: "2.5.29.14",
  authorityKeyId: "2.5.29.35",
  serverAuth: "1.3.6.1.5.5.7.3.1",
  ecdsaWithSha256: "1.2.840.10045.4.3.2",
  sha256WithRsa: "1.2.840.113549.1.1.11",
} as const;

/** keyUsage bit numbers (RFC 5280 4.2.1.3). */
export const KU = { digitalSignature: 0, keyEncipherment: 2, keyCertSign: 5, cRLSign: 6 } as const;

export type SigAlg = "ecdsa-sha256" | "rsa-sha256";

// RSA AlgorithmIdentifiers carry an explicit NULL; ECDSA ones must omit parameters (RFC 5758).
const ALG_ID: Record<SigAlg, Buffer> = {
  "ecdsa-sha256": der.seq(der.oid(OID.ecdsaWithSha256)),
  "rsa-sha256": der.seq(der.oid(OID.sha256WithRsa), der.nul()),
};

export function extension(oid: string, critical: boolean, value: der.Bytes): Buffer {
  return critical
    ? der.seq(der.oid(oid), der.bool(true), der.octets(value))
    : der.seq(der.oid(oid), der.octets(value));
}

export const ext = {
  basicConstraints: (ca: boolean, pathLen?: number): Buffer =>
    extension(
      OID.basicConstraints,
      true,
      ca
        ? der.seq(der.bool(true), ...(pathLen === undefined ? [] : [der.uint(pathLen)]))
        : der.seq(),
    ),
  keyUsage: (bitNumbers: number[]): Buffer =>
    extension(OID.keyUsage, true, der.namedBits(bitNumbers)),
  extKeyUsage: (oids: string[]): Buffer =>
    extension(OID.extKeyUsage, false, der.seq(...oids.map(der.oid))),
  subjectKeyId: (id: der.Bytes): Buffer => extension(OID.subjectKeyId, false, der.octets(id)),
  authorityKeyId: (id: der.Bytes): Buffer =>
    extension(OID.authorityKeyId, false, der.seq(der.implicit(0, id))),
  /** SAN entries are pre-encoded GeneralNames: dNSName [2] IA5String, iPAddress [7] OCTET STRING. */
  subjectAltName: (dns: string[], ips: der.Bytes[]): Buffer =>
    extension(
      OID.subjectAltName,
      false,
      der.seq(
        ...dns.map((d) => der.implicit(2, Buffer.from(d, "ascii"))),
        ...ips.map((ip) => der.implicit(7, ip)),
      ),
    ),
};

export const nameCN = (cn: string): Buffer =>
  der.seq(der.set(der.seq(der.oid(OID.commonName), der.utf8(cn))));

/** 16 random bytes with the top bit clear: positive, and never more than the 20-octet limit. */
export function randomSerial(): Buffer {
  const b = randomBytes(16);
  b[0] = (b[0] ?? 0) & 0x7f;
  return b;
}

/** RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits. Matches what OpenSSL puts in SKI. */
export function keyId(spki: der.Bytes): Buffer {
  const [, bitString] = der.children(spki, der.read(spki));
  if (!bitString || bitString.tag !== 0x03)
    throw new der.DerError("SubjectPublicKeyInfo without a BIT STRING");
  return createHash("sha1").update(der.content(spki, bitString).subarray(1)).digest();
}

export interface CertSpec {
  serial: der.Bytes;
  /** DER Name, copied verbatim. */
  issuer: der.Bytes;
  subject: der.Bytes;
  notBefore: Date;
  notAfter: Date;
  /** DER SubjectPublicKeyInfo. */
  spki: der.Bytes;
  /** Pre-encoded Extension SEQUENCEs (see `ext`), so fixed ones can be built once. */
  extensions: der.Bytes[];
}

export function signCertificate(spec: CertSpec, key: KeyObject, alg: SigAlg): Buffer {
  const algId = ALG_ID[alg];
  const tbs = der.seq(
    der.explicit(0, der.uint(2)),
    der.uint(spec.serial),
    algId,
    spec.issuer,
    der.seq(der.time(spec.notBefore), der.time(spec.notAfter)),
    spec.subject,
    spec.spki,
    der.explicit(3, der.seq(...spec.extensions)),
  );
  // node:crypto emits DER ECDSA signatures and PKCS#1 v1.5 for RSA keys by default: what X.509 wants.
  return der.seq(tbs, algId, der.bits(sign("sha256", tbs, key)));
}

export function toPem(body: der.Bytes, label = "CERTIFICATE"): string {
  const b64 = Buffer.from(body)
    .toString("base64")
    .replace(/(.{64})/g, "$1\n")
    .replace(/\n$/, "");
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

export interface PemBlock {
  label: string;
  der: Buffer;
  /** RFC 1421 headers such as "Proc-Type: 4,ENCRYPTED" (legacy encrypted keys). */
  hasHeaders: boolean;
  text: string;
}

export function pemBlocks(text: string): PemBlock[] {
  const out: PemBlock[] = [];
  for (const m of text.matchAll(/-----BEGIN ([A-Z0-9 ]+)-----\r?\n([\s\S]*?)-----END \1-----/g)) {
    const body = m[2] ?? "";
    const hasHeaders = /^[A-Za-z-]+:/m.test(body);
    const b64 = body
      .split(/\r?\n/)
      .filter((l) => !l.includes(":"))
      .join("")
      .replace(/\s+/g, "");
    // Buffer.from(…, "base64") silently skips junk; reject it so garbage is reported as garbage.
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64)) continue;
    out.push({ label: m[1] ?? "", der: Buffer.from(b64, "base64"), hasHeaders, text: m[0] });
  }
  return out;
}

export interface ParsedCert {
  issuer: Buffer;
  subject: Buffer;
  notBefore: Date;
  notAfter: Date;
  spki: Buffer;
  extensions: Map<string, { critical: boolean; value: Buffer }>;
}

export function parseCertificate(buf: der.Bytes): ParsedCert {
  const [tbsNode] = der.children(buf, der.read(buf));
  if (!tbsNode) throw new der.DerError("empty Certificate");
  let fields = der.children(buf, tbsNode);
  if (fields[0]?.tag === 0xa0) fields = fields.slice(1); // version is optional (v1)
  const [, , issuer, validity, subject, spki, ...rest] = fields;
  if (!issuer || !validity || !subject || !spki)
    throw new der.DerError("TBSCertificate is missing fields");
  const [nb, na] = der.children(buf, validity);
  if (!nb || !na) throw new der.DerError("Validity is missing fields");
  const extensions = new Map<string, { critical: boolean; value: Buffer }>();
  const extsWrapper = rest.find((n) => n.tag === 0xa3);
  const extsSeq = extsWrapper && der.children(buf, extsWrapper)[0];
  for (const e of extsSeq ? der.children(buf, extsSeq) : []) {
    const parts = der.children(buf, e);
    const id = parts[0];
    const value = parts[parts.length - 1];
    if (!id || !value || parts.length < 2) throw new der.DerError("malformed Extension");
    const critical =
      parts.length === 3 && parts[1]?.tag === 0x01 && (buf[parts[1].body] ?? 0) !== 0;
    extensions.set(der.readOid(buf, id), { critical, value: der.content(buf, value) });
  }
  return {
    issuer: der.whole(buf, issuer),
    subject: der.whole(buf, subject),
    notBefore: der.readTime(buf, nb),
    notAfter: der.readTime(buf, na),
    spki: der.whole(buf, spki),
    extensions,
  };
}

export function readBasicConstraints(value: Buffer): { ca: boolean } {
  const [first] = der.children(value, der.read(value));
  return { ca: first?.tag === 0x01 && (value[first.body] ?? 0) !== 0 };
}

export function hasKeyUsage(value: Buffer, bit: number): boolean {
  const node = der.read(value);
  const byte = value[node.body + 1 + (bit >> 3)];
  return node.body + 1 + (bit >> 3) < node.end && ((byte ?? 0) & (0x80 >> (bit & 7))) !== 0;
}

export function readSubjectKeyId(value: Buffer): Buffer {
  return der.content(value, der.read(value));
}
