/**
 * The mirror against upstreams written in tests/support/mirror-upstreams.ts: a Bearer registry
 * with its token service and CDN, a Basic registry, a dead one. Each test is one rule of issue 3.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startCrm, type TestCrm } from "./support/crm.ts";
import {
  CONFIG_DIGEST,
  LAYER_BLOB,
  LAYER_DIGEST,
  MANIFEST,
  MANIFEST_DIGEST,
  MANIFEST_TYPE,
  deadPort,
  startCdn,
  startFakeRegistry,
  startTokenServer,
  type Cdn,
  type FakeRegistry,
  type TokenServer,
} from "./support/mirror-upstreams.ts";
import { rawConnect } from "./support/raw.ts";

const PASSWORD = "s3cret-robot-password";
const CLIENT_SECRET = "client-own-secret-token";
const dir = mkdtempSync(join(tmpdir(), "crm-mirror-"));
let tokens: TokenServer;
let cdn: Cdn;
let hub: FakeRegistry;
let second: FakeRegistry;
/** A token service that checks credentials, and one whose realm is named by another host. */
let strictTokens: TokenServer;
let strict: FakeRegistry;
let farTokens: TokenServer;
let far: FakeRegistry;
let crm: TestCrm;

beforeAll(async () => {
  tokens = startTokenServer({ expiresIn: 300 });
  cdn = startCdn("localhost");
  hub = startFakeRegistry({ auth: { kind: "bearer", tokens }, cdnBase: cdn.url, slowMs: 1500 });
  second = startFakeRegistry({ auth: { kind: "basic", user: "robot", password: PASSWORD } });
  strictTokens = startTokenServer({ users: { robot: PASSWORD } });
  strict = startFakeRegistry({ auth: { kind: "bearer", tokens: strictTokens } });
  farTokens = startTokenServer({ realmHost: "localhost" });
  far = startFakeRegistry({ auth: { kind: "bearer", tokens: farTokens } });
  writeFileSync(join(dir, "robot.pass"), PASSWORD + "\n");
  crm = await startCrm({
    allowed_hosts: ["allowed.test"],
    // Token services and the CDN listen on their own loopback ports; a realm or redirect may only
    // go to the registry's own port, 443, 80 or allowed_ports.
    allowed_ports: [
      80,
      443,
      Number(new URL(tokens.url).port),
      Number(new URL(cdn.url).port),
      Number(new URL(strictTokens.url).port),
      Number(new URL(farTokens.url).port),
    ],
    timeouts: { upstream_header: "400ms" },
    mirror: {
      default_registry: "docker.io",
      registries: {
        "docker.io": { upstream: hub.url, redirect_hosts: ["localhost"] },
        // The same upstream without redirect_hosts: its CDN hop must be refused.
        "nocdn.test": hub.url,
        "second.test": {
          upstream: second.url,
          username: "robot",
          password_file: join(dir, "robot.pass"),
        },
        "dead.test": `http://127.0.0.1:${deadPort()}`,
        "strict.test": {
          upstream: strict.url,
          username: "robot",
          password_file: join(dir, "robot.pass"),
        },
        "wrongpass.test": { upstream: strict.url, username: "robot", password: "not-the-password" },
        "far.test": far.url,
      },
    },
  });
});

afterAll(async () => {
  await crm.stop();
  hub.stop();
  second.stop();
  strict.stop();
  strictTokens.stop();
  far.stop();
  farTokens.stop();
  cdn.stop();
  tokens.stop();
  rmSync(dir, { recursive: true, force: true });
});

const get = (path: string, init: RequestInit = {}): Promise<Response> =>
  fetch(crm.url + path, { proxy: false, ...init } as RequestInit);

/** The upstream requests made since `mark` (an index into `seen`). */
const since = (r: FakeRegistry | Cdn, mark: number) => r.seen.slice(mark);

async function ociError(
  res: Response,
): Promise<{ code: string; message: string; detail: unknown }> {
  expect(res.headers.get("content-type")).toMatch(/^application\/json/);
  const body = (await res.json()) as {
    errors: Array<{ code: string; message: string; detail: unknown }>;
  };
  expect(body.errors).toHaveLength(1);
  return body.errors[0]!;
}

