/**
 * `crm doctor` against fake upstreams on 127.0.0.1, each broken in one way: a name that does
 * not resolve, a certificate for another name or from an unknown CA, a token realm crm may not
 * use, a blob redirect to a host crm may not follow, an exhausted quota. Each must fail at the
 * right row with its own message and fix, and skip what depends on it.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { diagnose } from "../src/doctor/index.ts";
import type { CheckRow } from "../src/doctor/report.ts";
import { probeTls } from "../src/doctor/tls-probe.ts";
import { staticResolver } from "../src/net/resolver.ts";
import {
  startCdn,
  startFakeRegistry,
  startTokenServer,
  type Cdn,
  type FakeRegistry,
  type TokenServer,
} from "./support/mirror-upstreams.ts";
import { startCrm } from "./support/crm.ts";
import { run } from "./support/raw.ts";
import { makeLeaf, makeTestCa, type Pem } from "./support/tls.ts";

const resolver = staticResolver({
  "reg.test": "127.0.0.1",
  "wrong.test": "127.0.0.1",
  localhost: "127.0.0.1",
});

describe("crm doctor", () => {
  let dir: string;
  let tokens: TokenServer;
  let reg: FakeRegistry;
  let cdn: Cdn;
  let ca: Pem;
  let tlsServer: ReturnType<typeof Bun.serve>;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "crm-doctor-"));
    tokens = startTokenServer();
    cdn = startCdn("localhost");
    reg = startFakeRegistry({ auth: { kind: "bearer", tokens }, cdnBase: cdn.url });
    ca = await makeTestCa();
    const leaf = await makeLeaf(ca, ["localhost", "127.0.0.1"]);
    tlsServer = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      tls: { cert: leaf.cert, key: leaf.key },
      fetch: () =>
        new Response("{}", { headers: { "docker-distribution-api-version": "registry/2.0" } }),
    });
  });
  afterAll(async () => {
    reg.stop();
    cdn.stop();
    tokens.stop();
    tlsServer.stop(true);
    await rm(dir, { recursive: true, force: true });
  });

  let n = 0;
  async function doctor(
    cfg: Record<string, unknown>,
    extraCa?: string,
  ): Promise<{ rows: CheckRow[]; ok: boolean; row(name: string): CheckRow }> {
    const file = join(dir, `c${++n}.json`);
    writeFileSync(
      file,
      JSON.stringify({
        listen: "127.0.0.1:0",
        allow_private_networks: true,
        timeouts: { connect: "2s", upstream_header: "5s" },
        ...cfg,
      }),
    );
    const r = await diagnose({ configPath: file, json: false, resolver, extraCa });
    return {
      rows: r.rows,
      ok: r.ok,
      row(name) {
        const hit = r.rows.find((x) => x.check === name);
        if (!hit) throw new Error(`no row ${name}; rows: ${r.rows.map((x) => x.check).join(", ")}`);
        return hit;
      },
    };
  }

  const port = (u: string): number => Number(new URL(u).port);

  test("a healthy registry passes every check, and the exit status says so", async () => {
    const d = await doctor({
      allowed_hosts: ["reg.test", "127.0.0.1", "localhost"],
      allowed_ports: [port(reg.url), port(tokens.url), port(cdn.url)],
      mirror: {
        registries: {
          "docker.io": {
            upstream: `http://reg.test:${port(reg.url)}`,
            redirect_hosts: ["127.0.0.1", "localhost"],
          },
        },
      },
      doctor: { images: { "docker.io": "cdn/app:v1" } },
    });
    for (const r of d.rows) expect(`${r.check}: ${r.result} ${r.detail}`).toMatch(/: pass /);
    expect(d.ok).toBe(true);
    expect(d.row("docker.io: token realm").detail).toContain(
      "issued a token for repository:cdn/app:pull (anonymous)",
    );
    expect(d.row("docker.io: manifest").detail).toMatch(/^HEAD cdn\/app:v1 → sha256:/);
    expect(d.row("docker.io: blob redirect").detail).toBe("blobs come from localhost (allowed)");
    expect(d.row("allow-list (CONNECT pulls)").detail).toBe(
      `allowed_hosts and allowed_ports cover reg.test:${port(reg.url)}, 127.0.0.1:${port(tokens.url)}, localhost:${port(cdn.url)}`,
    );
    expect(d.row("TLS certificate").detail).toContain("no TLS on the listener");
  });

  test("no DNS: the DNS row fails with the name and the fix, the rest of that registry is skipped", async () => {
    const d = await doctor({ mirror: { registries: { "docker.io": "http://nodns.test:5000" } } });
    const row = d.row("docker.io: DNS");
    expect(row.result).toBe("fail");
    expect(row.detail).toContain("nodns.test does not resolve: ENOTFOUND");
    expect(row.fix).toContain("resolvectl query nodns.test");
    expect(d.row("docker.io: GET /v2/")).toMatchObject({ result: "skip", detail: "DNS failed" });
    expect(d.ok).toBe(false);
  });

  test("wrong certificate: another name, and an unknown CA, are told apart", async () => {
    const tlsPort = tlsServer.port;
    const wrongName = await doctor(
      { mirror: { registries: { "docker.io": `https://wrong.test:${tlsPort}` } } },
      ca.cert,
    );
    expect(wrongName.row("docker.io: TLS").result).toBe("fail");
    expect(wrongName.row("docker.io: TLS").detail).toContain("not wrong.test");
    expect(wrongName.row("docker.io: TLS").detail).toContain("DNS:localhost");
    expect(wrongName.row("docker.io: GET /v2/").result).toBe("skip");

    const unknownCa = await doctor({
      mirror: { registries: { "docker.io": `https://localhost:${tlsPort}` } },
    });
    expect(unknownCa.row("docker.io: TLS").detail).toContain(
      "certificate of localhost is not trusted",
    );
    expect(unknownCa.row("docker.io: TLS").detail).toContain("issuer: crm test CA");
    expect(unknownCa.row("docker.io: TLS").fix).toContain("install the issuing CA");

    const trusted = await doctor(
      { mirror: { registries: { "docker.io": `https://localhost:${tlsPort}` } } },
      ca.cert,
    );
    expect(trusted.row("docker.io: TLS")).toMatchObject({ result: "pass" });
    expect(trusted.row("docker.io: TLS").detail).toContain("trusted, for localhost");
  });

  test("an https upstream named by its IP address: no SNI is sent, the certificate is judged for the IP, the report is complete", async () => {
    const d = await doctor(
      {
        mirror: {
          registries: {
            "docker.io": `https://127.0.0.1:${tlsServer.port}`,
            "second.test": "http://nodns.test:5000",
          },
        },
      },
      ca.cert,
    );
    expect(d.row("docker.io: TLS")).toMatchObject({ result: "pass" });
    expect(d.row("docker.io: TLS").detail).toContain("trusted, for 127.0.0.1");
    // The test CA is trusted by the probe only, not by fetch: the row is there, whatever it says.
    expect(d.row("docker.io: GET /v2/").check).toBe("docker.io: GET /v2/");
    expect(d.row("second.test: DNS").result).toBe("fail");
    const direct = await probeTls("127.0.0.1", Number(tlsServer.port), "127.0.0.1", 2000, ca.cert);
    expect(direct.ok).toBe(true);
  });

  test("clock skew: a certificate judged by a clock a month ahead is expired, a day behind not yet valid; a skewed Date header fails the clock row", async () => {
    const ahead = await probeTls(
      "127.0.0.1",
      Number(tlsServer.port),
      "localhost",
      2000,
      ca.cert,
      Date.now() + 30 * 86_400_000,
    );
    expect(ahead.ok).toBe(false);
    expect(ahead.detail).toContain("certificate of localhost expired on");
    expect(ahead.ok ? "" : ahead.fix).toContain("timedatectl set-ntp true");
    const behind = await probeTls(
      "127.0.0.1",
      Number(tlsServer.port),
      "localhost",
      2000,
      ca.cert,
      Date.now() - 86_400_000,
    );
    expect(behind.detail).toContain("is not valid before");

    const skewed = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: () =>
        new Response("{}", { headers: { date: new Date(Date.now() - 3600_000).toUTCString() } }),
    });
    try {
      const d = await doctor({
        mirror: { registries: { "docker.io": `http://127.0.0.1:${skewed.port}` } },
      });
      expect(d.row("docker.io: clock")).toMatchObject({ result: "fail" });
      expect(d.row("docker.io: clock").detail).toMatch(
        /this host's clock is 3[56]\d\d s ahead of 127\.0\.0\.1's/,
      );
    } finally {
      skewed.stop(true);
    }
  });

  test("token realm on a host crm may not use: named, with the key to add it to", async () => {
    // The realm is on 127.0.0.1, the registry is reg.test: not its own host, nothing allows it.
    const d = await doctor({
      mirror: { registries: { "docker.io": `http://reg.test:${port(reg.url)}` } },
      doctor: { images: { "docker.io": "cdn/app:v1" } },
    });
    const row = d.row("docker.io: token realm");
    expect(row.result).toBe("fail");
    expect(row.detail).toContain("realm host 127.0.0.1 is not allowed");
    expect(row.fix).toBe(
      'add "127.0.0.1" to mirror.registries.docker.io.redirect_hosts if it is genuine',
    );
    expect(d.row("docker.io: manifest")).toMatchObject({
      result: "skip",
      detail: "token realm failed",
    });
  });

  test("blob redirect to a host crm may not follow: named, with the key to add it to", async () => {
    const d = await doctor({
      allowed_ports: [port(tokens.url), port(cdn.url)],
      mirror: {
        registries: {
          "docker.io": {
            upstream: `http://reg.test:${port(reg.url)}`,
            redirect_hosts: ["127.0.0.1"],
          },
        },
      },
      doctor: { images: { "docker.io": "cdn/app:v1" } },
    });
    expect(d.row("docker.io: manifest").result).toBe("pass");
    const row = d.row("docker.io: blob redirect");
    expect(row.result).toBe("fail");
    expect(row.detail).toContain("redirect to localhost refused for docker.io");
    expect(row.fix).toBe(
      'add "localhost" to mirror.registries.docker.io.redirect_hosts if it is genuine',
    );
  });

  test("a manifest streamed without Content-Length is read only up to 4 MiB, then refused by name", async () => {
    // 8 MiB of JSON whitespace, chunked: valid JSON, but no manifest is that big.
    const digest = "sha256:" + "a".repeat(64);
    const chunk = " ".repeat(1 << 16);
    const up = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch(req) {
        const p = new URL(req.url).pathname;
        if (p === "/v2/") return new Response("{}");
        if (req.method === "HEAD")
          return new Response(null, { headers: { "docker-content-digest": digest } });
        let i = 0;
        const body = new ReadableStream<Uint8Array>({
          pull(c) {
            const part =
              i === 0 ? `{"config":{"digest":"${digest}"},"x":1${chunk}` : i < 128 ? chunk : "}";
            c.enqueue(new TextEncoder().encode(part));
            if (++i > 128) c.close();
          },
        });
        return new Response(body, {
          headers: { "content-type": "application/vnd.oci.image.manifest.v1+json" },
        });
      },
    });
    try {
      const d = await doctor({
        mirror: { registries: { "docker.io": `http://127.0.0.1:${up.port}` } },
        doctor: { images: { "docker.io": "library/app:v1" } },
      });
      expect(d.row("docker.io: manifest").result).toBe("pass");
      const row = d.row("docker.io: blob redirect");
      expect(row.result).toBe("fail");
      expect(row.detail).toContain("sent more than 4194304 bytes");
    } finally {
      up.stop(true);
    }
  });

  test("the upstream quota is read from the manifest answer; an exhausted one fails", async () => {
    const d = await doctor({
      allowed_ports: [port(tokens.url)],
      mirror: { registries: { "docker.io": `http://127.0.0.1:${port(reg.url)}` } },
      doctor: { images: { "docker.io": "ratelimited/app:v1" } },
    });
    expect(d.row("docker.io: quota")).toMatchObject({ result: "fail" });
    expect(d.row("docker.io: quota").detail).toContain("pulls left: 0 of 100 per 6 h");
  });

  test("the allow-list must cover what a CONNECT pull reaches", async () => {
    const d = await doctor({
      allowed_hosts: ["docker.io"],
      mirror: { registries: { "docker.io": `http://127.0.0.1:${port(reg.url)}` } },
      doctor: { images: { "docker.io": "cdn/app:v1" } },
    });
    const row = d.row("allow-list (CONNECT pulls)");
    expect(row.result).toBe("fail");
    expect(row.detail).toContain(`127.0.0.1:${port(reg.url)}`);
    expect(row.fix).toContain("add 127.0.0.1");
  });

  test("an invalid config is the one failure, with the key named", async () => {
    const d = await doctor({ allowed_ports: ["x"] });
    expect(d.rows).toHaveLength(1);
    expect(d.row("config").result).toBe("fail");
    expect(d.row("config").detail).toContain("allowed_ports[0]");
  });

  test("a listen port held by the running crm passes: its /healthz answers", async () => {
    const crm = await startCrm({ mirror: { enabled: false } }, "warn");
    try {
      const d = await doctor({ listen: `127.0.0.1:${crm.port}`, mirror: { enabled: false } });
      expect(d.row(`listen 127.0.0.1:${crm.port}`)).toMatchObject({
        result: "pass",
        detail: "in use by the running crm (its /healthz answers)",
      });
    } finally {
      await crm.stop();
    }
  });

  test("a listen port held by another process fails; the command exits 1 and --json parses", async () => {
    const holder = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    try {
      const file = join(dir, "cli.json");
      writeFileSync(
        file,
        JSON.stringify({
          listen: `127.0.0.1:${holder.port}`,
          allow_private_networks: true,
          mirror: { enabled: false },
        }),
      );
      const r = await run([
        process.execPath,
        join(import.meta.dir, "..", "src", "main.ts"),
        "doctor",
        "-config",
        file,
        "--json",
      ]);
      expect(r.code).toBe(1);
      const out = JSON.parse(r.stdout) as { ok: boolean; checks: CheckRow[] };
      expect(out.ok).toBe(false);
      const row = out.checks.find((c) => c.check === `listen 127.0.0.1:${holder.port}`);
      expect(row).toMatchObject({
        result: "fail",
        detail: `port ${holder.port} is in use by another process`,
      });
      const table = await run([
        process.execPath,
        join(import.meta.dir, "..", "src", "main.ts"),
        "doctor",
        "-config",
        file,
      ]);
      expect(table.stdout).toMatch(/^CHECK\s+RESULT\s+FIX$/m);
      expect(table.stdout).toContain("checks did not pass");
    } finally {
      holder.stop(true);
    }
  });
});
