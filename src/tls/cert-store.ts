/**
 * What ACME keeps on disk in `state_dir`: the account key and, per certificate, its chain and
 * key. The directory is 0700 and every key 0600; files are replaced atomically (write, rename)
 * so a crash mid-write never leaves a certificate without its key. Read back at start so a
 * restart serves the stored certificate without a new order.
 */
import { X509Certificate } from "node:crypto";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";

export interface StoredCertificate {
  /** Full chain, leaf first (PEM). */
  cert: string;
  key: string;
  names: string[];
  notBefore: number;
  notAfter: number;
  serial: string;
  issuer: string;
}

/** File names are built from the first domain, which config validation keeps to [a-z0-9.-]. */
const certFile = (name: string): string => `${name}.crt`;
const keyFile = (name: string): string => `${name}.key`;
export const ACCOUNT_KEY = "account.key";

/** The DNS names of a certificate's subjectAltName. */
export function certificateNames(x: X509Certificate): string[] {
  return (x.subjectAltName ?? "")
    .split(", ")
    .filter((e) => e.startsWith("DNS:"))
    .map((e) => e.slice(4).toLowerCase());
}

export function describePem(cert: string, key: string): StoredCertificate {
  const x = new X509Certificate(cert);
  return {
    cert,
    key,
    names: certificateNames(x),
    notBefore: Date.parse(x.validFrom),
    notAfter: Date.parse(x.validTo),
    serial: x.serialNumber,
    issuer: x.issuer.replace(/\n/g, ", "),
  };
}

export class CertStore {
  constructor(readonly dir: string) {}

  /** Creates the directory 0700 (or tightens it); returns a warning when it cannot. */
  prepare(): string | null {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const mode = statSync(this.dir).mode & 0o777;
    if ((mode & 0o077) === 0) return null;
    try {
      chmodSync(this.dir, 0o700);
      return null;
    } catch (e) {
      return `tls.acme.state_dir ${this.dir} is mode ${mode.toString(8)} and cannot be made 0700: ${(e as Error).message}`;
    }
  }

  readAccountKey(): string | null {
    return this.read(ACCOUNT_KEY);
  }

  writeAccountKey(pem: string): void {
    this.write(ACCOUNT_KEY, pem);
  }

  /** The stored certificate for `name`, or null when there is none or it does not parse. */
  readCertificate(name: string): StoredCertificate | null {
    const cert = this.read(certFile(name));
    const key = this.read(keyFile(name));
    if (cert === null || key === null) return null;
    try {
      return describePem(cert, key);
    } catch {
      return null;
    }
  }

  /** Key first: a certificate file is never newer than a key that does not match it. */
  writeCertificate(name: string, cert: string, key: string): void {
    this.write(keyFile(name) + ".new", key);
    this.write(certFile(name) + ".new", cert);
    renameSync(join(this.dir, keyFile(name) + ".new"), join(this.dir, keyFile(name)));
    renameSync(join(this.dir, certFile(name) + ".new"), join(this.dir, certFile(name)));
  }

  private read(file: string): string | null {
    const p = join(this.dir, file);
    if (!existsSync(p)) return null;
    return readFileSync(p, "utf8");
  }

  private write(file: string, text: string): void {
    const p = join(this.dir, file);
    const tmp = `${p}.tmp`;
    // A leftover (or planted) tmp file, symlink included, is removed, never written through:
    // 'wx' creates a new file or fails.
    try {
      unlinkSync(tmp);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
    }
    writeFileSync(tmp, text, { mode: 0o600, flag: "wx" });
    chmodSync(tmp, 0o600);
    renameSync(tmp, p);
  }
}
