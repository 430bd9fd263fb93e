/**
 * The parts of a public mirror that need no front to test: PROXY protocol parsing (both
 * versions, truncation, garbage), the trusted-proxy rule for X-Forwarded-For and Forwarded, the
 * request-rate bucket, and the config keys (listen objects, limits, trusted_proxies).
 */
import { describe, expect, test } from "bun:test";
import { connect } from "node:net";
import { Bandwidth, SLICE } from "../src/limits/bandwidth.ts";
import { ClientAddress, clientKey } from "../src/access/client-address.ts";
import { buildConfig } from "../src/config/load.ts";
import type { HeaderList } from "../src/http/head.ts";
import { ProxyProtocolError, readProxyHeader } from "../src/access/proxy-protocol.ts";
import { RequestRate } from "../src/limits/request-rate.ts";
import { DEFAULT_LIMITS } from "../src/config/types.ts";
import { startCrm } from "./support/crm.ts";
import { startOrigin } from "./support/origins.ts";
import { sendFrom } from "./support/raw.ts";

const SIG = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const v2 = (cmd: number, fam: number, body: number[]): Buffer =>
  Buffer.concat([
    SIG,
    Buffer.from([0x20 | cmd, fam, body.length >> 8, body.length & 255]),
    Buffer.from(body),
  ]);

describe("PROXY protocol", () => {
  test("v1 TCP4 and TCP6 name the client; the rest is the request", () => {
    const r = readProxyHeader(
      Buffer.from("PROXY TCP4 192.0.2.7 10.0.0.1 5555 443\r\nGET / HTTP/1.1\r\n"),
    );
    expect(r).toEqual({
      kind: "header",
      client: "192.0.2.7",
      local: false,
      rest: Buffer.from("GET / HTTP/1.1\r\n"),
    });
    const six = readProxyHeader(Buffer.from("PROXY TCP6 2001:db8:0:0::1 ::1 5555 443\r\n"));
    expect(six.kind === "header" && six.client).toBe("2001:db8::1");
    // 00ff::1 is a unicast address, though its short spelling starts with "ff".
    const notMulticast = readProxyHeader(Buffer.from("PROXY TCP6 ff::1 ::1 5555 443\r\n"));
    expect(notMulticast.kind === "header" && notMulticast.client).toBe("ff::1");
    const unknown = readProxyHeader(Buffer.from("PROXY UNKNOWN\r\n"));
    expect(unknown.kind === "header" && unknown.client).toBeNull();
  });
  test("v2 PROXY over IPv4 and IPv6, and LOCAL (a health check) keeps the peer", () => {
    const four = readProxyHeader(
      Buffer.concat([v2(1, 0x11, [198, 51, 100, 9, 127, 0, 0, 1, 1, 2, 3, 4]), Buffer.from("x")]),
    );
    expect(four).toEqual({
      kind: "header",
      client: "198.51.100.9",
      local: false,
      rest: Buffer.from("x"),
    });
    const six = readProxyHeader(
      v2(1, 0x21, [
        0x20,
        0x01,
        0x0d,
        0xb8,
        ...Array(11).fill(0),
        5,
        ...Array(16).fill(0),
        1,
        2,
        3,
        4,
      ]),
    );
    expect(six.kind === "header" && six.client).toBe("2001:db8::5");
    const local = readProxyHeader(v2(0, 0x00, []));
    expect(local.kind === "header" && local.client).toBeNull();
  });
  test("a header split across reads is incomplete until whole", () => {
    const whole = v2(1, 0x11, [198, 51, 100, 9, 127, 0, 0, 1, 1, 2, 3, 4]);
    for (const n of [1, 5, 12, 15, 20])
      expect(readProxyHeader(whole.subarray(0, n)).kind).toBe("incomplete");
    expect(readProxyHeader(Buffer.from("PROXY TCP4 1.2")).kind).toBe("incomplete");
  });
  test.each([
    ["plain HTTP", Buffer.from("GET / HTTP/1.1\r\n\r\n")],
    ["a v1 line that never ends", Buffer.from("PROXY TCP4 " + "1".repeat(120))],
    ["a v1 line with a bad address", Buffer.from("PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n")],
    ["a v1 family mismatch", Buffer.from("PROXY TCP4 ::1 ::1 1 2\r\n")],
    ["v2 with version 3", Buffer.concat([SIG, Buffer.from([0x31, 0x11, 0, 0])])],
    ["v2 with a huge length", Buffer.concat([SIG, Buffer.from([0x21, 0x11, 0xff, 0xff])])],
    ["v2 IPv4 too short", v2(1, 0x11, [1, 2, 3])],
  ])("%s is refused", (_name, buf) => {
    expect(() => readProxyHeader(buf)).toThrow(ProxyProtocolError);
  });
  test.each([
    ["v1 0.0.0.0", Buffer.from("PROXY TCP4 0.0.0.0 127.0.0.1 1 2\r\n")],
    ["v1 ::", Buffer.from("PROXY TCP6 :: ::1 1 2\r\n")],
    ["v1 IPv4 multicast", Buffer.from("PROXY TCP4 224.0.0.1 127.0.0.1 1 2\r\n")],
    ["v1 broadcast", Buffer.from("PROXY TCP4 255.255.255.255 127.0.0.1 1 2\r\n")],
    ["v1 IPv6 multicast", Buffer.from("PROXY TCP6 ff02::1 ::1 1 2\r\n")],
    ["v1 mapped 0.0.0.0", Buffer.from("PROXY TCP6 ::ffff:0.0.0.0 ::1 1 2\r\n")],
    ["v2 0.0.0.0", v2(1, 0x11, Array(12).fill(0))],
    ["v2 239.1.2.3", v2(1, 0x11, [239, 1, 2, 3, 127, 0, 0, 1, 1, 2, 3, 4])],
    ["v2 ::", v2(1, 0x21, Array(36).fill(0))],
    ["v2 ff05::2", v2(1, 0x21, [0xff, 0x05, ...Array(13).fill(0), 2, ...Array(20).fill(0)])],
  ])("a source that is no client (%s) is refused", (_name, buf) => {
    expect(() => readProxyHeader(buf)).toThrow(/PROXY header names .* as the client/);
  });
});

