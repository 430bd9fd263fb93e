/**
 * Who the mirror trusts besides its upstream (issue 14, points 4 and 5): a LAN registry's own
 * token realm, a token realm that failed once, the built-in registries behind the SSRF guard,
 * and the ports a redirect may lead to. Every server is on 127.0.0.1; names that must be refused
 * are refused by the trust check or the guard before any dial.
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import type { Server } from "bun";
import { staticResolver } from "../src/net/resolver.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";

const MANIFEST = JSON.stringify({
  schemaVersion: 2,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {},
  layers: [],
});
const MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json";
// The real digest: the manifest cache checks the bytes against it.
const MANIFEST_DIGEST = "sha256:" + new Bun.CryptoHasher("sha256").update(MANIFEST).digest("hex");

interface LanRegistry {
  server: Server<undefined>;
  port: number;
  /** Requests to /v2/... (not the token endpoints). */
  v2Requests: number;
  tokenRequests: Record<string, number>;
  /** The realm the next 401 names, relative to the registry's own origin or absolute. */
  realm: string;
  /** Token endpoints that answer 500. */
  broken: Set<string>;
}

const servers: Array<{ stop(force?: boolean): void }> = [];
let crm: TestCrm | null = null;
afterEach(async () => {
  await crm?.stop();
  crm = null;
});
afterAll(() => {
  for (const s of servers) s.stop(true);
});

/** A registry that is its own token service (`/token`, `/token2`), like a LAN registry. */
function startLanRegistry(): LanRegistry {
  const lan: LanRegistry = {
    server: null as unknown as Server<undefined>,
    port: 0,
    v2Requests: 0,
    tokenRequests: {},
    realm: "/token",
    broken: new Set(),
  };
  lan.server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const url = new URL(req.url);
      if (url.pathname === "/token" || url.pathname === "/token2") {
        lan.tokenRequests[url.pathname] = (lan.tokenRequests[url.pathname] ?? 0) + 1;
        if (lan.broken.has(url.pathname)) return new Response("down", { status: 500 });
        return Response.json({ token: `tok${url.pathname}`, expires_in: 300 });
      }
      lan.v2Requests++;
      const realm = lan.realm.startsWith("/")
        ? `http://localhost:${lan.port}${lan.realm}`
        : lan.realm;
      const want = `Bearer tok${lan.realm.startsWith("/") ? lan.realm : ""}`;
      if (req.headers.get("authorization") !== want) {
        return Response.json(
          { errors: [{ code: "UNAUTHORIZED", message: "authentication required" }] },
          { status: 401, headers: { "www-authenticate": `Bearer realm="${realm}",service="lan"` } },
        );
      }
      return new Response(MANIFEST, {
        headers: { "content-type": MANIFEST_TYPE, "docker-content-digest": MANIFEST_DIGEST },
      });
    },
  });
  lan.port = lan.server.port ?? 0;
  servers.push(lan.server);
  return lan;
}

/** crm with the SSRF guard on; `localhost` is the only name, mapped to loopback. */
function startGuardedCrm(lan: LanRegistry, extra: Record<string, unknown> = {}): Promise<TestCrm> {
  return startCrm(
    {
      allow_private_networks: false,
      mirror: {
        default_registry: "lan.test",
        registries: { "lan.test": { upstream: `http://localhost:${lan.port}` } },
      },
      ...extra,
    },
    "debug",
    staticResolver({ localhost: "127.0.0.1" }),
  );
}

async function manifest(c: TestCrm, repo: string): Promise<{ status: number; text: string }> {
  const r = await fetch(`${c.url}/v2/${repo}/manifests/v1`, { headers: { accept: MANIFEST_TYPE } });
  return { status: r.status, text: await r.text() };
}

