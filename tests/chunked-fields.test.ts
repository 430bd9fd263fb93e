/**
 * Chunk extensions and trailers are field syntax, checked before crm passes them on (RFC 9112
 * §7.1.1, §7.1.2): an upstream's chunked body is relayed as it came, so a byte in an extension or
 * a trailer that a client or a parser behind it reads another way (bare CR, NUL, folding, a line
 * without a colon, a trailer that reframes the message) must end the body instead. The decoder as
 * a function, then a hostile upstream behind a real crm (forward proxy, raw client), then a
 * client's chunked upload (the same decoder reads request bodies).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { HttpError } from "../src/errors.ts";
import { ChunkedDecoder } from "../src/http/chunked.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import {
  header,
  openRaw,
  parseResponses,
  startScriptedUpstream,
  waitUntil,
  type ScriptedUpstream,
} from "./support/faulty-upstreams.ts";
import { startOrigin } from "./support/origins.ts";

/** Bodies crm must relay byte for byte: every form the grammar allows. */
const GOOD: Record<string, string> = {
  "/ext-name": "5;a\r\nhello\r\n0\r\n\r\n",
  "/ext-token": "5;name=value;x=1\r\nhello\r\n0\r\n\r\n",
  "/ext-bws": "5 ; a = b\t;\tc\r\nhello\r\n0\r\n\r\n",
  "/ext-quoted": '5;q="a \\"quoted\\" value; with = signs"\r\nhello\r\n0\r\n\r\n',
  "/trailers":
    "5\r\nhello\r\n0\r\nX-Checksum: abc\r\nServer-Timing: db;dur=53, app;dur=47.2\r\nEmpty:\r\n\r\n",
  "/both": '5;sig="x"\r\nhello\r\n0;last\r\nDigest: sha-256=abc=\r\n\r\n',
};

/** Bodies crm must not pass on, and what the decoder says about each. */
const BAD: Record<string, [body: string, reason: RegExp]> = {
  "/ext-nul": ["5;a\x00b\r\nhello\r\n0\r\n\r\n", /chunk extension/],
  "/ext-bare-cr": ["5;a\rb\r\nhello\r\n0\r\n\r\n", /chunk extension/],
  "/ext-ctl": ["5;a=\x01\r\nhello\r\n0\r\n\r\n", /chunk extension/],
  "/ext-del": ["5;a\x7f\r\nhello\r\n0\r\n\r\n", /chunk extension/],
  "/ext-no-name": ["5;=b\r\nhello\r\n0\r\n\r\n", /chunk extension: name is not a token/],
  "/ext-empty-value": ["5;a=\r\nhello\r\n0\r\n\r\n", /chunk extension: value is not a token/],
  "/ext-bad-char": ["5;a@b\r\nhello\r\n0\r\n\r\n", /chunk extension: ";" expected/],
  "/ext-two-values": ["5;a=b=c\r\nhello\r\n0\r\n\r\n", /chunk extension/],
  "/ext-unterminated": ['5;a="open\r\nhello\r\n0\r\n\r\n', /unterminated quoted value/],
  "/ext-quoted-nul": ['5;a="x\x00y"\r\nhello\r\n0\r\n\r\n', /control character in quoted value/],
  "/ext-high": ["5;\xe9=1\r\nhello\r\n0\r\n\r\n", /chunk extension: name is not a token/],
  "/trailer-no-colon": [
    "5\r\nhello\r\n0\r\nno colon here\r\n\r\n",
    /chunked trailer: malformed header line/,
  ],
  "/trailer-obs-fold": [
    "5\r\nhello\r\n0\r\nX-A: 1\r\n folded\r\n\r\n",
    /chunked trailer: obsolete line folding/,
  ],
  "/trailer-bare-cr": ["5\r\nhello\r\n0\r\nX-A: 1\rX-B: 2\r\n\r\n", /chunked trailer: bare CR/],
  "/trailer-nul": ["5\r\nhello\r\n0\r\nX-A: a\x00b\r\n\r\n", /chunked trailer: control character/],
  "/trailer-space-before-colon": [
    "5\r\nhello\r\n0\r\nX-A : 1\r\n\r\n",
    /chunked trailer: invalid header name/,
  ],
  "/trailer-content-length": [
    "5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n",
    /field Content-Length must not be sent in a trailer/,
  ],
  "/trailer-transfer-encoding": [
    "5\r\nhello\r\n0\r\ntransfer-encoding: chunked\r\n\r\n",
    /field transfer-encoding must not/,
  ],
  "/trailer-host": ["5\r\nhello\r\n0\r\nHOST: evil.test\r\n\r\n", /field HOST must not/],
  "/trailer-forged-response": ["5\r\nhello\r\n0\r\nHTTP/1.1 200 OK\r\n\r\n", /chunked trailer/],
};

function decode(text: string): { payload: string; done: boolean; error: HttpError | null } {
  const d = new ChunkedDecoder();
  let payload = "";
  try {
    d.feed(Buffer.from(text, "latin1"), (p) => (payload += Buffer.from(p).toString("latin1")));
    return { payload, done: d.done, error: null };
  } catch (e) {
    if (!(e instanceof HttpError)) throw e;
    return { payload, done: d.done, error: e };
  }
}

