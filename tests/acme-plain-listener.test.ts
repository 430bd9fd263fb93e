/**
 * The plain listener beside ACME admits every address so the CA's validators reach http-01.
 * A client outside access.clients must get only `GET|HEAD /.well-known/acme-challenge/TOKEN`
 * there: no proxying (absolute-form, CONNECT), no local endpoints, no redirect. The CA here is a
 * port nobody listens on (no order ever succeeds; the challenge route still answers).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildConfig } from "../src/config/load.ts";
import { staticResolver } from "../src/net/resolver.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { freePorts } from "./support/ports.ts";
import { rawConnect } from "./support/raw.ts";

let work: string;
let origin: ReturnType<typeof Bun.serve>;

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "crm-acme-plain-"));
  origin = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    fetch: (r) => new Response(`ORIGIN SAW ${new URL(r.url).pathname}\n`),
  });
});

afterAll(() => {
  origin.stop(true);
  rmSync(work, { recursive: true, force: true });
});

async function startLocked(
  clients: string[],
  redirect: boolean,
): Promise<{ crm: TestCrm; plainPort: number }> {
  const [plainPort, tlsPort, deadCa] = freePorts(3) as [number, number, number];
  const crm = await startCrm(
    {
      listen: [`127.0.0.1:${tlsPort}`, { address: `127.0.0.1:${plainPort}`, tls: false }],
      tls: {
        redirect_http: redirect,
        acme: {
          domains: ["crm.test"],
          email: "a@crm.test",
          directory: `https://127.0.0.1:${deadCa}/dir`,
          state_dir: join(work, `s-${plainPort}`),
        },
      },
      access: { clients },
      allowed_hosts: ["origin.test"],
      allowed_ports: [origin.port],
      mirror: {
        default_registry: "reg.test",
        registries: { "reg.test": `http://127.0.0.1:${origin.port}` },
      },
    },
    "info",
    staticResolver({ "origin.test": "127.0.0.1" }),
  );
  return { crm, plainPort };
}

/** Sends one request and returns everything until crm closes (or a full response arrived). */
async function exchange(port: number, req: string): Promise<string> {
  const c = await rawConnect(port);
  c.write(req);
  await c.closed(10_000).catch(() => {});
  c.socket.end();
  return c.text();
}

const abs = () =>
  `GET http://origin.test:${origin.port}/x HTTP/1.1\r\nHost: origin.test:${origin.port}\r\nConnection: close\r\n\r\n`;
const local = (method: string, path: string) =>
  `${method} ${path} HTTP/1.1\r\nHost: crm.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`;

describe.each([false, true])(
  "redirect_http %p: a stranger on the ACME plain listener",
  (redirect) => {
    let crm: TestCrm;
    let plainPort: number;
    beforeAll(async () => {
      ({ crm, plainPort } = await startLocked(["10.0.0.0/8"], redirect));
    });
    afterAll(async () => {
      await crm.stop();
    });

    test("gets no absolute-form proxying, no CONNECT, no local endpoint, no redirect", async () => {
      const forward = await exchange(plainPort, abs());
      expect(forward).not.toContain("ORIGIN SAW");
      expect(forward).toMatch(/^HTTP\/1\.1 403 /);
      const absChallenge = await exchange(
        plainPort,
        `GET http://origin.test:${origin.port}/.well-known/acme-challenge/x HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n`,
      );
      expect(absChallenge).not.toContain("ORIGIN SAW");
      expect(absChallenge).toMatch(/^HTTP\/1\.1 403 /);
      const tunnel = await exchange(
        plainPort,
        `CONNECT origin.test:${origin.port} HTTP/1.1\r\nHost: origin.test:${origin.port}\r\n\r\n`,
      );
      expect(tunnel).not.toMatch(/^HTTP\/1\.1 200/);
      for (const path of [
        "/v2/",
        "/",
        "/metrics",
        "/healthz",
        "/.well-known/acme-challenge/../../metrics",
      ]) {
        const r = await exchange(plainPort, local("GET", path));
        expect(r).toMatch(/^HTTP\/1\.1 (403|404) /);
        expect(r).not.toMatch(/location:/i);
        expect(r).not.toContain("ORIGIN SAW");
      }
      const post = await exchange(plainPort, local("POST", "/.well-known/acme-challenge/abc"));
      expect(post).toMatch(/^HTTP\/1\.1 403 /);
    });

    test("still reaches the challenge route with GET and HEAD", async () => {
      for (const method of ["GET", "HEAD"]) {
        const r = await exchange(
          plainPort,
          local(method, "/.well-known/acme-challenge/no-such-token"),
        );
        expect(r).toMatch(/^HTTP\/1\.1 404 /);
      }
    });
  },
);

