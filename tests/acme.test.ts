/**
 * Automatic HTTPS end to end against a real ACME CA: Debian's pebble, which really validates
 * http-01 against crm's plain listener (PEBBLE_VA_ALWAYS_VALID is never set), with
 * pebble-challtestsrv as its DNS (test names → 127.0.0.1, nothing else resolved). Then curl and
 * skopeo reach crm over https trusting only pebble's root; a forced renewal swaps the
 * certificate under an open tunnel and a slow blob download; a restart reuses the stored
 * certificate; names the CA cannot validate give errors that say what to do.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Socket } from "bun";
import { staticResolver } from "../src/net/resolver.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import {
  BIG_SIZE,
  patternDigest,
  startBigBlobServer,
  startFakeRegistry,
  startTokenServer,
  type BigBlobServer,
  type FakeRegistry,
  type TokenServer,
} from "./support/mirror-upstreams.ts";
import { startTcp } from "./support/origins.ts";
import { startPebble, type Pebble } from "./support/pebble.ts";
import { reservePorts } from "./support/ports.ts";
import { run } from "./support/raw.ts";
import { startRegistry, type RegistryFixture } from "./support/registry.ts";
import { missingTools } from "./support/tools.ts";

const skip = missingTools("ACME with pebble", [
  "pebble",
  "pebble-challtestsrv",
  "curl",
  "openssl",
  "skopeo",
  "docker-registry",
]);
const NAMES = ["crm.test", "mirror.test"];
const BIG = `sha256:${"b".repeat(64)}`;

/** Serial of the certificate a fresh TLS connection gets, as openssl sees it. */
async function servedSerial(port: number, servername: string): Promise<string> {
  const s = await run([
    "sh",
    "-c",
    `openssl s_client -connect 127.0.0.1:${port} -servername ${servername} </dev/null 2>/dev/null | openssl x509 -noout -serial -issuer`,
  ]);
  const m = /serial=([0-9A-F]+)/i.exec(s.stdout);
  if (!m) throw new Error(`no certificate from 127.0.0.1:${port}: ${s.stdout}${s.stderr}`);
  return (m[1] as string).toUpperCase();
}

interface TlsClient {
  socket: Socket<undefined>;
  received(): Buffer;
  waitFor(s: string, ms?: number): Promise<void>;
  closed: Promise<void>;
}

/** A raw TLS client that verifies crm's certificate against `ca` for `servername`. */
async function tlsConnect(port: number, ca: string, servername: string): Promise<TlsClient> {
  const chunks: Buffer[] = [];
  let done: () => void = () => {};
  const closed = new Promise<void>((r) => (done = r));
  let handshake: (ok: boolean, err: Error | null) => void = () => {};
  const shaken = new Promise<void>(
    (resolve, reject) =>
      (handshake = (ok, err) =>
        ok ? resolve() : reject(err ?? new Error("TLS handshake failed"))),
  );
  const socket = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    tls: { ca, serverName: servername, rejectUnauthorized: true },
    socket: {
      handshake: (_s, ok, err) => handshake(ok, err),
      data: (_s, d) => void chunks.push(Buffer.from(d)),
      close: () => done(),
      error: () => done(),
    },
  });
  await shaken;
  return {
    socket,
    received: () => Buffer.concat(chunks),
    async waitFor(s, ms = 10_000) {
      const end = Date.now() + ms;
      while (!Buffer.concat(chunks).includes(s)) {
        if (Date.now() > end)
          throw new Error(
            `did not receive ${JSON.stringify(s)}; got ${Buffer.concat(chunks).toString("latin1").slice(0, 300)}`,
          );
        await Bun.sleep(10);
      }
    },
    closed,
  };
}

