/**
 * SharedDownload (src/mirror/fanout/shared-download.ts) over a plain ReadableStream body, the
 * path it takes when the mirror's answer is not an upstream socket body (a body another layer
 * wraps, such as a resuming one): readers in both modes (relay and stream) get the exact bytes,
 * a mismatch cuts every reader before its last byte, and the last reader leaving cancels the body.
 */
import { describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { SharedDownload, type DownloadObserver } from "../src/mirror/fanout/shared-download.ts";

const KiB = 1024;

function source(
  data: Uint8Array,
  chunk = 16 * KiB,
): { res: Response; cancelled: () => boolean; pulled: () => number } {
  let off = 0;
  let cancelled = false;
  const stream = new ReadableStream<Uint8Array>(
    {
      pull(c) {
        if (off >= data.byteLength) return c.close();
        c.enqueue(data.subarray(off, Math.min(off + chunk, data.byteLength)));
        off += chunk;
      },
      cancel() {
        cancelled = true;
      },
    },
    { highWaterMark: 0 },
  );
  return {
    res: new Response(stream, { headers: { "content-length": String(data.byteLength) } }),
    cancelled: () => cancelled,
    pulled: () => Math.min(off, data.byteLength),
  };
}

const observer = (log: string[]): DownloadObserver => ({
  detached: () => log.push("detached"),
  mismatch: () => log.push("mismatch"),
  unjoinable: () => log.push("unjoinable"),
  disposed: () => log.push("disposed"),
  waited: () => {},
});

const noOwn = async (): Promise<never> => {
  throw new Error("no own request in this test");
};

async function readStream(
  s: ReadableStream<Uint8Array>,
): Promise<{ bytes: Buffer; error: Error | null }> {
  const parts: Uint8Array[] = [];
  const r = s.getReader();
  try {
    for (;;) {
      const { done, value } = await r.read();
      if (done) break;
      parts.push(value);
    }
  } catch (e) {
    return { bytes: Buffer.concat(parts), error: e as Error };
  }
  return { bytes: Buffer.concat(parts), error: null };
}

async function relayAll(body: {
  relay(w: (b: Uint8Array) => boolean): Promise<void>;
}): Promise<{ bytes: Buffer; error: Error | null }> {
  const parts: Uint8Array[] = [];
  try {
    await body.relay((b) => {
      parts.push(Uint8Array.from(b));
      return true;
    });
  } catch (e) {
    return { bytes: Buffer.concat(parts), error: e as Error };
  }
  return { bytes: Buffer.concat(parts), error: null };
}

describe("SharedDownload over a plain stream", () => {
  const data = randomBytes(512 * KiB);
  const hex = createHash("sha256").update(data).digest("hex");

  test("two readers, one relayed and one streamed, get the exact bytes; the digest is checked", async () => {
    const log: string[] = [];
    const src = source(data);
    const d = new SharedDownload(
      src.res,
      data.byteLength,
      { algorithm: "sha256", hex },
      256 * KiB,
      observer(log),
    );
    const never = new AbortController().signal;
    const a = d.join(0, data.byteLength, never, noOwn);
    const b = d.join(0, data.byteLength, never, noOwn);
    expect(a).not.toBeNull();
    expect(b).not.toBeNull();
    const [ra, rb] = await Promise.all([relayAll(a!), readStream(b!.stream())]);
    expect(ra.error).toBeNull();
    expect(rb.error).toBeNull();
    expect(Buffer.compare(ra.bytes, data)).toBe(0);
    expect(Buffer.compare(rb.bytes, data)).toBe(0);
    expect(log).not.toContain("mismatch");
    expect(log).toContain("disposed");
  });

  test("a wrong digest: both readers fail before their last byte", async () => {
    const log: string[] = [];
    const src = source(data);
    const d = new SharedDownload(
      src.res,
      data.byteLength,
      { algorithm: "sha256", hex: "0".repeat(64) },
      1024 * KiB,
      observer(log),
    );
    const never = new AbortController().signal;
    const a = d.join(0, data.byteLength, never, noOwn)!;
    const b = d.join(0, data.byteLength, never, noOwn)!;
    const [ra, rb] = await Promise.all([relayAll(a), readStream(b.stream())]);
    for (const r of [ra, rb]) {
      expect(r.error?.message).toContain("do not match");
      expect(r.bytes.byteLength).toBeLessThan(data.byteLength);
    }
    expect(log).toContain("mismatch");
  });

  test("a range joiner gets exactly its bytes; a join below the window's start is refused", async () => {
    const src = source(data);
    const d = new SharedDownload(
      src.res,
      data.byteLength,
      { algorithm: "sha256", hex },
      128 * KiB,
      observer([]),
    );
    const never = new AbortController().signal;
    const whole = d.join(0, data.byteLength, never, noOwn)!;
    const part = d.join(1000, data.byteLength, never, noOwn)!;
    const [rw, rp] = await Promise.all([relayAll(whole), relayAll(part)]);
    expect(Buffer.compare(rw.bytes, data)).toBe(0);
    expect(Buffer.compare(rp.bytes, data.subarray(1000))).toBe(0);
    // Byte 0 left the 128 KiB window long ago: nobody may join now.
    expect(d.join(0, data.byteLength, never, noOwn)).toBeNull();
  });

  test("the last reader leaving cancels the upstream body", async () => {
    const src = source(data);
    const d = new SharedDownload(
      src.res,
      data.byteLength,
      { algorithm: "sha256", hex },
      128 * KiB,
      observer([]),
    );
    const ac = new AbortController();
    const a = d.join(0, data.byteLength, ac.signal, noOwn)!;
    const reader = a.stream().getReader();
    await reader.read();
    ac.abort();
    await Bun.sleep(10);
    expect(src.cancelled()).toBe(true);
    expect(src.pulled()).toBeLessThan(data.byteLength);
  });
});
