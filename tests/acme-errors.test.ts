/**
 * ACME failures that pebble cannot produce (it enforces neither CAA nor rate limits): the
 * messages for each CA problem, the backoff schedule, and a rate-limited answer from a real
 * HTTP server speaking the first steps of RFC 8555, whose Retry-After crm must honour.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRuntime } from "../src/context.ts";
import { buildConfig } from "../src/config/load.ts";
import { AcmeError, explainProblem, issueCertificate, parseRetryAfter } from "../src/tls/acme.ts";
import { CertStore } from "../src/tls/cert-store.ts";
import {
  AcmeCertificates,
  renewalTime,
  retryDelay,
  RETRY_BASE_MS,
  RETRY_MAX_MS,
} from "../src/tls/renewal.ts";
import type { AcmeConfig } from "../src/tls/config.ts";
import type { TCPSocketListener } from "bun";

const DIR = "https://acme.example.test/directory";
let work: string;
let ca: ReturnType<typeof Bun.serve>;
let accountCalls = 0;

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "crm-acme-err-"));
  // Directory and nonce as RFC 8555 §7.1.1/§7.2; every new-account is refused as rate limited.
  ca = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const u = new URL(req.url);
      const base = `http://127.0.0.1:${ca.port}`;
      const nonce = {
        "replay-nonce": `n${Math.random().toString(36).slice(2)}`,
        "cache-control": "no-store",
      };
      if (u.pathname === "/dir")
        return Response.json({
          newNonce: `${base}/nonce`,
          newAccount: `${base}/acct`,
          newOrder: `${base}/order`,
        });
      if (u.pathname === "/nonce") return new Response(null, { status: 200, headers: nonce });
      if (u.pathname === "/acct") {
        accountCalls++;
        return new Response(
          JSON.stringify({
            type: "urn:ietf:params:acme:error:rateLimited",
            detail: "too many new registrations from this IP",
          }),
          {
            status: 429,
            headers: {
              ...nonce,
              "content-type": "application/problem+json",
              "retry-after": "3600",
            },
          },
        );
      }
      return new Response("not found", { status: 404 });
    },
  });
});

afterAll(() => {
  ca.stop(true);
  rmSync(work, { recursive: true, force: true });
});

const acmeConfig = (dir: string): AcmeConfig => ({
  domains: ["crm.test"],
  email: null,
  directory: `http://127.0.0.1:${ca.port}/dir`,
  caBundlePath: null,
  stateDir: dir,
  challenge: "http-01",
  renewBeforeMs: null,
});

test.each([
  [
    "dns",
    "DNS problem: NXDOMAIN looking up A for crm.example.com",
    /crm\.example\.com does not resolve for the CA .*create an A \(and\/or AAAA\) record for crm\.example\.com/,
  ],
  [
    "connection",
    "Timeout during connect (likely firewall problem)",
    /port 80 is unreachable; make sure crm\.example\.com resolves to this host, crm has a plain listener on :80/,
  ],
  [
    "unauthorized",
    "Invalid response from http://crm.example.com/.well-known/acme-challenge/x: 404",
    /probably resolves to another host/,
  ],
  [
    "caa",
    "CAA record for crm.example.com prevents issuance",
    /a CAA record forbids acme\.example\.test to issue for crm\.example\.com .*CAA 0 issue "letsencrypt\.org"/,
  ],
  ["rejectedIdentifier", 'Cannot issue for "crm.internal"', /will not issue for crm\.example\.com/],
])("CA problem %s says what to do", (type, detail, message) => {
  const e = explainProblem(
    { type: `urn:ietf:params:acme:error:${type}`, detail, retryAfterMs: null },
    "crm.example.com",
    DIR,
  );
  expect(e).toBeInstanceOf(AcmeError);
  expect(e.message).toMatch(message);
  expect(e.message).toContain(detail);
});

test("rate limited: the message names the CA's retry time", () => {
  const now = Date.parse("2026-01-01T00:00:00Z");
  const e = explainProblem(
    {
      type: "urn:ietf:params:acme:error:rateLimited",
      detail: "too many certificates",
      retryAfterMs: 7200_000,
    },
    "crm.example.com",
    DIR,
    now,
  );
  expect(e.failure).toBe("rate-limited");
  expect(e.message).toContain("the CA allows a new try after 2026-01-01T02:00:00.000Z");
  expect(parseRetryAfter("120")).toBe(120_000);
  expect(parseRetryAfter("Thu, 01 Jan 2026 01:00:00 GMT", now)).toBe(3600_000);
  expect(parseRetryAfter("soon")).toBeNull();
});

test("backoff doubles from 5 min to 4 h and never undercuts Retry-After; renewal at a third of the lifetime", () => {
  expect([1, 2, 3, 4].map((n) => retryDelay(n, null))).toEqual([
    RETRY_BASE_MS,
    2 * RETRY_BASE_MS,
    4 * RETRY_BASE_MS,
    8 * RETRY_BASE_MS,
  ]);
  expect(retryDelay(20, null)).toBe(RETRY_MAX_MS);
  expect(retryDelay(1, 3 * 3600_000)).toBe(3 * 3600_000);
  const day = 86400_000;
  expect(renewalTime({ notBefore: 0, notAfter: 90 * day }, null)).toBe(60 * day);
  expect(renewalTime({ notBefore: 0, notAfter: 90 * day }, 7 * day)).toBe(83 * day);
});

test("a real 429 from the CA becomes a rate-limit error with its Retry-After, and the next try waits for it", async () => {
  const dir = join(work, "rl");
  const store = new CertStore(dir);
  store.prepare();
  const err = await issueCertificate({
    config: acmeConfig(dir),
    store,
    tokens: new Map(),
    progress: () => {},
  }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(AcmeError);
  expect((err as AcmeError).failure).toBe("rate-limited");
  expect((err as AcmeError).retryAfterMs).toBe(3600_000);
  expect((err as AcmeError).message).toContain("too many new registrations from this IP");
  // acme-client's own retries are off: crm's backoff is the only one.
  expect(accountCalls).toBe(1);

  const lines: string[] = [];
  const rt = createRuntime(buildConfig({}, "t.yaml").config, (l) => lines.push(l));
  const swaps: string[] = [];
  const certs = await AcmeCertificates.load(acmeConfig(join(work, "rl2")), rt, (p) =>
    swaps.push(p.cert),
  );
  const before = Date.now();
  expect(await certs.renewNow()).toBe(false);
  certs.stop();
  const s = certs.status();
  expect(s.source).toBe("self-signed");
  expect(s.renewalFailures).toBe(1);
  expect(s.nextAttemptAt).toBeGreaterThanOrEqual(before + 3600_000);
  expect(swaps).toEqual([]);
  expect(
    lines.some((l) =>
      /ERROR ACME: could not get a certificate .*rate limited by the CA .*retry_at=/.test(l),
    ),
  ).toBe(true);
});

test("a renewal that fails keeps the current certificate, with an error line every interval and the failing metric", async () => {
  const { makeLeaf, makeTestCa } = await import("./support/tls.ts");
  const { renderTlsMetrics } = await import("../src/tls/status.ts");
  const dir = join(work, "renew-fail");
  const store = new CertStore(dir);
  store.prepare();
  const leaf = await makeLeaf(await makeTestCa(), ["crm.test"]);
  store.writeCertificate("crm.test", leaf.cert, leaf.key);
  const lines: string[] = [];
  const rt = createRuntime(buildConfig({}, "t.yaml").config, (l) => lines.push(l));
  const certs = await AcmeCertificates.load(acmeConfig(dir), rt, () => {}, { remindEveryMs: 50 });
  try {
    expect(certs.served.cert).toBe(leaf.cert);
    expect(await certs.renewNow()).toBe(false);
    expect(certs.served.cert).toBe(leaf.cert);
    const s = certs.status();
    expect([s.source, s.state]).toEqual(["acme", "renewal failing"]);
    expect(
      lines.some((l) =>
        /ERROR ACME: renewal failed .*serving="the current certificate until it expires at \d{4}-/.test(
          l,
        ),
      ),
    ).toBe(true);
    // Two reminders at 50 ms intervals; waited for, since one stalled event loop (GC, a busy machine) merges them.
    const reminders = (): number =>
      lines.filter((l) => l.includes("ERROR ACME: the certificate could not be renewed")).length;
    for (const end = Date.now() + 5000; reminders() < 2 && Date.now() < end;) await Bun.sleep(20);
    expect(reminders()).toBeGreaterThanOrEqual(2);
    const m = renderTlsMetrics([certs.status()]).join("\n");
    expect(m).toContain('crm_tls_renewal_failing{name="crm.test"} 1');
    expect(m).toMatch(/crm_tls_certificate_expiry_seconds\{name="crm\.test"\} \d{10}/);
  } finally {
    certs.stop();
  }
});

test("a state_dir that cannot be created stops start-up with a message naming it", async () => {
  const { writeFileSync } = await import("node:fs");
  const file = join(work, "not-a-dir");
  writeFileSync(file, "");
  const rt = createRuntime(buildConfig({}, "t.yaml").config, () => {});
  await expect(
    AcmeCertificates.load(acmeConfig(join(file, "state")), rt, () => {}),
  ).rejects.toThrow(
    `tls.acme.state_dir: cannot create ${file}/state: ENOTDIR (systemd: StateDirectory=crm)`,
  );
});

test("renew_before at least the lifetime: renewal at half the lifetime, an hour after issuance at the earliest", () => {
  const day = 86400_000;
  const hour = 3600_000;
  // 90-day certificate, renew_before 90 or 120 days: not at issuance (a re-order loop), at day 45.
  expect(renewalTime({ notBefore: 0, notAfter: 90 * day }, 90 * day)).toBe(45 * day);
  expect(renewalTime({ notBefore: 0, notAfter: 90 * day }, 120 * day)).toBe(45 * day);
  // A two-hour certificate with renew_before 3h: an hour after issuance, not at once.
  expect(renewalTime({ notBefore: 0, notAfter: 2 * hour }, 3 * hour)).toBe(hour);
  // Shorter than an hour: at 90% of it, before it expires (pebble's one-hour certificates last 3599 s).
  expect(renewalTime({ notBefore: 0, notAfter: hour }, 2 * hour)).toBe(0.9 * hour);
  expect(renewalTime({ notBefore: 0, notAfter: 3599_000 }, 2 * hour)).toBeLessThan(3599_000);
  // A short renew_before is not touched.
  expect(renewalTime({ notBefore: 0, notAfter: 90 * day }, 30 * day)).toBe(60 * day);
});

test("a reload keeps the backoff and the CA's Retry-After: no new order per SIGHUP", async () => {
  const { startCrm } = await import("./support/crm.ts");
  const { freePorts } = await import("./support/ports.ts");
  const { makeLeaf, makeTestCa } = await import("./support/tls.ts");
  const { writeFileSync } = await import("node:fs");
  const testCa = await makeTestCa("fake ACME CA");
  const leaf = await makeLeaf(testCa, ["127.0.0.1", "localhost"]);
  const caFile = join(work, "reload-ca.pem");
  writeFileSync(caFile, testCa.cert);
  let hits = 0;
  const limited = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    tls: { cert: leaf.cert, key: leaf.key },
    fetch() {
      hits++;
      return Response.json(
        { type: "urn:ietf:params:acme:error:rateLimited", detail: "too many", status: 429 },
        {
          status: 429,
          headers: { "retry-after": "3600", "content-type": "application/problem+json" },
        },
      );
    },
  });
  const [plainPort, tlsPort] = freePorts(2) as [number, number];
  const raw = {
    listen: [`127.0.0.1:${tlsPort}`, { address: `127.0.0.1:${plainPort}`, tls: false }],
    tls: {
      acme: {
        domains: ["crm.test"],
        email: "a@crm.test",
        directory: `https://127.0.0.1:${limited.port}/dir`,
        ca_bundle: caFile,
        state_dir: join(work, "reload-state"),
      },
    },
    allowed_hosts: ["crm.test"],
  };
  const crm = await startCrm(raw, "info");
  try {
    await crm.waitLog(/could not get a certificate/, 20_000);
    const first = crm.server.certificates.status()[0];
    const hitsBefore = hits;
    expect(first?.nextAttemptAt).toBeGreaterThan(Date.now() + 3000_000);
    for (let i = 0; i < 3; i++) {
      await crm.server.reload(
        buildConfig({ log_level: "info", allow_private_networks: true, ...raw }, "test.yaml")
          .config,
      );
    }
    await crm.waitLog(/configuration reloaded/);
    await Bun.sleep(300);
    expect(hits).toBe(hitsBefore);
    expect(crm.logs.filter((l) => /could not get a certificate/.test(l)).length).toBe(1);
    expect(crm.server.certificates.status()[0]?.nextAttemptAt).toBe(first?.nextAttemptAt ?? -1);
  } finally {
    await crm.stop();
    limited.stop(true);
  }
});

describe("a CA that does not answer properly", () => {
  let silent: ReturnType<typeof Bun.serve>;
  let huge: ReturnType<typeof Bun.serve>;
  let dropper: TCPSocketListener<undefined>;
  const chunk = new TextEncoder().encode("x".repeat(1 << 16));
  beforeAll(() => {
    // Accepts, reads the request, never answers.
    silent = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      idleTimeout: 0,
      fetch: () => new Promise<Response>(() => {}),
    });
    // A "directory" of 64 MiB (the review's 1.5 GB body took 5 GB of RSS).
    huge = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch() {
        let n = 0;
        return new Response(
          new ReadableStream({ pull: (c) => (n++ < 1024 ? c.enqueue(chunk) : c.close()) }),
          { headers: { "content-type": "application/json" } },
        );
      },
    });
    // Reads the request head and closes without a byte of answer.
    dropper = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data: (s) => void s.end() } });
  });
  afterAll(() => {
    silent.stop(true);
    huge.stop(true);
    dropper.stop(true);
  });
  const cfg = (port: number | undefined, dir: string): AcmeConfig => ({
    ...acmeConfig(join(work, dir)),
    directory: `http://127.0.0.1:${port}/dir`,
  });
  const issue = async (
    config: AcmeConfig,
    limits: { requestTimeoutMs?: number; orderDeadlineMs?: number } = {},
  ): Promise<AcmeError> => {
    const store = new CertStore(config.stateDir);
    store.prepare();
    const err = await issueCertificate({
      config,
      store,
      tokens: new Map(),
      progress: () => {},
      ...limits,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AcmeError);
    return err as AcmeError;
  };

  test("silence: a request timeout, with a message that says the CA did not answer", async () => {
    const e = await issue(cfg(silent.port, "silent"), { requestTimeoutMs: 1000 });
    expect(e.message).toMatch(
      /^the CA at http:\/\/127\.0\.0\.1:\d+\/dir did not answer within 1 s/,
    );
    expect(e.failure).toBe("unreachable-ca");
  });

  test("an order that outlives its deadline fails, whatever the request timeout", async () => {
    const e = await issue(cfg(silent.port, "deadline"), {
      requestTimeoutMs: 600_000,
      orderDeadlineMs: 1000,
    });
    expect(e.message).toMatch(/^the order did not finish within 1 s/);
  });

  test("an endless answer is cut at 1 MiB, not buffered", async () => {
    const e = await issue(cfg(huge.port, "huge"));
    expect(e.message).toContain("sent an answer larger than 1048576 bytes");
  });

  test("a connection closed without an answer says so (not acme-client's TypeError)", async () => {
    const e = await issue(cfg(dropper.port, "drop"));
    expect(e.message).toMatch(
      /^the CA at http:\/\/127\.0\.0\.1:\d+\/dir closed the connection without an answer/,
    );
    expect(e.message).not.toContain("undefined is not an object");
  });

  test("a silent CA counts as a failure: backoff, the error line, the failing state", async () => {
    const lines: string[] = [];
    const rt = createRuntime(buildConfig({}, "t.yaml").config, (l) => lines.push(l));
    const certs = await AcmeCertificates.load(cfg(silent.port, "silent-mgr"), rt, () => {}, {
      requestTimeoutMs: 500,
    });
    try {
      const before = Date.now();
      expect(await certs.renewNow()).toBe(false);
      const s = certs.status();
      expect(s.renewalFailures).toBe(1);
      expect(s.nextAttemptAt).toBeGreaterThanOrEqual(before + RETRY_BASE_MS);
      expect(
        lines.some((l) =>
          /ERROR ACME: could not get a certificate .*did not answer within/.test(l),
        ),
      ).toBe(true);
    } finally {
      certs.stop();
    }
  });
});

test("a symlink planted at state_dir/account.key.tmp is replaced, not written through", async () => {
  const { readFileSync, symlinkSync, writeFileSync, lstatSync } = await import("node:fs");
  const dir = join(work, "symlink");
  const store = new CertStore(dir);
  store.prepare();
  const victim = join(work, "victim.txt");
  writeFileSync(victim, "do not touch\n");
  symlinkSync(victim, join(dir, "account.key.tmp"));
  symlinkSync(victim, join(dir, "crm.test.key.new.tmp"));
  store.writeAccountKey("ACCOUNT KEY\n");
  store.writeCertificate("crm.test", "CERT\n", "KEY\n");
  expect(readFileSync(victim, "utf8")).toBe("do not touch\n");
  expect(readFileSync(join(dir, "account.key"), "utf8")).toBe("ACCOUNT KEY\n");
  expect(readFileSync(join(dir, "crm.test.key"), "utf8")).toBe("KEY\n");
  expect(lstatSync(join(dir, "account.key")).isSymbolicLink()).toBe(false);
  expect(lstatSync(join(dir, "account.key")).mode & 0o777).toBe(0o600);
});

test("the next order trusts the ca_bundle it is given, not the one a previous order to the same directory had", async () => {
  const { makeLeaf, makeTestCa } = await import("./support/tls.ts");
  const { writeFileSync } = await import("node:fs");
  const issuer = await makeTestCa("the ACME CA's issuer");
  const other = await makeTestCa("another CA");
  const leaf = await makeLeaf(issuer, ["127.0.0.1"]);
  const rightFile = join(work, "bundle-right.pem");
  const otherFile = join(work, "bundle-other.pem");
  writeFileSync(rightFile, issuer.cert);
  writeFileSync(otherFile, other.cert);
  // Every request is refused as rate limited: that answer means the TLS handshake was trusted.
  const server = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    tls: { cert: leaf.cert, key: leaf.key },
    fetch: () =>
      Response.json(
        { type: "urn:ietf:params:acme:error:rateLimited", detail: "too many", status: 429 },
        {
          status: 429,
          headers: { "retry-after": "3600", "content-type": "application/problem+json" },
        },
      ),
  });
  const order = async (caBundlePath: string | null, name: string): Promise<string> => {
    const config: AcmeConfig = {
      ...acmeConfig(join(work, name)),
      directory: `https://127.0.0.1:${server.port}/dir`,
      caBundlePath,
    };
    const store = new CertStore(config.stateDir);
    store.prepare();
    const e = await issueCertificate({
      config,
      store,
      tokens: new Map(),
      progress: () => {},
    }).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(AcmeError);
    return (e as AcmeError).message;
  };
  try {
    expect(await order(rightFile, "bundle-1")).toContain("too many");
    // As after a SIGHUP that changed tls.acme.ca_bundle (or dropped it): the CA is no longer trusted.
    expect(await order(otherFile, "bundle-2")).toMatch(
      /^cannot reach the ACME directory .*tls\.acme\.ca_bundle/,
    );
    expect(await order(null, "bundle-3")).toMatch(
      /^cannot reach the ACME directory .*tls\.acme\.ca_bundle/,
    );
    expect(await order(rightFile, "bundle-4")).toContain("too many");
  } finally {
    server.stop(true);
  }
});
