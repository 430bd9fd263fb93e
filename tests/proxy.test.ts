/** The forward proxy and CONNECT tunnel, end to end with curl and raw sockets. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { staticResolver } from "../src/net/resolver.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { GZIP_BODY, pattern, sha256, startOrigin, startTcp } from "./support/origins.ts";
import { rawConnect, run } from "./support/raw.ts";
import { makeLeaf, makeTestCa, type Pem } from "./support/tls.ts";

const dir = mkdtempSync(join(tmpdir(), "crm-proxy-"));
let ca: Pem;
let caFile: string;
let origin: ReturnType<typeof startOrigin>;
let tlsOrigin: ReturnType<typeof startOrigin>;
let echo: ReturnType<typeof startTcp>;
let crm: TestCrm;

beforeAll(async () => {
  ca = await makeTestCa();
  caFile = join(dir, "ca.pem");
  writeFileSync(caFile, ca.cert);
  origin = startOrigin();
  tlsOrigin = startOrigin(await makeLeaf(ca, ["127.0.0.1", "origin.test"]));
  echo = startTcp("echo");
  crm = await startCrm(
    {
      allowed_hosts: [
        "127.0.0.1",
        "origin.test",
        "nxdomain.test",
        "hang.test",
        String.raw`re\d+\.test`,
      ],
      allowed_ports: [origin.port, tlsOrigin.port, echo.port, 1],
      timeouts: { header: "400ms", connect: "300ms", upstream_header: "500ms", idle: "2s" },
    },
    "debug",
    staticResolver({ "origin.test": "127.0.0.1", "re42.test": "127.0.0.1", "hang.test": "hang" }),
  );
});

afterAll(async () => {
  await crm.stop();
  origin.stop(true);
  tlsOrigin.stop(true);
  echo.stop(true);
  rmSync(dir, { recursive: true, force: true });
});

const curl = (args: string[]) => run(["curl", "-sS", "--noproxy", "", "-x", crm.url, ...args]);

describe("curl as a real client", () => {
  test("plain HTTP through the forward path", async () => {
    const r = await curl(["-i", `http://127.0.0.1:${origin.port}/hello`]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 200 OK/);
    expect(r.stdout).toContain("origin GET /hello");
    expect(r.stdout.toLowerCase()).toContain("via: 1.1 crm");
    await crm.waitLog(
      /INFO .*GET http:\/\/127\.0\.0\.1:\d+\/hello kind=forward client=127\.0\.0\.1 status=200 in=0 out=17 ms=\d+/,
    );
  });

  test("HTTPS through a CONNECT tunnel, verified against the test CA", async () => {
    const r = await curl(["--cacert", caFile, `https://127.0.0.1:${tlsOrigin.port}/secure`]);
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe("origin GET /secure");
    await crm.waitLog(
      new RegExp(
        `CONNECT 127\\.0\\.0\\.1:${tlsOrigin.port} kind=connect .*status=200 in=\\d+ out=\\d+`,
      ),
    );
  });

  test("a CONNECT to a name goes through the resolver, and the certificate matches the name", async () => {
    const r = await curl(["--cacert", caFile, `https://origin.test:${tlsOrigin.port}/by-name`]);
    expect(r.stdout).toBe("origin GET /by-name");
  });

  test("a regex entry admits a matching name", async () => {
    const r = await curl(["-i", `http://re42.test:${origin.port}/rx`]);
    expect(r.stdout).toContain("origin GET /rx");
  });

  test("a refused host gets 403 naming host and port, and an info line", async () => {
    const r = await curl(["-i", "http://docker.io.evil.test/"]);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 403 Forbidden/);
    expect(r.stdout).toContain(
      "crm: docker.io.evil.test:80 is not allowed (host not in allowed_hosts)",
    );
    await crm.waitLog(/INFO .*refused .*target=http:\/\/docker\.io\.evil\.test\//);
  });

  test("a refused CONNECT gets 403 and curl fails", async () => {
    const r = await curl(["https://evil.test/"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("403");
  });

  test("a refused port gets 403", async () => {
    const r = await curl(["-i", `http://127.0.0.1:22/`]);
    expect(r.stdout).toContain("crm: 127.0.0.1:22 is not allowed (port not in allowed_ports)");
  });

  test("keep-alive: several requests on one client connection", async () => {
    const r = await curl([
      "-v",
      `http://127.0.0.1:${origin.port}/a`,
      `http://127.0.0.1:${origin.port}/b`,
    ]);
    expect(r.stdout).toBe("origin GET /aorigin GET /b");
    expect(r.stderr).toMatch(/Re-using existing connection/);
  });

  test("an upload of 32 MiB streams through with Content-Length", async () => {
    const file = join(dir, "upload.bin");
    const data = pattern(32 * 1024 * 1024);
    writeFileSync(file, data);
    const r = await curl([
      "--data-binary",
      `@${file}`,
      "-H",
      "content-type: application/octet-stream",
      `http://127.0.0.1:${origin.port}/echo`,
    ]);
    const body = JSON.parse(r.stdout) as {
      length: number;
      sha256: string;
      headers: Record<string, string>;
    };
    expect(body.length).toBe(data.byteLength);
    expect(body.sha256).toBe(sha256(data));
    expect(body.headers["content-length"]).toBe(String(data.byteLength));
  });

  test("a chunked upload arrives whole", async () => {
    const file = join(dir, "chunked.bin");
    const data = pattern(3 * 1024 * 1024 + 7);
    writeFileSync(file, data);
    const r = await curl([
      "-H",
      "transfer-encoding: chunked",
      "--data-binary",
      `@${file}`,
      `http://127.0.0.1:${origin.port}/echo`,
    ]);
    const body = JSON.parse(r.stdout) as { length: number; sha256: string };
    expect(body.length).toBe(data.byteLength);
    expect(body.sha256).toBe(sha256(data));
  });

  test("a large download (sized and chunked) is byte-exact", async () => {
    for (const q of ["", "&chunked"]) {
      const r = await run([
        "sh",
        "-c",
        `curl -sS --noproxy '' -x ${crm.url} 'http://127.0.0.1:${origin.port}/bytes?n=67108864${q}' | sha256sum`,
      ]);
      expect(r.stdout.split(" ")[0]).toBe(sha256(pattern(64 * 1024 * 1024)));
    }
  });

  test("Expect: 100-continue is answered, then the body is forwarded", async () => {
    const file = join(dir, "expect.bin");
    writeFileSync(file, pattern(2 * 1024 * 1024));
    const r = await curl([
      "-v",
      "-H",
      "Expect: 100-continue",
      "--data-binary",
      `@${file}`,
      `http://127.0.0.1:${origin.port}/echo`,
    ]);
    expect(r.stderr).toContain("HTTP/1.1 100 Continue");
    expect((JSON.parse(r.stdout) as { length: number }).length).toBe(2 * 1024 * 1024);
  });
});

describe("faithful forwarding", () => {
  test("hop-by-hop fields are removed both ways, Via is added", async () => {
    const c = await rawConnect(crm.port);
    c.write(
      `GET http://127.0.0.1:${origin.port}/echo HTTP/1.1\r\nHost: ignored.test\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\nUpgrade: websocket\r\nX-End: 2\r\nVia: 1.0 upstream-proxy\r\n\r\n`,
    );
    const text = await c.waitFor(/\}$/);
    const json = JSON.parse(text.slice(text.indexOf("\r\n\r\n") + 4)) as {
      headers: Record<string, string>;
    };
    for (const h of [
      "x-hop",
      "keep-alive",
      "te",
      "proxy-authorization",
      "proxy-connection",
      "upgrade",
    ])
      expect(json.headers[h]).toBeUndefined();
    expect(json.headers["x-end"]).toBe("2");
    expect(json.headers.host).toBe(`127.0.0.1:${origin.port}`);
    expect(json.headers.via).toBe("1.0 upstream-proxy, 1.1 crm");
    c.socket.end();

    const r = await curl(["-i", `http://127.0.0.1:${origin.port}/hop`]);
    const lower = r.stdout.toLowerCase();
    expect(lower).not.toContain("x-private");
    expect(lower).not.toContain("keep-alive: timeout");
    expect(lower).toContain("x-kept: yes");
    expect(lower).toContain("via: 1.1 crm");
  });

  test("a gzip body is passed through untouched, with its length and encoding", async () => {
    const r = await run([
      "sh",
      "-c",
      `curl -sS --noproxy '' -x ${crm.url} -D ${dir}/h.txt http://127.0.0.1:${origin.port}/gzip | sha256sum`,
    ]);
    expect(r.stdout.split(" ")[0]).toBe(sha256(GZIP_BODY));
    const headers = (await Bun.file(`${dir}/h.txt`).text()).toLowerCase();
    expect(headers).toContain("content-encoding: gzip");
    expect(headers).toContain(`content-length: ${GZIP_BODY.byteLength}`);
  });

  test("no Accept-Encoding is invented when the client sent none", async () => {
    const r = await curl([`http://127.0.0.1:${origin.port}/echo`]);
    expect(
      (JSON.parse(r.stdout) as { headers: Record<string, string> }).headers["accept-encoding"],
    ).toBeUndefined();
  });

  test("several Set-Cookie fields stay separate", async () => {
    const r = await curl(["-i", `http://127.0.0.1:${origin.port}/cookies`]);
    expect(r.stdout.match(/set-cookie: /gi)?.length).toBe(2);
  });

  test("HEAD keeps Content-Length and sends no body; 204 and 304 have no body", async () => {
    const c = await rawConnect(crm.port);
    c.write(`HEAD http://127.0.0.1:${origin.port}/gzip HTTP/1.1\r\nHost: x\r\n\r\n`);
    c.write(`GET http://127.0.0.1:${origin.port}/status?code=204 HTTP/1.1\r\nHost: x\r\n\r\n`);
    c.write(`GET http://127.0.0.1:${origin.port}/status?code=304 HTTP/1.1\r\nHost: x\r\n\r\n`);
    c.write(
      `GET http://127.0.0.1:${origin.port}/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
    );
    await c.closed();
    const t = c.text();
    const statuses = [...t.matchAll(/^HTTP\/1\.1 (\d+)/gm)].map((m) => m[1]);
    expect(statuses).toEqual(["200", "204", "304", "200"]);
    expect(t).toContain(`content-length: ${GZIP_BODY.byteLength}`);
    expect(t.endsWith("origin GET /last")).toBe(true);
  });

  test("an https:// absolute target is fetched over TLS (and refused when unverifiable)", async () => {
    const c = await rawConnect(crm.port);
    c.write(
      `GET https://127.0.0.1:${tlsOrigin.port}/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
    );
    await c.closed();
    // The test CA is not trusted by crm, and insecure_tls is off: 502 naming TLS.
    expect(c.text()).toMatch(/^HTTP\/1\.1 502 Bad Gateway/);
    expect(c.text()).toContain("TLS handshake failed");

    const insecure = await startCrm({
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [tlsOrigin.port],
      insecure_tls: true,
    });
    try {
      const r = await run([
        "curl",
        "-sS",
        "--noproxy",
        "",
        "--proxy",
        insecure.url,
        "--request-target",
        `https://127.0.0.1:${tlsOrigin.port}/x`,
        `http://127.0.0.1:${tlsOrigin.port}/`,
      ]);
      expect(r.stdout).toBe("origin GET /x");
    } finally {
      await insecure.stop();
    }
  });

  test("an absolute-form /healthz is proxied, never answered locally", async () => {
    const r = await curl([`http://127.0.0.1:${origin.port}/healthz`]);
    expect(r.stdout).toBe("origin healthz");
  });

  test("HTTP/1.0 client gets a close-delimited body when the length is unknown", async () => {
    const c = await rawConnect(crm.port);
    c.write(`GET http://127.0.0.1:${origin.port}/bytes?n=5000&chunked HTTP/1.0\r\n\r\n`);
    await c.closed();
    const t = c.text();
    expect(t.toLowerCase()).not.toContain("transfer-encoding");
    expect(t.toLowerCase()).toContain("connection: close");
    expect(t.length - t.indexOf("\r\n\r\n") - 4).toBe(5000);
  });
});

describe("bad input gets a precise answer, then close", () => {
  const cases: Array<[string, string, RegExp]> = [
    ["garbage request line", "GARBAGE\r\n\r\n", /^HTTP\/1\.1 400 /],
    ["lower-case junk method", "G(T / HTTP/1.1\r\n\r\n", /^HTTP\/1\.1 400 /],
    ["HTTP/2.0", "GET / HTTP/2.0\r\n\r\n", /^HTTP\/1\.1 505 /],
    [
      "both Content-Length and Transfer-Encoding",
      `POST http://127.0.0.1:1/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n`,
      /^HTTP\/1\.1 400 [^]*both Content-Length and Transfer-Encoding/,
    ],
    [
      "differing Content-Length",
      `POST /healthz HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n`,
      /^HTTP\/1\.1 400 [^]*conflicting Content-Length/,
    ],
    [
      "obsolete line folding",
      "GET /healthz HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n",
      /^HTTP\/1\.1 400 [^]*folding/,
    ],
    [
      "space before colon",
      "GET /healthz HTTP/1.1\r\nX-A : 1\r\n\r\n",
      /^HTTP\/1\.1 400 [^]*invalid header name/,
    ],
    [
      "CONNECT without a port",
      "CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n",
      /^HTTP\/1\.1 400 [^]*host:port/,
    ],
    [
      "unknown origin-form path",
      "GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n",
      /^HTTP\/1\.1 404 /,
    ],
    [
      "bad chunk size",
      `POST http://127.0.0.1:${0}/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n`,
      /^HTTP\/1\.1 (400|403) /,
    ],
  ];
  test.each(cases)("%s", async (_name, request, expected) => {
    const c = await rawConnect(crm.port);
    c.write(request);
    await c.closed();
    expect(c.text()).toMatch(expected);
    expect(c.text().toLowerCase()).toContain("content-length: ");
  });

  test("a bad chunk size on an allowed target is 400", async () => {
    const c = await rawConnect(crm.port);
    c.write(
      `POST http://127.0.0.1:${origin.port}/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n`,
    );
    await c.closed();
    expect(c.text()).toMatch(/^HTTP\/1\.1 400 [^]*invalid chunk size/);
  });

  test("request line over 8 KiB → 414", async () => {
    const c = await rawConnect(crm.port);
    c.write(`GET /${"a".repeat(9000)} HTTP/1.1\r\n\r\n`);
    await c.closed();
    expect(c.text()).toMatch(/^HTTP\/1\.1 414 /);
  });

  test("head over 64 KiB → 431", async () => {
    const c = await rawConnect(crm.port);
    let h = "GET /healthz HTTP/1.1\r\n";
    for (let i = 0; i < 100; i++) h += `X-Filler-${i}: ${"b".repeat(1000)}\r\n`;
    c.write(h + "\r\n");
    await c.closed();
    expect(c.text()).toMatch(/^HTTP\/1\.1 431 /);
  });

  test("slow-loris: a head not finished within timeouts.header → 408 and close", async () => {
    const c = await rawConnect(crm.port);
    c.write("GET /healthz HTTP/1.1\r\n");
    // The drip never ends the head: only the header timeout can close this (no wall-clock bound).
    const drip = setInterval(() => c.write("X-Drip: 1\r\n"), 100);
    await c.closed(10_000);
    clearInterval(drip);
    expect(c.text()).toMatch(/^HTTP\/1\.1 408 /);
  });

  test("a connection that sends nothing is closed after timeouts.header", async () => {
    const c = await rawConnect(crm.port);
    await c.closed(3000);
    expect(c.text()).toMatch(/^HTTP\/1\.1 408 /);
  });

  test("pipelined requests followed by the client's FIN are all answered", async () => {
    const c = await rawConnect(crm.port);
    c.write(
      `GET http://127.0.0.1:${origin.port}/p1 HTTP/1.1\r\nHost: x\r\n\r\nGET http://127.0.0.1:${origin.port}/p2 HTTP/1.1\r\nHost: x\r\n\r\n`,
    );
    c.socket.shutdown();
    await c.closed();
    expect(c.text()).toContain("origin GET /p1");
    expect(c.text()).toContain("origin GET /p2");
  });

  test("HTTP/1.0 keep-alive is announced and honoured", async () => {
    const c = await rawConnect(crm.port);
    c.write(`GET http://127.0.0.1:${origin.port}/k1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n`);
    await c.waitFor("origin GET /k1");
    expect(c.text().toLowerCase()).toContain("connection: keep-alive");
    c.write(`GET http://127.0.0.1:${origin.port}/k2 HTTP/1.0\r\n\r\n`);
    await c.closed();
    expect(c.text()).toContain("origin GET /k2");
  });

  test("pipelined requests are answered in order", async () => {
    const c = await rawConnect(crm.port);
    c.write(
      `GET http://127.0.0.1:${origin.port}/one HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n\r\nGET http://127.0.0.1:${origin.port}/three HTTP/1.1\r\nConnection: close\r\n\r\n`,
    );
    await c.closed();
    const t = c.text();
    expect(t.indexOf("origin GET /one")).toBeLessThan(t.indexOf("ok\n"));
    expect(t.indexOf("ok\n")).toBeLessThan(t.indexOf("origin GET /three"));
  });
});

describe("upstream failures", () => {
  test("connection refused → 502 with the reason", async () => {
    const r = await curl(["-i", "http://127.0.0.1:1/"]);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 502 Bad Gateway/);
    expect(r.stdout).toContain("connection refused");
  });

  test("no response head within timeouts.upstream_header → 504", async () => {
    const r = await curl(["-i", `http://127.0.0.1:${origin.port}/slow?ms=3000`]);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 504 Gateway Timeout/);
    expect(r.stdout).toContain("timed out");
  });

  test("CONNECT refused → 502", async () => {
    const c = await rawConnect(crm.port);
    c.write("CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n");
    await c.closed();
    expect(c.text()).toMatch(/^HTTP\/1\.1 502 [^]*connection refused/);
    await crm.waitLog(/WARN .*tunnel dial failed .*target=127\.0\.0\.1:1/);
  });

  test("CONNECT to a name that does not resolve → 502 DNS", async () => {
    const c = await rawConnect(crm.port);
    c.write(`CONNECT nxdomain.test:${echo.port} HTTP/1.1\r\n\r\n`);
    await c.closed();
    expect(c.text()).toMatch(/^HTTP\/1\.1 502 [^]*DNS lookup failed/);
  });

  test("CONNECT whose dial exceeds timeouts.connect → 504", async () => {
    const c = await rawConnect(crm.port);
    c.write(`CONNECT hang.test:${echo.port} HTTP/1.1\r\n\r\n`);
    await c.closed();
    expect(c.text()).toMatch(/^HTTP\/1\.1 504 [^]*timed out/);
  });
});

describe("CONNECT tunnel", () => {
  test("exactly `200 Connection Established`, and bytes sent with the head are kept", async () => {
    const c = await rawConnect(crm.port);
    c.write(
      `CONNECT 127.0.0.1:${echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${echo.port}\r\n\r\nhello-early`,
    );
    const t = await c.waitFor("hello-early");
    expect(t).toBe("HTTP/1.1 200 Connection Established\r\n\r\nhello-early");
    c.socket.end();
  });

  test("half-close client→upstream: every byte arrives before the FIN", async () => {
    const counter = startTcp("count");
    const local = await startCrm({ allowed_hosts: ["127.0.0.1"], allowed_ports: [counter.port] });
    try {
      const c = await rawConnect(local.port);
      c.write(`CONNECT 127.0.0.1:${counter.port} HTTP/1.1\r\n\r\n`);
      await c.waitFor("\r\n\r\n");
      const mb = pattern(1024 * 1024);
      let off = 0;
      while (off < mb.byteLength) {
        const n = c.socket.write(mb.subarray(off));
        if (n > 0) off += n;
        else await Bun.sleep(1);
      }
      c.socket.shutdown();
      await c.closed();
      expect(c.text()).toBe("HTTP/1.1 200 Connection Established\r\n\r\n1048576");
    } finally {
      await local.stop();
      counter.stop(true);
    }
  });

  test("half-close upstream→client: the client gets everything and can still send", async () => {
    const pusher = startTcp("push", 1024 * 1024);
    const local = await startCrm({ allowed_hosts: ["127.0.0.1"], allowed_ports: [pusher.port] });
    try {
      const c = await rawConnect(local.port);
      c.write(`CONNECT 127.0.0.1:${pusher.port} HTTP/1.1\r\n\r\n`);
      const head = "HTTP/1.1 200 Connection Established\r\n\r\n";
      const end = Date.now() + 5000;
      while (!c.ended && Date.now() < end) await Bun.sleep(5);
      expect(c.ended).toBe(true);
      const body = c.received().subarray(head.length);
      expect(body.byteLength).toBe(1024 * 1024);
      expect(sha256(body)).toBe(sha256(pattern(1024 * 1024)));
      c.write("after-fin");
      const until = Date.now() + 3000;
      while (!Buffer.concat(pusher.received).toString().includes("after-fin") && Date.now() < until)
        await Bun.sleep(5);
      expect(Buffer.concat(pusher.received).toString()).toContain("after-fin");
      c.socket.end();
    } finally {
      await local.stop();
      pusher.stop(true);
    }
  });

  test("an idle tunnel is closed after timeouts.idle; a busy one is not", async () => {
    const local = await startCrm({
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [echo.port],
      timeouts: { idle: "600ms" },
    });
    try {
      const idle = await rawConnect(local.port);
      idle.write(`CONNECT 127.0.0.1:${echo.port} HTTP/1.1\r\n\r\n`);
      const busy = await rawConnect(local.port);
      busy.write(`CONNECT 127.0.0.1:${echo.port} HTTP/1.1\r\n\r\n`);
      await busy.waitFor("\r\n\r\n");
      const ping = setInterval(() => busy.write("x"), 100);
      await idle.closed(3000);
      await Bun.sleep(800);
      clearInterval(ping);
      expect(busy.ended).toBe(false);
      expect(busy.text().length).toBeGreaterThan(40);
      busy.socket.end();
    } finally {
      await local.stop();
    }
  });
});

describe("idle requests", () => {
  test("a client that stops reading a response is cut after timeouts.idle, and the upstream is released", async () => {
    const local = await startCrm({
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [origin.port],
      timeouts: { idle: "600ms" },
    });
    try {
      const c = await rawConnect(local.port);
      c.write(`GET http://127.0.0.1:${origin.port}/bytes?n=1073741824 HTTP/1.1\r\nHost: x\r\n\r\n`);
      await c.waitFor("200 OK");
      c.socket.pause();
      await local.waitLog(/WARN .*request idle timeout, closing/, 5000);
      await local.waitLog(
        /GET http:\/\/127\.0\.0\.1:\d+\/bytes\?n=1073741824 kind=forward .*status=200 .*note=incomplete/,
        5000,
      );
      c.socket.terminate();
    } finally {
      await local.stop();
    }
  });

  test("a slow but steady transfer is not cut", async () => {
    // Ten chunks 200 ms apart: the exchange lasts three idle windows, with progress in each.
    const local = await startCrm({
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [origin.port],
      timeouts: { idle: "600ms" },
    });
    try {
      const r = await run([
        "curl",
        "-sS",
        "--noproxy",
        "",
        "-x",
        local.url,
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{time_total}",
        `http://127.0.0.1:${origin.port}/trickle?n=10&ms=200`,
      ]);
      const [size, seconds] = r.stdout.split(" ");
      expect(size).toBe("10240");
      expect(Number(seconds)).toBeGreaterThan(1.8);
      expect(local.logs.join("\n")).not.toContain("request idle timeout");
    } finally {
      await local.stop();
    }
  });
});

describe("/healthz and shutdown", () => {
  test("GET /healthz → 200 ok text/plain", async () => {
    const r = await run(["curl", "-sS", "--noproxy", "*", "-i", `${crm.url}/healthz`]);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 200 OK/);
    expect(r.stdout).toContain("content-type: text/plain");
    expect(r.stdout.endsWith("\r\n\r\nok\n")).toBe(true);
  });

  test("shutdown: running requests finish, /healthz says 503, new connections are refused", async () => {
    const local = await startCrm({
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [origin.port],
      timeouts: { shutdown_grace: "5s", upstream_header: "5s" },
    });
    const slow = fetch(`http://127.0.0.1:${local.port}/`, {
      proxy: `http://127.0.0.1:${local.port}`,
      headers: {},
    } as RequestInit).catch(() => null);
    void slow;
    const c = await rawConnect(local.port);
    c.write(`GET http://127.0.0.1:${origin.port}/slow?ms=700 HTTP/1.1\r\nHost: x\r\n\r\n`);
    const h = await rawConnect(local.port);
    h.write("GET /healthz HTTP/1.1\r\n");
    await Bun.sleep(100);
    const done = local.server.shutdown();
    h.write("\r\n");
    await h.closed();
    expect(h.text()).toMatch(/^HTTP\/1\.1 503 [^]*shutting down/);
    const refused = await run(["curl", "-sS", "--noproxy", "*", `${local.url}/healthz`]);
    expect(refused.code).not.toBe(0);
    await c.closed();
    expect(c.text()).toContain("slow done");
    expect(c.text().toLowerCase()).toContain("connection: close");
    await done;
  });

  test("shutdown cuts what is left after the grace period", async () => {
    const local = await startCrm({
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [echo.port],
      timeouts: { shutdown_grace: "300ms" },
    });
    const c = await rawConnect(local.port);
    c.write(`CONNECT 127.0.0.1:${echo.port} HTTP/1.1\r\n\r\n`);
    await c.waitFor("\r\n\r\n");
    // The tunnel stays open on its own: its close and this log line are the grace period's cut.
    await local.server.shutdown();
    await c.closed();
    await local.waitLog(/grace period over, closing connections connections=1/);
  });
});

describe("logging", () => {
  test("debug shows headers with credentials redacted to scheme and length", async () => {
    const c = await rawConnect(crm.port);
    c.write(
      `GET http://127.0.0.1:${origin.port}/cookies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abcdefghij\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\nCookie: session=topsecret\r\nConnection: close\r\n\r\n`,
    );
    await c.closed();
    const req = await crm.waitLog(/DEBUG > GET http:\/\/127\.0\.0\.1:\d+\/cookies .*Authorization/);
    expect(req).toContain("Authorization: Bearer <redacted, 10 bytes>");
    expect(req).toContain("Proxy-Authorization: Basic <redacted, 12 bytes>");
    expect(req).toContain("Cookie: <redacted, 17 bytes>");
    const res = await crm.waitLog(/DEBUG < 200 http:\/\/127\.0\.0\.1:\d+\/cookies/);
    expect(res).toContain("set-cookie: <redacted");
    const all = crm.logs.join("\n");
    for (const secret of ["abcdefghij", "dXNlcjpwYXNz", "topsecret", "a=1; Path"])
      expect(all).not.toContain(secret);
  });
});
