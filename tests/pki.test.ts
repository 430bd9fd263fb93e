/** src/pki: loading a CA, issuing leaves, creating a CA — checked with node:crypto, openssl and curl. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { X509Certificate, createPublicKey, generateKeyPairSync, type KeyObject } from "node:crypto";
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as der from "../src/pki/der.ts";
import {
  CaCertInvalidError,
  CaError,
  CaExpiredError,
  CaFileMissingError,
  CaFileUnreadableError,
  CaInitExistsError,
  CaKeyInvalidError,
  CaKeyMismatchError,
  CaKeyUnsupportedError,
  CaNoKeyCertSignError,
  CaNotCaError,
  CaNotYetValidError,
  CertCache,
  InvalidHostError,
  LeafIssuer,
  caWarnings,
  initCa,
  loadCa,
  selfSignedCa,
  trustInstructions,
  type Ca,
} from "../src/pki/index.ts";
import { runCaInit } from "../src/pki/command.ts";
import {
  KU,
  ext,
  keyId,
  nameCN,
  parseCertificate,
  randomSerial,
  signCertificate,
  toPem,
} from "../src/pki/x509.ts";

const dir = mkdtempSync(join(tmpdir(), "crm-pki-"));
const isRoot = process.getuid?.() === 0;
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

afterAll(() => rmSync(dir, { recursive: true, force: true }));

function write(name: string, data: string | Buffer, mode = 0o600): string {
  const p = join(dir, name);
  writeFileSync(p, data, { mode });
  chmodSync(p, mode);
  return p;
}

type KeyKind = "rsa" | "p256" | "p384";
function keyPair(kind: KeyKind): { privateKey: KeyObject; publicKey: KeyObject } {
  return kind === "rsa"
    ? generateKeyPairSync("rsa", { modulusLength: 2048 })
    : generateKeyPairSync("ec", { namedCurve: kind === "p256" ? "P-256" : "P-384" });
}

/** A certificate for `key` with arbitrary extensions and dates, to build the broken CAs. */
function customCert(
  key: KeyObject,
  extensions: Buffer[],
  notBefore = new Date(Date.now() - HOUR),
  notAfter = new Date(Date.now() + DAY),
): string {
  const spki = keyPublicDer(key);
  const name = nameCN("custom");
  return toPem(
    signCertificate(
      {
        serial: randomSerial(),
        issuer: name,
        subject: name,
        notBefore,
        notAfter,
        spki,
        extensions: [...extensions, ext.subjectKeyId(keyId(spki))],
      },
      key,
      key.asymmetricKeyType === "rsa" ? "rsa-sha256" : "ecdsa-sha256",
    ),
  );
}
// Bun's createPublicKey throws on a KeyObject that is already public (Node accepts it).
const keyPublicDer = (key: KeyObject): Buffer =>
  (key.type === "public" ? key : createPublicKey(key)).export({ type: "spki", format: "der" });

async function run(cmd: string[]): Promise<{ code: number; out: string; err: string }> {
  // Async on purpose: a synchronous spawn would block the event loop serving the TLS under test.
  const p = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  return { code, out, err };
}

/** The outer signatureAlgorithm OID of a certificate. */
function sigAlgOid(certPem: string): string {
  const buf = new X509Certificate(certPem).raw;
  const [, alg] = der.children(buf, der.read(buf));
  const [id] = alg ? der.children(buf, alg) : [];
  if (!id) throw new Error("no signatureAlgorithm");
  return der.readOid(buf, id);
}

const firstCert = (pem: string): X509Certificate =>
  new X509Certificate(pem.slice(0, pem.indexOf("-----END CERTIFICATE-----") + 25));

let ecCa: Ca;
let rsaCa: Ca;
let ecCaPath: string;
let rsaCaPath: string;