describe("routes", () => {
  test("GET /v2/ answers 200 {} with the API version header, without asking upstream", async () => {
    const mark = hub.seen.length;
    for (const path of ["/v2/", "/v2"]) {
      const res = await get(path);
      expect(res.status).toBe(200);
      expect(await res.text()).toBe("{}");
      expect(res.headers.get("docker-distribution-api-version")).toBe("registry/2.0");
    }
    expect(since(hub, mark)).toHaveLength(0);
  });

  test("methods other than GET and HEAD get 405 with Allow, as OCI JSON", async () => {
    for (const method of ["POST", "PUT", "DELETE", "PATCH"]) {
      const res = await get(`/v2/library/alpine/blobs/uploads/`, {
        method,
        body: method === "DELETE" ? undefined : "x",
      });
      expect(res.status).toBe(405);
      expect(res.headers.get("allow")).toBe("GET, HEAD");
      expect(res.headers.get("docker-distribution-api-version")).toBe("registry/2.0");
      expect((await ociError(res)).code).toBe("UNSUPPORTED");
    }
  });

  test("names, tags and digests outside the OCI grammar get 400 before any upstream request", async () => {
    const mark = hub.seen.length;
    const cases: Array<[string, string]> = [
      ["/v2/Library/Alpine/manifests/v1", "NAME_INVALID"],
      ["/v2/library/al--/manifests/v1", "NAME_INVALID"],
      ["/v2/library/alpine/manifests/-bad", "TAG_INVALID"],
      ["/v2/library/alpine/manifests/sha256:abc", "DIGEST_INVALID"],
      ["/v2/library/alpine/blobs/latest", "DIGEST_INVALID"],
      ["/v2/library/alpine/referrers/v1", "DIGEST_INVALID"],
    ];
    for (const [path, code] of cases) {
      const res = await get(path);
      expect(res.status).toBe(400);
      expect((await ociError(res)).code).toBe(code);
    }
    expect(since(hub, mark)).toHaveLength(0);
  });

  test("a path that is no pull endpoint is 404 UNSUPPORTED", async () => {
    const res = await get("/v2/_catalog");
    expect(res.status).toBe(404);
    expect((await ociError(res)).code).toBe("UNSUPPORTED");
  });

  test("single-segment docker.io names get library/", async () => {
    const mark = hub.seen.length;
    const res = await get("/v2/alpine/manifests/v1");
    expect(res.status).toBe(200);
    expect(since(hub, mark).map((s) => s.url)).toContain("/v2/library/alpine/manifests/v1");
    await crm.waitLog(
      /GET \/v2\/alpine\/manifests\/v1 .*status=200 .*registry=docker\.io repo=library\/alpine ref=v1 token=(fetched|cached)/,
    );
  });

  test("?ns= picks the registry and is not forwarded", async () => {
    const mark = second.seen.length;
    const res = await get("/v2/team/app/manifests/v1?ns=second.test");
    expect(res.status).toBe(200);
    // The tag is resolved with a HEAD, then fetched by digest (manifest cache); the first may
    // draw the Basic challenge. None carries ns.
    const seen = since(second, mark);
    expect(new Set(seen.map((s) => `${s.method} ${s.url}`))).toEqual(
      new Set(["HEAD /v2/team/app/manifests/v1", `GET /v2/team/app/manifests/${MANIFEST_DIGEST}`]),
    );
  });

  test("a configured registry as first path segment routes there, the prefix removed", async () => {
    const mark = second.seen.length;
    const res = await get(`/v2/second.test/team/app/blobs/${CONFIG_DIGEST}`);
    expect(res.status).toBe(200);
    expect(res.headers.get("docker-content-digest")).toBe(CONFIG_DIGEST);
    expect(since(second, mark).map((s) => s.url)).toEqual([`/v2/team/app/blobs/${CONFIG_DIGEST}`]);
  });

  test("a registry that is not configured is 404 NAME_UNKNOWN listing what is mirrored", async () => {
    for (const path of [
      "/v2/gcr.io/distroless/static/manifests/nonroot",
      "/v2/distroless/static/manifests/nonroot?ns=gcr.io",
    ]) {
      const res = await get(path);
      expect(res.status).toBe(404);
      const err = await ociError(res);
      expect(err.code).toBe("NAME_UNKNOWN");
      expect(err.message).toContain("gcr.io");
      expect(err.message).toContain(
        "docker.io, nocdn.test, second.test, dead.test, strict.test, wrongpass.test, far.test",
      );
    }
  });
});

