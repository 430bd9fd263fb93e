/**
 * Smaller findings of issue 14 (point 5), each checked through a real crm: a head ending in bare
 * LF, mirror.path_prefix in log lines, the index page behind access.users, and the start-up
 * warning for an open proxy.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { buildConfig } from "../src/config/load.ts";
import { openProxyWarnings } from "../src/access/exposure.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { rawConnect } from "./support/raw.ts";

describe("request head", () => {
  let crm: TestCrm;
  beforeAll(async () => {
    // A header timeout far longer than the test: the 400 must come from the parser, not from it.
    crm = await startCrm({ timeouts: { header: "10m" } });
  });
  afterAll(() => crm.stop());

  test.each([
    ["a head ending in bare LF", "GET /healthz HTTP/1.1\nHost: x\n\n"],
    ["a bare LF after the request line", "GET /healthz HTTP/1.1\nHost: x\r\n"],
    ["LF CRLF", "GET /healthz HTTP/1.1\r\nHost: x\n\r\n"],
  ])("%s is answered 400 at once, not left to the header timeout", async (_name, head) => {
    const c = await rawConnect(crm.port);
    c.write(head);
    const text = await c.waitFor(/^HTTP\/1\.1 \d{3} /, 10_000);
    expect(text).toMatch(/^HTTP\/1\.1 400 /);
    expect(text).toContain("bare LF");
    await c.closed();
  });

  test("a head still arriving in CRLF pieces is waited for", async () => {
    const c = await rawConnect(crm.port);
    c.write("GET /healthz HTTP/1.1\r\nHost: x\r");
    await Bun.sleep(50);
    c.write("\n\r\n");
    expect(await c.waitFor(/^HTTP\/1\.1 \d{3} /)).toMatch(/^HTTP\/1\.1 200 /);
    c.socket.end();
  });
});

describe("index page", () => {
  const PASSWORD = "a long index password";
  let hash: string;
  beforeAll(async () => {
    hash = await Bun.password.hash(PASSWORD, { algorithm: "argon2id" });
  });
  const lan = "http://10.20.30.40:5000";
  const mirror = { default_registry: "lan.test", registries: { "lan.test": lan } };

  test("with access.users set, / asks for credentials (even with mirror_auth: false) and names registries, never their upstreams", async () => {
    const crm = await startCrm({
      allowed_hosts: ["internal.example"],
      access: { users: { alice: hash }, mirror_auth: false },
      mirror,
    });
    try {
      const anon = await fetch(crm.url + "/");
      const anonText = await anon.text();
      expect(anon.status).toBe(401);
      expect(anon.headers.get("www-authenticate")).toBe('Basic realm="crm"');
      expect(anonText).not.toContain("internal.example");
      expect(anonText).not.toContain("lan.test");
      const wrong = await fetch(crm.url + "/", {
        headers: { authorization: "Basic " + btoa("alice:nope") },
      });
      expect(wrong.status).toBe(401);
      await wrong.arrayBuffer();

      const ok = await fetch(crm.url + "/", {
        headers: { authorization: "Basic " + btoa(`alice:${PASSWORD}`) },
      });
      const page = await ok.text();
      expect(ok.status).toBe(200);
      expect(page).toContain("internal.example");
      expect(page).toContain("lan.test");
      expect(page).not.toContain("10.20.30.40");
    } finally {
      await crm.stop();
    }
  });

  test("without users, / is open and still shows no upstream URL", async () => {
    const crm = await startCrm({ mirror });
    try {
      const r = await fetch(crm.url + "/");
      const page = await r.text();
      expect(r.status).toBe(200);
      expect(page).toContain("lan.test");
      expect(page).not.toContain("10.20.30.40");
    } finally {
      await crm.stop();
    }
  });
});

describe("mirror.path_prefix in logs", () => {
  test.each(["text", "json"])("every %s line shows the prefix as /<prefix>", async (format) => {
    const crm = await startCrm(
      {
        log_format: format,
        mirror: {
          path_prefix: "/s3cr3t-path",
          default_registry: "dead.test",
          registries: { "dead.test": "http://127.0.0.1:9" },
        },
      },
      "debug",
    );
    try {
      for (const path of [
        "/s3cr3t-path/v2/",
        "/s3cr3t-path/v2/team/app/manifests/v1",
        "/s3cr3t-pathology",
      ])
        await (await fetch(crm.url + path)).arrayBuffer();
      await crm.waitLog(/s3cr3t-pathology/);
      const lines = crm.logs.join("\n");
      expect(lines).toContain("/<prefix>/v2/team/app/manifests/v1");
      expect(lines.replaceAll("s3cr3t-pathology", "")).not.toContain("s3cr3t-path");
    } finally {
      await crm.stop();
    }
  });
});

describe("open proxy warning", () => {
  const warningsFor = (raw: Record<string, unknown>): string[] =>
    openProxyWarnings(buildConfig(raw, "t.yaml").config);

  test("listening beyond loopback with neither access.clients nor access.users is warned about, per address", () => {
    expect(warningsFor({})).toEqual([
      "anyone who can reach :8080 may use this proxy; set access.clients or access.users",
    ]);
    expect(
      warningsFor({
        listen: [
          8081,
          "[::]:8082",
          "10.0.0.5:8083",
          "crm.internal:8084",
          "127.0.0.1:8085",
          "[::1]:8086",
          "localhost:8087",
          "/run/crm.sock",
        ],
      }),
    ).toEqual([
      "anyone who can reach :8081 may use this proxy; set access.clients or access.users",
      "anyone who can reach [::]:8082 may use this proxy; set access.clients or access.users",
      "anyone who can reach 10.0.0.5:8083 may use this proxy; set access.clients or access.users",
      "anyone who can reach crm.internal:8084 may use this proxy; set access.clients or access.users",
    ]);
  });

  test("access.clients or access.users silence it", async () => {
    const hash = await Bun.password.hash("a long password", { algorithm: "argon2id" });
    expect(warningsFor({ access: { clients: ["10.0.0.0/8"] } })).toEqual([]);
    expect(warningsFor({ access: { users: { alice: hash } } })).toEqual([]);
  });

  test("the mirror is open when access.users guards only the proxy (mirror_auth: false); a /0 client range admits everyone", async () => {
    const hash = await Bun.password.hash("a long password", { algorithm: "argon2id" });
    expect(
      warningsFor({
        listen: "0.0.0.0:8080",
        access: { users: { alice: hash }, mirror_auth: false },
      }),
    ).toEqual([
      "anyone who can reach 0.0.0.0:8080 may use the mirror at /v2/: access.mirror_auth is false, so access.users does not apply to it; set access.clients to your clients' ranges",
    ]);
    expect(
      warningsFor({
        listen: "0.0.0.0:8080",
        access: { users: { alice: hash }, mirror_auth: false, clients: ["10.0.0.0/8"] },
      }),
    ).toEqual([]);
    // A secret path is the mirror's credential then.
    expect(
      warningsFor({
        listen: "0.0.0.0:8080",
        access: { users: { alice: hash }, mirror_auth: false },
        mirror: { path_prefix: "/s3cret" },
      }),
    ).toEqual([]);
    expect(
      warningsFor({ listen: "0.0.0.0:8080", access: { clients: ["10.0.0.0/8", "0.0.0.0/0"] } }),
    ).toEqual([
      "anyone who can reach 0.0.0.0:8080 may use this proxy (access.clients has 0.0.0.0/0, which admits every address); set access.clients or access.users",
    ]);
    expect(warningsFor({ listen: "[::]:8080", access: { clients: ["::/0"] } })).toEqual([
      "anyone who can reach [::]:8080 may use this proxy (access.clients has ::/0, which admits every address); set access.clients or access.users",
    ]);
    expect(
      warningsFor({
        listen: "[::]:8080",
        access: { clients: ["::/0"], users: { alice: hash }, mirror_auth: false },
      }),
    ).toEqual([
      "anyone who can reach [::]:8080 may use the mirror at /v2/: access.mirror_auth is false, so access.users does not apply to it (access.clients has ::/0, which admits every address); set access.clients to your clients' ranges",
    ]);
    expect(
      warningsFor({ listen: "[::]:8080", access: { clients: ["::/0"], users: { alice: hash } } }),
    ).toEqual([]);
  });

  test("a loopback crm starts without the warning; the warning is a start-up log line", async () => {
    const crm = await startCrm({});
    try {
      await crm.waitLog(/listening/);
      expect(crm.logs.join("\n")).not.toContain("may use this proxy");
    } finally {
      await crm.stop();
    }
  });
});
