/**
 * The mirror's pure rules, without sockets: the OCI path grammar and registry choice, the
 * WWW-Authenticate parser, the trusted-host rule for realms and redirects.
 */
import { describe, expect, test } from "bun:test";
import { buildConfig } from "../src/config/load.ts";
import { HostPolicy } from "../src/host-policy.ts";
import { parseChallenges } from "../src/mirror/auth/challenge.ts";
import { MirrorError } from "../src/mirror/errors.ts";
import {
  clientPath,
  isDigest,
  isName,
  isTag,
  parseMirrorTarget,
  upstreamPath,
  type PullRoute,
} from "../src/mirror/routes.ts";
import { RegistryTrust } from "../src/mirror/auth/trust.ts";

const { config } = buildConfig(
  {
    allowed_hosts: ["objects.example.org"],
    mirror: {
      default_registry: "docker.io",
      registries: {
        "docker.io": "https://registry-1.docker.io",
        "gcr.io": "https://gcr.io",
        "localhost:5000": "http://127.0.0.1:5000",
        "quay.io": { upstream: "https://quay.io", redirect_hosts: [String.raw`cdn\d*\.quay\.io`] },
      },
    },
  },
  "routes.yaml",
);
const mirror = config.mirror;

function pull(target: string): PullRoute {
  const r = parseMirrorTarget(target, mirror);
  if (r.kind !== "pull") throw new Error(`${target} parsed as ${r.kind}`);
  return r;
}

function refusal(target: string): MirrorError {
  try {
    parseMirrorTarget(target, mirror);
  } catch (e) {
    if (e instanceof MirrorError) return e;
    throw e;
  }
  throw new Error(`${target} was accepted`);
}

describe("OCI grammar", () => {
  test("names", () => {
    for (const ok of ["a", "library/nginx", "a0/b-c/d__e/f.g", "x--y", "my_app"])
      expect(isName(ok)).toBe(true);
    for (const bad of [
      "",
      "A",
      "a/",
      "/a",
      "a//b",
      "a-",
      "-a",
      "a___b",
      "a..b",
      "a%2fb",
      "a:b",
      "x".repeat(256),
    ])
      expect(isName(bad)).toBe(false);
  });

  test("tags", () => {
    for (const ok of ["latest", "v1.2.3", "_x", "A-b_c.d", "a".repeat(128)])
      expect(isTag(ok)).toBe(true);
    for (const bad of ["", ".x", "-x", "a:b", "a/b", "a".repeat(129)])
      expect(isTag(bad)).toBe(false);
  });

  test("digests: registered algorithms need their exact hex length", () => {
    expect(isDigest(`sha256:${"a".repeat(64)}`)).toBe(true);
    expect(isDigest(`sha512:${"0".repeat(128)}`)).toBe(true);
    expect(isDigest("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8")).toBe(true);
    for (const bad of [
      `sha256:${"A".repeat(64)}`,
      `sha256:${"a".repeat(63)}`,
      "sha256:",
      ":abc",
      "latest",
      `SHA256:${"a".repeat(64)}`,
    ]) {
      expect(isDigest(bad)).toBe(false);
    }
  });
});