describe("upstream auth, server-side", () => {
  test("a Bearer challenge is answered with a token for the request's scope; the client sees no challenge", async () => {
    const before = tokens.calls();
    const res = await get("/v2/team/bearer/manifests/v1");
    expect(res.status).toBe(200);
    expect(res.headers.get("www-authenticate")).toBeNull();
    expect(await res.text()).toBe(MANIFEST);
    expect(tokens.calls()).toBe(before + 1);
    expect(tokens.log.at(-1)).toMatchObject({
      scope: "repository:team/bearer:pull",
      service: tokens.service,
      authorization: null,
    });
  });

  test("the client's own Authorization never reaches the upstream or the token service", async () => {
    const hubMark = hub.seen.length;
    const tokenMark = tokens.log.length;
    const res = await get("/v2/team/clientauth/manifests/v1", {
      headers: { authorization: `Bearer ${CLIENT_SECRET}` },
    });
    expect(res.status).toBe(200);
    const seen = since(hub, hubMark);
    expect(seen.length).toBeGreaterThan(0);
    for (const s of seen) expect(JSON.stringify(s.headers)).not.toContain(CLIENT_SECRET);
    for (const t of tokens.log.slice(tokenMark))
      expect(t.authorization ?? "").not.toContain(CLIENT_SECRET);
    // The upstream did get crm's own token.
    expect(seen.at(-1)?.headers.authorization).toMatch(/^Bearer tok-/);
  });

  test("invalid_token drops the cached token, fetches a new one and retries once", async () => {
    expect((await get("/v2/team/revoked/manifests/v1")).status).toBe(200);
    const calls = tokens.callsFor("repository:team/revoked:pull");
    expect((await get("/v2/team/revoked/manifests/v1")).status).toBe(200);
    expect(tokens.callsFor("repository:team/revoked:pull")).toBe(calls); // cached
    tokens.generation++;
    const mark = hub.seen.length;
    const res = await get("/v2/team/revoked/manifests/v1");
    expect(res.status).toBe(200);
    expect(tokens.callsFor("repository:team/revoked:pull")).toBe(calls + 1);
    const seen = since(hub, mark);
    expect(seen).toHaveLength(2);
    expect(seen[0]!.headers.authorization).not.toBe(seen[1]!.headers.authorization);
    await crm.waitLog(/repo=team\/revoked ref=v1 token=fetched/);
  });

  test("a Basic challenge is answered with the configured credentials (password_file)", async () => {
    const mark = second.seen.length;
    const res = await get("/v2/team/basic/manifests/v1?ns=second.test");
    expect(res.status).toBe(200);
    const auths = since(second, mark).map((s) => s.headers.authorization ?? null);
    expect(auths.at(-1)).toBe("Basic " + Buffer.from(`robot:${PASSWORD}`).toString("base64"));
    // Learned: the next request sends Basic at once instead of collecting a 401 first.
    const mark2 = second.seen.length;
    expect((await get("/v2/team/basic/manifests/v1?ns=second.test")).status).toBe(200);
    expect(since(second, mark2)).toHaveLength(1);
  });

  test("configured credentials go to the token service as Basic", async () => {
    const res = await get("/v2/strict.test/team/app/manifests/v1");
    expect(res.status).toBe(200);
    expect(strictTokens.log.at(-1)).toMatchObject({
      scope: "repository:team/app:pull",
      authorization: "Basic " + Buffer.from(`robot:${PASSWORD}`).toString("base64"),
      status: 200,
    });
  });

  test("a token service that refuses the credentials is 502 naming it, for the operator", async () => {
    const res = await get("/v2/wrongpass.test/team/app/manifests/v1");
    expect(res.status).toBe(502);
    const err = await ociError(res);
    expect(err.code).toBe("UNAUTHORIZED");
    expect(err.message).toBe(
      "token service 127.0.0.1 answered 401 to the credentials configured for wrongpass.test",
    );
  });

  test("a token realm on a host the registry may not use is refused before any token request", async () => {
    const res = await get("/v2/far.test/team/app/manifests/v1");
    expect(res.status).toBe(502);
    expect((await ociError(res)).message).toContain(
      "token realm host localhost refused for far.test",
    );
    expect(farTokens.calls()).toBe(0);
  });

  test("still 401 after authenticating becomes 403 DENIED, without a challenge", async () => {
    const res = await get("/v2/private/thing/manifests/v1");
    expect(res.status).toBe(403);
    expect(res.headers.get("www-authenticate")).toBeNull();
    const err = await ociError(res);
    expect(err.code).toBe("DENIED");
    expect(err.message).toContain("repository:private/thing:pull");
  });
});