describe("a proxy_protocol listener", () => {
  test("believes a PROXY header only from access.trusted_proxies; anyone else gets 400 and a warning naming them", async () => {
    const crm = await startCrm(
      {
        listen: [{ address: "127.0.0.1:0", proxy_protocol: true }],
        access: { trusted_proxies: ["127.0.0.9/32"] },
      },
      "info",
    );
    try {
      const req =
        "PROXY TCP4 198.51.100.7 127.0.0.1 5555 80\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
      const stranger = await sendFrom("127.0.0.1", crm.port, req);
      expect(stranger).toMatch(/^HTTP\/1\.1 400 [^]*access\.trusted_proxies/);
      await crm.waitLog(
        /WARN .*PROXY header from a peer not in access\.trusted_proxies.* peer=127\.0\.0\.1/,
      );
      expect(crm.logs.join("\n")).not.toMatch(/GET \/healthz .*client=198\.51\.100\.7/);
      const balancer = await sendFrom("127.0.0.9", crm.port, req);
      expect(balancer).toMatch(/^HTTP\/1\.1 200 /);
      await crm.waitLog(/GET \/healthz .*client=198\.51\.100\.7 /);
      // Naming no usable client is refused end to end, from the balancer too.
      const zero = await sendFrom("127.0.0.9", crm.port, req.replace("198.51.100.7", "0.0.0.0"));
      expect(zero).toMatch(/^HTTP\/1\.1 400 [^]*0\.0\.0\.0/);
    } finally {
      await crm.stop();
    }
  });

  test("max_connections_per_client counts an IPv6 /64 as one client", async () => {
    const crm = await startCrm(
      {
        listen: [{ address: "127.0.0.1:0", proxy_protocol: true }],
        access: { trusted_proxies: ["127.0.0.9/32"] },
        limits: { max_connections_per_client: 1 },
      },
      "info",
    );
    const held = connect({ host: "127.0.0.1", port: crm.port, localAddress: "127.0.0.9" });
    try {
      held.on("error", () => {});
      // The first client of the /64 is answered and keeps its connection open (keep-alive).
      const first = new Promise<string>((r) =>
        held.once("data", (d: Buffer) => r(d.toString("latin1"))),
      );
      held.once(
        "connect",
        () =>
          void held.write(
            "PROXY TCP6 2001:db8:1:2::1 ::1 5555 80\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
          ),
      );
      expect(await first).toMatch(/^HTTP\/1\.1 200 /);
      const get = (src: string) =>
        sendFrom(
          "127.0.0.9",
          crm.port,
          `PROXY TCP6 ${src} ::1 5555 80\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
        );
      expect(await get("2001:db8:1:2::2")).toMatch(
        /^HTTP\/1\.1 429 [^]*too many connections from your address/,
      );
      expect(await get("2001:db8:1:3::1")).toMatch(/^HTTP\/1\.1 200 /);
    } finally {
      held.destroy();
      await crm.stop();
    }
  });
});

describe("the real client address", () => {
  const h = (pairs: Array<[string, string]>): HeaderList => pairs.map(([k, v]) => [k, v]);
  const ca = new ClientAddress(["unix", "10.0.0.0/8"]);

  test("from a trusted peer: the rightmost X-Forwarded-For address that is not itself trusted", () => {
    expect(ca.resolve("unix", h([["X-Forwarded-For", "203.0.113.5"]]))).toBe("203.0.113.5");
    expect(ca.resolve("unix", h([["X-Forwarded-For", "6.6.6.6, 203.0.113.5, 10.1.1.1"]]))).toBe(
      "203.0.113.5",
    );
    expect(
      ca.resolve(
        "10.0.0.2",
        h([
          ["x-forwarded-for", "6.6.6.6"],
          ["x-forwarded-for", "203.0.113.5"],
        ]),
      ),
    ).toBe("203.0.113.5");
    const fwd = new ClientAddress(["unix", "10.0.0.0/8"], "forwarded");
    expect(
      fwd.resolve(
        "unix",
        h([["Forwarded", 'for=192.0.2.60;proto=http, for="[2001:db8::7]:4711"']]),
      ),
    ).toBe("2001:db8::7");
    expect(fwd.resolve("unix", h([["Forwarded", 'for="192.0.2.43:47011"']]))).toBe("192.0.2.43");
    // Every hop trusted: the leftmost is as far as the chain goes.
    expect(ca.resolve("unix", h([["X-Forwarded-For", "10.9.9.9, 10.1.1.1"]]))).toBe("10.9.9.9");
    // Garbage ends the walk: what the trusted hops vouched for stands.
    expect(ca.resolve("unix", h([["X-Forwarded-For", "junk, 203.0.113.5"]]))).toBe("203.0.113.5");
    expect(ca.resolve("unix", h([["X-Forwarded-For", "203.0.113.5, junk"]]))).toBe("unix");
    expect(ca.resolve("unix", h([]))).toBe("unix");
  });

  test("only the field access.forwarded_header names is read; the other, which no front vouched for, is removed", () => {
    // A front that sets only Forwarded passes on whatever X-Forwarded-For its client sent.
    const fromClient = (): HeaderList =>
      h([
        ["X-Forwarded-For", "203.0.113.99"],
        ["Forwarded", "for=198.51.100.5"],
      ]);
    const forwarded = new ClientAddress(["10.0.0.0/8"], "forwarded");
    const headers = fromClient();
    expect(forwarded.resolve("10.0.0.2", headers)).toBe("198.51.100.5");
    expect(headers).toEqual([["Forwarded", "for=198.51.100.5"]]);
    expect(forwarded.resolve("10.0.0.2", h([["X-Forwarded-For", "203.0.113.99"]]))).toBe(
      "10.0.0.2",
    );
    // The default: X-Forwarded-For only, even when it is absent and Forwarded is there.
    const xff = new ClientAddress(["10.0.0.0/8"]);
    const h2 = fromClient();
    expect(xff.resolve("10.0.0.2", h2)).toBe("203.0.113.99");
    expect(h2).toEqual([["X-Forwarded-For", "203.0.113.99"]]);
    expect(xff.resolve("10.0.0.2", h([["Forwarded", "for=198.51.100.5"]]))).toBe("10.0.0.2");
  });

  test("from anyone else the fields are ignored and removed", () => {
    const headers = h([
      ["Host", "x"],
      ["X-Forwarded-For", "6.6.6.6"],
      ["Forwarded", "for=6.6.6.6"],
    ]);
    expect(ca.resolve("198.51.100.1", headers)).toBe("198.51.100.1");
    expect(headers).toEqual([["Host", "x"]]);
    const none = new ClientAddress([]);
    const h2 = h([["X-Forwarded-For", "6.6.6.6"]]);
    expect(none.resolve("unix", h2)).toBe("unix");
    expect(h2).toEqual([]);
  });
});

describe("a client named by a trusted front", () => {
  test("is held to access.clients and logged under its own address", async () => {
    const crm = await startCrm(
      { access: { trusted_proxies: ["127.0.0.1/32"], clients: ["127.0.0.0/8"] } },
      "info",
    );
    try {
      const get = (xff: string) =>
        fetch(`${crm.url}/healthz`, {
          headers: { "x-forwarded-for": xff },
          proxy: false,
        } as RequestInit);
      const outside = await get("203.0.113.5");
      expect(outside.status).toBe(403);
      expect(await outside.text()).toContain("access.clients");
      const inside = await get("127.0.0.5");
      expect(inside.status).toBe(200);
      await crm.waitLog(/GET \/healthz .*client=127\.0\.0\.5 /);
    } finally {
      await crm.stop();
    }
  });
});

describe("a front that sets only Forwarded (access.forwarded_header: forwarded)", () => {
  test("is believed; the X-Forwarded-For its client sent is not", async () => {
    const crm = await startCrm(
      {
        access: {
          trusted_proxies: ["127.0.0.1/32"],
          forwarded_header: "forwarded",
          clients: ["127.0.0.0/8"],
        },
      },
      "info",
    );
    try {
      const r = await fetch(`${crm.url}/healthz`, {
        headers: { forwarded: "for=127.0.0.7", "x-forwarded-for": "203.0.113.5" },
        proxy: false,
      } as RequestInit);
      expect(r.status).toBe(200);
      await crm.waitLog(/GET \/healthz .*client=127\.0\.0\.7 /);
      expect(crm.logs.join("\n")).not.toContain("203.0.113.5");
    } finally {
      await crm.stop();
    }
  });
});

describe("forwarding fields from an untrusted client", () => {
  test("are removed before a forward request goes upstream", async () => {
    const origin = startOrigin();
    const crm = await startCrm(
      { allowed_hosts: ["127.0.0.1"], allowed_ports: [origin.port] },
      "info",
    );
    try {
      const r = await new Promise<string>((resolve, reject) => {
        let out = "";
        void Bun.connect({
          hostname: "127.0.0.1",
          port: crm.port,
          socket: {
            open(s) {
              s.write(
                `GET http://127.0.0.1:${origin.port}/echo HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nConnection: close\r\n\r\n`,
              );
            },
            data(_s, d) {
              out += Buffer.from(d).toString();
            },
            close() {
              resolve(out);
            },
            error(_s, e) {
              reject(e);
            },
          },
        });
      });
      const body = JSON.parse(r.slice(r.indexOf("\r\n\r\n") + 4)) as {
        headers: Record<string, string>;
      };
      expect(body.headers["x-forwarded-for"]).toBeUndefined();
      expect(body.headers.forwarded).toBeUndefined();
      expect(body.headers.host).toBe(`127.0.0.1:${origin.port}`);
    } finally {
      await crm.stop();
      origin.stop(true);
    }
  });
});