describe("parseMirrorTarget", () => {
  const digest = `sha256:${"b".repeat(64)}`;

  test("the base endpoint", () => {
    expect(parseMirrorTarget("/v2/", mirror)).toEqual({ kind: "base" });
    expect(parseMirrorTarget("/v2", mirror)).toEqual({ kind: "base" });
  });

  test("the four pull endpoints", () => {
    expect(pull("/v2/library/nginx/manifests/1.27")).toMatchObject({
      resource: "manifests",
      name: "library/nginx",
      reference: "1.27",
    });
    expect(pull(`/v2/library/nginx/manifests/${digest}`)).toMatchObject({
      resource: "manifests",
      reference: digest,
    });
    expect(pull(`/v2/library/nginx/blobs/${digest}`)).toMatchObject({
      resource: "blobs",
      reference: digest,
    });
    expect(pull("/v2/library/nginx/tags/list")).toMatchObject({
      resource: "tags",
      reference: null,
    });
    expect(pull(`/v2/library/nginx/referrers/${digest}`)).toMatchObject({
      resource: "referrers",
      reference: digest,
    });
  });

  test("repositories may be named like the endpoints", () => {
    expect(pull("/v2/manifests/blobs/manifests/v1")).toMatchObject({
      name: "manifests/blobs",
      reference: "v1",
    });
    expect(pull("/v2/tags/list/tags/list")).toMatchObject({ name: "tags/list", resource: "tags" });
  });

  test("?ns= wins over a path prefix, is matched case-insensitively and removed from the query", () => {
    const r = pull("/v2/gcr.io/x/manifests/v1?ns=QUAY.io&foo=1");
    expect(r.registry.name).toBe("quay.io");
    expect(r.via).toBe("ns");
    expect(r.name).toBe("gcr.io/x");
    expect(upstreamPath(r)).toBe("/v2/gcr.io/x/manifests/v1?foo=1");
  });

  test("a configured first segment picks the registry; a host:port registry works too", () => {
    expect(pull("/v2/gcr.io/distroless/static/manifests/nonroot")).toMatchObject({
      via: "prefix",
      name: "distroless/static",
    });
    expect(pull("/v2/localhost:5000/team/app/manifests/v1").registry.name).toBe("localhost:5000");
  });

  test("otherwise the default registry, with library/ for single-segment docker.io names", () => {
    expect(pull("/v2/nginx/manifests/latest")).toMatchObject({
      via: "default",
      clientName: "nginx",
      name: "library/nginx",
    });
    expect(pull("/v2/bitnami/nginx/manifests/latest").name).toBe("bitnami/nginx");
    // library/ is Docker Hub's convention only.
    expect(pull("/v2/gcr.io/pause/manifests/3.9").name).toBe("pause");
    expect(pull("/v2/pause/manifests/3.9?ns=quay.io").name).toBe("pause");
  });

  test("an unconfigured registry, by ns or by a host-like first segment, is 404 NAME_UNKNOWN", () => {
    for (const t of [
      "/v2/ghcr.io/o/r/manifests/v1",
      "/v2/localhost/r/manifests/v1",
      "/v2/h:1/r/manifests/v1",
      "/v2/r/manifests/v1?ns=ghcr.io",
    ]) {
      const e = refusal(t);
      expect(e.status).toBe(404);
      expect(e.code).toBe("NAME_UNKNOWN");
      expect(e.message).toContain("mirrored: docker.io, gcr.io, localhost:5000, quay.io");
    }
  });

  test("bad names and references are 400 with the OCI code", () => {
    expect(refusal("/v2/Nginx/manifests/v1")).toMatchObject({ status: 400, code: "NAME_INVALID" });
    expect(refusal("/v2/a%2Fb/manifests/v1")).toMatchObject({ status: 400, code: "NAME_INVALID" });
    expect(refusal("/v2/a/manifests/.v1")).toMatchObject({ status: 400, code: "TAG_INVALID" });
    expect(refusal("/v2/a/manifests/sha256:zz")).toMatchObject({
      status: 400,
      code: "DIGEST_INVALID",
    });
    expect(refusal("/v2/a/blobs/v1")).toMatchObject({ status: 400, code: "DIGEST_INVALID" });
  });

  test("anything else under /v2/ is 404 UNSUPPORTED (uploads, catalog)", () => {
    for (const t of [
      "/v2/_catalog",
      "/v2/a/blobs/uploads/",
      "/v2/a/blobs/uploads/123",
      "/v2/a/manifests/",
      "/v2/a/tags/list/x",
    ]) {
      expect(refusal(t)).toMatchObject({ status: 404, code: "UNSUPPORTED" });
    }
  });

  test("clientPath names the registry the way the client did", () => {
    const q = new URLSearchParams("n=2&last=b");
    expect(clientPath(pull("/v2/gcr.io/a/b/tags/list"), q)).toBe(
      "/v2/gcr.io/a/b/tags/list?n=2&last=b",
    );
    expect(clientPath(pull("/v2/a/b/tags/list?ns=gcr.io"), q)).toBe(
      "/v2/a/b/tags/list?n=2&last=b&ns=gcr.io",
    );
    expect(clientPath(pull("/v2/nginx/tags/list"), q)).toBe("/v2/nginx/tags/list?n=2&last=b");
  });
});