describe("redirects, server-side", () => {
  test("a blob 307 to the CDN is followed without Authorization; the digest of the first hop is kept", async () => {
    const hubMark = hub.seen.length;
    const cdnMark = cdn.seen.length;
    const res = await get(`/v2/cdn/app/blobs/${LAYER_DIGEST}`);
    expect(res.status).toBe(200);
    expect(new Uint8Array(await res.arrayBuffer())).toEqual(LAYER_BLOB);
    expect(res.headers.get("docker-content-digest")).toBe(LAYER_DIGEST);
    expect(res.headers.get("content-length")).toBe(String(LAYER_BLOB.byteLength));
    expect(res.headers.get("location")).toBeNull();
    expect(since(hub, hubMark).at(-1)?.headers.authorization).toMatch(/^Bearer /);
    const cdnSeen = since(cdn, cdnMark);
    expect(cdnSeen).toHaveLength(1);
    expect(cdnSeen[0]!.headers.authorization).toBeUndefined();
    await crm.waitLog(/repo=cdn\/app ref=sha256:\w+ token=\w+ redirect=localhost/);
  });

  test("Range goes through the redirect: 206 with Content-Range from the CDN", async () => {
    const res = await get(`/v2/cdn/app/blobs/${LAYER_DIGEST}`, {
      headers: { range: "bytes=100-1123" },
    });
    expect(res.status).toBe(206);
    expect(res.headers.get("content-range")).toBe(`bytes 100-1123/${LAYER_BLOB.byteLength}`);
    expect(res.headers.get("content-length")).toBe("1024");
    expect(new Uint8Array(await res.arrayBuffer())).toEqual(LAYER_BLOB.subarray(100, 1124));
  });

  test("a CDN error that is not OCI JSON is answered as OCI JSON with its status", async () => {
    const res = await get(`/v2/cdn/app/blobs/sha256:${"0".repeat(64)}`);
    expect(res.status).toBe(404);
    expect((await ociError(res)).code).toBe("BLOB_UNKNOWN");
  });

  test("a redirect to a host that is not allowed is 502 naming it, and is never dialled", async () => {
    const res = await get(`/v2/evil/x/blobs/${LAYER_DIGEST}`);
    expect(res.status).toBe(502);
    const err = await ociError(res);
    expect(err.message).toContain("evil.invalid");
    expect(err.message).toContain("redirect_hosts");
  });

  test("the CDN host is refused for a registry that does not list it", async () => {
    const cdnMark = cdn.seen.length;
    const res = await get(`/v2/nocdn.test/cdn/app/blobs/${LAYER_DIGEST}`);
    expect(res.status).toBe(502);
    expect((await ociError(res)).message).toContain("redirect to localhost refused for nocdn.test");
    expect(since(cdn, cdnMark)).toHaveLength(0);
  });

  test("more than 10 redirects is 502", async () => {
    const mark = hub.seen.length;
    const res = await get(`/v2/loop/x/blobs/${LAYER_DIGEST}`);
    expect(res.status).toBe(502);
    expect((await ociError(res)).message).toContain("more than 10");
    expect(
      since(hub, mark).filter((s) => s.url.startsWith("/v2/loop/")).length,
    ).toBeLessThanOrEqual(11 + 1);
  });
});

