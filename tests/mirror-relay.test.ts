/**
 * A mirror answer's body leaves crm as the upstream framed it (issue 13): the handler passes the
 * upstream body on unread, and the writer relays the raw bytes from the upstream socket instead
 * of reading a stream and re-framing it. Chunk extensions are what shows it: re-chunked content
 * would lose them. A body the mirror reads itself (an error) is still read as content, and a
 * small body it drops unread (a redirect's) does not cost the kept-alive upstream connection.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { startCrm, type TestCrm } from "./support/crm.ts";
import {
  openRaw,
  startScriptedUpstream,
  type ScriptedUpstream,
} from "./support/faulty-upstreams.ts";

const DIGEST = `sha256:${"c".repeat(64)}`;
const CHUNKS = "5;part=one\r\nhello\r\n6;part=two\r\n world\r\n0\r\n\r\n";
let upstream: ScriptedUpstream;
let crm: TestCrm;
/** A registry that redirects blobs to a CDN path on itself, counting the connections it accepts. */
let redirecting: ReturnType<typeof startRedirectingRegistry>;
let crmRedirect: TestCrm;

function startRedirectingRegistry() {
  let accepted = 0;
  const l = Bun.listen<{ buf: string }>({
    hostname: "127.0.0.1",
    port: 0,
    data: { buf: "" },
    socket: {
      open(s) {
        accepted++;
        s.data = { buf: "" };
      },
      data(s, d) {
        s.data.buf += d.toString("latin1");
        for (
          let end = s.data.buf.indexOf("\r\n\r\n");
          end >= 0;
          end = s.data.buf.indexOf("\r\n\r\n")
        ) {
          const head = s.data.buf.slice(0, end);
          s.data.buf = s.data.buf.slice(end + 4);
          if (head.startsWith("GET /cdn/"))
            s.write(
              "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 5\r\n\r\nhello",
            );
          else {
            const body = '<a href="/cdn/x">Temporary Redirect</a>.\n';
            s.write(
              `HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:${l.port}/cdn/x\r\ncontent-type: text/html\r\ncontent-length: ${body.length}\r\n\r\n${body}`,
            );
          }
        }
      },
    },
  });
  return Object.assign(l, { accepted: () => accepted });
}

beforeAll(async () => {
  upstream = startScriptedUpstream((head) => {
    if (head.startsWith("GET /v2/library/gone/")) {
      const body = '{"errors":[{"code":"BLOB_UNKNOWN","message":"no such blob"}]}';
      return {
        bytes: Buffer.from(
          `HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n${body.length.toString(16)};x=y\r\n${body}\r\n0\r\n\r\n`,
        ),
        after: "keep",
      };
    }
    return {
      bytes: Buffer.from(
        `HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ndocker-content-digest: ${DIGEST}\r\ntransfer-encoding: chunked\r\n\r\n${CHUNKS}`,
      ),
      after: "keep",
    };
  });
  crm = await startCrm(
    {
      mirror: {
        default_registry: "reg.test",
        registries: { "reg.test": `http://127.0.0.1:${upstream.port}` },
      },
    },
    "warn",
  );
  redirecting = startRedirectingRegistry();
  crmRedirect = await startCrm(
    {
      mirror: {
        default_registry: "reg.test",
        registries: { "reg.test": `http://127.0.0.1:${redirecting.port}` },
      },
    },
    "warn",
  );
});

afterAll(async () => {
  await crm.stop();
  await crmRedirect.stop();
  upstream.stop();
  redirecting.stop(true);
});

async function get(path: string, port = crm.port): Promise<string> {
  const c = await openRaw(port);
  await c.send(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
  await c.closedP;
  return c.received().toString("latin1");
}

test("a chunked blob reaches the client with the upstream's own chunk framing", async () => {
  const answer = await get(`/v2/reg.test/library/app/blobs/${DIGEST}`);
  const head = answer.slice(0, answer.indexOf("\r\n\r\n"));
  expect(head).toMatch(/^HTTP\/1\.1 200 /);
  expect(head).toMatch(/\r\ntransfer-encoding: chunked/i);
  expect(head).toMatch(new RegExp(`\\r\\ndocker-content-digest: ${DIGEST}`, "i"));
  expect(answer.slice(head.length + 4)).toBe(CHUNKS);
});

test("an upstream error body the mirror reads is passed as its content, re-framed", async () => {
  const answer = await get(`/v2/reg.test/library/gone/blobs/${DIGEST}`);
  expect(answer).toMatch(/^HTTP\/1\.1 404 /);
  expect(answer).toMatch(/\r\ncontent-length: \d+\r\n/i);
  expect(answer).not.toMatch(/;x=y/);
  expect(answer).toMatch(/"code":"BLOB_UNKNOWN"/);
});

test("a redirect's small body dropped unread leaves the registry connection kept alive", async () => {
  for (let i = 0; i < 4; i++) {
    const answer = await get(`/v2/reg.test/library/app/blobs/${DIGEST}`, crmRedirect.port);
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    expect(answer.endsWith("\r\n\r\nhello")).toBe(true);
  }
  // One connection for the registry's redirects and one for the CDN hop, each reused (four each
  // when a dropped body cost its connection).
  expect(redirecting.accepted()).toBeLessThanOrEqual(2);
});
