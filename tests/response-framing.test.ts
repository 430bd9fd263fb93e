/**
 * Response splitting by an upstream (issue 14, point 1): an answer with both Content-Length and
 * Transfer-Encoding, whose chunks hold `hello` and a complete forged response. crm must relay it
 * chunked (Transfer-Encoding wins, RFC 9112 §6.3), so a keep-alive or pipelining client never
 * reads the forged bytes as the answer to its next request; framings crm cannot relay are 502.
 * Forward, MITM and mirror paths; small (buffered) and large (streamed) bodies; raw sockets and
 * curl as clients; and the writer's own guard against a body longer than its Content-Length.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Socket } from "bun";
import { responseFraming } from "../src/http/response-framing.ts";
import { writeResponse } from "../src/http/response.ts";
import { Outbox } from "../src/net/outbox.ts";
import { initCa } from "../src/pki/index.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import {
  header,
  openRaw,
  parseResponses,
  startScriptedUpstream,
  waitUntil,
  type ScriptedAnswer,
  type ScriptedUpstream,
} from "./support/faulty-upstreams.ts";
import { run } from "./support/raw.ts";
import { makeLeaf, makeTestCa } from "./support/tls.ts";
import { missingTools } from "./support/tools.ts";

const FORGED = "HTTP/1.1 200 OK\r\nX-Forged: yes\r\nContent-Length: 6\r\n\r\nforged";
const PAD = "p".repeat(20 * 1024);
const chunk = (s: string): string => `${s.length.toString(16)}\r\n${s}\r\n`;

/** Paths of the hostile upstream and what each answers. */
const ANSWERS: Record<string, string> = {
  "/cl-te": `HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n${chunk("hello" + FORGED)}0\r\n\r\n`,
  "/te-cl": `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n${chunk("hello" + FORGED)}0\r\n\r\n`,
  "/cl-te-big": `HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n${chunk("hello" + FORGED)}${chunk(PAD)}0\r\n\r\n`,
  "/cl-same": "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
  "/cl-differ": "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
  "/te-gzip-chunked": `HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n${chunk("hello")}0\r\n\r\n`,
  "/te-gzip": "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello",
  "/te-identity": "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nhello",
  "/te-chunked-gzip": `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n${chunk("hello")}0\r\n\r\n`,
  "/next": "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nX-Origin: real\r\n\r\nreal-next",
};

/** Blob digests the hostile upstream answers like the paths above, for the mirror. */
const MIRROR_BLOBS: Record<string, string> = {
  [`sha256:${"a".repeat(64)}`]: "/cl-te",
  [`sha256:${"b".repeat(64)}`]: "/cl-te-big",
};

function hostileAnswer(head: string): ScriptedAnswer {
  const target = head.split(" ")[1] ?? "/";
  const path = target.startsWith("/v2/")
    ? (MIRROR_BLOBS[target.split("/").at(-1) ?? ""] ?? "/next")
    : target;
  return {
    bytes: Buffer.from(
      ANSWERS[path] ?? "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
      "latin1",
    ),
    after: "keep",
  };
}

let hostile: ScriptedUpstream;
let hostileTls: ScriptedUpstream;
let good: ReturnType<typeof Bun.serve>;
let crm: TestCrm;
const dir = mkdtempSync(join(tmpdir(), "crm-framing-"));
let mitmCaPath = "";

beforeAll(async () => {
  hostile = startScriptedUpstream(hostileAnswer);
  const originCa = await makeTestCa("origin CA");
  hostileTls = startScriptedUpstream(hostileAnswer, await makeLeaf(originCa, ["127.0.0.1"]));
  good = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: () => new Response("good", { headers: { "x-origin": "good", "content-length": "4" } }),
  });
  const ca = await initCa({ outDir: join(dir, "ca") });
  mitmCaPath = ca.certPath;
  crm = await startCrm(
    {
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [hostile.port, hostileTls.port, good.port],
      insecure_tls: true,
      mitm: {
        enabled: true,
        ca_cert_path: ca.certPath,
        ca_key_path: ca.keyPath,
        hosts: ["127.0.0.1"],
      },
      mirror: {
        default_registry: "reg.test",
        registries: { "reg.test": `http://127.0.0.1:${hostile.port}` },
      },
    },
    "info",
  );
});

afterAll(async () => {
  await crm?.stop();
  hostile?.stop();
  hostileTls?.stop();
  good?.stop(true);
  rmSync(dir, { recursive: true, force: true });
});

