/**
 * ChunkPosition (src/mirror/chunk-position.ts): where a chunked body relayed as it came stands,
 * so a cut answer can be continued with crm's own chunks (or must be cut when it cannot).
 */
import { expect, test } from "bun:test";
import { ChunkPosition } from "../src/mirror/upstream/chunk-position.ts";

const enc = (s: string): Uint8Array => Buffer.from(s, "latin1");

test("counts content bytes across chunks fed in odd pieces, extensions and trailer included", () => {
  const body = "5;x=y\r\nhello\r\n3\r\nabc\r\n0\r\nTrailer: v\r\n\r\n";
  for (const step of [1, 2, 3, 7, body.length]) {
    const p = new ChunkPosition();
    let content = 0;
    for (let i = 0; i < body.length; i += step) content += p.feed(enc(body.slice(i, i + step)));
    expect(content).toBe(8);
    expect(p.state).toBe("done");
  }
});

test("a cut inside a chunk's data owes the rest of it; between chunks owes nothing; inside a size line cannot be continued", () => {
  const inData = new ChunkPosition();
  expect(inData.feed(enc("a\r\n0123"))).toBe(4);
  expect(inData).toMatchObject({ state: "data", owed: 6 });
  expect(inData.resumable).toBe(true);

  const afterData = new ChunkPosition();
  afterData.feed(enc("2\r\nab\r"));
  expect(afterData).toMatchObject({ state: "data-crlf", crlfOwed: 1 });
  expect(afterData.resumable).toBe(true);

  const between = new ChunkPosition();
  between.feed(enc("2\r\nab\r\n"));
  expect(between.state).toBe("size");
  expect(between.resumable).toBe(true);

  const inSize = new ChunkPosition();
  inSize.feed(enc("2\r\nab\r\n1f"));
  expect(inSize.resumable).toBe(false);
});
