/**
 * Request-body backpressure against hostile body shapes (issue 14, point 2): one client sends a
 * chunked body to an upstream that never reads. crm must stop reading once its queue is full,
 * whatever the payload-to-wire ratio, and refuse framing that is mostly overhead: padded chunk
 * extensions (400), a trailer flood (431). Memory is measured in this process after a full GC
 * (JS heap + ArrayBuffer memory, and RSS), so what is counted is what crm holds, not garbage.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { heapStats } from "bun:jsc";
import type { TCPSocketListener } from "bun";
import { HttpError } from "../src/errors.ts";
import { BodyFeeder } from "../src/http/body.ts";
import { ChunkedDecoder } from "../src/http/chunked.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { openRaw, parseResponses } from "./support/faulty-upstreams.ts";

const MiB = 1024 * 1024;
/** The most a flood may send; crm must stall or refuse long before on every shape but one (below). */
const FLOOD_LIMIT = 128 * MiB;
/** A write that has not drained for this long means crm stopped reading. */
const STALL_MS = 1500;
/** What one connection may hold above its idle state: the 256 KiB queue plus ~1 MiB of the rest. */
const HELD_LIMIT = 2 * MiB;
/** RSS after a full GC is coarser (the allocator keeps pages); before the fix these shapes grew it by 50 MiB to 900 MiB. */
const RSS_LIMIT = 32 * MiB;

let upstream: TCPSocketListener<undefined>;
let crm: TestCrm;

beforeAll(async () => {
  // Accepts and never reads: fetch's writes back up, then crm's queue fills.
  upstream = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: { open: (s) => s.pause(), data() {}, close() {}, error() {} },
  });
  crm = await startCrm(
    { allowed_hosts: ["127.0.0.1"], allowed_ports: [upstream.port], mirror: { enabled: false } },
    "info",
  );
});

afterAll(async () => {
  await crm?.stop();
  upstream?.stop(true);
});

function held(): { held: number; rss: number } {
  Bun.gc(true);
  const h = heapStats();
  return { held: h.heapSize + h.extraMemorySize, rss: process.memoryUsage.rss() };
}

/** Sends the chunked-body head, then `block` over and over until crm answers, closes or stops reading. */
async function flood(block: Buffer, prefix = "") {
  const before = held();
  const conn = await openRaw(crm.port);
  const s = conn.socket;
  const head = `POST http://127.0.0.1:${upstream.port}/upload HTTP/1.1\r\nHost: 127.0.0.1:${upstream.port}\r\nTransfer-Encoding: chunked\r\n\r\n${prefix}`;
  await conn.send(head);
  let sent = 0;
  let stalled = false;
  let pending = block;
  while (sent < FLOOD_LIMIT && !conn.closed && conn.bytes === 0) {
    const n = s.write(pending);
    if (n > 0) sent += n;
    pending = n >= pending.length ? block : pending.subarray(Math.max(0, n));
    if (pending !== block || n <= 0) {
      const t0 = Date.now();
      // Retry until crm takes more (the kernel buffer drained), answers, or has stopped reading.
      while (!conn.closed && conn.bytes === 0 && Date.now() - t0 < STALL_MS) {
        await Bun.sleep(20);
        const m = s.write(pending);
        if (m > 0) {
          sent += m;
          pending = m >= pending.length ? block : pending.subarray(m);
          break;
        }
      }
      if (Date.now() - t0 >= STALL_MS) {
        stalled = true;
        break;
      }
    }
  }
  const during = held();
  const status =
    parseResponses(conn.received(), ["POST"], conn.closed).responses[0]?.status ?? null;
  s.terminate();
  // The next flood's baseline must not include this one being freed.
  while (crm.server.connectionCount > 0) await Bun.sleep(20);
  return { sent, stalled, status, held: during.held - before.held, rss: during.rss - before.rss };
}

function report(name: string, r: Awaited<ReturnType<typeof flood>>): void {
  console.log(
    `${name}: sent ${(r.sent / MiB).toFixed(1)} MiB, ${r.status === null ? (r.stalled ? "crm stopped reading" : "no answer") : `answer ${r.status}`}; held +${(r.held / MiB).toFixed(2)} MiB, RSS +${(r.rss / MiB).toFixed(1)} MiB (after GC)`,
  );
}

