/**
 * SharedDownload (src/mirror/fanout/shared-download.ts) against the findings of an adversarial
 * review of the fan-out: corrupted bytes never reach a clean end (range joiners, detached readers),
 * a detached reader never waits on the shared download, a joiner far ahead or several stalled
 * readers do not set the pace. Bodies are plain streams the test controls; own requests are
 * served from the true or a corrupted copy of the blob.
 */
import { describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import {
  SharedDownload,
  type ChunkReader,
  type DownloadObserver,
  type OwnRequest,
} from "../src/mirror/fanout/shared-download.ts";

const KiB = 1024;

/** A body of `data` in `chunk`-byte pieces, pulled; errors with a reset once `failAt` bytes went. */
function source(
  data: Uint8Array,
  chunk = 16 * KiB,
  failAt: number | null = null,
): { res: Response; pulled: () => number } {
  let off = 0;
  const stream = new ReadableStream<Uint8Array>(
    {
      pull(c) {
        if (failAt !== null && off >= failAt) return c.error(new Error("upstream reset"));
        if (off >= data.byteLength) return c.close();
        c.enqueue(data.subarray(off, Math.min(off + chunk, data.byteLength)));
        off += chunk;
      },
    },
    { highWaterMark: 0 },
  );
  return {
    res: new Response(stream, { headers: { "content-length": String(data.byteLength) } }),
    pulled: () => Math.min(off, data.byteLength),
  };
}

const observer = (log: string[]): DownloadObserver => ({
  detached: () => log.push("detached"),
  mismatch: () => log.push("mismatch"),
  unjoinable: () => log.push("unjoinable"),
  disposed: () => log.push("disposed"),
  waited: (ms) => log.push(`waited:${ms}`),
});

const noOwn: OwnRequest = async () => {
  throw new Error("no own request in this test");
};

/** Own requests answered from `data` (the true bytes, or a corrupted copy). */
const ownFrom =
  (data: Uint8Array): OwnRequest =>
  async (from, to) => {
    const s = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(data.slice(from, to + 1));
        c.close();
      },
    });
    return { reader: s.getReader() as ChunkReader, skip: 0 };
  };

async function readAll(
  r: { read(): Promise<{ done: boolean; value?: Uint8Array }> },
  parts: Uint8Array[] = [],
): Promise<{ bytes: Buffer; error: Error | null }> {
  try {
    for (;;) {
      const { done, value } = await r.read();
      if (done || value === undefined) break;
      parts.push(value);
    }
  } catch (e) {
    return { bytes: Buffer.concat(parts), error: e as Error };
  }
  return { bytes: Buffer.concat(parts), error: null };
}

const never = new AbortController().signal;
const sha = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

