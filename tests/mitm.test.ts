/** MITM debugging mode with real TLS on both sides: curl, openssl and skopeo as clients. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { X509Certificate } from "node:crypto";
import { buildConfig } from "../src/config/load.ts";
import { initCa } from "../src/pki/index.ts";
import { staticResolver } from "../src/net/resolver.ts";
import { CrmServer } from "../src/proxy/server.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { startOrigin } from "./support/origins.ts";
import { run } from "./support/raw.ts";
import { startRegistry, type RegistryFixture } from "./support/registry.ts";
import { makeLeaf, makeTestCa, type Pem } from "./support/tls.ts";
import { missingTools } from "./support/tools.ts";

const dir = mkdtempSync(join(tmpdir(), "crm-mitm-"));
let mitmCa: { certPath: string; keyPath: string };
let originCa: Pem;
let originCaFile: string;
let origin: ReturnType<typeof startOrigin>;
let other: ReturnType<typeof startOrigin>;
let crm: TestCrm;

beforeAll(async () => {
  mitmCa = await initCa({ outDir: join(dir, "ca") });
  originCa = await makeTestCa("origin CA");
  originCaFile = join(dir, "origin-ca.pem");
  writeFileSync(originCaFile, originCa.cert);
  origin = startOrigin(await makeLeaf(originCa, ["127.0.0.1", "origin.test"]));
  other = startOrigin(await makeLeaf(originCa, ["127.0.0.1", "plain.test"]));
  crm = await startCrm(
    {
      allowed_hosts: ["127.0.0.1", "origin.test", "plain.test"],
      allowed_ports: [origin.port, other.port],
      // The origins' CA is made in this test and unknown to crm; the verified case is below.
      insecure_tls: true,
      mitm: {
        enabled: true,
        ca_cert_path: mitmCa.certPath,
        ca_key_path: mitmCa.keyPath,
        hosts: ["127.0.0.1", "origin.test"],
      },
    },
    "debug",
    staticResolver({ "origin.test": "127.0.0.1", "plain.test": "127.0.0.1" }),
  );
});

afterAll(async () => {
  await crm.stop();
  origin.stop(true);
  other.stop(true);
  rmSync(dir, { recursive: true, force: true });
});

const curl = (args: string[]) => run(["curl", "-sS", "--noproxy", "", "-x", crm.url, ...args]);

describe("interception", () => {
  test("curl trusting the MITM CA: chain and name verify, body intact, request logged", async () => {
    const r = await curl([
      "--cacert",
      mitmCa.certPath,
      "-H",
      "Authorization: Bearer s3cr3t-token",
      `https://origin.test:${origin.port}/echo?x=1`,
    ]);
    expect(r.stderr).toBe("");
    const body = JSON.parse(r.stdout) as { path: string; headers: Record<string, string> };
    expect(body.path).toBe("/echo?x=1");
    expect(body.headers.authorization).toBe("Bearer s3cr3t-token");
    expect(body.headers.via).toBe("1.1 crm");
    await crm.waitLog(
      new RegExp(
        `INFO  GET https://origin\\.test:${origin.port}/echo\\?x=1 kind=mitm client=127\\.0\\.0\\.1 status=200 in=0 out=\\d+ ms=\\d+`,
      ),
    );
    const debug = await crm.waitLog(/DEBUG > GET \/echo\?x=1 .*Authorization/);
    expect(debug).toContain("Authorization: Bearer <redacted, 12 bytes>");
    expect(crm.logs.join("\n")).not.toContain("s3cr3t-token");
  });

  test("a client's own X-Forwarded-For and Forwarded are removed from decrypted requests too", async () => {
    const r = await curl([
      "--cacert",
      mitmCa.certPath,
      "-H",
      "X-Forwarded-For: 6.6.6.6",
      "-H",
      "Forwarded: for=6.6.6.6",
      `https://origin.test:${origin.port}/echo`,
    ]);
    const body = JSON.parse(r.stdout) as { headers: Record<string, string> };
    expect(body.headers.via).toBe("1.1 crm");
    expect(body.headers["x-forwarded-for"]).toBeUndefined();
    expect(body.headers.forwarded).toBeUndefined();
  });

  test("a big download streams through intact", async () => {
    const r = await run([
      "sh",
      "-c",
      `curl -sS --noproxy '' -x ${crm.url} --cacert ${mitmCa.certPath} 'https://origin.test:${origin.port}/bytes?n=33554432' | wc -c`,
    ]);
    expect(r.stdout.trim()).toBe("33554432");
  });

  test("keep-alive inside the decrypted tunnel", async () => {
    const r = await curl([
      "-v",
      "--cacert",
      mitmCa.certPath,
      `https://origin.test:${origin.port}/a`,
      `https://origin.test:${origin.port}/b`,
    ]);
    expect(r.stdout).toBe("origin GET /aorigin GET /b");
    expect(r.stderr).toContain("Re-using existing connection");
  });

  test("a client that does not trust the CA fails the handshake, and crm says why", async () => {
    const r = await curl([`https://origin.test:${origin.port}/nope`]);
    expect(r.code).toBe(60);
    const warn = await crm.waitLog(
      /WARN .*MITM: TLS handshake with the client failed for origin\.test:\d+/,
    );
    expect(warn).toContain("does not trust crm's CA");
    expect(warn).toContain(mitmCa.certPath);
  });

  test("an IP-literal CONNECT gets a certificate with an IP SAN", async () => {
    const r = await run([
      "sh",
      "-c",
      `echo | openssl s_client -proxy 127.0.0.1:${crm.port} -connect 127.0.0.1:${origin.port} -servername 127.0.0.1 2>/dev/null | openssl x509`,
    ]);
    const cert = new X509Certificate(r.stdout);
    expect(cert.subjectAltName).toBe("IP Address:127.0.0.1");
    expect(cert.checkIssued(new X509Certificate(await Bun.file(mitmCa.certPath).text()))).toBe(
      true,
    );
    const ok = await curl(["--cacert", mitmCa.certPath, `https://127.0.0.1:${origin.port}/ip`]);
    expect(ok.stdout).toBe("origin GET /ip");
  });

  test("a name gets a DNS SAN, short validity", async () => {
    const r = await run([
      "sh",
      "-c",
      `echo | openssl s_client -proxy 127.0.0.1:${crm.port} -connect origin.test:${origin.port} -servername origin.test 2>/dev/null | openssl x509`,
    ]);
    const cert = new X509Certificate(r.stdout);
    expect(cert.subjectAltName).toBe("DNS:origin.test");
    const days = (Date.parse(cert.validTo) - Date.now()) / 86400_000;
    expect(days).toBeGreaterThan(1);
    expect(days).toBeLessThan(8);
  });

  test("mitm.hosts: an unlisted allowed host is tunnelled untouched", async () => {
    // The origin's own certificate reaches curl: trusting the origin CA works, trusting the MITM CA fails.
    const r = await curl(["--cacert", originCaFile, `https://plain.test:${other.port}/direct`]);
    expect(r.stdout).toBe("origin GET /direct");
    const viaMitmCa = await curl([
      "--cacert",
      mitmCa.certPath,
      `https://plain.test:${other.port}/direct`,
    ]);
    expect(viaMitmCa.code).toBe(60);
    await crm.waitLog(new RegExp(`CONNECT plain\\.test:${other.port} kind=connect`));
  });

  test("the upstream is verified unless insecure_tls", async () => {
    const strict = await startCrm({
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [origin.port],
      mitm: { enabled: true, ca_cert_path: mitmCa.certPath, ca_key_path: mitmCa.keyPath },
    });
    try {
      const r = await run([
        "curl",
        "-sS",
        "--noproxy",
        "",
        "-x",
        strict.url,
        "--cacert",
        mitmCa.certPath,
        "-i",
        `https://127.0.0.1:${origin.port}/x`,
      ]);
      // curl -i shows the CONNECT answer first, then the decrypted response from crm.
      expect(r.stdout).toContain("\r\n\r\nHTTP/1.1 502 Bad Gateway\r\n");
      expect(r.stdout).toContain("TLS handshake failed");
    } finally {
      await strict.stop();
    }
  });
});

describe("bad CA configurations stop start-up with their own error", () => {
  async function startError(certPath: string, keyPath: string): Promise<string> {
    const { config } = buildConfig(
      {
        listen: "127.0.0.1:0",
        mitm: { enabled: true, ca_cert_path: certPath, ca_key_path: keyPath },
      },
      "t.yaml",
    );
    try {
      const s = await CrmServer.start(config, { sink: () => {} });
      s.stopNow();
    } catch (e) {
      return (e as Error).message;
    }
    return "started";
  }

  test("missing certificate file", async () => {
    expect(await startError(join(dir, "nope.crt"), mitmCa.keyPath)).toMatch(
      /nope\.crt.*(not found|does not exist|no such)/i,
    );
  });
  test("garbage certificate", async () => {
    const f = join(dir, "garbage.crt");
    writeFileSync(f, "not a certificate");
    expect(await startError(f, mitmCa.keyPath)).toContain("garbage.crt");
  });
  test("key that does not match", async () => {
    const other = await initCa({ outDir: join(dir, "other") });
    expect(await startError(mitmCa.certPath, other.keyPath)).toMatch(/does not match/i);
  });
  test("a certificate that is not a CA", async () => {
    const leaf = await makeLeaf(originCa, ["leaf.test"]);
    const c = join(dir, "leaf.crt");
    const k = join(dir, "leaf.key");
    writeFileSync(c, leaf.cert);
    writeFileSync(k, leaf.key);
    chmodSync(k, 0o600);
    expect(await startError(c, k)).toMatch(/not a CA/i);
  });
  test("no silent fallback: mitm.enabled without paths is a config error", () => {
    expect(() => buildConfig({ mitm: { enabled: true } }, "t")).toThrow(/mitm\.ca_cert_path/);
  });
  test("a world-readable key is warned about", async () => {
    const loose = await initCa({ outDir: join(dir, "loose") });
    chmodSync(loose.keyPath, 0o644);
    const local = await startCrm({
      mitm: { enabled: true, ca_cert_path: loose.certPath, ca_key_path: loose.keyPath },
    });
    await local.stop();
    expect(local.logs.join("\n")).toMatch(/WARN .*MITM CA: .*(readable|permission|mode)/i);
  });
});

describe.skipIf(missingTools("MITM with skopeo", ["docker-registry", "skopeo"]))(
  "skopeo through MITM against a real TLS registry",
  () => {
    let reg: RegistryFixture;
    let bundle: string;
    let local: TestCrm;
    // Go never sends loopback names through a proxy, so the registry gets a name only crm resolves.
    const NAME = "registry.crm.test";

    beforeAll(async () => {
      reg = await startRegistry({ auth: "token", tls: true });
      bundle = join(dir, "bundle.pem");
      writeFileSync(bundle, (await Bun.file(mitmCa.certPath).text()) + (reg.caPem ?? ""));
      const port = Number(reg.host.split(":")[1]);
      local = await startCrm(
        {
          allowed_hosts: [NAME],
          allowed_ports: [port],
          insecure_tls: true,
          mitm: { enabled: true, ca_cert_path: mitmCa.certPath, ca_key_path: mitmCa.keyPath },
        },
        "debug",
        staticResolver({ [NAME]: "127.0.0.1" }),
      );
    }, 60_000);

    afterAll(async () => {
      await local?.stop();
      await reg?.stop();
    });

    test("skopeo copy: digests match, the debug log shows decrypted requests with tokens redacted", async () => {
      const port = reg.host.split(":")[1];
      const out = join(dir, "copy");
      const img = reg.images.multiLayer;
      const r = await run(
        [
          "skopeo",
          "--insecure-policy",
          "copy",
          "--preserve-digests",
          `docker://${NAME}:${port}/${img.repo}:${img.tag}`,
          `dir:${out}`,
        ],
        {
          env: {
            HTTPS_PROXY: local.url,
            https_proxy: local.url,
            NO_PROXY: "",
            no_proxy: "",
            SSL_CERT_FILE: bundle,
          },
          timeoutMs: 60_000,
        },
      );
      expect(r.stderr).not.toContain("level=fatal");
      expect(r.code).toBe(0);
      const manifest = await Bun.file(join(out, "manifest.json")).bytes();
      expect("sha256:" + new Bun.CryptoHasher("sha256").update(manifest).digest("hex")).toBe(
        img.digest,
      );
      for (const layer of img.layers) {
        const blob = await Bun.file(join(out, layer.digest.slice("sha256:".length))).bytes();
        expect("sha256:" + new Bun.CryptoHasher("sha256").update(blob).digest("hex")).toBe(
          layer.digest,
        );
      }
      const logs = local.logs.join("\n");
      expect(logs).toMatch(
        new RegExp(
          `INFO  GET https://registry\\.crm\\.test:${port}/v2/${img.repo}/manifests/${img.tag} kind=mitm .*status=200`,
        ),
      );
      expect(logs).toMatch(
        /DEBUG > GET \/v2\/library\/multi\/blobs\/sha256:[0-9a-f]+ .*Authorization: Bearer <redacted, \d+ bytes>/,
      );
      expect(logs).not.toMatch(/Bearer eyJ/);
    }, 90_000);
  },
);