describe("one connection's chunked body to an upstream that never reads", () => {
  // [shape, crm's answer (null: none, it stops reading instead), repeated block, bytes before it]
  const shapes: Array<[string, number | null, string, string]> = [
    ["1-byte chunks", null, "1\r\na\r\n".repeat(10_000), ""],
    // Within Go's overhead allowance: accepted, so only the queue's accounting bounds it.
    ["1-byte chunks + 10-byte extensions", null, `1;${"e".repeat(10)}\r\na\r\n`.repeat(4_000), ""],
    ["1-byte chunks + 4000-byte extensions", 400, `1;${"e".repeat(4000)}\r\na\r\n`.repeat(16), ""],
    [
      "a trailer section that never ends",
      431,
      `X-Trailer: ${"t".repeat(4000)}\r\n`.repeat(16),
      "1\r\na\r\n0\r\n",
    ],
  ];
  test.each(shapes)(
    "%s: answer %p, memory stays bounded",
    async (name, status, block, prefix) => {
      const r = await flood(Buffer.from(block), prefix);
      report(name, r);
      expect(r.status).toBe(status);
      if (name === "1-byte chunks") expect(r.stalled).toBe(true);
      expect(r.held).toBeLessThan(HELD_LIMIT);
      expect(r.rss).toBeLessThan(RSS_LIMIT);
    },
    60_000,
  );
});

describe("the decoder's bounds and the feeder's accounting, as functions", () => {
  const decode = (text: string): { payload: number; error: HttpError | null } => {
    const d = new ChunkedDecoder();
    let payload = 0;
    try {
      d.feed(Buffer.from(text, "latin1"), (p) => (payload += p.byteLength));
      return { payload, error: null };
    } catch (e) {
      return { payload, error: e as HttpError };
    }
  };

  test("a chunk line may carry up to 4 KiB of extension; more is a 400", () => {
    expect(decode(`1;${"e".repeat(4000)}\r\na\r\n0\r\n\r\n`).error).toBeNull();
    expect(decode(`1;${"e".repeat(4100)}\r\na\r\n`).error?.status).toBe(400);
  });

  test("framing overhead is allowed per chunk and per data byte, not without end", () => {
    expect(decode(`1\r\na\r\n`.repeat(100_000) + "0\r\n\r\n")).toEqual({
      payload: 100_000,
      error: null,
    });
    expect(decode(`1;${"e".repeat(10)}\r\na\r\n`.repeat(100_000) + "0\r\n\r\n")).toEqual({
      payload: 100_000,
      error: null,
    });
    const padded = decode(`1;${"e".repeat(4000)}\r\na\r\n`.repeat(100));
    expect(padded.error?.status).toBe(400);
    expect(padded.error?.message).toMatch(/too much framing/);
    expect(padded.payload).toBeLessThan(10);
  });

  test("trailers: a line over 4 KiB, or a section over 64 KiB, is a 431", () => {
    expect(decode(`0\r\nX-A: 1\r\nX-B: 2\r\n\r\n`).error).toBeNull();
    expect(decode(`0\r\nX-A: ${"a".repeat(5000)}\r\n\r\n`).error?.status).toBe(431);
    const flood = decode(`0\r\n` + `X-A: ${"a".repeat(1000)}\r\n`.repeat(100) + "\r\n");
    expect(flood.error?.status).toBe(431);
    expect(flood.error?.message).toMatch(/64 KiB/);
  });

  test("tiny payload slices of a large socket read are copied out, not kept as views of it", async () => {
    let paused = 0;
    const feeder = new BodyFeeder({ kind: "chunked" }, { pause: () => paused++, resume: () => {} });
    // One 512 KiB read (Bun's largest) holding 1-byte chunks, as the attack sends them.
    const read = Buffer.from(
      `1;${"e".repeat(10)}\r\na\r\n`.repeat(Math.floor((512 * 1024) / 17)),
      "latin1",
    );
    feeder.feed(read);
    const reader = feeder.stream.getReader();
    const { value } = await reader.read();
    expect(value?.byteLength).toBe(Math.floor((512 * 1024) / 17));
    expect(value?.buffer.byteLength).toBe(value?.byteLength);
    // Charged by the wire bytes it came in: one such read fills the 256 KiB queue.
    expect(paused).toBe(1);
  });
});