describe("faithful pass-through", () => {
  test("HEAD stays HEAD and carries Docker-Content-Digest and Content-Length", async () => {
    const mark = hub.seen.length;
    const res = await get("/v2/library/alpine/manifests/v1", { method: "HEAD" });
    expect(res.status).toBe(200);
    expect(res.headers.get("docker-content-digest")).toBe(MANIFEST_DIGEST);
    expect(res.headers.get("content-length")).toBe(String(Buffer.byteLength(MANIFEST)));
    expect(res.headers.get("content-type")).toBe(MANIFEST_TYPE);
    const methods = since(hub, mark).map((s) => s.method);
    expect(methods.length).toBeGreaterThan(0);
    expect(methods.every((m) => m === "HEAD")).toBe(true);
  });

  test("every Accept line, Range, If-None-Match and User-Agent reach the upstream; 304 passes", async () => {
    const mark = hub.seen.length;
    const c = await rawConnect(crm.port);
    c.write(
      "GET /v2/library/alpine/manifests/v1 HTTP/1.1\r\nHost: m\r\n" +
        "Accept: application/vnd.oci.image.index.v1+json\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\n" +
        `User-Agent: containerd/1.7\r\nIf-None-Match: "${MANIFEST_DIGEST}"\r\nRange: bytes=0-\r\nConnection: close\r\n\r\n`,
    );
    await c.closed();
    expect(c.text()).toMatch(/^HTTP\/1\.1 304 /);
    expect(c.text().toLowerCase()).toContain(`etag: "${MANIFEST_DIGEST}"`);
    const h = since(hub, mark).at(-1)!.headers;
    expect(h.accept).toBe(
      "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
    );
    expect(h["user-agent"]).toBe("containerd/1.7");
    expect(h["if-none-match"]).toBe(`"${MANIFEST_DIGEST}"`);
    expect(h.range).toBe("bytes=0-");
  });

  test("only registry fields are passed back", async () => {
    const res = await get("/v2/library/alpine/manifests/v1");
    expect(res.headers.get("x-internal-secret")).toBeNull();
    expect(res.headers.get("etag")).toBe(`"${MANIFEST_DIGEST}"`);
  });

  test("Range on a registry blob: 206 + Content-Range, and 416 passes through", async () => {
    const res = await get(`/v2/library/alpine/blobs/${LAYER_DIGEST}`, {
      headers: { range: "bytes=1000-" },
    });
    expect(res.status).toBe(206);
    expect(res.headers.get("content-range")).toBe(
      `bytes 1000-${LAYER_BLOB.byteLength - 1}/${LAYER_BLOB.byteLength}`,
    );
    expect(new Uint8Array(await res.arrayBuffer())).toEqual(LAYER_BLOB.subarray(1000));
    const bad = await get(`/v2/library/alpine/blobs/${LAYER_DIGEST}`, {
      headers: { range: `bytes=${LAYER_BLOB.byteLength}-` },
    });
    expect(bad.status).toBe(416);
    expect(bad.headers.get("content-range")).toBe(`bytes */${LAYER_BLOB.byteLength}`);
    expect(bad.headers.get("docker-distribution-api-version")).toBe("registry/2.0");
  });

  test("429 passes with Retry-After, ratelimit-* and the upstream's OCI error", async () => {
    const res = await get("/v2/ratelimited/x/manifests/v1");
    expect(res.status).toBe(429);
    expect(res.headers.get("retry-after")).toBe("7");
    expect(res.headers.get("ratelimit-limit")).toBe("100;w=21600");
    expect(res.headers.get("ratelimit-remaining")).toBe("0;w=21600");
    // crm's message names the fix (this upstream refuses the HEAD already, so no body to quote).
    const err = await ociError(res);
    expect(err).toMatchObject({
      code: "TOOMANYREQUESTS",
      message:
        "docker.io rate limit reached for this crm's address; configure credentials for docker.io under mirror.registries",
      detail: { registry: "docker.io", limit: 100, remaining: 0, window_s: 21600 },
    });
  });

  test("an upstream 404 passes with the upstream's OCI error", async () => {
    const res = await get("/v2/library/alpine/manifests/nosuch");
    expect(res.status).toBe(404);
    expect(await ociError(res)).toMatchObject({
      code: "MANIFEST_UNKNOWN",
      message: "manifest unknown",
    });
  });

  test("tags/list Link points at crm, keeping the prefix or ns, and the next page works", async () => {
    const viaPrefix = await get("/v2/second.test/team/app/tags/list?n=2");
    expect(await viaPrefix.json()).toEqual({ name: "team/app", tags: ["a", "b"] });
    const next = viaPrefix.headers.get("link");
    expect(next).toBe('</v2/second.test/team/app/tags/list?n=2&last=b>; rel="next"');
    const page2 = await get(next!.slice(1, next!.indexOf(">")));
    expect(await page2.json()).toEqual({ name: "team/app", tags: ["c", "d"] });

    const viaNs = await get("/v2/team/app/tags/list?n=4&ns=second.test");
    expect(viaNs.headers.get("link")).toBe(
      '</v2/team/app/tags/list?n=4&last=d&ns=second.test>; rel="next"',
    );
    const viaDefault = await get("/v2/alpine/tags/list?n=5");
    expect(viaDefault.headers.get("link")).toBe('</v2/alpine/tags/list?n=5&last=e>; rel="next"');
  });

  test("behind mirror.path_prefix the Link carries the prefix too", async () => {
    const prefixed = await startCrm({
      mirror: {
        path_prefix: "/s3cr3t",
        default_registry: "second.test",
        registries: {
          "second.test": { upstream: second.url, username: "robot", password: PASSWORD },
        },
      },
    });
    try {
      const res = await fetch(`${prefixed.url}/s3cr3t/v2/team/app/tags/list?n=2`, {
        proxy: false,
      } as RequestInit);
      expect(res.status).toBe(200);
      const link = res.headers.get("link");
      expect(link).toBe('</s3cr3t/v2/team/app/tags/list?n=2&last=b>; rel="next"');
      const next = await fetch(prefixed.url + link!.slice(1, link!.indexOf(">")), {
        proxy: false,
      } as RequestInit);
      expect(await next.json()).toEqual({ name: "team/app", tags: ["c", "d"] });
    } finally {
      await prefixed.stop();
    }
  });
});

