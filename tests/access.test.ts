/** Safe on a public address: who may use crm, where it may go, and the limits that keep it up. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { CidrList, NON_PUBLIC, parseCidr } from "../src/access/cidr.ts";
import { buildConfig } from "../src/config/load.ts";
import { staticResolver } from "../src/net/resolver.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { startOrigin } from "./support/origins.ts";
import { rawConnect, run } from "./support/raw.ts";

let origin: ReturnType<typeof startOrigin>;
let hash: string;
const PASSWORD = "correct horse battery";

beforeAll(async () => {
  origin = startOrigin();
  hash = await Bun.password.hash(PASSWORD, { algorithm: "argon2id" });
});
afterAll(() => origin.stop(true));

describe("CIDR ranges", () => {
  test("IPv4, IPv6 and IPv4-mapped IPv6", () => {
    const l = new CidrList(["10.0.0.0/8", "2001:db8::/32", "192.168.1.7"]);
    expect(l.match("10.200.1.1")?.source).toBe("10.0.0.0/8");
    expect(l.match("::ffff:10.1.2.3")?.source).toBe("10.0.0.0/8");
    expect(l.match("11.0.0.1")).toBeNull();
    expect(l.match("2001:db8:1::5")?.source).toBe("2001:db8::/32");
    expect(l.match("2001:db9::1")).toBeNull();
    expect(l.match("192.168.1.7")).not.toBeNull();
    expect(l.match("192.168.1.8")).toBeNull();
    expect(l.match("not an ip")).toBeNull();
  });
  test.each(["10.0.0.0/33", "1.2.3/8", "::1/129", "host.test"])("%p is refused", (c) => {
    expect(typeof parseCidr(c)).toBe("string");
  });
  test.each([
    ["127.0.0.1", true],
    ["10.1.2.3", true],
    ["172.16.0.1", true],
    ["172.32.0.1", false],
    ["192.168.0.1", true],
    ["169.254.169.254", true],
    ["100.64.0.1", true],
    ["224.0.0.1", true],
    ["0.0.0.0", true],
    ["::1", true],
    ["::", true],
    ["fe80::1", true],
    ["fd00::1", true],
    ["ff02::1", true],
    ["::ffff:127.0.0.1", true],
    ["::ffff:169.254.169.254", true],
    ["64:ff9b::a9fe:a9fe", true],
    ["8.8.8.8", false],
    ["2606:4700::1111", false],
  ])("non-public %p = %p", (ip, blocked) => {
    expect(NON_PUBLIC.match(ip) !== null).toBe(blocked);
  });
  test("config errors for bad CIDRs name the entry", () => {
    expect(() => buildConfig({ access: { clients: ["10.0.0.0/8", "nope"] } }, "t")).toThrow(
      /access\.clients\[1\]: "nope" is not an IPv4 or IPv6 address/,
    );
  });
  test("a plain password in access.users is refused without echoing it", () => {
    let msg = "";
    try {
      buildConfig({ access: { users: { alice: "hunter2hunter2" } } }, "t");
    } catch (e) {
      msg = (e as Error).message;
    }
    expect(msg).toContain("access.users.alice");
    expect(msg).not.toContain("hunter2");
  });
});

describe("users", () => {
  let crm: TestCrm;
  beforeAll(async () => {
    crm = await startCrm({
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [origin.port],
      access: { users: { alice: hash } },
    });
  });
  afterAll(() => crm.stop());

  test("forward without credentials → 407 with a Basic challenge", async () => {
    const r = await run([
      "curl",
      "-sS",
      "-i",
      "--noproxy",
      "",
      "-x",
      crm.url,
      `http://127.0.0.1:${origin.port}/x`,
    ]);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 407 /);
    expect(r.stdout).toContain('proxy-authenticate: Basic realm="crm"');
  });

  test("forward and CONNECT with --proxy-user work; the upstream never sees crm's credentials", async () => {
    const before = origin.seen.length;
    const r = await run([
      "curl",
      "-sS",
      "--noproxy",
      "",
      "-x",
      crm.url,
      "--proxy-user",
      `alice:${PASSWORD}`,
      `http://127.0.0.1:${origin.port}/echo`,
    ]);
    const body = JSON.parse(r.stdout) as { headers: Record<string, string> };
    expect(body.headers["proxy-authorization"]).toBeUndefined();
    const t = await run([
      "curl",
      "-sS",
      "-p",
      "--noproxy",
      "",
      "-x",
      crm.url,
      "--proxy-user",
      `alice:${PASSWORD}`,
      `http://127.0.0.1:${origin.port}/tunnelled`,
    ]);
    expect(t.stdout).toBe("origin GET /tunnelled");
    for (const s of origin.seen.slice(before))
      expect(JSON.stringify(s.headers)).not.toContain(
        Buffer.from(`alice:${PASSWORD}`).toString("base64"),
      );
    expect(crm.logs.join("\n")).not.toContain(Buffer.from(`alice:${PASSWORD}`).toString("base64"));
    expect(crm.logs.join("\n")).not.toContain(PASSWORD);
  });

  test("a body that arrives while the credentials are being checked stays the body", async () => {
    // argon2 verification takes milliseconds; bytes arriving meanwhile must not be read as a
    // new request head (that would smuggle a request past the check).
    const before = origin.seen.length;
    const smuggled = `GET http://127.0.0.1:${origin.port}/smuggled HTTP/1.1\r\nHost: x\r\n\r\n`;
    const c = await rawConnect(crm.port);
    const auth = Buffer.from(`alice:${PASSWORD}`).toString("base64");
    c.write(
      `POST http://127.0.0.1:${origin.port}/echo HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic ${auth}\r\nContent-Length: ${smuggled.length}\r\nConnection: close\r\n\r\n`,
    );
    await Bun.sleep(1);
    c.write(smuggled);
    await c.closed();
    const body = JSON.parse(c.text().slice(c.text().indexOf("\r\n\r\n") + 4)) as {
      length: number;
      method: string;
    };
    expect(body.method).toBe("POST");
    expect(body.length).toBe(smuggled.length);
    expect(origin.seen.slice(before).map((x) => x.url)).toEqual(["/echo"]);
  });

  test("/healthz stays open", async () => {
    const r = await run(["curl", "-sS", "--noproxy", "*", `${crm.url}/healthz`]);
    expect(r.stdout).toBe("ok\n");
  });

  test("the mirror wants Authorization: Basic (401), and accepts the user", async () => {
    const no = await run(["curl", "-sS", "-i", "--noproxy", "*", `${crm.url}/v2/`]);
    expect(no.stdout).toMatch(/^HTTP\/1\.1 401 /);
    expect(no.stdout).toContain('www-authenticate: Basic realm="crm"');
    const yes = await run([
      "curl",
      "-sS",
      "-i",
      "--noproxy",
      "*",
      "-u",
      `alice:${PASSWORD}`,
      `${crm.url}/v2/`,
    ]);
    expect(yes.stdout).not.toMatch(/^HTTP\/1\.1 401 /);
  });

  test("10 failures in a minute → 429 with Retry-After, even with the right password", async () => {
    const local = await startCrm({
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [origin.port],
      access: { users: { alice: hash } },
    });
    try {
      for (let i = 0; i < 10; i++) {
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
          local.url,
          "--proxy-user",
          "alice:wrong",
          `http://127.0.0.1:${origin.port}/`,
        ]);
        expect(r.stdout).toBe("407");
      }
      const r = await run([
        "curl",
        "-sS",
        "-i",
        "--noproxy",
        "",
        "-x",
        local.url,
        "--proxy-user",
        `alice:${PASSWORD}`,
        `http://127.0.0.1:${origin.port}/`,
      ]);
      expect(r.stdout).toMatch(/^HTTP\/1\.1 429 /);
      expect(r.stdout).toMatch(/retry-after: \d+/);
    } finally {
      await local.stop();
    }
  });

  test("mirror.path_prefix and access.mirror_auth: false (Docker cannot send credentials)", async () => {
    const local = await startCrm({
      access: { users: { alice: hash }, mirror_auth: false },
      mirror: { path_prefix: "/s3cret" },
    });
    try {
      const open = await run([
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--noproxy",
        "*",
        `${local.url}/s3cret/v2/`,
      ]);
      expect(open.stdout).not.toBe("401");
      expect(open.stdout).not.toBe("404");
      const hidden = await run([
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--noproxy",
        "*",
        `${local.url}/v2/`,
      ]);
      expect(hidden.stdout).toBe("404");
      // The proxy side still needs credentials.
      const proxy = await run([
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--noproxy",
        "",
        "-x",
        local.url,
        "http://127.0.0.1:9/",
      ]);
      expect(proxy.stdout).toBe("407");
    } finally {
      await local.stop();
    }
  });
});

describe("client CIDR list", () => {
  test("a client outside access.clients is closed at once, without an answer", async () => {
    const crm = await startCrm({ access: { clients: ["10.0.0.0/8", "::1/128"] } });
    try {
      const c = await rawConnect(crm.port);
      c.write("GET /healthz HTTP/1.1\r\n\r\n");
      await c.closed(2000);
      expect(c.text()).toBe("");
    } finally {
      await crm.stop();
    }
  });
  test("a client inside it is served", async () => {
    const crm = await startCrm({ access: { clients: ["127.0.0.0/8"] } });
    try {
      const r = await run(["curl", "-sS", "--noproxy", "*", `${crm.url}/healthz`]);
      expect(r.stdout).toBe("ok\n");
    } finally {
      await crm.stop();
    }
  });
});

describe("SSRF guard (allow_private_networks: false, the default)", () => {
  let crm: TestCrm;
  beforeAll(async () => {
    crm = await startCrm(
      {
        allow_private_networks: false,
        allowed_hosts: ["127.0.0.1", "rebind.test", "169.254.169.254", "::1"],
        allowed_ports: [80, origin.port],
      },
      "info",
      staticResolver({ "rebind.test": "127.0.0.1" }),
    );
  });
  afterAll(() => crm.stop());

  test.each([
    [
      "forward to 127.0.0.1",
      () => `GET http://127.0.0.1:${origin.port}/ HTTP/1.1\r\nHost: x\r\n\r\n`,
    ],
    [
      "forward to a name resolving to 127.0.0.1",
      () => `GET http://rebind.test:${origin.port}/ HTTP/1.1\r\nHost: x\r\n\r\n`,
    ],
    ["CONNECT to the cloud metadata address", () => "CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n"],
    [
      "CONNECT to a name resolving to 127.0.0.1",
      () => `CONNECT rebind.test:${origin.port} HTTP/1.1\r\n\r\n`,
    ],
    ["CONNECT to ::1", () => `CONNECT [::1]:${origin.port} HTTP/1.1\r\n\r\n`],
  ])("%s → 403", async (_name, req) => {
    const before = origin.seen.length;
    const c = await rawConnect(crm.port);
    c.write(req());
    await c.closed();
    expect(c.text()).toMatch(/^HTTP\/1\.1 403 [^]*non-public address/);
    expect(origin.seen.length).toBe(before);
  });
});

describe("limits", () => {
  test("max_connections → 503 with Retry-After; per client → 429", async () => {
    const crm = await startCrm({ limits: { max_connections: 2 } });
    try {
      const a = await rawConnect(crm.port);
      const b = await rawConnect(crm.port);
      await Bun.sleep(50);
      const c = await rawConnect(crm.port);
      await c.closed();
      expect(c.text()).toMatch(/^HTTP\/1\.1 503 [^]*retry-after: 5/);
      a.socket.end();
      b.socket.end();
    } finally {
      await crm.stop();
    }
    const per = await startCrm({ limits: { max_connections_per_client: 1 } });
    try {
      const a = await rawConnect(per.port);
      await Bun.sleep(50);
      const b = await rawConnect(per.port);
      await b.closed();
      expect(b.text()).toMatch(/^HTTP\/1\.1 429 [^]*retry-after: 5/);
      a.socket.end();
      // Once the first closes, the client may connect again.
      await Bun.sleep(100);
      const r = await run(["curl", "-sS", "--noproxy", "*", `${per.url}/healthz`]);
      expect(r.stdout).toBe("ok\n");
    } finally {
      await per.stop();
    }
  });

  test("max_body: a sized body over the limit → 413 at once, before 100 Continue", async () => {
    const crm = await startCrm({
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [origin.port],
      limits: { max_body: "1KiB" },
    });
    try {
      const c = await rawConnect(crm.port);
      c.write(
        `POST http://127.0.0.1:${origin.port}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n`,
      );
      await c.closed();
      expect(c.text()).toMatch(/^HTTP\/1\.1 413 [^]*exceeds limits\.max_body/);
      expect(c.text()).not.toContain("100 Continue");

      const ok = await run([
        "curl",
        "-sS",
        "--noproxy",
        "",
        "-x",
        crm.url,
        "--data-binary",
        "small",
        `http://127.0.0.1:${origin.port}/echo`,
      ]);
      expect((JSON.parse(ok.stdout) as { length: number }).length).toBe(5);
    } finally {
      await crm.stop();
    }
  });

  test("max_body: a chunked body that grows over the limit → 413", async () => {
    const crm = await startCrm({
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [origin.port],
      limits: { max_body: "1KiB" },
    });
    try {
      const c = await rawConnect(crm.port);
      c.write(
        `POST http://127.0.0.1:${origin.port}/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n${"a".repeat(0x800)}\r\n0\r\n\r\n`,
      );
      await c.closed();
      expect(c.text()).toMatch(/^HTTP\/1\.1 413 [^]*exceeds limits\.max_body/);
    } finally {
      await crm.stop();
    }
  });
});