/** Two pipelined requests on one connection: `first` (a path of crm or an absolute URL), then one to the good origin. */
async function pipelined(first: string) {
  const conn = await openRaw(crm.port);
  const hostHdr = first.startsWith("http://") ? new URL(first).host : "crm";
  await conn.send(
    `GET ${first} HTTP/1.1\r\nHost: ${hostHdr}\r\n\r\nGET http://127.0.0.1:${good.port}/after HTTP/1.1\r\nHost: 127.0.0.1:${good.port}\r\n\r\n`,
  );
  await waitUntil(
    conn,
    () => {
      const p = parseResponses(conn.received(), ["GET", "GET"], conn.closed);
      return (
        conn.closed ||
        p.error !== null ||
        (p.responses.length >= 2 && p.responses.every((r) => r.complete))
      );
    },
    5000,
  );
  conn.socket.terminate();
  const p = parseResponses(conn.received(), ["GET", "GET"], conn.closed);
  expect(p.error).toBeNull();
  for (const r of p.responses) expect(header(r, "x-forged")).toBeNull();
  return p.responses;
}

describe("Content-Length next to Transfer-Encoding: relayed chunked, the forged response stays body", () => {
  const cases: Array<[string, string, string]> = [
    ["forward, small body", `http://127.0.0.1:0/cl-te`, "hello" + FORGED],
    ["forward, fields in the other order", `http://127.0.0.1:0/te-cl`, "hello" + FORGED],
    [
      "forward, body over 16 KiB (streamed)",
      `http://127.0.0.1:0/cl-te-big`,
      "hello" + FORGED + PAD,
    ],
    ["mirror blob, small body", `/v2/library/x/blobs/sha256:${"a".repeat(64)}`, "hello" + FORGED],
    [
      "mirror blob, body over 16 KiB",
      `/v2/library/x/blobs/sha256:${"b".repeat(64)}`,
      "hello" + FORGED + PAD,
    ],
  ];
  test.each(cases)("%s", async (_name, target, body) => {
    const first = target.replace("127.0.0.1:0", `127.0.0.1:${hostile.port}`);
    const [r1, r2] = await pipelined(first);
    expect(r1?.status).toBe(200);
    expect(r1?.declared).toBeNull();
    expect(r1?.framing).toBe("chunked");
    expect(r1?.complete).toBe(true);
    expect(r1?.body.toString("latin1")).toBe(body);
    // The second answer is the good origin's, not the forged one.
    expect(r2?.status).toBe(200);
    expect(header(r2!, "x-origin")).toBe("good");
    expect(r2?.body.toString()).toBe("good");
  });
});

describe("framings crm cannot relay faithfully are a 502 that says why", () => {
  const cases: Array<[string, RegExp]> = [
    ["/cl-differ", /Content-Length/],
    ["/te-gzip-chunked", /Transfer-Encoding "gzip, chunked"/],
    ["/te-gzip", /Transfer-Encoding "gzip"/],
    ["/te-identity", /Transfer-Encoding "identity"/],
    ["/te-chunked-gzip", /Transfer-Encoding/],
  ];
  test.each(cases)("%s", async (path, reason) => {
    const [r1, r2] = await pipelined(`http://127.0.0.1:${hostile.port}${path}`);
    expect(r1?.status).toBe(502);
    expect(r1?.body.toString()).toMatch(/framing crm cannot relay/);
    expect(r1?.body.toString()).toMatch(reason);
    // crm's own error answers close the connection: nothing more, and nothing forged.
    expect(r2).toBeUndefined();
  });

  test("repeated identical Content-Length values are one length", async () => {
    const [r1, r2] = await pipelined(`http://127.0.0.1:${hostile.port}/cl-same`);
    expect(r1?.status).toBe(200);
    expect(r1?.declared).toBe(5);
    expect(r1?.body.toString()).toBe("hello");
    expect(header(r2!, "x-origin")).toBe("good");
  });
});

describe.skipIf(missingTools("response-framing (curl)", ["curl"]))(
  "a real keep-alive client (curl, two URLs, one connection)",
  () => {
    test("forward proxy: the second URL gets the good origin's answer", async () => {
      const r = await run([
        "curl",
        "-sS",
        "--noproxy",
        "",
        "-x",
        crm.url,
        `http://127.0.0.1:${hostile.port}/cl-te`,
        `http://127.0.0.1:${good.port}/after`,
      ]);
      expect(r.stderr).toBe("");
      expect(r.stdout).toBe("hello" + FORGED + "good");
    });

    test("MITM: the second request on the decrypted connection gets the upstream's real answer", async () => {
      const r = await run([
        "curl",
        "-sS",
        "-v",
        "--noproxy",
        "",
        "-x",
        crm.url,
        "--cacert",
        mitmCaPath,
        `https://127.0.0.1:${hostileTls.port}/cl-te`,
        `https://127.0.0.1:${hostileTls.port}/next`,
      ]);
      expect(r.code).toBe(0);
      expect(r.stderr).toMatch(/Re-using existing|left intact/i);
      expect(r.stdout).toBe("hello" + FORGED + "real-next");
    });
  },
);