describe("failures", () => {
  test("an upstream that is down is 502 OCI JSON with a short reason", async () => {
    const res = await get("/v2/dead.test/team/app/manifests/v1");
    expect(res.status).toBe(502);
    const err = await ociError(res);
    expect(err.message).toBe("upstream dead.test: connection refused");
    expect(JSON.stringify(err)).not.toContain("127.0.0.1");
  });

  test("an upstream that does not answer in time is 504 OCI JSON", async () => {
    // The upstream answers 200 after 1.5 s: a 504 can only be crm's 400 ms timeout (no wall-clock
    // bound here, a loaded machine may take longer than the timeout to answer).
    const res = await get("/v2/slow/x/manifests/v1");
    expect(res.status).toBe(504);
    expect((await ociError(res)).message).toBe("upstream docker.io: no answer in time");
  });
});

describe("logs", () => {
  test("one info line per request with registry, repo, ref, token; no secret ever logged", async () => {
    const res = await get(`/v2/cdn/logged/blobs/${LAYER_DIGEST}`, {
      headers: { authorization: `Bearer ${CLIENT_SECRET}` },
    });
    await res.arrayBuffer();
    const line = await crm.waitLog(/INFO .*GET \/v2\/cdn\/logged\/blobs\//);
    expect(line).toMatch(
      /status=200 in=0 out=307200 ms=\d+ registry=docker\.io repo=cdn\/logged ref=sha256:[0-9a-f]{64} token=fetched redirect=localhost/,
    );
    const all = crm.logs.join("\n");
    expect(all).not.toContain(PASSWORD);
    expect(all).not.toContain("not-the-password");
    expect(all).not.toContain(CLIENT_SECRET);
    expect(tokens.issued.size).toBeGreaterThan(0);
    for (const t of tokens.issued.keys()) expect(all).not.toContain(t);
    // The signed CDN URL's signature is redacted on debug lines.
    expect(all).toMatch(/DEBUG mirror upstream .*sig=<redacted/);
  });
});