describe("ChunkedDecoder: extensions and trailers by their grammar", () => {
  test.each(Object.entries(GOOD))("%s is accepted", (_path, body) => {
    expect(decode(body)).toEqual({ payload: "hello", done: true, error: null });
  });

  test.each(Object.entries(BAD))("%s is a 400 that names the offence", (_path, [body, reason]) => {
    const r = decode(body);
    expect(r.done).toBe(false);
    expect(r.error?.status).toBe(400);
    expect(r.error?.message).toMatch(reason);
  });

  test("the verdict does not depend on how the bytes are cut", () => {
    for (const [body, reason] of Object.values(BAD)) {
      const d = new ChunkedDecoder();
      let error: unknown = null;
      try {
        for (const byte of Buffer.from(body, "latin1")) d.feed(Uint8Array.of(byte), () => {});
      } catch (e) {
        error = e;
      }
      expect(error instanceof HttpError && reason.test(error.message)).toBe(true);
    }
  });

  test("the 4 KiB line and 64 KiB trailer limits stay", () => {
    expect(decode(`5;${"e".repeat(4000)}\r\nhello\r\n0\r\n\r\n`).error).toBeNull();
    expect(decode(`5;a="${"q".repeat(4000)}"\r\nhello\r\n0\r\n\r\n`).error).toBeNull();
    expect(decode(`5;${"e".repeat(4100)}\r\nhello\r\n0\r\n\r\n`).error?.status).toBe(400);
    expect(decode(`5\r\nhello\r\n0\r\nX-A: ${"a".repeat(5000)}\r\n\r\n`).error?.status).toBe(431);
  });
});

let hostile: ScriptedUpstream;
let origin: ReturnType<typeof startOrigin>;
let crm: TestCrm;

beforeAll(async () => {
  const bodies: Record<string, string> = {
    ...GOOD,
    ...Object.fromEntries(Object.entries(BAD).map(([p, [b]]) => [p, b])),
  };
  hostile = startScriptedUpstream((head) => {
    const path = head.split(" ")[1] ?? "/";
    const body = bodies[path];
    if (body === undefined)
      return {
        bytes: Buffer.from("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Origin: real\r\n\r\nnext"),
        after: "keep",
      };
    return {
      bytes: Buffer.from(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${body}`, "latin1"),
      after: "keep",
    };
  });
  origin = startOrigin();
  crm = await startCrm(
    { allowed_hosts: ["127.0.0.1"], allowed_ports: [hostile.port, origin.port] },
    "info",
  );
});

afterAll(async () => {
  await crm?.stop();
  hostile?.stop();
  origin?.stop(true);
});

/** A GET for `path` on the hostile upstream, then one for /next, on one client connection. */
async function twoRequests(path: string) {
  const conn = await openRaw(crm.port);
  const base = `http://127.0.0.1:${hostile.port}`;
  await conn.send(
    `GET ${base}${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET ${base}/next HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`,
  );
  await waitUntil(
    conn,
    () =>
      conn.closed ||
      parseResponses(conn.received(), ["GET"], false).responses.filter((r) => r.complete).length >=
        2,
    5000,
  );
  conn.socket.terminate();
  return {
    raw: conn.received().toString("latin1"),
    parsed: parseResponses(conn.received(), ["GET"], conn.closed),
    closed: conn.closed,
  };
}

describe("an upstream's chunked body through crm", () => {
  test.each(Object.entries(GOOD))(
    "%s is relayed byte for byte, and the connection goes on",
    async (path, body) => {
      const { raw, parsed } = await twoRequests(path);
      expect(parsed.error).toBeNull();
      expect(raw).toContain(`\r\n\r\n${body}HTTP/1.1 200`);
      const [first, second] = parsed.responses;
      expect(first?.complete).toBe(true);
      expect(first?.body.toString()).toBe("hello");
      expect(second && header(second, "x-origin")).toBe("real");
    },
  );

  test.each(Object.entries(BAD))(
    "%s: the body is cut (no end chunk), the bad bytes are not passed on, the connection is closed",
    async (path, [body]) => {
      const { raw, parsed, closed } = await twoRequests(path);
      expect(closed).toBe(true);
      expect(parsed.error).toBeNull();
      expect(parsed.responses.length).toBe(1);
      expect(parsed.responses[0]?.complete).toBe(false);
      // What came after the head is at most a prefix of the body that stops before the bad line.
      const sent = raw.slice(raw.indexOf("\r\n\r\n") + 4);
      const badLine = body.startsWith("5\r\nhello\r\n0\r\n") ? "5\r\nhello\r\n0\r\n".length : 0;
      expect(sent.length).toBeLessThanOrEqual(badLine);
      expect(body.startsWith(sent)).toBe(true);
      expect(raw).not.toContain("x-origin");
      await crm.waitLog(new RegExp(`${path} .*note=`));
    },
  );
});

describe("a client's chunked upload (the same decoder)", () => {
  async function upload(body: string) {
    const conn = await openRaw(crm.port);
    await conn.send(
      `POST http://127.0.0.1:${origin.port}/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n${body}`,
    );
    await waitUntil(
      conn,
      () =>
        conn.closed ||
        parseResponses(conn.received(), ["POST"], false).responses.some((r) => r.complete),
      5000,
    );
    conn.socket.terminate();
    return parseResponses(conn.received(), ["POST"], conn.closed).responses[0];
  }

  test("valid extensions and trailers pass; the payload arrives", async () => {
    const r = await upload(GOOD["/both"] as string);
    expect(r?.status).toBe(200);
    expect(JSON.parse(r?.body.toString() ?? "{}")).toMatchObject({ length: 5 });
  });

  test.each(["/ext-nul", "/trailer-no-colon", "/trailer-content-length"])(
    "%s: 400, and the message says why",
    async (path) => {
      const [body, reason] = BAD[path] as [string, RegExp];
      const r = await upload(body);
      expect(r?.status).toBe(400);
      expect(r?.body.toString()).toMatch(reason);
    },
  );
});
