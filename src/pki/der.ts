// Minimal DER writer and reader: just the ASN.1 needed for X.509 certificates.
// Hand-written rather than node-forge so issuing a leaf works on Buffers end to end
// (forge uses binary strings) and so CA names can be copied byte for byte.

export type Bytes = Uint8Array;

function encodeLength(len: number): Buffer {
  if (len < 0x80) return Buffer.from([len]);
  const n = numberBytes(len);
  return Buffer.concat([Buffer.from([0x80 | n.length]), n]);
}

export function tlv(tag: number, ...content: Bytes[]): Buffer {
  const body = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), encodeLength(body.length), body]);
}

export const seq = (...items: Bytes[]): Buffer => tlv(0x30, ...items);
export const set = (...items: Bytes[]): Buffer => tlv(0x31, ...items);
export const bool = (v: boolean): Buffer => tlv(0x01, Buffer.from([v ? 0xff : 0x00]));
export const nul = (): Buffer => tlv(0x05);
export const octets = (b: Bytes): Buffer => tlv(0x04, b);
export const utf8 = (s: string): Buffer => tlv(0x0c, Buffer.from(s, "utf8"));
export const ia5 = (s: string): Buffer => tlv(0x16, Buffer.from(s, "ascii"));
/** Context-specific constructed tag [n] (EXPLICIT tagging). */
export const explicit = (n: number, ...content: Bytes[]): Buffer => tlv(0xa0 | n, ...content);
/** Context-specific primitive tag [n] (IMPLICIT tagging of a primitive type). */
export const implicit = (n: number, content: Bytes): Buffer => tlv(0x80 | n, content);

function numberBytes(n: number): Buffer {
  const out: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) out.unshift(v & 0xff);
  return Buffer.from(out);
}

/** Unsigned big-endian magnitude to a minimal DER INTEGER (adds 0x00 when the top bit is set). */
export function uint(value: Bytes | number): Buffer {
  let b = typeof value === "number" ? numberBytes(value) : Buffer.from(value);
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  b = b.subarray(i);
  if (b.length === 0) b = Buffer.from([0]);
  if ((b[0] ?? 0) & 0x80) b = Buffer.concat([Buffer.from([0]), b]);
  return tlv(0x02, b);
}

export function oid(dotted: string): Buffer {
  const parts = dotted.split(".").map(Number);
  const [a = 0, b = 0, ...rest] = parts;
  const out: number[] = [];
  for (const arc of [a * 40 + b, ...rest]) {
    const chunk: number[] = [arc & 0x7f];
    for (let n = Math.floor(arc / 128); n > 0; n = Math.floor(n / 128))
      chunk.unshift(0x80 | (n & 0x7f));
    out.push(...chunk);
  }
  return tlv(0x06, Buffer.from(out));
}

/** BIT STRING holding whole bytes (signatures, public keys). */
export const bits = (b: Bytes): Buffer => tlv(0x03, Buffer.from([0]), b);

/**
 * Named-bit BIT STRING (keyUsage) from bit numbers, bit 0 = MSB of the first byte.
 * DER wants trailing zero bits dropped and counted in the "unused bits" octet;
 * OpenSSL accepts sloppy encodings but some verifiers do not.
 */
export function namedBits(set: number[]): Buffer {
  const max = Math.max(...set);
  const bytes = Buffer.alloc(Math.floor(max / 8) + 1);
  for (const n of set) bytes[n >> 3] = (bytes[n >> 3] ?? 0) | (0x80 >> (n & 7));
  return tlv(0x03, Buffer.from([7 - (max & 7)]), bytes);
}

const pad = (n: number, w = 2): string => String(n).padStart(w, "0");

/** RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds, Z. */
export function time(d: Date): Buffer {
  const y = d.getUTCFullYear();
  const rest = `${pad(d.getUTCMonth() + 1)}${pad(d.getUTCDate())}${pad(d.getUTCHours())}${pad(d.getUTCMinutes())}${pad(d.getUTCSeconds())}Z`;
  if (y >= 1950 && y < 2050) return tlv(0x17, Buffer.from(pad(y % 100) + rest, "ascii"));
  return tlv(0x18, Buffer.from(pad(y, 4) + rest, "ascii"));
}

// ---- reader ----

export interface Node {
  tag: number;
  /** Offset of the tag byte: buf.subarray(start, end) is the whole encoding. */
  start: number;
  /** Offset of the first content byte. */
  body: number;
  end: number;
}

export class DerError extends Error {}

export function read(buf: Bytes, offset = 0, limit = buf.length): Node {
  const tag = buf[offset];
  if (tag === undefined || offset + 2 > limit) throw new DerError(`truncated DER at ${offset}`);
  if ((tag & 0x1f) === 0x1f) throw new DerError(`multi-byte tag at ${offset}`);
  let len = buf[offset + 1] ?? 0;
  let body = offset + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4) throw new DerError(`bad length at ${offset}`);
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + (buf[body + i] ?? 0);
    body += n;
  }
  const end = body + len;
  if (end > limit) throw new DerError(`DER element at ${offset} overruns its container`);
  return { tag, start: offset, body, end };
}

export function children(buf: Bytes, node: Node): Node[] {
  const out: Node[] = [];
  for (let p = node.body; p < node.end;) {
    const c = read(buf, p, node.end);
    out.push(c);
    p = c.end;
  }
  return out;
}

export const content = (buf: Bytes, n: Node): Buffer =>
  Buffer.from(buf.buffer, buf.byteOffset + n.body, n.end - n.body);
export const whole = (buf: Bytes, n: Node): Buffer =>
  Buffer.from(buf.buffer, buf.byteOffset + n.start, n.end - n.start);

export function readOid(buf: Bytes, n: Node): string {
  const b = content(buf, n);
  const arcs: number[] = [];
  let v = 0;
  for (const byte of b) {
    v = v * 128 + (byte & 0x7f);
    if (!(byte & 0x80)) {
      arcs.push(v);
      v = 0;
    }
  }
  const first = arcs.shift() ?? 0;
  const a = first < 80 ? Math.floor(first / 40) : 2;
  return [a, first - a * 40, ...arcs].join(".");
}

export function readTime(buf: Bytes, n: Node): Date {
  const s = content(buf, n).toString("ascii");
  const m = (
    n.tag === 0x17
      ? /^(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/
      : /^(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/
  ).exec(s);
  if (!m) throw new DerError(`unsupported time encoding "${s}"`);
  let y = Number(m[1]);
  if (n.tag === 0x17) y += y < 50 ? 2000 : 1900;
  return new Date(
    Date.UTC(y, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])),
  );
}