test("a client in access.clients keeps proxying through the plain listener", async () => {
  const { crm, plainPort } = await startLocked(["127.0.0.0/8"], false);
  try {
    expect(await exchange(plainPort, abs())).toContain("ORIGIN SAW /x");
  } finally {
    await crm.stop();
  }
});

test("proxy_protocol on a plain listener beside tls.acme is refused: anyone could name an allowed client", () => {
  expect(() =>
    buildConfig(
      {
        listen: [":443", { address: ":80", tls: false, proxy_protocol: true }],
        tls: { acme: { domains: ["crm.example.com"] } },
      },
      "/etc/crm/t.yaml",
    ),
  ).toThrow(
    /listen\[1\]\.proxy_protocol: true cannot be used on a plain listener beside tls\.acme/,
  );
  // Without ACME the plain listener keeps its accept-time check, so proxy_protocol stays allowed there.
  expect(() =>
    buildConfig(
      {
        listen: [":443", { address: ":80", tls: false, proxy_protocol: true }],
        access: { trusted_proxies: ["10.0.0.0/8"] },
        tls: { cert_path: "c.pem", key_path: "k.pem" },
      },
      "/etc/crm/t.yaml",
    ),
  ).not.toThrow();
});

test("redirect_http with cert_path/key_path sends a foreign Host to the certificate's name, not to the Host", async () => {
  const { writeFileSync } = await import("node:fs");
  const { makeLeaf, makeTestCa } = await import("./support/tls.ts");
  const leaf = await makeLeaf(await makeTestCa("redirect test CA"), ["crm.test", "mirror.test"]);
  writeFileSync(join(work, "c.pem"), leaf.cert);
  writeFileSync(join(work, "k.pem"), leaf.key);
  const [plainPort, tlsPort] = freePorts(2) as [number, number];
  const crm = await startCrm(
    {
      listen: [`127.0.0.1:${tlsPort}`, { address: `127.0.0.1:${plainPort}`, tls: false }],
      tls: { redirect_http: true, cert_path: join(work, "c.pem"), key_path: join(work, "k.pem") },
    },
    "info",
  );
  try {
    const location = async (host: string) =>
      /\r\nlocation: ([^\r]*)/i.exec(
        await exchange(
          plainPort,
          `GET /path?q=1 HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`,
        ),
      )?.[1];
    for (const host of ["evil.example", "evil.example:1", "[::1]"])
      expect(await location(host)).toBe(`https://crm.test:${tlsPort}/path?q=1`);
    // Not a host at all: 400, no Location.
    const userinfo = await exchange(
      plainPort,
      `GET / HTTP/1.1\r\nHost: crm.test@evil.example\r\nConnection: close\r\n\r\n`,
    );
    expect(userinfo).toMatch(/^HTTP\/1\.1 400 /);
    expect(userinfo).not.toMatch(/location:/i);
    expect(await location("mirror.test")).toBe(`https://mirror.test:${tlsPort}/path?q=1`);
    expect(await location("CRM.test:80")).toBe(`https://crm.test:${tlsPort}/path?q=1`);
  } finally {
    await crm.stop();
  }
});