describe("responseFraming (the pure decision)", () => {
  const f = (headers: Array<[string, string]>, status = 200, method = "GET", version?: string) =>
    responseFraming({ status, method, headers, version });
  test("Transfer-Encoding wins over Content-Length, which is not relayed", () => {
    expect(
      f([
        ["Content-Length", "5"],
        ["Transfer-Encoding", "chunked"],
      ]),
    ).toEqual({ ok: true, body: "chunked", contentLength: null });
    expect(f([["transfer-encoding", " Chunked "]])).toEqual({
      ok: true,
      body: "chunked",
      contentLength: null,
    });
  });
  test("lengths: one value, identical repeats, or a refusal", () => {
    expect(f([["content-length", "5"]])).toEqual({ ok: true, body: "length", contentLength: 5 });
    expect(f([["content-length", "5, 5"]])).toEqual({ ok: true, body: "length", contentLength: 5 });
    expect(
      f([
        ["content-length", "5"],
        ["content-length", "6"],
      ]).ok,
    ).toBe(false);
    for (const bad of ["-1", "+5", "5x", "", "1".repeat(16)])
      expect(f([["content-length", bad]]).ok).toBe(false);
  });
  test("only exactly chunked is relayable; HTTP/1.0 with Transfer-Encoding is faulty", () => {
    for (const te of ["gzip, chunked", "chunked, chunked", "gzip", "identity", "", "xchunked"])
      expect(f([["transfer-encoding", te]]).ok).toBe(false);
    expect(f([["transfer-encoding", "chunked"]], 200, "GET", "HTTP/1.0").ok).toBe(false);
  });
  test("no body by rule; the length a HEAD answer declares is kept", () => {
    expect(f([["content-length", "42"]], 200, "HEAD")).toEqual({
      ok: true,
      body: "none",
      contentLength: 42,
    });
    expect(
      f(
        [
          ["content-length", "42"],
          ["transfer-encoding", "chunked"],
        ],
        200,
        "HEAD",
      ),
    ).toEqual({ ok: true, body: "none", contentLength: null });
    expect(f([], 304)).toEqual({ ok: true, body: "none", contentLength: null });
    expect(f([])).toEqual({ ok: true, body: "close", contentLength: null });
  });
});

describe("the writer never sends more than the Content-Length it declared", () => {
  /** writeResponse onto a real socket; returns what the client received and the writer's verdict. */
  async function writeThrough(res: Response) {
    let server: Socket<undefined> | null = null;
    const ready = Promise.withResolvers<void>();
    const l = Bun.listen({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        open: (s) => ((server = s), ready.resolve()),
        data() {},
        drain() {},
        close() {},
        error() {},
      },
    });
    const client = await openRaw(l.port);
    await ready.promise;
    const out = new Outbox(server! as Socket<unknown>);
    const w = await writeResponse(out, res, {
      method: "GET",
      version: "HTTP/1.1",
      keepAlive: true,
    });
    await out.drained();
    await Bun.sleep(50);
    (server! as Socket<undefined>).end();
    await waitUntil(client, () => client.closed, 2000);
    client.socket.terminate();
    l.stop(true);
    return { w, p: parseResponses(client.received(), ["GET"], client.closed) };
  }
  const lying = (total: number, declared: number) =>
    new Response(
      new ReadableStream<Uint8Array>({
        start(c) {
          for (let i = 0; i < total; i += 1000)
            c.enqueue(new Uint8Array(Math.min(1000, total - i)).fill(0x61));
          c.close();
        },
      }),
      { headers: { "content-length": String(declared) } },
    );

  test("small body: nothing of it is sent, the client gets a 502", async () => {
    const { w, p } = await writeThrough(lying(10_000, 5));
    expect(w.keepAlive).toBe(false);
    expect(p.responses[0]?.status).toBe(502);
    expect(p.responses.length).toBe(1);
  });

  test("streamed body: the client gets fewer bytes than declared (a visibly cut body), never more", async () => {
    const { w, p } = await writeThrough(lying(40_000, 20_500));
    expect(w.complete).toBe(false);
    expect(w.keepAlive).toBe(false);
    expect(p.error).toBeNull();
    expect(p.responses.length).toBe(1);
    expect(p.responses[0]?.declared).toBe(20_500);
    expect(p.responses[0]?.complete).toBe(false);
    expect(p.rest.length).toBe(0);
  });

  test("streamed body whose excess comes after exactly the declared bytes: the connection is not kept", async () => {
    const { w, p } = await writeThrough(lying(40_000, 20_000));
    expect(w.keepAlive).toBe(false);
    expect(p.responses.length).toBe(1);
    expect(p.responses[0]?.body.length).toBe(20_000);
    expect(p.rest.length).toBe(0);
  });
});
