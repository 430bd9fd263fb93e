/**
 * A registry that redirects to another registry which challenges on its own: registry.k8s.io
 * answers 307 to Artifact Registry (*-docker.pkg.dev), which wants a Bearer token from its own
 * realm even for public images. crm fetches that token anonymously and never hands the first
 * registry's credentials to the second host.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { Server } from "bun";
import { startCrm, type TestCrm } from "./support/crm.ts";

const MANIFEST = JSON.stringify({
  schemaVersion: 2,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {},
  layers: [],
});
const DIGEST = "sha256:" + new Bun.CryptoHasher("sha256").update(MANIFEST).digest("hex");

interface Seen {
  path: string;
  authorization: string | null;
}

let second: Server<undefined>;
let first: Server<undefined>;
let crm: TestCrm;
const secondSeen: Seen[] = [];
const tokenCalls: Array<{ scope: string | null; authorization: string | null }> = [];

beforeAll(async () => {
  second = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const url = new URL(req.url);
      const authorization = req.headers.get("authorization");
      if (url.pathname === "/token") {
        tokenCalls.push({ scope: url.searchParams.get("scope"), authorization });
        return Response.json({ token: "second-token", expires_in: 300 });
      }
      secondSeen.push({ path: url.pathname, authorization });
      if (authorization !== "Bearer second-token") {
        return Response.json(
          { errors: [{ code: "UNAUTHORIZED", message: "authentication required" }] },
          {
            status: 401,
            headers: {
              "www-authenticate": `Bearer realm="http://localhost:${second.port}/token",service="second.test",scope="repository:proj/images/pause:pull"`,
            },
          },
        );
      }
      return new Response(MANIFEST, {
        headers: {
          "content-type": "application/vnd.oci.image.manifest.v1+json",
          "docker-content-digest": DIGEST,
        },
      });
    },
  });
  first = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const url = new URL(req.url);
      if (req.headers.get("authorization") !== "Basic " + btoa("robot:first-secret")) {
        return new Response("{}", {
          status: 401,
          headers: { "www-authenticate": 'Basic realm="first"' },
        });
      }
      if (url.pathname === "/v2/pause/manifests/3.9") {
        return new Response(null, {
          status: 307,
          headers: {
            location: `http://localhost:${second.port}/v2/proj/images/pause/manifests/3.9`,
          },
        });
      }
      return new Response("{}", { status: 404 });
    },
  });
  crm = await startCrm({
    // The second registry (and its realm) listens on another loopback port.
    allowed_ports: [80, 443, second.port ?? 0],
    mirror: {
      default_registry: "k8s.test",
      registries: {
        "k8s.test": {
          upstream: `http://127.0.0.1:${first.port}`,
          username: "robot",
          password: "first-secret",
          redirect_hosts: ["localhost"],
        },
      },
    },
  });
});

afterAll(async () => {
  await crm.stop();
  first.stop(true);
  second.stop(true);
});

test("the redirect target's own challenge is answered with an anonymous token from its realm", async () => {
  const res = await fetch(`${crm.url}/v2/pause/manifests/3.9`, { proxy: false } as RequestInit);
  expect(res.status).toBe(200);
  expect(await res.text()).toBe(MANIFEST);
  expect(res.headers.get("docker-content-digest")).toBe(DIGEST);
  expect(tokenCalls).toEqual([{ scope: "repository:proj/images/pause:pull", authorization: null }]);
  // The second host saw no credentials of the first, only its own token.
  for (const s of secondSeen)
    expect(s.authorization === null || s.authorization === "Bearer second-token").toBe(true);

  const again = await fetch(`${crm.url}/v2/pause/manifests/3.9`, { proxy: false } as RequestInit);
  expect(again.status).toBe(200);
  await again.text();
  expect(tokenCalls).toHaveLength(1);
  expect(crm.logs.join("\n")).not.toContain("second-token");
  expect(crm.logs.join("\n")).not.toContain("first-secret");
});
