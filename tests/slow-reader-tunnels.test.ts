/**
 * Memory behind a slow reader on the two paths that carry a client's own TLS (issue 13): a CONNECT
 * tunnel (bytes spliced as they are) and MITM (decrypted from a real TLS origin, re-encrypted to
 * the client). The client reads a little, then stops; the upstream offers 256 MiB. crm must stop
 * reading from the upstream instead of queueing the body: the upstream stalls far short of the
 * body, and this process's RSS (crm runs in it) stays bounded. 256 MiB keeps "held back" clear of
 * what loopback sockets buffer on their own (tcp_rmem autotunes up to 32 MiB per socket here).
 * Once the client reads again the whole body arrives.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { Socket } from "bun";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { staticResolver } from "../src/net/resolver.ts";
import { initCa } from "../src/pki/index.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { startPusher } from "./support/origins.ts";
import { makeLeaf, makeTestCa } from "./support/tls.ts";

const MiB = 1024 * 1024;
const TOTAL = 256 * MiB;
/** RSS may grow by what the sockets' user-space buffers and the allocator keep, never by the body. */
const RSS_LIMIT = 64 * MiB;

const dir = mkdtempSync(join(tmpdir(), "crm-slow-tunnels-"));
let crm: TestCrm;
let raw: ReturnType<typeof startPusher>;
let origin: ReturnType<typeof startPusher>;
let mitmCaPem: string;

beforeAll(async () => {
  const mitmCa = await initCa({ outDir: join(dir, "ca") });
  mitmCaPem = readFileSync(mitmCa.certPath, "utf8");
  raw = startPusher(TOTAL, null, false);
  origin = startPusher(TOTAL, await makeLeaf(await makeTestCa("origin CA"), ["127.0.0.1"]), true);
  crm = await startCrm(
    {
      allowed_hosts: ["127.0.0.1", "tunnel.test"],
      allowed_ports: [raw.port, origin.port],
      // The origin's CA is made here and unknown to crm (mitm.test.ts covers verification).
      insecure_tls: true,
      // Only the origin is decrypted: the raw pusher, reached as tunnel.test, stays a plain tunnel.
      mitm: {
        enabled: true,
        ca_cert_path: mitmCa.certPath,
        ca_key_path: mitmCa.keyPath,
        hosts: ["127.0.0.1"],
      },
      // The stalled reader must outlive the measurement; the idle cut is tested in proxy.test.ts.
      timeouts: { idle: "60s" },
    },
    "warn",
    staticResolver({ "tunnel.test": "127.0.0.1" }),
  );
});

afterAll(async () => {
  await crm.stop();
  raw.stop(true);
  origin.stop(true);
  rmSync(dir, { recursive: true, force: true });
});

function rss(): number {
  Bun.gc(true);
  return process.memoryUsage.rss();
}

interface Reader {
  socket: Socket<undefined>;
  /** Bytes received past the CONNECT answer (MITM: past the decrypted answer's head). */
  got: () => number;
}

/**
 * CONNECT through crm; with `request` the tunnel is then spoken as TLS (crm's leaf, checked
 * against its CA) and `got` counts the answer's body, without its head.
 */
function connectThrough(target: string, request: string | null): Promise<Reader> {
  return new Promise((resolve, reject) => {
    let got = 0;
    let head = "";
    let answerHead = "";
    let upgraded = false;
    const reader = (socket: Socket<undefined>): Reader => ({ socket, got: () => got });
    void Bun.connect({
      hostname: "127.0.0.1",
      port: crm.port,
      socket: {
        open: (s) => void s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`),
        data(s, d) {
          // After upgradeTLS this handler still sees the ciphertext (bun.md): not ours to count.
          if (upgraded) return;
          if (head.includes("\r\n\r\n")) {
            got += d.byteLength;
            return;
          }
          head += d.toString("latin1");
          const end = head.indexOf("\r\n\r\n");
          if (end < 0) return;
          if (!head.startsWith("HTTP/1.1 200"))
            return reject(new Error(`CONNECT answered: ${head}`));
          got += head.length - end - 4;
          if (request === null) return resolve(reader(s));
          upgraded = true;
          s.upgradeTLS<undefined>({
            data: undefined,
            tls: { ca: mitmCaPem, serverName: target.replace(/:\d+$/, "") },
            socket: {
              handshake(ts, ok, err) {
                if (!ok) return reject(err);
                ts.write(request);
                resolve(reader(ts));
              },
              data(_ts, b) {
                if (answerHead.endsWith("\r\n\r\n")) {
                  got += b.byteLength;
                  return;
                }
                const text = answerHead + b.toString("latin1");
                const end = text.indexOf("\r\n\r\n");
                if (end < 0) {
                  answerHead = text;
                  return;
                }
                answerHead = text.slice(0, end + 4);
                got += text.length - end - 4;
              },
              error() {},
            },
          });
        },
        error: (_s, e) => reject(e),
      },
    }).catch(reject);
  });
}

/**
 * Stops reading once bytes flow and waits until the upstream stops too: it must have stopped far
 * short of the body, with RSS bounded. Then reads again: every byte of the body arrives.
 */
async function holdsBackThenDelivers(
  label: string,
  r: Reader,
  pushed: () => number,
): Promise<void> {
  const before = rss();
  while (r.got() === 0) await Bun.sleep(5);
  r.socket.pause();
  let last = -1;
  while (pushed() !== last) {
    last = pushed();
    await Bun.sleep(300);
  }
  const growth = rss() - before;
  console.log(
    `${label} slow reader: upstream pushed ${(last / MiB).toFixed(1)} MiB of ${TOTAL / MiB}, client read ${(r.got() / MiB).toFixed(1)} MiB, RSS +${(growth / MiB).toFixed(1)} MiB`,
  );
  expect(last).toBeLessThan(TOTAL / 2);
  expect(growth).toBeLessThan(RSS_LIMIT);
  r.socket.resume();
  while (r.got() < TOTAL) await Bun.sleep(20);
  expect(r.got()).toBe(TOTAL);
  r.socket.terminate();
}

test("a CONNECT tunnel whose client stops reading holds the upstream back; RSS stays bounded", async () => {
  await holdsBackThenDelivers(
    "tunnel",
    await connectThrough(`tunnel.test:${raw.port}`, null),
    raw.pushed,
  );
});

test("MITM: a client that stops reading the decrypted answer holds the TLS origin back; RSS stays bounded", async () => {
  const target = `127.0.0.1:${origin.port}`;
  await holdsBackThenDelivers(
    "MITM",
    await connectThrough(target, `GET /big HTTP/1.1\r\nHost: ${target}\r\n\r\n`),
    origin.pushed,
  );
});