describe("mirror token handling", () => {
  test("a LAN registry's token realm on its own host:port is treated like the upstream, not refused by the SSRF guard", async () => {
    const lan = startLanRegistry();
    crm = await startGuardedCrm(lan);
    const r = await manifest(crm, "team/app");
    expect(r).toEqual({ status: 200, text: MANIFEST });
    expect(lan.tokenRequests["/token"]).toBe(1);
  });

  test("a realm on the upstream's host but another port stays guarded", async () => {
    const lan = startLanRegistry();
    lan.realm = `http://localhost:${lan.port + 1}/token`;
    crm = await startGuardedCrm(lan, { allowed_ports: [80, 443, lan.port + 1] });
    const r = await manifest(crm, "team/app");
    expect(r.status).toBe(502);
    expect(r.text).toContain("non-public address");
  });

  test("a token fetch that failed is not remembered: the next request asks the upstream again", async () => {
    const lan = startLanRegistry();
    // First the upstream names a realm crm refuses (not its host, not in redirect_hosts).
    lan.realm = "http://evil.test/token";
    // Guard off, so only the token handling is under test.
    crm = await startGuardedCrm(lan, { allow_private_networks: true });
    const first = await manifest(crm, "team/app");
    expect(first.status).toBe(502);
    expect(first.text).toContain("token realm host evil.test refused");
    // The operator fixes the registry; crm must notice without a restart.
    lan.realm = "/token";
    const seen = lan.v2Requests;
    const second = await manifest(crm, "team/app");
    expect(lan.v2Requests).toBeGreaterThan(seen);
    expect(second).toEqual({ status: 200, text: MANIFEST });
  });

  test("a learned realm that stops working is forgotten within the same request", async () => {
    const lan = startLanRegistry();
    crm = await startGuardedCrm(lan, { allow_private_networks: true });
    expect((await manifest(crm, "team/app")).status).toBe(200);
    // The registry moves its token service; the old endpoint fails from now on.
    lan.realm = "/token2";
    lan.broken.add("/token");
    const r = await manifest(crm, "team/other");
    expect(r).toEqual({ status: 200, text: MANIFEST });
    expect(lan.tokenRequests["/token2"]).toBe(1);
    // And the new realm is what later requests use first.
    const before = lan.tokenRequests["/token"] ?? 0;
    expect((await manifest(crm, "team/third")).status).toBe(200);
    expect(lan.tokenRequests["/token"] ?? 0).toBe(before);
  });
});

describe("SSRF exemption only for registries the operator named", () => {
  test("a built-in default registry whose name resolves to loopback is refused by the guard", async () => {
    // A poisoned or pinned answer for registry-1.docker.io: checked, never dialled.
    crm = await startCrm(
      { allow_private_networks: false },
      "debug",
      staticResolver({ "registry-1.docker.io": "127.0.0.1" }),
    );
    const r = await manifest(crm, "library/alpine");
    expect(r.status).toBe(502);
    expect(r.text).toContain("upstream docker.io: resolves to a non-public address");
  });
});

describe("redirect and realm trust checks the port", () => {
  function startRedirecting(target: () => string): { port: number } {
    const s = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: (req) => {
        const url = new URL(req.url);
        if (url.pathname.includes("/blobs/"))
          return new Response(null, { status: 307, headers: { location: target() } });
        return new Response("{}", { status: 404 });
      },
    });
    servers.push(s);
    return { port: s.port ?? 0 };
  }
  const blob = `/v2/x/blobs/sha256:${"a".repeat(64)}`;

  test("a redirect to another port of the registry's own host is refused unless that port is in allowed_ports", async () => {
    let hits = 0;
    const other = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: () => (hits++, new Response("secret service")),
    });
    servers.push(other);
    const up = startRedirecting(() => `http://127.0.0.1:${other.port}/internal?sig=1`);
    const mirror = {
      default_registry: "up.test",
      registries: { "up.test": { upstream: `http://127.0.0.1:${up.port}` } },
    };
    crm = await startCrm({ mirror });
    const r = await fetch(crm.url + blob);
    const text = await r.text();
    expect(r.status).toBe(502);
    expect(text).toContain(
      `port ${other.port} is not up.test's own port, 443, 80 or in allowed_ports`,
    );
    expect(hits).toBe(0);
    await crm.stop();

    crm = await startCrm({ mirror, allowed_ports: [80, 443, other.port] });
    const ok = await fetch(crm.url + blob);
    expect(await ok.text()).toBe("secret service");
    expect(hits).toBe(1);
  });
});