describe("request rate", () => {
  test("a bucket of `burst` refilled at requests_per_second; Retry-After says when", () => {
    const r = new RequestRate({
      ...DEFAULT_LIMITS,
      requestsPerSecond: 2,
      burst: 3,
      exemptClients: ["10.0.0.0/8"],
    });
    const t = 1000;
    expect([r.take("a", t), r.take("a", t), r.take("a", t)]).toEqual([null, null, null]);
    expect(r.take("a", t)).toBe(1);
    expect(r.take("b", t)).toBeNull();
    expect(r.take("a", t + 500)).toBeNull();
    expect(r.take("10.1.2.3", t)).toBeNull();
    for (let i = 0; i < 100; i++) expect(r.take("10.1.2.3", t)).toBeNull();
  });
  test("the proxy side: forward and CONNECT over the rate get 429 with Retry-After", async () => {
    const origin = startOrigin();
    const crm = await startCrm(
      {
        allowed_hosts: ["127.0.0.1"],
        allowed_ports: [origin.port],
        limits: { requests_per_second: 0.1, burst: 2 },
      },
      "info",
    );
    try {
      const ask = (req: string) =>
        new Promise<string>((resolve) => {
          let out = "";
          void Bun.connect({
            hostname: "127.0.0.1",
            port: crm.port,
            socket: {
              open: (s) => void s.write(req),
              data: (s, d) => {
                out += Buffer.from(d).toString();
                if (out.startsWith("HTTP/1.1 200 Connection Established")) s.end();
              },
              close: () => resolve(out),
              error: () => resolve(out),
            },
          });
        });
      const get = `GET http://127.0.0.1:${origin.port}/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`;
      const connect = `CONNECT 127.0.0.1:${origin.port} HTTP/1.1\r\nHost: x\r\n\r\n`;
      expect(await ask(get)).toMatch(/^HTTP\/1\.1 200 /);
      expect(await ask(connect)).toMatch(/^HTTP\/1\.1 200 Connection Established/);
      const refused = await ask(get);
      expect(refused).toMatch(
        /^HTTP\/1\.1 429 [^]*retry-after: \d+[^]*limits\.requests_per_second/,
      );
      expect(await ask(connect)).toMatch(/^HTTP\/1\.1 429 /);
    } finally {
      await crm.stop();
      origin.stop(true);
    }
  });
  test("an IPv6 /64 is one client (one bucket); IPv4 addresses and other /64s are apart", () => {
    const r = new RequestRate({ ...DEFAULT_LIMITS, requestsPerSecond: 1, burst: 2 });
    const t = 1000;
    expect([r.take("2001:db8:1:2::1", t), r.take("2001:db8:1:2::2", t)]).toEqual([null, null]);
    expect(r.take("2001:db8:1:2:ffff::9", t)).toBe(1);
    expect(r.take("2001:db8:1:3::1", t)).toBeNull();
    expect([r.take("192.0.2.1", t), r.take("192.0.2.1", t), r.take("192.0.2.2", t)]).toEqual([
      null,
      null,
      null,
    ]);
  });
  test("clientKey: the /64 of IPv6, however it is spelled; IPv4 and unix as they are", () => {
    expect(clientKey("2001:db8:1:2::1")).toBe("2001:db8:1:2::/64");
    expect(clientKey("2001:0db8:0001:0002:ffff:0:0:9")).toBe("2001:db8:1:2::/64");
    expect(clientKey("1:2::3:4:5:6:7")).toBe("1:2:0:3::/64");
    expect(clientKey("::2:3:4:5:6:7:8")).toBe("0:2:3:4::/64");
    expect(clientKey("64:ff9b::192.0.2.1")).toBe("192.0.2.1");
    expect(clientKey("192.0.2.1")).toBe("192.0.2.1");
    expect(clientKey("unix")).toBe("unix");
  });
  test("off by default", () => {
    const r = new RequestRate(DEFAULT_LIMITS);
    expect(r.enabled).toBe(false);
    expect(r.take("a")).toBeNull();
  });
});