describe("fan-out review findings", () => {
  const data = randomBytes(1024 * KiB);
  const hex = sha(data);
  const bad = Buffer.from(data);
  bad[10] = (bad[10] as number) ^ 0xff;

  test("a range that ends before the blob's end is not shared (it would end before the verdict)", async () => {
    const d = new SharedDownload(
      source(bad).res,
      data.byteLength,
      { algorithm: "sha256", hex },
      2048 * KiB,
      observer([]),
    );
    const whole = d.join(0, data.byteLength, never, noOwn)!;
    expect(d.join(0, 100, never, noOwn)).toBeNull();
    // A range to the end still joins, and is cut with everyone on a mismatch.
    const tail = d.join(5, data.byteLength, never, noOwn)!;
    const [rw, rt] = await Promise.all([
      readAll(whole.stream().getReader()),
      readAll(tail.stream().getReader()),
    ]);
    expect(rw.error?.message).toContain("do not match");
    expect(rt.error?.message).toContain("do not match");
  });

  for (const how of ["the upstream resets", "the attached reader leaves"] as const) {
    test(`a detached reader whose first part came from corrupted shared bytes is cut, never cleanly ended, when ${how}`, async () => {
      const log: string[] = [];
      const src = source(bad, 16 * KiB, how === "the upstream resets" ? 900 * KiB : null);
      const d = new SharedDownload(
        src.res,
        data.byteLength,
        { algorithm: "sha256", hex },
        128 * KiB,
        observer(log),
      );
      const fastAc = new AbortController();
      const fast = d.join(0, data.byteLength, fastAc.signal, noOwn)!.stream().getReader();
      const slow = d.join(0, data.byteLength, never, ownFrom(data))!.stream().getReader();
      // Its first piece holds the corrupted byte 10; then it stops while the other reads on.
      const slowParts: Uint8Array[] = [(await slow.read()).value!];
      while (!log.includes("detached")) await fast.read();
      if (how === "the attached reader leaves") fastAc.abort();
      else await readAll(fast);
      const rs = await readAll(slow, slowParts);
      expect(rs.error?.message).toContain("do not match");
      expect(rs.bytes.byteLength).toBeLessThan(data.byteLength);
    });
  }

  test("a detached reader whose own range answer is corrupted is cut before its last byte", async () => {
    const log: string[] = [];
    const d = new SharedDownload(
      source(data).res,
      data.byteLength,
      { algorithm: "sha256", hex },
      128 * KiB,
      observer(log),
    );
    const fast = d.join(0, data.byteLength, never, noOwn)!.stream().getReader();
    const badOwn = Buffer.from(data);
    badOwn[600 * KiB] = (badOwn[600 * KiB] as number) ^ 1;
    const slow = d.join(0, data.byteLength, never, ownFrom(badOwn))!.stream().getReader();
    const parts: Uint8Array[] = [(await slow.read()).value!];
    const rf = readAll(fast);
    while (!log.includes("detached")) await Bun.sleep(5);
    const rs = await readAll(slow, parts);
    expect((await rf).error).toBeNull();
    expect(rs.error?.message).toContain("do not match");
    expect(rs.bytes.byteLength).toBe(data.byteLength - 1);
  });

  test("a detached reader finishes on its own while the attached reader stalls (it never waits on the shared verdict)", async () => {
    const log: string[] = [];
    const d = new SharedDownload(
      source(data).res,
      data.byteLength,
      { algorithm: "sha256", hex },
      128 * KiB,
      observer(log),
    );
    const a = d.join(0, data.byteLength, never, noOwn)!.stream().getReader();
    const det = d.join(0, data.byteLength, never, ownFrom(data))!.stream().getReader();
    const parts: Uint8Array[] = [(await det.read()).value!];
    while (!log.includes("detached")) await a.read();
    // `a` reads no more: the shared download cannot reach its verdict while it stalls.
    const r = await readAll(det, parts);
    expect(r.error).toBeNull();
    expect(sha(r.bytes)).toBe(hex);
    await a.cancel();
  });

  test("a range joiner far ahead of the bytes received does not join (it would set the pace without reading)", async () => {
    const big = randomBytes(4096 * KiB);
    const src = source(big);
    const d = new SharedDownload(
      src.res,
      big.byteLength,
      { algorithm: "sha256", hex: sha(big) },
      256 * KiB,
      observer([]),
    );
    const a = d.join(0, big.byteLength, never, ownFrom(big))!.stream().getReader();
    const bAc = new AbortController();
    const b = d.join(0, big.byteLength, bAc.signal, noOwn)!.stream().getReader();
    expect(d.join(3584 * KiB, big.byteLength, never, noOwn)).toBeNull();
    await a.read();
    await b.read();
    await b.read();
    // The fastest reader leaves: the pace is the remaining reader's, which stopped reading.
    bAc.abort();
    await Bun.sleep(100);
    expect(src.pulled()).toBeLessThan(1024 * KiB);
    await a.cancel();
  });

  test("several stalled readers hold the download back for one lag_grace in all, not one each", async () => {
    const big = randomBytes(2048 * KiB);
    const log: string[] = [];
    const d = new SharedDownload(
      source(big).res,
      big.byteLength,
      { algorithm: "sha256", hex: sha(big) },
      256 * KiB,
      observer(log),
      100,
    );
    const fast = d.join(0, big.byteLength, never, noOwn)!.stream().getReader();
    const stalled: Array<{ read(): Promise<unknown>; cancel(): Promise<void> }> = [];
    for (let i = 1; i <= 4; i++)
      stalled.push(d.join(0, big.byteLength, never, ownFrom(big))!.stream().getReader());
    // Each reads a different number of pieces, then stops: each in turn is the slowest at the edge.
    for (const [i, r] of stalled.entries()) for (let j = 0; j <= i; j++) await r.read();
    const rf = await readAll(fast);
    expect(rf.error).toBeNull();
    expect(sha(rf.bytes)).toBe(sha(big));
    expect(log.filter((l) => l.startsWith("waited")).length).toBe(1);
    for (const r of stalled) await r.cancel();
  });
});
