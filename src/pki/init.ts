// Creating a fresh MITM CA. EC P-256: Go (Docker, containerd), OpenSSL/curl, NSS, macOS and
// Windows all accept it, key generation is instant, and leaves sign in microseconds.

import { createPublicKey, generateKeyPairSync, type KeyObject } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, open, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { CaInitExistsError } from "./errors.ts";
import { KU, ext, keyId, nameCN, randomSerial, signCertificate, toPem } from "./x509.ts";

export const DEFAULT_CA_CN = "crm MITM CA";
/**
 * One year. The key sits unencrypted on disk and lets its holder impersonate any site to
 * every machine that trusts it, so a short life limits the damage of a leaked copy; renewing
 * is one `initCa({ force: true })` and re-trusting.
 */
export const DEFAULT_CA_DAYS = 365;

export interface InitCaOptions {
  outDir: string;
  cn?: string;
  days?: number;
  /** Replace existing ca.crt / ca.key. */
  force?: boolean;
}

/** A self-signed CA certificate for `key`; exported so tests can make CAs of other key types. */
export function selfSignedCa(
  key: KeyObject,
  opts: { cn?: string; notBefore?: Date; notAfter?: Date; days?: number } = {},
): string {
  if (key.asymmetricKeyType !== "rsa" && key.asymmetricKeyType !== "ec")
    throw new TypeError(`unsupported CA key type ${key.asymmetricKeyType}`);
  const spki = createPublicKey(key).export({ type: "spki", format: "der" });
  const name = nameCN(opts.cn ?? DEFAULT_CA_CN);
  const now = Date.now();
  const id = keyId(spki);
  const der = signCertificate(
    {
      serial: randomSerial(),
      issuer: name,
      subject: name,
      notBefore: opts.notBefore ?? new Date(now - 3_600_000),
      notAfter: opts.notAfter ?? new Date(now + (opts.days ?? DEFAULT_CA_DAYS) * 86_400_000),
      spki,
      // pathLen 0: this CA only ever signs leaves, so it cannot be used to mint sub-CAs.
      extensions: [
        ext.basicConstraints(true, 0),
        ext.keyUsage([KU.keyCertSign, KU.cRLSign]),
        ext.subjectKeyId(id),
        ext.authorityKeyId(id),
      ],
    },
    key,
    key.asymmetricKeyType === "rsa" ? "rsa-sha256" : "ecdsa-sha256",
  );
  return toPem(der);
}

export async function initCa(opts: InitCaOptions): Promise<{ certPath: string; keyPath: string }> {
  const certPath = join(opts.outDir, "ca.crt");
  const keyPath = join(opts.outDir, "ca.key");
  if (!opts.force) {
    for (const p of [keyPath, certPath])
      if (existsSync(p))
        throw new CaInitExistsError(
          p,
          "already exists; refusing to overwrite a CA that clients may trust (pass force to replace it)",
        );
  }
  // 0700 only applies to directories created here; an existing outDir keeps its mode.
  await mkdir(opts.outDir, { recursive: true, mode: 0o700 });

  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const keyPem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
  const certPem = selfSignedCa(privateKey, { cn: opts.cn, days: opts.days });

  // Written to a temporary name and renamed: with force, the old pair stays intact until the
  // new one is complete, and the key is never visible with a wider mode than 0600.
  const suffix = `.tmp-${process.pid}-${Date.now()}`;
  const written: string[] = [];
  try {
    await writeNew(keyPath + suffix, keyPem, 0o600);
    written.push(keyPath + suffix);
    await writeNew(certPath + suffix, certPem, 0o644);
    written.push(certPath + suffix);
    if (!opts.force) {
      for (const p of [keyPath, certPath])
        if (existsSync(p))
          throw new CaInitExistsError(
            p,
            "appeared while the CA was being created; not overwriting it",
          );
    }
    await rename(keyPath + suffix, keyPath);
    await rename(certPath + suffix, certPath);
  } catch (err) {
    await Promise.all(written.map((p) => rm(p, { force: true })));
    throw err;
  }
  return { certPath, keyPath };
}

async function writeNew(path: string, data: string, mode: number): Promise<void> {
  // "wx" + mode: the file is created with its final permissions, never chmod-ed after the fact.
  const fh = await open(path, "wx", mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Human-readable steps to make clients trust the CA; `proxy` is the crm listen URL for the check. */
export function trustInstructions(
  certPath: string,
  opts: { cn?: string; proxy?: string } = {},
): string {
  const cn = opts.cn ?? DEFAULT_CA_CN;
  const proxy = opts.proxy ?? "http://127.0.0.1:8080";
  return `Trust the crm MITM CA (${certPath}) on the machines whose traffic you want to inspect.
Anyone holding the key can impersonate any site to them: remove it when you are done.

Debian / Ubuntu:
  sudo cp ${certPath} /usr/local/share/ca-certificates/crm-mitm-ca.crt   # must end in .crt
  sudo update-ca-certificates
  # undo: sudo rm /usr/local/share/ca-certificates/crm-mitm-ca.crt && sudo update-ca-certificates --fresh

RHEL / Fedora / CentOS:
  sudo cp ${certPath} /etc/pki/ca-trust/source/anchors/crm-mitm-ca.crt
  sudo update-ca-trust
  # undo: sudo rm /etc/pki/ca-trust/source/anchors/crm-mitm-ca.crt && sudo update-ca-trust

macOS:
  sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain ${certPath}
  # undo: sudo security delete-certificate -c "${cn}" /Library/Keychains/System.keychain
  # Docker Desktop reads the keychain at start-up: restart it afterwards.

Docker Engine (dockerd with HTTPS_PROXY pointing at crm):
  Through a proxy, dockerd checks the registry certificate against the SYSTEM store, so use the
  Debian/RHEL steps above, then: sudo systemctl restart docker
  /etc/docker/certs.d/<registry-host>/ca.crt only covers that one host; blob downloads are
  redirected to other hosts (e.g. production.cloudflare.docker.com) and would still fail.

containerd (Kubernetes nodes, nerdctl):
  System store as above, then: sudo systemctl restart containerd
  Or per registry, with config_path = "/etc/containerd/certs.d" set in the CRI registry config,
  /etc/containerd/certs.d/docker.io/hosts.toml:
    server = "https://registry-1.docker.io"
    [host."https://registry-1.docker.io"]
      capabilities = ["pull", "resolve"]
      ca = "${certPath}"
  (the same redirect caveat as certs.d applies to this per-host setting).

Node.js / Bun clients: NODE_EXTRA_CA_CERTS=${certPath}

Check (expect HTTP 401 from the registry, not a certificate error):
  curl --cacert ${certPath} -x ${proxy} https://registry-1.docker.io/v2/
`;
}
