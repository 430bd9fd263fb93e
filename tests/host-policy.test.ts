import { describe, expect, test } from "bun:test";
import { DEFAULT_ALLOWED_HOSTS } from "../src/config/types.ts";
import { HttpError } from "../src/errors.ts";
import { HostPolicy, normalizeHost } from "../src/host-policy.ts";
import type { RequestHead } from "../src/http/head.ts";
import { route } from "../src/proxy/router.ts";

const policy = new HostPolicy(DEFAULT_ALLOWED_HOSTS, [80, 443]);

function head(method: string, target: string): RequestHead {
  return { method, target, version: "HTTP/1.1", headers: [], size: 0 };
}

/** The status crm answers for a request target (200 = routed on). */
function statusFor(method: string, target: string, p = policy): number {
  try {
    route(head(method, target), p);
    return 200;
  } catch (e) {
    return (e as HttpError).status;
  }
}

describe("allow-list: exact entries", () => {
  test.each([
    ["docker.io", true],
    ["DOCKER.IO", true],
    ["docker.io.", true],
    ["Docker.Io.", true],
    ["registry-1.docker.io", true],
    ["docker.io.evil.test", false],
    ["notdocker.io", false],
    ["sub.docker.io", false],
    ["docker.io..", false],
    ["evil.test", false],
    ["", false],
  ])("%p allowed=%p", (host, allowed) => {
    expect(policy.check(host, 443).allowed).toBe(allowed);
  });

  test("the port is checked separately", () => {
    expect(policy.check("docker.io", 443).allowed).toBe(true);
    expect(policy.check("docker.io", 80).allowed).toBe(true);
    const d = policy.check("docker.io", 22);
    expect(d.allowed).toBe(false);
    if (!d.allowed) expect(d.reason).toContain("allowed_ports");
  });
});

describe("allow-list: regular expressions", () => {
  const p = new HostPolicy(
    [String.raw`docker\.io`, String.raw`^[a-z0-9-]+\.pkg\.dev$`, "a|b.test"],
    [443],
  );
  test("an expression matches the WHOLE name, never a substring", () => {
    expect(p.check("docker.io", 443).allowed).toBe(true);
    expect(p.check("docker.io.evil.test", 443).allowed).toBe(false);
    expect(p.check("evil-docker.io", 443).allowed).toBe(false);
    expect(p.check("xdocker.io", 443).allowed).toBe(false);
  });
  test("case-insensitive", () => {
    expect(p.check("US-Docker.PKG.dev", 443).allowed).toBe(true);
    expect(p.check("a.b.pkg.dev", 443).allowed).toBe(false);
  });
  test("alternation stays inside the anchors", () => {
    expect(p.check("a", 443).allowed).toBe(true);
    expect(p.check("b.test", 443).allowed).toBe(true);
    expect(p.check("a.evil", 443).allowed).toBe(false);
    expect(p.check("evil.b.test", 443).allowed).toBe(false);
  });
  test("a dot in an exact entry is literal", () => {
    const exact = new HostPolicy(["docker.io"], [443]);
    expect(exact.check("dockerxio", 443).allowed).toBe(false);
  });
});

describe("normalisation", () => {
  test.each([
    ["DOCKER.IO.", "docker.io"],
    ["[::1]", "::1"],
    ["[::FFFF:127.0.0.1]", "::ffff:7f00:1"],
    ["[0:0::1]", "::1"],
    ["[2001:0db8::1]", "2001:db8::1"],
    ["[::1::2]", ""],
    ["docker%2eio", ""],
    ["docker.io@evil.test", ""],
    ["a b", ""],
    ["-bad.test", ""],
  ])("%p → %p", (input, out) => {
    expect(normalizeHost(input)).toBe(out);
  });
});

describe("request targets: bypass attempts", () => {
  test.each([
    ["CONNECT", "docker.io:443", 200],
    ["CONNECT", "DOCKER.IO.:443", 200],
    ["CONNECT", "docker.io.evil.test:443", 403],
    ["CONNECT", "notdocker.io:443", 403],
    ["CONNECT", "docker.io:22", 403],
    ["CONNECT", "docker.io", 400],
    ["CONNECT", "docker.io:", 400],
    ["CONNECT", "docker.io:99999", 400],
    ["CONNECT", "docker.io:0", 400],
    ["CONNECT", "[::1]:443", 403],
    ["CONNECT", "::1:443", 400],
    ["CONNECT", "docker.io@evil.test:443", 400],
    ["CONNECT", "evil.test@docker.io:443", 400],
    ["CONNECT", "docker%2eio:443", 400],
    ["CONNECT", "http://docker.io:443", 400],
    ["GET", "http://docker.io/v2/", 200],
    ["GET", "https://docker.io/v2/", 200],
    ["GET", "HTTP://DOCKER.IO/v2/", 200],
    ["GET", "http://docker.io:22/", 403],
    ["GET", "http://docker.io.evil.test/", 403],
    ["GET", "http://docker.io@evil.test/", 400],
    ["GET", "http://evil.test#@docker.io/", 400],
    ["GET", "http://docker%2eio/", 400],
    ["GET", "http://evil.test/docker.io", 403],
    ["GET", "ftp://docker.io/", 400],
    ["GET", "docker.io/v2/", 400],
    ["GET", "http:///x", 400],
  ])("%s %s → %d", (method, target, status) => {
    expect(statusFor(method, target)).toBe(status);
  });

  test("IPv6 literal allowed by an exact entry, brackets stripped, any spelling of the same address", () => {
    const p = new HostPolicy(["::1", "2001:0DB8::1"], [443]);
    expect(statusFor("CONNECT", "[::1]:443", p)).toBe(200);
    expect(statusFor("CONNECT", "[0::1]:443", p)).toBe(200);
    expect(statusFor("CONNECT", "[2001:db8::1]:443", p)).toBe(200);
    expect(statusFor("CONNECT", "[::2]:443", p)).toBe(403);
    expect(statusFor("GET", "http://[0:0::1]:443/", p)).toBe(200);
  });

  test("the target wins over Host and the default port follows the scheme", () => {
    const r = route(
      { ...head("GET", "https://docker.io/v2/?a=1"), headers: [["Host", "evil.test"]] },
      policy,
    );
    expect(r.kind).toBe("forward");
    if (r.kind === "forward") {
      expect(r.url.href).toBe("https://docker.io/v2/?a=1");
      expect(r.port).toBe(443);
    }
  });

  test("origin-form goes to crm itself", () => {
    expect(route(head("GET", "/healthz"), policy)).toEqual({ kind: "local", path: "/healthz" });
  });
});