describe("WWW-Authenticate", () => {
  test("Docker Hub's challenge, with a comma inside a quoted scope", () => {
    const [c] = parseChallenges(
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push"',
    );
    expect(c).toEqual({
      scheme: "bearer",
      params: {
        realm: "https://auth.docker.io/token",
        service: "registry.docker.io",
        scope: "repository:a/b:pull,push",
      },
    });
  });

  test("several challenges, spaces, unquoted values, escapes and error=invalid_token", () => {
    const cs = parseChallenges(
      'Basic realm="a \\"b\\"" , Bearer realm=https://t/token, error="invalid_token"',
    );
    expect(cs).toEqual([
      { scheme: "basic", params: { realm: 'a "b"' } },
      { scheme: "bearer", params: { realm: "https://t/token", error: "invalid_token" } },
    ]);
  });

  test("junk does not hang or throw", () => {
    for (const junk of [
      "",
      ",,,",
      '"',
      "Bearer",
      "Bearer realm=",
      'Bearer realm="unterminated',
      "=x",
      "Negotiate abc==",
    ]) {
      expect(Array.isArray(parseChallenges(junk))).toBe(true);
    }
  });
});

describe("RegistryTrust: where realms and redirects may go", () => {
  const policy = new HostPolicy(config.allowedHosts, config.allowedPorts);
  const quay = new RegistryTrust(mirror.registries.get("quay.io")!, policy);
  const local = new RegistryTrust(mirror.registries.get("localhost:5000")!, policy);

  test("own host, redirect_hosts and allowed_hosts pass; others are refused by name", () => {
    expect(quay.check(new URL("https://quay.io/v2/x"))).toMatchObject({ ok: true });
    expect(quay.check(new URL("https://cdn02.quay.io/blob?sig=1"))).toMatchObject({ ok: true });
    expect(quay.check(new URL("https://objects.example.org/b"))).toMatchObject({ ok: true });
    expect(quay.check(new URL("https://cdn.quay.io.evil.example/b"))).toMatchObject({
      ok: false,
      host: "cdn.quay.io.evil.example",
    });
    expect(quay.check(new URL("https://u:p@quay.io/b"))).toMatchObject({ ok: false });
  });

  test("plain http only when the upstream itself is plain http", () => {
    expect(quay.check(new URL("http://quay.io/v2/x"))).toMatchObject({
      ok: false,
      reason: expect.stringContaining("https only"),
    });
    expect(local.check(new URL("http://127.0.0.1:5000/token"))).toMatchObject({ ok: true });
    expect(local.check(new URL("http://127.0.0.1/token"))).toMatchObject({ ok: true });
    expect(local.check(new URL("ftp://127.0.0.1/x"))).toMatchObject({ ok: false });
  });

  test("only the registry's own port, 443, 80 for http upstreams, or allowed_ports", () => {
    expect(local.check(new URL("http://127.0.0.1:6000/token"))).toMatchObject({
      ok: false,
      reason: expect.stringContaining(
        "port 6000 is not localhost:5000's own port, 443, 80 or in allowed_ports",
      ),
    });
    expect(local.check(new URL("https://127.0.0.1/token"))).toMatchObject({ ok: true });
    expect(quay.check(new URL("https://cdn02.quay.io:8443/blob"))).toMatchObject({
      ok: false,
      reason: expect.stringContaining(
        "port 8443 is not quay.io's own port, 443 or in allowed_ports",
      ),
    });
    // allowed_ports (80, 443 by default) apply to every registry.
    expect(quay.check(new URL("https://cdn02.quay.io:80/blob"))).toMatchObject({ ok: true });
    const wide = new RegistryTrust(
      mirror.registries.get("quay.io")!,
      new HostPolicy(config.allowedHosts, [443, 8443]),
    );
    expect(wide.check(new URL("https://cdn02.quay.io:8443/blob"))).toMatchObject({ ok: true });
  });

  test("the SSRF exemption covers only an operator-named upstream's own scheme, host and port", () => {
    expect(local.exemptFromGuard(new URL("http://127.0.0.1:5000/token"))).toBe(true);
    expect(local.exemptFromGuard(new URL("http://127.0.0.1:5001/token"))).toBe(false);
    expect(local.exemptFromGuard(new URL("https://127.0.0.1:5000/token"))).toBe(false);
    expect(local.exemptFromGuard(new URL("http://localhost:5000/token"))).toBe(false);
    const builtIn = buildConfig({}, "defaults.yaml").config.mirror.registries.get("docker.io")!;
    expect(builtIn.operatorNamed).toBe(false);
    expect(
      new RegistryTrust(builtIn, policy).exemptFromGuard(
        new URL("https://registry-1.docker.io/v2/"),
      ),
    ).toBe(false);
  });
});