beforeAll(async () => {
  const ec = await initCa({ outDir: join(dir, "ec") });
  ecCaPath = ec.certPath;
  ecCa = await loadCa(ec.certPath, ec.keyPath);
  const rsa = keyPair("rsa");
  rsaCaPath = write("rsa-ca.crt", selfSignedCa(rsa.privateKey, { cn: "crm test RSA CA" }), 0o644);
  rsaCa = await loadCa(
    rsaCaPath,
    write("rsa-ca.key", rsa.privateKey.export({ type: "pkcs1", format: "pem" })),
  );
});

describe("loadCa accepts", () => {
  const formats: [KeyKind, "pkcs1" | "pkcs8" | "sec1"][] = [
    ["rsa", "pkcs1"],
    ["rsa", "pkcs8"],
    ["p256", "sec1"],
    ["p256", "pkcs8"],
    ["p384", "sec1"],
    ["p384", "pkcs8"],
  ];
  for (const [kind, format] of formats) {
    test(`${kind} key as ${format}, certificate made by openssl`, async () => {
      const { privateKey } = keyPair(kind);
      const keyPath = write(
        `ok-${kind}-${format}.key`,
        privateKey.export({ type: format, format: "pem" }) as string,
      );
      const certPath = join(dir, `ok-${kind}-${format}.crt`);
      // An independent tool makes the certificate, so the parser is not only tested against itself.
      // openssl's default CA has no keyUsage (allowed by loadCa, refused by -x509_strict); add it half the time.
      const withKu = format === "pkcs8";
      const kuArgs = withKu ? ["-addext", "keyUsage=critical,keyCertSign,cRLSign"] : [];
      const r = await run([
        "openssl",
        "req",
        "-x509",
        "-key",
        keyPath,
        "-out",
        certPath,
        "-subj",
        `/O=crm tests/CN=${kind} ${format}`,
        "-days",
        "2",
        "-sha256",
        ...kuArgs,
      ]);
      expect(r.err).not.toContain("error");
      expect(r.code).toBe(0);
      const ca = await loadCa(certPath, keyPath);
      expect(ca.sigAlg).toBe(kind === "rsa" ? "rsa-sha256" : "ecdsa-sha256");
      expect(ca.chainPem).toBe("");
      const issued = new LeafIssuer(ca).issue("example.com");
      const leaf = new X509Certificate(issued.certPem);
      expect(leaf.verify(ca.cert.publicKey)).toBe(true);
      expect(leaf.checkIssued(ca.cert)).toBe(true); // "this was issued by other"
      const leafPath = write(`ok-${kind}-${format}-leaf.pem`, issued.certPem, 0o644);
      const v = await run([
        "openssl",
        "verify",
        ...(withKu ? ["-x509_strict"] : []),
        "-purpose",
        "sslserver",
        "-CAfile",
        certPath,
        leafPath,
      ]);
      expect(v.err).toBe("");
      expect(v.out.trim()).toBe(`${leafPath}: OK`);
    });
  }

  test("a combined file and an EC PARAMETERS block before the key", async () => {
    const { privateKey } = keyPair("p256");
    const certPem = selfSignedCa(privateKey);
    const params = "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n";
    const both = write(
      "combined.pem",
      params + privateKey.export({ type: "sec1", format: "pem" }) + certPem,
    );
    const ca = await loadCa(both, both);
    expect(ca.certPem).toBe(certPem);
  });
});