describe("bandwidth fair shares", () => {
  test("an IPv6 /64 shares one client_bandwidth bucket; another /64 has its own", async () => {
    const bw = new Bandwidth({ ...DEFAULT_LIMITS, clientBandwidth: SLICE * 4 });
    // Two slices: the bucket (one slice deep) runs into debt, so its next grant must wait.
    expect(bw.acquire("2001:db8:1:2::1", 2 * SLICE)).toBeNull();
    expect(bw.acquire("2001:db8:1:3::1", SLICE)).toBeNull();
    const second = bw.acquire("2001:db8:1:2::2", SLICE);
    expect(second).toBeInstanceOf(Promise);
    await second;
  });
});

describe("config", () => {
  test("listen items may be objects with proxy_protocol and tls", () => {
    const { config } = buildConfig(
      {
        listen: [
          "127.0.0.1:1",
          { address: "127.0.0.1:2", proxy_protocol: true },
          { address: "/run/crm.sock", tls: false },
        ],
        access: { trusted_proxies: ["10.0.0.0/8"] },
      },
      "t",
    );
    expect(config.listen.map((l) => [l.port, l.unix ?? null, l.tls, l.proxyProtocol])).toEqual([
      [1, null, null, false],
      [2, null, null, true],
      [0, "/run/crm.sock", false, false],
    ]);
    expect(() => buildConfig({ listen: [{ proxy_protocol: true }] }, "t")).toThrow(
      /listen\[0\]\.address: null is required/,
    );
    expect(() => buildConfig({ listen: [{ address: "x:y" }] }, "t")).toThrow(
      /listen\[0\]\.address: "x:y" must be a port or address/,
    );
    expect(() => buildConfig({ listen: [{ address: ":1", proxy_protocol: "yes" }] }, "t")).toThrow(
      /listen\[0\]\.proxy_protocol: "yes" must be true or false/,
    );
    const tls = { cert_path: "/x.crt", key_path: "/x.key" };
    expect(() =>
      buildConfig({ tls, listen: [{ address: ":1", proxy_protocol: true }] }, "t"),
    ).toThrow(/listen\[0\]\.proxy_protocol: true cannot be combined with TLS/);
    expect(() =>
      buildConfig({ listen: [{ address: ":1", proxy_protocol: true, tls: true }] }, "t"),
    ).toThrow(/cannot be combined with TLS/);
    expect(() =>
      buildConfig({ listen: [":2", { address: ":1", proxy_protocol: true }] }, "t"),
    ).toThrow(
      /listen\[1\]\.proxy_protocol: true needs access\.trusted_proxies: list the balancer's addresses in access\.trusted_proxies/,
    );
  });
  test("limits: rates, burst, bandwidth, exemptions", () => {
    const { config } = buildConfig(
      {
        limits: {
          requests_per_second: 5,
          client_bandwidth: "20MiB/s",
          total_bandwidth: "1GiB",
          exempt_clients: ["10.0.0.0/8"],
        },
      },
      "t",
    );
    expect(config.limits.requestsPerSecond).toBe(5);
    expect(config.limits.burst).toBe(5);
    expect(config.limits.clientBandwidth).toBe(20 * 1024 * 1024);
    expect(config.limits.totalBandwidth).toBe(1024 ** 3);
    expect(config.limits.exemptClients).toEqual(["10.0.0.0/8"]);
    expect(buildConfig({}, "t").config.limits.requestsPerSecond).toBeNull();
    expect(() => buildConfig({ limits: { requests_per_second: 0 } }, "t")).toThrow(
      /limits\.requests_per_second: 0 must be a number greater than 0/,
    );
    expect(() => buildConfig({ limits: { burst: 3 } }, "t")).toThrow(
      /limits\.burst: 3 needs limits\.requests_per_second/,
    );
    expect(() => buildConfig({ limits: { client_bandwidth: "fast" } }, "t")).toThrow(
      /limits\.client_bandwidth: "fast" must be a rate such as "20MiB\/s"/,
    );
    expect(() => buildConfig({ limits: { exempt_clients: ["nope"] } }, "t")).toThrow(
      /limits\.exempt_clients\[0\]: "nope"/,
    );
  });
  test("access.forwarded_header: x-forwarded-for (default) or forwarded", () => {
    expect(buildConfig({}, "t").config.access.forwardedHeader).toBe("x-forwarded-for");
    expect(
      buildConfig({ access: { forwarded_header: "forwarded" } }, "t").config.access.forwardedHeader,
    ).toBe("forwarded");
    expect(() => buildConfig({ access: { forwarded_header: "x-real-ip" } }, "t")).toThrow(
      /access\.forwarded_header: "x-real-ip" must be "x-forwarded-for" or "forwarded"/,
    );
  });
  test("access.trusted_proxies takes CIDR ranges and unix", () => {
    expect(
      buildConfig({ access: { trusted_proxies: ["unix", "10.0.0.0/8"] } }, "t").config.access
        .trustedProxies,
    ).toEqual(["unix", "10.0.0.0/8"]);
    expect(() => buildConfig({ access: { trusted_proxies: ["nginx"] } }, "t")).toThrow(
      /access\.trusted_proxies\[0\]: "nginx" .*or "unix"/,
    );
  });
  test("the new keys are known (no unknown-key warnings)", () => {
    const { warnings } = buildConfig(
      {
        listen: [{ address: ":1", tls: false, proxy_protocol: true }],
        access: { trusted_proxies: ["unix"], forwarded_header: "forwarded" },
        limits: {
          requests_per_second: 1,
          burst: 2,
          client_bandwidth: "1MiB/s",
          total_bandwidth: "2MiB/s",
          exempt_clients: [],
        },
        mirror: {
          rules: { allow: ["library/*"], deny: [], deny_message: "m" },
          registries: {
            "docker.io": { upstream: "https://registry-1.docker.io", rules: { deny: ["x/*"] } },
          },
        },
      },
      "t",
    );
    expect(warnings).toEqual([]);
  });
});
