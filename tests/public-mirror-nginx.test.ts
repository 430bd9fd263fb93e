/**
 * crm behind a real nginx: the http front on a unix socket (X-Forwarded-For, access.trusted_proxies:
 * ["unix"]) and the stream front with the PROXY protocol. Two clients bound to 127.0.0.2 and
 * 127.0.0.3 must be told apart in logs, metrics and limits; a forged X-Forwarded-For from a peer
 * that is not trusted is ignored.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { rm } from "node:fs/promises";
import { startCrm, type TestCrm } from "./support/crm.ts";
import {
  MANIFEST_DIGEST,
  startFakeRegistry,
  type FakeRegistry,
} from "./support/mirror-upstreams.ts";
import {
  missingNginx,
  sharedTempDir,
  startNginx,
  STREAM_BIND,
  type Nginx,
} from "./support/nginx.ts";
import { rawConnect, run, sendFrom } from "./support/raw.ts";
import { missingTools } from "./support/tools.ts";

const skip = missingTools("crm behind nginx", ["curl"]) || missingNginx();

describe.skipIf(skip)("crm behind nginx", () => {
  let dir: string;
  let registry: FakeRegistry;
  let crm: TestCrm;
  let nginx: Nginx;
  let ppPort: number;
  let plainPort: number;

  beforeAll(async () => {
    dir = await sharedTempDir("crm-front-");
    const sock = join(dir, "crm.sock");
    registry = startFakeRegistry({ auth: { kind: "none" } });
    crm = await startCrm(
      {
        listen: [sock, { address: "127.0.0.1:0", proxy_protocol: true }, "127.0.0.1:0"],
        unix_socket_mode: "0666",
        log_format: "json",
        access: { trusted_proxies: ["unix", `${STREAM_BIND}/32`] },
        limits: { requests_per_second: 0.2, burst: 6 },
        mirror: { default_registry: "reg.test", registries: { "reg.test": registry.url } },
      },
      "info",
    );
    const tcp = crm.server.addresses.filter((a) => a.port !== 0);
    ppPort = tcp[0]!.port;
    plainPort = tcp[1]!.port;
    nginx = await startNginx({ unixSocket: sock, proxyProtocolPort: ppPort });
  }, 30_000);

  afterAll(async () => {
    await nginx?.stop();
    await crm?.stop();
    registry?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const manifest = "/v2/library/app/manifests/v1";
  const curl = (from: string, port: number, path: string, extra: string[] = []) =>
    run([
      "curl",
      "-sS",
      "--noproxy",
      "*",
      "--interface",
      from,
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      ...extra,
      `http://127.0.0.1:${port}${path}`,
    ]);

  /** The `client` of every request log line for `path` that ended with `status`. */
  const clientsLogged = (path: string, status: number): string[] =>
    crm.logs
      .map((l) => JSON.parse(l) as { msg: string; client?: string; status?: number })
      .filter((l) => l.msg === `GET ${path}` && l.status === status)
      .map((l) => l.client ?? "");

  test("both fronts pass the real client: logs name 127.0.0.2 and 127.0.0.3, not nginx", async () => {
    expect((await curl("127.0.0.2", nginx.httpPort, manifest)).stdout).toBe("200");
    expect((await curl("127.0.0.3", nginx.httpPort, manifest)).stdout).toBe("200");
    expect((await curl("127.0.0.2", nginx.streamPort, manifest)).stdout).toBe("200");
    expect((await curl("127.0.0.3", nginx.streamPort, manifest)).stdout).toBe("200");
    const clients = clientsLogged(manifest, 200);
    expect(clients.sort()).toEqual(["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"]);
    expect(clients).not.toContain("unix");
  });

  test("a forged X-Forwarded-For from a peer that is not trusted is ignored", async () => {
    const path = `/v2/library/app/manifests/${MANIFEST_DIGEST}`;
    // Through the PROXY-protocol front, the peer is the client itself (127.0.0.2), not a trusted proxy.
    expect(
      (await curl("127.0.0.2", nginx.streamPort, path, ["-H", "X-Forwarded-For: 10.9.9.9"])).stdout,
    ).toBe("200");
    // Through the http front, nginx appends the real address; the forged one to its left is not believed.
    expect(
      (await curl("127.0.0.3", nginx.httpPort, path, ["-H", "X-Forwarded-For: 10.9.9.9"])).stdout,
    ).toBe("200");
    // Straight to crm's plain listener.
    expect(
      (
        await curl("127.0.0.1", plainPort, path, [
          "-H",
          "X-Forwarded-For: 10.9.9.9",
          "-H",
          "Forwarded: for=10.8.8.8",
        ])
      ).stdout,
    ).toBe("200");
    const clients = clientsLogged(path, 200);
    expect(clients.sort()).toEqual(["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    expect(crm.logs.join("\n")).not.toContain("10.9.9.9");
  });

  test("/metrics counts each client on its own", async () => {
    const text = await (
      await fetch(`http://127.0.0.1:${plainPort}/metrics`, { proxy: false } as RequestInit)
    ).text();
    const count = (client: string): number =>
      Number(
        new RegExp(
          `crm_client_requests_total\\{client="${client.replace(/\./g, "\\.")}"\\} (\\d+)`,
        ).exec(text)?.[1] ?? "0",
      );
    expect(count("127.0.0.2")).toBeGreaterThanOrEqual(3);
    expect(count("127.0.0.3")).toBeGreaterThanOrEqual(3);
    expect(text).not.toContain('client="unix"');
  });

  test("the rate limit is per client: 127.0.0.2 is refused, 127.0.0.3 is still served", async () => {
    const codes: string[] = [];
    for (let i = 0; i < 8; i++)
      codes.push((await curl("127.0.0.2", nginx.httpPort, manifest)).stdout);
    expect(codes).toContain("429");
    const refused = await run([
      "curl",
      "-sS",
      "--noproxy",
      "*",
      "--interface",
      "127.0.0.2",
      "-i",
      `http://127.0.0.1:${nginx.httpPort}${manifest}`,
    ]);
    expect(refused.stdout).toMatch(/^HTTP\/1\.1 429/);
    expect(refused.stdout).toMatch(/retry-after: \d+/i);
    expect(refused.stdout).toContain('"code":"TOOMANYREQUESTS"');
    expect((await curl("127.0.0.3", nginx.httpPort, manifest)).stdout).toBe("200");
    expect((await curl("127.0.0.3", nginx.streamPort, manifest)).stdout).toBe("200");
    const text = await (
      await fetch(`http://127.0.0.1:${plainPort}/metrics`, { proxy: false } as RequestInit)
    ).text();
    expect(text).toMatch(/crm_client_limited_total\{client="127\.0\.0\.2",limit="rate"\} [1-9]/);
    expect(text).not.toMatch(/crm_client_limited_total\{client="127\.0\.0\.3"/);
  });

  /** What a connection from `from` (the balancer's address or not) gets back. */
  const fromAddress = (from: string, bytes: string | Buffer): Promise<string> =>
    sendFrom(from, ppPort, bytes);

  test("a proxy_protocol listener refuses a connection that does not start with a PROXY header", async () => {
    expect(await fromAddress(STREAM_BIND, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")).toMatch(
      /^HTTP\/1\.1 400 [^]*expects a PROXY protocol header/,
    );
  });

  test("a PROXY header straight from a client, not the balancer, is refused and no client is named", async () => {
    const c = await rawConnect(ppPort);
    c.write(
      `PROXY TCP4 203.0.113.66 127.0.0.1 5555 80\r\nGET ${manifest} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
    );
    await c.closed();
    expect(c.text()).toMatch(/^HTTP\/1\.1 400 [^]*access\.trusted_proxies/);
    expect(crm.logs.join("\n")).toMatch(
      /PROXY header from a peer not in access\.trusted_proxies.*"peer":"127\.0\.0\.1"/,
    );
    expect(crm.logs.join("\n")).not.toContain("203.0.113.66");
  });

  test("PROXY protocol v2 (binary, as HAProxy and cloud balancers send it) names the client", async () => {
    const sig = Buffer.from([
      0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
    ]);
    const addrs = Buffer.from([203, 0, 113, 7, 127, 0, 0, 1, 0x30, 0x39, 0x1f, 0x90]);
    const out = await fromAddress(
      STREAM_BIND,
      Buffer.concat([
        sig,
        Buffer.from([0x21, 0x11, 0x00, addrs.length]),
        addrs,
        Buffer.from(`GET ${manifest} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`),
      ]),
    );
    expect(out).toMatch(/^HTTP\/1\.1 200/);
    expect(clientsLogged(manifest, 200)).toContain("203.0.113.7");
  });
});