describe("loadCa rejects, each with its own error", () => {
  const seen = new Map<string, CaError>();
  async function expectError<T extends CaError>(
    cls: new (...a: never[]) => T,
    certPath: string,
    keyPath: string,
    mentions: string,
  ): Promise<T> {
    const err = await loadCa(certPath, keyPath).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(cls);
    expect(err).toBeInstanceOf(CaError);
    expect(err).toBeInstanceOf(Error);
    const e = err as T;
    expect(e.message).toContain(mentions);
    seen.set(e.code, e);
    return e;
  }
  const ecKey = (): string => join(dir, "ec", "ca.key");

  test("missing file", async () => {
    const e = await expectError(
      CaFileMissingError,
      join(dir, "nope.crt"),
      ecKey(),
      join(dir, "nope.crt"),
    );
    expect((e.cause as NodeJS.ErrnoException).code).toBe("ENOENT");
    await expectError(CaFileMissingError, ecCaPath, join(dir, "nope.key"), "nope.key");
  });

  test("unreadable file: a directory, and mode 000 unless running as root", async () => {
    const d = join(dir, "a-directory");
    mkdirSync(d);
    const e = await expectError(CaFileUnreadableError, d, ecKey(), "is a directory");
    expect(e.cause).toBeInstanceOf(Error);
    const locked = write("locked.crt", readFileSync(ecCaPath), 0o000);
    // root reads mode-000 files anyway, so only an unprivileged run can see EACCES.
    if (!isRoot) await expectError(CaFileUnreadableError, locked, ecKey(), "permission denied");
  });

  test("garbage, DER and swapped files for the certificate", async () => {
    await expectError(
      CaCertInvalidError,
      write("garbage.crt", "hello, I am not a certificate\n"),
      ecKey(),
      "no PEM certificate",
    );
    await expectError(CaCertInvalidError, write("empty.crt", ""), ecKey(), "no PEM certificate");
    const broken = toPem(Buffer.from("30 82 01 00 02 01 01".replaceAll(" ", ""), "hex"));
    const e = await expectError(
      CaCertInvalidError,
      write("broken.crt", broken),
      ecKey(),
      "cannot parse certificate",
    );
    expect(e.cause).toBeInstanceOf(Error);
    await expectError(
      CaCertInvalidError,
      write("der.crt", ecCa.cert.raw),
      ecKey(),
      "looks like DER",
    );
    await expectError(CaCertInvalidError, ecKey(), ecCaPath, "swapped");
  });

  test("garbage, encrypted and unsupported keys", async () => {
    await expectError(
      CaKeyInvalidError,
      ecCaPath,
      write("garbage.key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
      "cannot parse PRIVATE KEY",
    );
    await expectError(
      CaKeyInvalidError,
      ecCaPath,
      write("text.key", "password123\n"),
      "no PEM private key",
    );
    const { privateKey } = keyPair("p256");
    const encrypted = privateKey.export({
      type: "pkcs8",
      format: "pem",
      cipher: "aes-256-cbc",
      passphrase: "x",
    }) as string;
    await expectError(CaKeyInvalidError, ecCaPath, write("encrypted.key", encrypted), "encrypted");
    const ed = generateKeyPairSync("ed25519").privateKey.export({
      type: "pkcs8",
      format: "pem",
    }) as string;
    await expectError(CaKeyUnsupportedError, ecCaPath, write("ed25519.key", ed), "ed25519");
  });

  test("key from another CA", async () => {
    await expectError(CaKeyMismatchError, ecCaPath, join(dir, "rsa-ca.key"), "does not match");
  });

  test("not a CA: CA:FALSE, and no basicConstraints at all", async () => {
    const { privateKey } = keyPair("p256");
    const key = write("server.key", privateKey.export({ type: "pkcs8", format: "pem" }));
    await expectError(
      CaNotCaError,
      write("server.crt", customCert(privateKey, [ext.basicConstraints(false)])),
      key,
      "not a CA",
    );
    await expectError(
      CaNotCaError,
      write("v1ish.crt", customCert(privateKey, [])),
      key,
      "not a CA",
    );
  });

  test("keyUsage without keyCertSign", async () => {
    const { privateKey } = keyPair("p256");
    const key = write("noksign.key", privateKey.export({ type: "pkcs8", format: "pem" }));
    await expectError(
      CaNoKeyCertSignError,
      write(
        "noksign.crt",
        customCert(privateKey, [
          ext.basicConstraints(true),
          ext.keyUsage([KU.digitalSignature, KU.cRLSign]),
        ]),
      ),
      key,
      "keyCertSign",
    );
  });

  test("expired and not yet valid", async () => {
    const { privateKey } = keyPair("p256");
    const key = write("dated.key", privateKey.export({ type: "sec1", format: "pem" }));
    const now = Date.now();
    const old = selfSignedCa(privateKey, {
      notBefore: new Date(now - 10 * DAY),
      notAfter: new Date(now - DAY),
    });
    await expectError(CaExpiredError, write("expired.crt", old), key, "expired on");
    const future = selfSignedCa(privateKey, {
      notBefore: new Date(now + DAY),
      notAfter: new Date(now + 10 * DAY),
    });
    await expectError(CaNotYetValidError, write("future.crt", future), key, "not valid until");
  });

  test("every failure above had a distinct code", () => {
    expect([...seen.keys()].sort()).toEqual(
      [
        "CA_CERT_INVALID",
        "CA_EXPIRED",
        "CA_FILE_MISSING",
        "CA_FILE_UNREADABLE",
        "CA_KEY_INVALID",
        "CA_KEY_MISMATCH",
        "CA_KEY_UNSUPPORTED",
        "CA_NOT_CA",
        "CA_NOT_YET_VALID",
        "CA_NO_KEYCERTSIGN",
      ].sort(),
    );
  });
});

describe("caWarnings", () => {
  test("a group/world-readable key, and a CA close to expiry", async () => {
    const { privateKey } = keyPair("p256");
    const key = write("warn.key", privateKey.export({ type: "pkcs8", format: "pem" }), 0o600);
    const cert = write("warn.crt", selfSignedCa(privateKey, { days: 400 }), 0o644);
    const ca = await loadCa(cert, key);
    expect(caWarnings(ca)).toEqual([]);
    chmodSync(key, 0o644);
    expect(caWarnings(ca).join("\n")).toContain("chmod 600");
    expect(caWarnings(ca, new Date(Date.now() + 390 * DAY)).join("\n")).toContain("expires in");
  });
});

describe("LeafIssuer", () => {
  for (const kind of ["ec", "rsa"] as const) {
    test(`${kind} CA: names, IPs, extensions, signature`, () => {
      const ca = kind === "ec" ? ecCa : rsaCa;
      const issuer = new LeafIssuer(ca);
      const t0 = Date.now();
      const issued = issuer.issue("registry-1.docker.io");
      const leaf = new X509Certificate(issued.certPem);
      expect(leaf.verify(ca.cert.publicKey)).toBe(true);
      expect(leaf.checkIssued(ca.cert)).toBe(true); // "this was issued by other"
      expect(leaf.checkHost("registry-1.docker.io")).toBe("registry-1.docker.io");
      expect(leaf.checkHost("docker.io")).toBeUndefined();
      expect(leaf.ca).toBe(false);
      expect(sigAlgOid(issued.certPem)).toBe(
        kind === "ec" ? "1.2.840.10045.4.3.2" : "1.2.840.113549.1.1.11",
      );

      const parsed = parseCertificate(leaf.raw);
      expect(parsed.issuer.equals(ca.subjectDer)).toBe(true);
      expect(parsed.notBefore.getTime()).toBeLessThanOrEqual(t0 - HOUR + 1000);
      expect(parsed.notBefore.getTime()).toBeGreaterThan(t0 - HOUR - 2000);
      expect(Math.abs(parsed.notAfter.getTime() - (t0 + 7 * DAY))).toBeLessThan(2000);
      expect(issued.notAfter.getTime()).toBe(parsed.notAfter.getTime());
      expect(issued.notBefore.getTime()).toBe(parsed.notBefore.getTime());
      // AKI must equal the CA's SKI, or OpenSSL refuses the CA as issuer.
      expect(parsed.extensions.get("2.5.29.35")?.value.includes(ca.keyId)).toBe(true);
      expect(parsed.extensions.has("2.5.29.14")).toBe(true);
      expect(parsed.extensions.get("2.5.29.37")?.value.includes(der.oid("1.3.6.1.5.5.7.3.1"))).toBe(
        true,
      );
      expect(parsed.extensions.get("2.5.29.15")?.critical).toBe(true);

      const serial = leaf.serialNumber;
      expect(serial.length).toBeLessThanOrEqual(32);
      expect(serial.length).toBeGreaterThan(20);
      // Positive and at most 20 octets, read where it is encoded: serialNumber is the value's hex
      // without DER's sign byte, so its first digit is 8-f whenever the first random byte is 0 (1 in 256).
      const tbs = der.children(leaf.raw, der.read(leaf.raw))[0];
      const serialNode = tbs && der.children(leaf.raw, tbs)[1]; // after [0] version
      expect(serialNode?.tag).toBe(0x02);
      const encoded = serialNode ? der.content(leaf.raw, serialNode) : Buffer.alloc(0);
      expect(encoded.length).toBeLessThanOrEqual(20);
      expect((encoded[0] ?? 0x80) & 0x80).toBe(0);
      expect(
        new X509Certificate(issuer.issue("registry-1.docker.io").certPem).serialNumber,
      ).not.toBe(serial);

      const v4 = new X509Certificate(issuer.issue("127.0.0.1").certPem);
      expect(v4.checkIP("127.0.0.1")).toBe("127.0.0.1");
      expect(v4.checkIP("127.0.0.2")).toBeUndefined();
      // An IP SAN, not a DNS SAN; only the CN (which clients ignore for IPs) would match.
      expect(v4.checkHost("127.0.0.1", { subject: "never" })).toBeUndefined();
      const v6 = new X509Certificate(issuer.issue("[::1]").certPem);
      expect(v6.checkIP("::1")).toBe("::1");
      expect(v6.subjectAltName).toContain("IP Address:");
    });
  }

  test("long names, odd spellings, invalid hosts, custom validity", () => {
    const issuer = new LeafIssuer(ecCa, { days: 2 });
    const long = `${"a".repeat(60)}.${"b".repeat(60)}.example.com`;
    const leaf = new X509Certificate(issuer.issue(long).certPem);
    expect(leaf.checkHost(long)).toBe(long);
    expect(leaf.subject).toBe(`CN=${long.slice(0, 64)}`);
    expect(
      new X509Certificate(issuer.issue("Registry.Example.COM.").certPem).checkHost(
        "registry.example.com",
      ),
    ).toBe("registry.example.com");
    expect(new X509Certificate(issuer.issue("bücher.example").certPem).subjectAltName).toBe(
      "DNS:xn--bcher-kva.example",
    );
    for (const bad of ["", "a b", "evil.com/x", "x:443", "[not-an-ip]"])
      expect(() => issuer.issue(bad)).toThrow(InvalidHostError);
    const issued = issuer.issue("short.example");
    expect(Math.round((issued.notAfter.getTime() - issued.notBefore.getTime()) / HOUR)).toBe(
      2 * 24 + 1,
    );
    expect(() => new LeafIssuer(ecCa, { days: 0 })).toThrow(RangeError);
  });

  test("a leaf never outlives its CA", async () => {
    const { privateKey } = keyPair("p256");
    const caEnd = new Date(Date.now() + 2 * DAY);
    const ca = await loadCa(
      write("short-ca.crt", selfSignedCa(privateKey, { notAfter: caEnd })),
      write("short-ca.key", privateKey.export({ type: "pkcs8", format: "pem" })),
    );
    expect(new LeafIssuer(ca).issue("x.example").notAfter.getTime()).toBe(
      Math.floor(caEnd.getTime() / 1000) * 1000,
    );
  });

  test("timing: 1 and 50 leaves, EC and RSA CAs", () => {
    for (const [name, ca] of [
      ["EC P-256", ecCa],
      ["RSA-2048", rsaCa],
    ] as const) {
      const t0 = performance.now();
      const issuer = new LeafIssuer(ca);
      const tCtor = performance.now() - t0;
      const t1 = performance.now();
      issuer.issue("first.example.com");
      const tOne = performance.now() - t1;
      const t2 = performance.now();
      for (let i = 0; i < 50; i++) issuer.issue(`host${i}.example.com`);
      const tFifty = performance.now() - t2;
      console.log(
        `[pki timing] ${name} CA: LeafIssuer ctor ${tCtor.toFixed(2)} ms, first leaf ${tOne.toFixed(3)} ms, 50 leaves ${tFifty.toFixed(2)} ms (${(tFifty / 50).toFixed(3)} ms each)`,
      );
      expect(tFifty).toBeLessThan(2000);
    }
  });
});

describe("real clients accept the chain", () => {
  const servers: ReturnType<typeof Bun.serve>[] = [];
  afterAll(() => {
    for (const s of servers) s.stop(true);
  });
  function serve(cert: { certPem: string; keyPem: string }): number {
    const s = Bun.serve({
      port: 0,
      hostname: "127.0.0.1",
      tls: { cert: cert.certPem, key: cert.keyPem },
      fetch: () => new Response("hello from the leaf\n"),
    });
    servers.push(s);
    return s.port ?? 0;
  }
  const curl = (
    caPath: string,
    url: string,
    port: number,
  ): Promise<{ code: number; out: string; err: string }> =>
    run([
      "curl",
      "-sS",
      "--noproxy",
      "*",
      "--max-time",
      "10",
      "--resolve",
      `localhost:${port}:127.0.0.1`,
      "--cacert",
      caPath,
      url,
    ]);

  for (const kind of ["ec", "rsa"] as const) {
    test(`${kind} CA: curl, openssl verify and Bun fetch`, async () => {
      const ca = kind === "ec" ? ecCa : rsaCa;
      const caPath = kind === "ec" ? ecCaPath : rsaCaPath;
      const issuer = new LeafIssuer(ca);
      const byName = issuer.issue("localhost");
      const byIp = issuer.issue("127.0.0.1");
      const namePort = serve(byName);
      const ipPort = serve(byIp);

      const a = await curl(caPath, `https://localhost:${namePort}/`, namePort);
      expect(a.err).toBe("");
      expect(a.out).toBe("hello from the leaf\n");
      const b = await curl(caPath, `https://127.0.0.1:${ipPort}/`, ipPort);
      expect(b.err).toBe("");
      expect(b.out).toBe("hello from the leaf\n");
      // …and the name check is real: the "localhost" leaf must not pass for 127.0.0.1.
      const wrong = await curl(caPath, `https://127.0.0.1:${namePort}/`, namePort);
      expect(wrong.code).toBe(60);

      for (const issued of [byName, byIp]) {
        const leafPath = write(
          `${kind}-leaf-${issued === byName ? "name" : "ip"}.pem`,
          issued.certPem,
          0o644,
        );
        const v = await run([
          "openssl",
          "verify",
          "-x509_strict",
          "-purpose",
          "sslserver",
          "-CAfile",
          caPath,
          leafPath,
        ]);
        expect(v.out.trim()).toBe(`${leafPath}: OK`);
      }
      const viaFetch = await fetch(`https://127.0.0.1:${ipPort}/`, {
        tls: { ca: ca.certPem },
        proxy: undefined,
      });
      expect(await viaFetch.text()).toBe("hello from the leaf\n");
    });
  }

  test("intermediate CA: the leaf is served with the intermediate, curl trusts only the root", async () => {
    const root = keyPair("p256");
    // Not selfSignedCa: its pathLen 0 forbids intermediates (curl says "path length constraint exceeded").
    const rootPem = customCert(
      root.privateKey,
      [ext.basicConstraints(true), ext.keyUsage([KU.keyCertSign])],
      undefined,
      new Date(Date.now() + 60 * DAY),
    );
    const rootPath = write("root.crt", rootPem, 0o644);
    const inter = keyPair("p384");
    const interSpki = keyPublicDer(inter.publicKey);
    const interDer = signCertificate(
      {
        serial: randomSerial(),
        issuer: nameCN("custom"),
        subject: nameCN("crm test intermediate"),
        notBefore: new Date(Date.now() - HOUR),
        notAfter: new Date(Date.now() + 30 * DAY),
        spki: interSpki,
        extensions: [
          ext.basicConstraints(true, 0),
          ext.keyUsage([KU.keyCertSign]),
          ext.subjectKeyId(keyId(interSpki)),
          ext.authorityKeyId(keyId(keyPublicDer(root.publicKey))),
        ],
      },
      root.privateKey,
      "ecdsa-sha256",
    );
    const ca = await loadCa(
      write("inter.crt", toPem(interDer), 0o644),
      write("inter.key", inter.privateKey.export({ type: "sec1", format: "pem" })),
    );
    expect(caWarnings(ca).join("\n")).toContain("not self-signed");
    const issued = new LeafIssuer(ca).issue("localhost");
    expect(issued.certPem.match(/BEGIN CERTIFICATE/g)?.length).toBe(2);
    expect(firstCert(issued.certPem).checkHost("localhost")).toBe("localhost");
    const port = serve(issued);
    const r = await curl(rootPath, `https://localhost:${port}/`, port);
    expect(r.err).toBe("");
    expect(r.out).toBe("hello from the leaf\n");
  });
});

describe("CertCache", () => {
  test("LRU bound and recency", () => {
    const cache = new CertCache(new LeafIssuer(ecCa), { maxEntries: 3 });
    const a = cache.get("a.example");
    cache.get("b.example");
    cache.get("c.example");
    expect(cache.get("a.example")).toBe(a); // hit, and now the most recent
    cache.get("d.example"); // evicts b, the least recently used
    expect(cache.size).toBe(3);
    expect(cache.get("a.example")).toBe(a);
    const c = cache.get("c.example");
    const b2 = cache.get("b.example"); // re-issued, evicting d
    expect(cache.size).toBe(3);
    expect(cache.get("c.example")).toBe(c);
    expect(cache.get("B.Example.")).toBe(b2);
    expect(cache.get("[::1]")).toBe(cache.get("::1"));
    for (let i = 0; i < 50; i++) cache.get(`n${i}.example`);
    expect(cache.size).toBe(3);
    expect(new CertCache(new LeafIssuer(ecCa)).size).toBe(0);
  });

  test("re-issues within min(validity/3, 1 day) of expiry", () => {
    let now = Date.now();
    const clock = (): Date => new Date(now);
    const cache = new CertCache(new LeafIssuer(ecCa, { now: clock }));
    const first = cache.get("registry.example");
    now += 5 * DAY; // 2 days left: more than the 1-day margin
    expect(cache.get("registry.example")).toBe(first);
    now += 1.1 * DAY; // 0.9 days left
    const second = cache.get("registry.example");
    expect(second).not.toBe(first);
    expect(second.notAfter.getTime()).toBeGreaterThan(first.notAfter.getTime());
    expect(cache.get("registry.example")).toBe(second);

    const short = new CertCache(new LeafIssuer(ecCa, { now: clock, days: 0.3 })); // margin 0.1 day
    const s1 = short.get("s.example");
    now += 0.15 * DAY;
    expect(short.get("s.example")).toBe(s1);
    now += 0.1 * DAY;
    expect(short.get("s.example")).not.toBe(s1);
  });
});

describe("initCa", () => {
  test("writes a 0600 key and a CA certificate that loadCa accepts", async () => {
    const out = join(dir, "init-a");
    const { certPath, keyPath } = await initCa({ outDir: out, cn: "Unit Test CA", days: 30 });
    expect(statSync(keyPath).mode & 0o777).toBe(0o600);
    expect(certPath).toBe(join(out, "ca.crt"));
    const ca = await loadCa(certPath, keyPath);
    expect(ca.cert.subject).toBe("CN=Unit Test CA");
    expect(ca.cert.ca).toBe(true);
    expect(ca.sigAlg).toBe("ecdsa-sha256");
    expect(Math.round((ca.notAfter.getTime() - Date.now()) / DAY)).toBe(30);
    const parsed = parseCertificate(ca.cert.raw);
    expect(parsed.extensions.get("2.5.29.19")?.critical).toBe(true);
    expect(parsed.extensions.get("2.5.29.15")?.critical).toBe(true);
    const text = await run(["openssl", "x509", "-in", certPath, "-noout", "-text"]);
    expect(text.out).toContain("CA:TRUE");
    expect(text.out).toContain("Certificate Sign, CRL Sign");
    expect(text.out).toContain("ecdsa-with-SHA256");
    const def = new X509Certificate(readFileSync(ecCaPath));
    expect(def.subject).toBe("CN=crm MITM CA");
  });

  test("refuses to overwrite either file without force; force replaces both, key still 0600", async () => {
    const out = join(dir, "init-b");
    const { certPath, keyPath } = await initCa({ outDir: out });
    const before = [readFileSync(certPath, "utf8"), readFileSync(keyPath, "utf8")];
    const err = await initCa({ outDir: out }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CaInitExistsError);
    expect((err as Error).message).toContain(keyPath);
    expect([readFileSync(certPath, "utf8"), readFileSync(keyPath, "utf8")]).toEqual(before);

    rmSync(keyPath);
    const onlyCert = await initCa({ outDir: out }).catch((e: unknown) => e);
    expect(onlyCert).toBeInstanceOf(CaInitExistsError);
    expect((onlyCert as Error).message).toContain(certPath);

    writeFileSync(keyPath, "old", { mode: 0o644 });
    chmodSync(keyPath, 0o644);
    await initCa({ outDir: out, force: true });
    expect(statSync(keyPath).mode & 0o777).toBe(0o600);
    expect(readFileSync(certPath, "utf8")).not.toBe(before[0]);
    await loadCa(certPath, keyPath);
  });

  test("runCaInit prints the trust steps and exits 1 on refusal", async () => {
    const out = join(dir, "init-c");
    const original = process.stdout.write.bind(process.stdout);
    const originalErr = process.stderr.write.bind(process.stderr);
    let printed = "";
    process.stdout.write = ((s: string) => ((printed += s), true)) as typeof process.stdout.write;
    process.stderr.write = ((s: string) => ((printed += s), true)) as typeof process.stderr.write;
    try {
      expect(
        await runCaInit({ kind: "ca-init", outDir: out, cn: null, days: null, force: false }),
      ).toBe(0);
      expect(printed).toContain("update-ca-certificates");
      expect(
        await runCaInit({ kind: "ca-init", outDir: out, cn: null, days: null, force: false }),
      ).toBe(1);
      expect(printed).toContain("already exists");
    } finally {
      process.stdout.write = original;
      process.stderr.write = originalErr;
    }
  });

  test("trustInstructions covers the platforms", () => {
    const text = trustInstructions("/etc/crm/ca.crt");
    for (const s of [
      "update-ca-certificates",
      "update-ca-trust",
      "security add-trusted-cert",
      "/etc/docker/certs.d/",
      "SYSTEM store",
      "hosts.toml",
      'ca = "/etc/crm/ca.crt"',
      "systemctl restart containerd",
      "curl --cacert /etc/crm/ca.crt -x http://127.0.0.1:8080 https://registry-1.docker.io/v2/",
    ])
      expect(text).toContain(s);
  });
});