describe.skipIf(skip)("ACME with pebble", () => {
  let pebble: Pebble;
  let root: string;
  let rootFile: string;
  let work: string;
  let stateDir: string;
  let plainPort: number;
  let tlsPort: number;
  let fx: RegistryFixture;
  let tokens: TokenServer;
  let fake: FakeRegistry;
  let big: BigBlobServer;
  let echo: ReturnType<typeof startTcp>;
  let crm: TestCrm;
  let firstSerial: string;

  const crmConfig = (
    domains: string[],
    dir: string,
    extra: Record<string, unknown> = {},
  ): Record<string, unknown> => ({
    listen: [`127.0.0.1:${tlsPort}`, { address: `127.0.0.1:${plainPort}`, tls: false }],
    tls: {
      redirect_http: true,
      acme: {
        domains,
        email: "ops@crm.test",
        directory: pebble.directory,
        ca_bundle: pebble.caBundlePath,
        state_dir: dir,
      },
    },
    allowed_hosts: ["crm.test", "127.0.0.1"],
    // Token services and the CDN listen on their own loopback ports: realms and redirects may only use allowed ones.
    allowed_ports: [
      tlsPort,
      echo.port,
      Number(new URL(fake.url).port),
      Number(new URL(tokens.url).port),
      Number(new URL(big.url).port),
      ...(fx.token ? [Number(new URL(fx.token.url).port)] : []),
    ],
    timeouts: { header: "2s" },
    mirror: {
      default_registry: "reg.test",
      registries: { "reg.test": fx.url, "big.test": fake.url },
    },
    ...extra,
  });
  const resolver = staticResolver({ "crm.test": "127.0.0.1", "mirror.test": "127.0.0.1" });
  const curl = (args: string[]) =>
    run(["curl", "-sS", "--noproxy", "*", "--max-time", "60", ...args]);

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), "crm-acme-"));
    stateDir = join(work, "state");
    // crm's ports stay held while the other servers start: their bind(0) must not be handed them.
    const held = reservePorts(3);
    [plainPort, tlsPort] = held.ports as [number, number];
    pebble = await startPebble({ httpPort: plainPort, tlsPort: held.ports[2] as number });
    root = await pebble.root();
    rootFile = join(work, "pebble-root.pem");
    writeFileSync(rootFile, root);
    fx = await startRegistry({ auth: "token" });
    tokens = startTokenServer();
    big = startBigBlobServer();
    fake = startFakeRegistry({ auth: { kind: "bearer", tokens }, bigBase: big.url });
    echo = startTcp("echo");
    held.release();
    crm = await startCrm(crmConfig(NAMES, stateDir), "info", resolver);
  }, 90_000);

  afterAll(async () => {
    await crm?.stop();
    echo?.stop(true);
    fake?.stop();
    big?.stop();
    tokens?.stop();
    await fx?.stop();
    await pebble?.stop();
    rmSync(work, { recursive: true, force: true });
  }, 30_000);

  test("start-up does not wait: a temporary certificate, then pebble's after real http-01 validation of both names", async () => {
    await crm.waitLog(
      /ACME: no certificate yet; serving a temporary self-signed one while issuance is under way/,
      1000,
    );
    const issued = await crm.waitLog(/ACME: certificate issued/, 60_000);
    expect(issued).toContain("names=crm.test,mirror.test");
    // pebble fetched the key authorization from crm's plain listener for each name.
    expect(crm.logs.filter((l) => l.includes("ACME: http-01 validated")).length).toBe(2);
    expect(crm.logs.some((l) => l.includes("ACME: answered an http-01 challenge"))).toBe(true);
    expect(pebble.output()).not.toContain("ALWAYS_VALID");
    // Stored: a 0700 directory, 0600 keys.
    expect(statSync(stateDir).mode & 0o777).toBe(0o700);
    for (const f of ["account.key", "crm.test.key", "crm.test.crt"])
      expect([f, statSync(join(stateDir, f)).mode & 0o777]).toEqual([f, 0o600]);
    firstSerial = await servedSerial(tlsPort, "crm.test");
  }, 90_000);

  test("curl reaches both names over https trusting only pebble's root", async () => {
    for (const name of NAMES) {
      const r = await curl([
        "--cacert",
        rootFile,
        "--resolve",
        `${name}:${tlsPort}:127.0.0.1`,
        `https://${name}:${tlsPort}/healthz`,
      ]);
      expect([name, r.stdout, r.stderr]).toEqual([name, "ok\n", ""]);
    }
    // Without pebble's root the certificate is not trusted: the check can fail.
    const untrusted = await curl([
      "--resolve",
      `crm.test:${tlsPort}:127.0.0.1`,
      `https://crm.test:${tlsPort}/healthz`,
    ]);
    expect(untrusted.code).not.toBe(0);
  });

  test("the plain listener redirects to https and keeps proxying; /metrics and / show the certificate", async () => {
    const r = await curl([
      "-i",
      `http://127.0.0.1:${plainPort}/v2/library/multi/manifests/v1`,
      "-H",
      "Host: crm.test",
    ]);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 301/);
    expect(r.stdout).toContain(
      `location: https://crm.test:${tlsPort}/v2/library/multi/manifests/v1`,
    );
    // A Host the certificate does not cover goes to its first name.
    const foreign = await curl([
      "-o",
      "/dev/null",
      "-w",
      "%{redirect_url}",
      "-H",
      "Host: evil.test",
      `http://127.0.0.1:${plainPort}/`,
    ]);
    expect(foreign.stdout).toBe(`https://crm.test:${tlsPort}/`);
    // Other methods keep method and body: 308.
    const post = await curl([
      "-o",
      "/dev/null",
      "-w",
      "%{http_code} %{redirect_url}",
      "-X",
      "POST",
      "--data",
      "x",
      "-H",
      "Host: mirror.test:80",
      `http://127.0.0.1:${plainPort}/v2/x/blobs/uploads/`,
    ]);
    expect(post.stdout).toBe(`308 https://mirror.test:${tlsPort}/v2/x/blobs/uploads/`);
    const followed = await curl([
      "-L",
      "--cacert",
      rootFile,
      "--resolve",
      `crm.test:${tlsPort}:127.0.0.1`,
      `http://127.0.0.1:${plainPort}/healthz`,
      "-H",
      "Host: crm.test",
    ]);
    expect(followed.stdout).toBe("ok\n");
    // The proxy works on the plain listener: absolute-form is forwarded, not redirected...
    const forward = await run([
      "curl",
      "-sS",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      "--proxy",
      `http://127.0.0.1:${plainPort}`,
      `${fake.url}/v2/`,
    ]);
    expect(forward.stdout).toBe("401");
    await crm.waitLog(
      new RegExp(`GET ${fake.url.replace(/[.]/g, "\\.")}/v2/ kind=forward .*status=401`),
    );
    // ...and CONNECT reaches crm's own TLS port by name.
    const viaProxy = await run([
      "curl",
      "-sS",
      "--proxy",
      `http://127.0.0.1:${plainPort}`,
      "--cacert",
      rootFile,
      `https://crm.test:${tlsPort}/healthz`,
    ]);
    expect(viaProxy.stdout).toBe("ok\n");
    const metrics = await curl([
      "--cacert",
      rootFile,
      "--resolve",
      `crm.test:${tlsPort}:127.0.0.1`,
      `https://crm.test:${tlsPort}/metrics`,
    ]);
    const expiry = /crm_tls_certificate_expiry_seconds\{name="crm\.test"\} (\d+)/.exec(
      metrics.stdout,
    );
    expect(expiry).not.toBeNull();
    expect(Number(expiry?.[1]) * 1000).toBeGreaterThan(Date.now());
    expect(metrics.stdout).toContain('crm_tls_renewal_failing{name="crm.test"} 0');
    const page = await curl([
      "--cacert",
      rootFile,
      "--resolve",
      `crm.test:${tlsPort}:127.0.0.1`,
      `https://crm.test:${tlsPort}/`,
    ]);
    expect(page.stdout).toMatch(
      /<dd id="certificate">ACME certificate for crm\.test, mirror\.test, valid until \d{4}-/,
    );
  });

  test("skopeo pulls through https://crm.test trusting only pebble's root", async () => {
    const certDir = join(work, "skopeo-certs");
    await run(["mkdir", "-p", certDir]);
    writeFileSync(join(certDir, "ca.crt"), root);
    const base = join(fx.dir, "skopeo");
    const img = fx.images.multiLayer;
    // Go resolves crm.test through crm's own proxy (crm maps it to 127.0.0.1): nothing else knows the name.
    const r = await run(
      [
        "skopeo",
        "--policy",
        join(base, "policy.json"),
        "--registries.d",
        join(base, "registries.d"),
        "--tmpdir",
        join(base, "tmp"),
        "inspect",
        "--cert-dir",
        certDir,
        `docker://crm.test:${tlsPort}/${img.repo}:${img.tag}`,
      ],
      {
        env: {
          ...process.env,
          CONTAINERS_REGISTRIES_CONF: join(base, "registries.conf"),
          REGISTRY_AUTH_FILE: join(base, "auth.json"),
          HTTPS_PROXY: `http://127.0.0.1:${plainPort}`,
          NO_PROXY: "",
        } as Record<string, string>,
        timeoutMs: 60_000,
      },
    );
    expect(r.stderr).toBe("");
    expect((JSON.parse(r.stdout) as { Digest: string }).Digest).toBe(img.digest);
    await crm.waitLog(new RegExp(`CONNECT crm\\.test:${tlsPort} kind=connect`));
  }, 90_000);

  test("a forced renewal swaps the certificate while a tunnel and a slow blob download stay open", async () => {
    const tunnel = await tlsConnect(tlsPort, root, "crm.test");
    tunnel.socket.write(
      `CONNECT 127.0.0.1:${echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${echo.port}\r\n\r\n`,
    );
    await tunnel.waitFor("200");
    tunnel.socket.write("before-renewal");
    await tunnel.waitFor("before-renewal");

    // A 64 MiB blob through the mirror, read slowly: started before, finished after the swap.
    const res = await fetch(`https://127.0.0.1:${tlsPort}/v2/big.test/big/blob/blobs/${BIG}`, {
      tls: { ca: root, serverName: "mirror.test" },
      proxy: false,
      keepalive: false,
    } as RequestInit);
    expect(res.status).toBe(200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const h = createHash("sha256");
    let n = 0;
    const first = await reader.read();
    h.update(first.value as Uint8Array);
    n += (first.value as Uint8Array).byteLength;

    // New connections keep arriving while the listener is swapped: none may be refused.
    let swapping = true;
    let attempts = 0;
    const refused: string[] = [];
    const prober = (async () => {
      while (swapping || attempts < 5) {
        attempts++;
        try {
          const c = await tlsConnect(tlsPort, root, "crm.test");
          c.socket.end();
        } catch (e) {
          // A connection still queued at the old socket when it stops is reset (the kernel's
          // doing, ~0.5 per swap at 500 connections/s); a refusal would mean a moment unbound.
          if ((e as NodeJS.ErrnoException).code === "ECONNREFUSED")
            refused.push((e as Error).message);
        }
      }
    })();
    expect(await crm.server.certificates.renewNow()).toBe(true);
    await crm.waitLog(/ACME: certificate renewed/);
    await Bun.sleep(100);
    swapping = false;
    await prober;
    expect(refused).toEqual([]);
    expect(attempts).toBeGreaterThan(5);
    const second = await servedSerial(tlsPort, "crm.test");
    expect(second).not.toBe(firstSerial);
    // The download really was in flight across the swap: the slow reader still holds the upstream back.
    expect(big.bytesWritten()).toBeLessThan(BIG_SIZE);

    tunnel.socket.write("after-renewal");
    await tunnel.waitFor("after-renewal");
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      h.update(value);
      n += value.byteLength;
    }
    expect(n).toBe(BIG_SIZE);
    expect("sha256:" + h.digest("hex")).toBe(patternDigest(BIG_SIZE));
    tunnel.socket.end();
    const verified = await curl([
      "--cacert",
      rootFile,
      "--resolve",
      `mirror.test:${tlsPort}:127.0.0.1`,
      `https://mirror.test:${tlsPort}/healthz`,
    ]);
    expect(verified.stdout).toBe("ok\n");
    firstSerial = second;
  }, 90_000);

  test("a restart reuses the stored certificate without a new order", async () => {
    await crm.stop();
    const orders = (): number => (pebble.output().match(/POST \/order-plz/g) ?? []).length;
    const ordersBefore = orders();
    // The first issue and the forced renewal.
    expect(ordersBefore).toBe(2);
    crm = await startCrm(crmConfig(NAMES, stateDir), "info", resolver);
    await crm.waitLog(/ACME: using the stored certificate/, 2000);
    expect(await servedSerial(tlsPort, "crm.test")).toBe(firstSerial);
    await Bun.sleep(1000);
    expect(crm.logs.filter((l) => /ACME: (requesting|renewing|order placed)/.test(l))).toEqual([]);
    expect(orders()).toBe(ordersBefore);
    const r = await curl([
      "--cacert",
      rootFile,
      "--resolve",
      `crm.test:${tlsPort}:127.0.0.1`,
      `https://crm.test:${tlsPort}/healthz`,
    ]);
    expect(r.stdout).toBe("ok\n");
    await crm.stop();
  }, 30_000);

  test("with access.clients, strangers reach only the challenges on the plain listener; a reload keeps the manager", async () => {
    const cfg = crmConfig(NAMES, stateDir, { access: { clients: ["10.0.0.0/8"] } });
    const locked = await startCrm(cfg, "info", resolver);
    try {
      await locked.waitLog(/ACME: using the stored certificate/, 2000);
      const health = await curl(["-i", `http://127.0.0.1:${plainPort}/healthz`]);
      expect(health.stdout).toMatch(/^HTTP\/1\.1 403/);
      expect(health.stdout).toContain("crm: only ACME challenges are answered for your address");
      const token = await curl([
        "-i",
        `http://127.0.0.1:${plainPort}/.well-known/acme-challenge/no-such-token`,
      ]);
      expect(token.stdout).toMatch(/^HTTP\/1\.1 404/);
      const tunnel = await curl([
        "-p",
        "--proxy",
        `http://127.0.0.1:${plainPort}`,
        `http://127.0.0.1:${echo.port}/`,
      ]);
      expect(tunnel.code).not.toBe(0);
      // The TLS listener closes strangers at accept, as before.
      const tls = await curl([
        "--cacert",
        rootFile,
        "--resolve",
        `crm.test:${tlsPort}:127.0.0.1`,
        `https://crm.test:${tlsPort}/healthz`,
      ]);
      expect(tls.code).not.toBe(0);
      const before = locked.logs.length;
      const { buildConfig } = await import("../src/config/load.ts");
      await locked.server.reload(
        buildConfig(
          { listen: "127.0.0.1:0", log_level: "info", allow_private_networks: true, ...cfg },
          "test.yaml",
        ).config,
      );
      await locked.waitLog(/configuration reloaded/);
      expect(locked.logs.slice(before).filter((l) => l.includes("ACME:"))).toEqual([]);
      expect(await servedSerial(tlsPort, "crm.test")).toBe(firstSerial);
    } finally {
      await locked.stop();
    }
  }, 30_000);

  test.each([
    [
      "a name that does not resolve",
      "nxdomain.test",
      async () => pebble.dns("/set-servfail", { host: "nxdomain.test" }),
      /nxdomain\.test does not resolve for the CA .*create an A \(and\/or AAAA\) record/,
    ],
    [
      "port 80 unreachable",
      "unreachable.test",
      async () => pebble.dns("/add-a", { host: "unreachable.test", addresses: ["127.0.0.2"] }),
      /could not connect to http:\/\/unreachable\.test\/\.well-known\/acme-challenge\/.*port 80 is unreachable/,
    ],
  ])(
    "%s: an error that says what to do, and crm keeps serving",
    async (_what, name, prepare, message) => {
      await prepare();
      const dir = join(work, `state-${name}`);
      const bad = await startCrm(crmConfig([name], dir), "info", resolver);
      try {
        const line = await bad.waitLog(/ACME: could not get a certificate/, 60_000);
        expect(line).toMatch(message);
        expect(line).toContain('serving="the temporary self-signed certificate"');
        expect(line).toMatch(/retry_at=\d{4}-/);
        // Still serving TLS (self-signed) and plain.
        const k = await curl(["-k", `https://127.0.0.1:${tlsPort}/healthz`]);
        expect(k.stdout).toBe("ok\n");
        const status = bad.server.certificates.status()[0];
        expect(status?.source).toBe("self-signed");
        expect(status?.renewalFailures).toBe(1);
        const metrics = await curl([`http://127.0.0.1:${plainPort}/metrics`, "-H", "Host: x"]);
        // redirect_http sends /metrics to https; read it there.
        expect(metrics.stdout).toContain(`crm: use https://${name}:${tlsPort}/metrics`);
        const m = await curl(["-k", `https://127.0.0.1:${tlsPort}/metrics`]);
        expect(m.stdout).toContain(`crm_tls_renewal_failing{name="${name}"} 1`);
        expect(m.stdout).toContain(`crm_tls_renewal_failures_total{name="${name}"} 1`);
      } finally {
        await bad.stop();
      }
    },
    90_000,
  );

  test("crm -t shows the ACME set-up and the stored certificate", async () => {
    const cfg = join(work, "check.yaml");
    writeFileSync(cfg, JSON.stringify(crmConfig(NAMES, stateDir)));
    const r = await run([
      process.execPath,
      join(import.meta.dir, "..", "src", "main.ts"),
      "-t",
      "-c",
      cfg.replace(/\.yaml$/, ".yaml"),
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(
      "tls: ACME http-01 for crm.test, mirror.test; plain listeners redirect to https",
    );
    expect(r.stdout).toContain(`directory ${pebble.directory}`);
    expect(r.stdout).toMatch(
      /stored certificate: crm\.test, mirror\.test, expires \d{4}-\d\d-\d\dT.*; renewal due \d{4}-/,
    );
    expect(r.stdout).toContain(
      `listen: 127.0.0.1:${tlsPort} (tls), 127.0.0.1:${plainPort} (plain)`,
    );
    expect(readFileSync(join(stateDir, "crm.test.crt"), "utf8")).toContain("BEGIN CERTIFICATE");
  });
});
