// Per-host leaf certificates for MITM. One EC P-256 key serves every leaf: generating a key
// per host buys nothing (the CA key is the secret that matters) and keeps issuing to one signature.

import { generateKeyPairSync } from "node:crypto";
import { isIP } from "node:net";
import { domainToASCII } from "node:url";
import type { Ca } from "./ca.ts";
import { KU, OID, ext, keyId, nameCN, randomSerial, signCertificate, toPem } from "./x509.ts";

export interface IssuedCert {
  /** Leaf PEM, followed by the CA when the CA is an intermediate. */
  certPem: string;
  keyPem: string;
  notBefore: Date;
  notAfter: Date;
}

export interface LeafOptions {
  /** Leaf lifetime in days (fractions allowed); default 7. */
  days?: number;
  /** Clock, for tests. */
  now?: () => Date;
}

export class InvalidHostError extends Error {
  readonly code = "LEAF_INVALID_HOST";
  constructor(
    readonly host: string,
    reason: string,
  ) {
    super(`cannot issue a certificate for "${host}": ${reason}`);
    this.name = "InvalidHostError";
  }
}

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
// RFC 5280 ub-common-name. The SAN carries the full name; clients ignore the CN.
const MAX_CN = 64;

export interface Host {
  /** Lower-case, bracket-free, trailing-dot-free: the cache key. */
  name: string;
  /** iPAddress SAN bytes for IP literals. */
  ip?: Buffer;
}

export function normalizeHost(input: string): Host {
  let h = input.trim().toLowerCase();
  const bracketed = h.startsWith("[") && h.endsWith("]");
  if (bracketed) h = h.slice(1, -1);
  // A zone ("fe80::1%eth0") is local to this machine and cannot appear in a certificate.
  const bare = h.replace(/%.*$/, "");
  const family = isIP(bare);
  if (bracketed && family !== 6)
    throw new InvalidHostError(input, "brackets hold only IPv6 addresses");
  if (family === 4) return { name: bare, ip: Buffer.from(bare.split(".").map(Number)) };
  if (family === 6) return { name: bare, ip: ipv6Bytes(bare) };
  h = h.replace(/\.$/, "");
  // domainToASCII parses like a URL host and would turn "evil.com/x" into "evil.com": reject
  // URL syntax first so a mangled CONNECT target never gets a certificate for another name.
  if (/[\s/\\:?#@[\]%]/.test(h)) throw new InvalidHostError(input, "not a DNS name or IP address");
  const ascii = domainToASCII(h);
  if (!ascii || ascii.length > 253 || !/^[a-z0-9_-]+(\.[a-z0-9_-]+)*$/.test(ascii))
    throw new InvalidHostError(input, "not a DNS name or IP address");
  return { name: ascii };
}

function ipv6Bytes(ip: string): Buffer {
  const groups = (s: string): number[] =>
    s === ""
      ? []
      : s.split(":").flatMap((g) => {
          if (!g.includes(".")) return [parseInt(g, 16)];
          const [a = 0, b = 0, c = 0, d = 0] = g.split(".").map(Number);
          return [(a << 8) | b, (c << 8) | d];
        });
  const [head = "", tail] = ip.split("::");
  const h = groups(head);
  const t = tail === undefined ? [] : groups(tail);
  const words =
    tail === undefined ? h : [...h, ...new Array<number>(8 - h.length - t.length).fill(0), ...t];
  const out = Buffer.alloc(16);
  words.forEach((w, i) => out.writeUInt16BE(w, i * 2));
  return out;
}

export class LeafIssuer {
  readonly keyPem: string;
  readonly validityMs: number;
  readonly now: () => Date;
  private readonly spki: Buffer;
  private readonly fixedExtensions: Buffer[];

  constructor(
    private readonly ca: Ca,
    opts: LeafOptions = {},
  ) {
    const days = opts.days ?? 7;
    if (!(days > 0)) throw new RangeError(`leaf validity must be positive, got ${days} days`);
    this.validityMs = days * DAY;
    this.now = opts.now ?? (() => new Date());
    const pair = generateKeyPairSync("ec", { namedCurve: "P-256" });
    this.keyPem = pair.privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    this.spki = pair.publicKey.export({ type: "spki", format: "der" });
    // Everything but the names, serial and dates is the same for every leaf: encode it once.
    this.fixedExtensions = [
      ext.basicConstraints(false),
      // keyEncipherment only means something for RSA key transport, and this key is EC.
      ext.keyUsage([KU.digitalSignature]),
      ext.extKeyUsage([OID.serverAuth]),
      ext.subjectKeyId(keyId(this.spki)),
      ext.authorityKeyId(ca.keyId),
    ];
  }

  issue(host: string): IssuedCert {
    const h = normalizeHost(host);
    // Whole seconds, as in the certificate, so notAfter here is exactly what clients see.
    const now = Math.floor(this.now().getTime() / 1000) * 1000;
    const notBefore = new Date(now - HOUR); // client clocks run behind
    // A leaf outliving its CA would only fail later and more confusingly.
    const notAfter = new Date(
      Math.floor(Math.min(now + this.validityMs, this.ca.notAfter.getTime()) / 1000) * 1000,
    );
    const cert = signCertificate(
      {
        serial: randomSerial(),
        issuer: this.ca.subjectDer,
        subject: nameCN(h.name.slice(0, MAX_CN)),
        notBefore,
        notAfter,
        spki: this.spki,
        extensions: [
          ...this.fixedExtensions,
          h.ip ? ext.subjectAltName([], [h.ip]) : ext.subjectAltName([h.name], []),
        ],
      },
      this.ca.key,
      this.ca.sigAlg,
    );
    return { certPem: toPem(cert) + this.ca.chainPem, keyPem: this.keyPem, notBefore, notAfter };
  }
}

export interface CertCacheOptions {
  /** Most hosts kept; the least recently used is dropped first. Default 1000. */
  maxEntries?: number;
}

/** LRU of issued leaves by host; entries are re-issued well before they expire. */
export class CertCache {
  private readonly entries = new Map<string, IssuedCert>();
  private readonly maxEntries: number;
  private readonly renewMarginMs: number;

  constructor(
    private readonly issuer: LeafIssuer,
    opts: CertCacheOptions = {},
  ) {
    this.maxEntries = Math.max(1, opts.maxEntries ?? 1000);
    // A leaf handed out now must outlast the connections that use it; a day is plenty,
    // but short test validities need a proportional margin or every lookup would re-issue.
    this.renewMarginMs = Math.min(issuer.validityMs / 3, DAY);
  }

  get size(): number {
    return this.entries.size;
  }

  get(host: string): IssuedCert {
    const key = normalizeHost(host).name;
    const hit = this.entries.get(key);
    this.entries.delete(key); // re-inserted below: Map order is the recency order
    if (hit && hit.notAfter.getTime() - this.issuer.now().getTime() > this.renewMarginMs) {
      this.entries.set(key, hit);
      return hit;
    }
    const fresh = this.issuer.issue(key);
    this.entries.set(key, fresh);
    for (const oldest of this.entries.keys()) {
      if (this.entries.size <= this.maxEntries) break;
      this.entries.delete(oldest);
    }
    return fresh;
  }

  clear(): void {
    this.entries.clear();
  }
}
