/** Operating crm: metrics, JSON logs, the HTTPS listener, unix sockets, reload, the index page. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildConfig } from "../src/config/load.ts";
import { CrmServer } from "../src/proxy/server.ts";
import { startCrm } from "./support/crm.ts";
import { startOrigin, startTcp } from "./support/origins.ts";
import { rawConnect, run } from "./support/raw.ts";
import { makeLeaf, makeTestCa, type Pem } from "./support/tls.ts";

const dir = mkdtempSync(join(tmpdir(), "crm-ops-"));
let origin: ReturnType<typeof startOrigin>;
let ca: Pem;
let caFile: string;

beforeAll(async () => {
  origin = startOrigin();
  ca = await makeTestCa();
  caFile = join(dir, "ca.pem");
  writeFileSync(caFile, ca.cert);
});
afterAll(() => {
  origin.stop(true);
  rmSync(dir, { recursive: true, force: true });
});

function metricValue(text: string, line: RegExp): number {
  const m = text.split("\n").find((l) => line.test(l));
  return m ? Number(m.split(" ").at(-1)) : 0;
}

describe("/metrics", () => {
  test("values move as traffic flows", async () => {
    const crm = await startCrm({ allowed_hosts: ["127.0.0.1"], allowed_ports: [origin.port, 1] });
    try {
      const get = async (): Promise<string> =>
        (await run(["curl", "-sS", "--noproxy", "*", `${crm.url}/metrics`])).stdout;
      const before = await get();
      expect(before).toContain("# TYPE crm_requests_total counter");
      const fwd = /^crm_requests_total\{kind="forward",status="2xx"\}/;
      const n0 = metricValue(before, fwd);
      await run([
        "curl",
        "-sS",
        "--noproxy",
        "",
        "-x",
        crm.url,
        `http://127.0.0.1:${origin.port}/bytes?n=1000`,
      ]);
      await run(["curl", "-sS", "--noproxy", "", "-x", crm.url, "http://127.0.0.1:1/"]);
      await run(["curl", "-sS", "--noproxy", "", "-x", crm.url, "http://refused.test/"]);
      const after = await get();
      expect(metricValue(after, fwd)).toBe(n0 + 1);
      expect(
        metricValue(after, /^crm_bytes_total\{kind="forward",direction="out"\}/),
      ).toBeGreaterThanOrEqual(1000);
      expect(metricValue(after, /^crm_upstream_errors_total\{reason="refused"\}/)).toBe(1);
      expect(metricValue(after, /^crm_requests_total\{kind="forward",status="4xx"\}/)).toBe(1);
      expect(
        metricValue(after, /^crm_request_duration_seconds_count\{kind="forward"\}/),
      ).toBeGreaterThanOrEqual(2);
      expect(metricValue(after, /^crm_process_resident_memory_bytes/)).toBeGreaterThan(1e6);
      expect(metricValue(after, /^crm_process_open_fds/)).toBeGreaterThan(3);
      expect(after).toMatch(/^crm_uptime_seconds \d/m);
      expect(after).toMatch(/^crm_active_connections \d+$/m);
    } finally {
      await crm.stop();
    }
  });

  test("only metrics.clients may read it; it can be disabled", async () => {
    const crm = await startCrm({ metrics: { clients: ["10.0.0.0/8"] } });
    const off = await startCrm({ metrics: { enabled: false } });
    try {
      expect(
        (
          await run([
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--noproxy",
            "*",
            `${crm.url}/metrics`,
          ])
        ).stdout,
      ).toBe("403");
      expect(
        (
          await run([
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--noproxy",
            "*",
            `${off.url}/metrics`,
          ])
        ).stdout,
      ).toBe("404");
    } finally {
      await crm.stop();
      await off.stop();
    }
  });
});

test("log_format: json gives one parseable object per line with stable fields", async () => {
  const crm = await startCrm(
    { log_format: "json", allowed_hosts: ["127.0.0.1"], allowed_ports: [origin.port] },
    "info",
  );
  try {
    await run([
      "curl",
      "-sS",
      "--noproxy",
      "",
      "-x",
      crm.url,
      `http://127.0.0.1:${origin.port}/json`,
    ]);
    await crm.waitLog(/"msg":"GET /);
    const objs = crm.logs.map((l) => JSON.parse(l) as Record<string, unknown>);
    const req = objs.find((o) => typeof o.msg === "string" && o.msg.startsWith("GET "));
    expect(req).toMatchObject({ level: "info", kind: "forward", client: "127.0.0.1", status: 200 });
    expect(typeof req?.time).toBe("string");
    expect(typeof req?.ms).toBe("number");
  } finally {
    await crm.stop();
  }
});

describe("HTTPS listener", () => {
  test("serves the proxy and the mirror over TLS to curl with the test CA", async () => {
    const leaf = await makeLeaf(ca, ["127.0.0.1", "localhost"]);
    writeFileSync(join(dir, "tls.crt"), leaf.cert);
    writeFileSync(join(dir, "tls.key"), leaf.key);
    const crm = await startCrm({
      tls: { cert_path: join(dir, "tls.crt"), key_path: join(dir, "tls.key") },
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [origin.port],
    });
    try {
      const url = `https://127.0.0.1:${crm.port}`;
      const health = await run([
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "--cacert",
        caFile,
        `${url}/healthz`,
      ]);
      expect(health.stdout).toBe("ok\n");
      const v2 = await run([
        "curl",
        "-sS",
        "-i",
        "--noproxy",
        "*",
        "--cacert",
        caFile,
        `${url}/v2/`,
      ]);
      expect(v2.stdout.toLowerCase()).toContain("docker-distribution-api-version: registry/2.0");
      const fwd = await run([
        "curl",
        "-sS",
        "--noproxy",
        "",
        "--proxy",
        url,
        "--proxy-cacert",
        caFile,
        `http://127.0.0.1:${origin.port}/over-https-proxy`,
      ]);
      expect(fwd.stdout).toBe("origin GET /over-https-proxy");
      const tunnel = await run([
        "curl",
        "-sS",
        "-p",
        "--noproxy",
        "",
        "--proxy",
        url,
        "--proxy-cacert",
        caFile,
        `http://127.0.0.1:${origin.port}/tunnel-in-tls`,
      ]);
      expect(tunnel.stdout).toBe("origin GET /tunnel-in-tls");
      const plain = await rawConnect(crm.port);
      plain.write("GET /healthz HTTP/1.1\r\n\r\n");
      await plain.closed();
      expect(plain.text()).not.toContain("ok\n");
    } finally {
      await crm.stop();
    }
  });

  test("an unreadable certificate stops start-up naming the file", async () => {
    const { config } = buildConfig(
      {
        listen: "127.0.0.1:0",
        tls: { cert_path: join(dir, "missing.crt"), key_path: join(dir, "missing.key") },
      },
      join(dir, "c.yaml"),
    );
    await expect(CrmServer.start(config, { sink: () => {} })).rejects.toThrow(
      /tls\.cert_path: cannot read .*missing\.crt: ENOENT/,
    );
  });
});

describe("unix sockets and several listeners", () => {
  test("listen on TCP and a unix socket at once, with the configured mode", async () => {
    const sock = join(dir, "crm.sock");
    const crm = await startCrm({ listen: ["127.0.0.1:0", sock], unix_socket_mode: "0600" });
    try {
      expect(statSync(sock).mode & 0o777).toBe(0o600);
      const r = await run([
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "--unix-socket",
        sock,
        "http://crm/healthz",
      ]);
      expect(r.stdout).toBe("ok\n");
      const t = await run(["curl", "-sS", "--noproxy", "*", `${crm.url}/healthz`]);
      expect(t.stdout).toBe("ok\n");
    } finally {
      await crm.stop();
    }
    expect(existsSync(sock)).toBe(false);
  });

  test("a unix-socket client (no address) is served when access.clients is set, and counted", async () => {
    const sock = join(dir, "acl.sock");
    const crm = await startCrm({
      listen: ["127.0.0.1:0", sock],
      access: { clients: ["10.0.0.0/8"] },
    });
    try {
      const r = await run([
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "--unix-socket",
        sock,
        "http://crm/healthz",
      ]);
      expect(r.stdout).toBe("ok\n");
      await crm.waitLog(/GET \/healthz kind=local client=unix status=200/);
      // TCP from 127.0.0.1 is still outside access.clients.
      const tcp = await rawConnect(crm.port);
      tcp.write("GET /healthz HTTP/1.1\r\n\r\n");
      await tcp.closed();
      expect(tcp.text()).toBe("");
    } finally {
      await crm.stop();
    }
  });

  test("a regular file at the path is never deleted", async () => {
    const f = join(dir, "not-a-socket");
    writeFileSync(f, "precious");
    const { config } = buildConfig({ listen: f }, "t.yaml");
    await expect(CrmServer.start(config, { sink: () => {} })).rejects.toThrow(
      /exists and is not a socket/,
    );
    expect(await Bun.file(f).text()).toBe("precious");
  });

  test("a live socket is refused; a stale one is replaced", async () => {
    const live = join(dir, "live.sock");
    const other = Bun.listen({ unix: live, socket: { data() {} } });
    try {
      const { config } = buildConfig({ listen: live }, "t.yaml");
      await expect(CrmServer.start(config, { sink: () => {} })).rejects.toThrow(
        /another process is listening/,
      );
    } finally {
      other.stop(true);
    }
    // A stale socket: a socket file nobody listens on.
    const stale = join(dir, "stale.sock");
    const p = Bun.spawnSync([
      "python3",
      "-c",
      `import socket; s=socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(stale)})`,
    ]);
    expect(p.exitCode).toBe(0);
    const crm = await startCrm({ listen: stale });
    try {
      const r = await run([
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "--unix-socket",
        stale,
        "http://crm/healthz",
      ]);
      expect(r.stdout).toBe("ok\n");
    } finally {
      await crm.stop();
    }
  });
});

describe("reload", () => {
  test("a new allow-list applies while a tunnel stays open; a broken config is refused", async () => {
    const echo = startTcp("echo");
    const crm = await startCrm({
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [echo.port, origin.port],
      log_level: "info",
    });
    try {
      const tunnel = await rawConnect(crm.port);
      tunnel.write(`CONNECT 127.0.0.1:${echo.port} HTTP/1.1\r\n\r\n`);
      await tunnel.waitFor("\r\n\r\n");
      const next = buildConfig(
        {
          listen: "127.0.0.1:0",
          allow_private_networks: true,
          allowed_hosts: ["localhost"],
          allowed_ports: [echo.port, origin.port],
          log_level: "debug",
        },
        "new.yaml",
      ).config;
      await crm.server.reload(next);
      // Still open and relaying.
      tunnel.write("still-here");
      await tunnel.waitFor("still-here");
      expect(tunnel.ended).toBe(false);
      // New requests see the new list.
      const r = await run([
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--noproxy",
        "",
        "-x",
        crm.url,
        `http://127.0.0.1:${origin.port}/`,
      ]);
      expect(r.stdout).toBe("403");
      expect(crm.server.rt.config.logLevel).toBe("debug");
      await crm.waitLog(/configuration reloaded/);
      // A config whose files cannot be read is refused, and the running one stays.
      const broken = buildConfig(
        {
          listen: "127.0.0.1:0",
          mitm: {
            enabled: true,
            ca_cert_path: join(dir, "nope.crt"),
            ca_key_path: join(dir, "nope.key"),
          },
        },
        "broken.yaml",
      ).config;
      await expect(crm.server.reload(broken)).rejects.toThrow(/nope\.crt/);
      expect(crm.server.rt.config.allowedHosts).toEqual(["localhost"]);
      tunnel.socket.end();
    } finally {
      await crm.stop();
      echo.stop(true);
    }
  });

  test("SIGHUP on the real process: reload, and an invalid file is refused with an error line", async () => {
    const cfg = join(dir, "hup.yaml");
    writeFileSync(cfg, `listen: "127.0.0.1:0"\nallowed_hosts: ["a.test"]\n`);
    const p = Bun.spawn(
      [process.execPath, join(import.meta.dir, "..", "src", "main.ts"), "-c", cfg],
      { stderr: "pipe", stdout: "ignore" },
    );
    const chunks: string[] = [];
    const reader = p.stderr.getReader();
    void (async () => {
      for (;;) {
        const r = await reader.read();
        if (r.done) return;
        chunks.push(new TextDecoder().decode(r.value));
      }
    })();
    const waitFor = async (re: RegExp): Promise<void> => {
      const end = Date.now() + 5000;
      while (!re.test(chunks.join("")) && Date.now() < end) await Bun.sleep(20);
      expect(chunks.join("")).toMatch(re);
    };
    try {
      await waitFor(/listening/);
      writeFileSync(cfg, `listen: "127.0.0.1:0"\nallowed_hosts: ["b.test"]\n`);
      p.kill("SIGHUP");
      await waitFor(/configuration reloaded/);
      writeFileSync(cfg, `listen: "127.0.0.1:0"\nlog_level: shouty\n`);
      p.kill("SIGHUP");
      await waitFor(/reload refused; keeping the running configuration .*log_level/);
      p.kill("SIGTERM");
      expect(await p.exited).toBe(0);
    } finally {
      p.kill("SIGKILL");
    }
  });
});

test("GET / shows this instance's URL and set-up, and no secret", async () => {
  const hash = await Bun.password.hash("a long password", { algorithm: "argon2id" });
  const crm = await startCrm({
    public_url: "https://crm.example.test",
    access: { users: { alice: hash }, mirror_auth: false },
    mirror: {
      path_prefix: "/hidden-path-123",
      registries: {
        "quay.io": { upstream: "https://quay.io", username: "robot", password: "robot-secret-pw" },
      },
      default_registry: "quay.io",
    },
  });
  try {
    // With access.users set the page is for users only (issue 14); here alice reads it.
    const r = await run([
      "curl",
      "-sS",
      "-i",
      "--noproxy",
      "*",
      "-u",
      "alice:a long password",
      `${crm.url}/`,
    ]);
    expect(r.stdout).toContain("content-type: text/html");
    expect(r.stdout).toContain("https://crm.example.test");
    expect(r.stdout).toContain("registry-mirrors");
    expect(r.stdout).toContain("hosts.toml");
    expect(r.stdout).toContain("registries.conf");
    expect(r.stdout).toContain("HTTPS_PROXY");
    expect(r.stdout).toContain("quay.io");
    for (const secret of ["hidden-path-123", "robot-secret-pw", hash, "alice"])
      expect(r.stdout).not.toContain(secret);
    // The live status page (issue 12) loads crm's own script file; no inline script can run (CSP).
    expect(r.stdout.match(/<script/g)).toEqual(["<script"]);
    expect(r.stdout).toContain('<script src="status.js" defer></script>');
    expect(r.stdout).toContain("content-security-policy: default-src 'none'; script-src 'self'");
  } finally {
    await crm.stop();
  }
});
