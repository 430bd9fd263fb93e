/**
 * The syntax of what a chunked body carries besides data: chunk extensions (RFC 9112 §7.1.1) and
 * trailer field lines (§7.1.2). crm drops both from a client's body but relays an upstream's
 * chunked body byte for byte, so a byte that a client or a parser behind it could read another way
 * (bare CR, NUL, folding, a line without a colon, a trailer that reframes or reroutes) is refused
 * here, before it is passed on. Hand-written scanners rather than regular expressions: a line is
 * up to 4 KiB of hostile input and must cost linear time.
 */
import { HttpError } from "../errors.ts";
import { parseHeaderLines } from "./head.ts";

const TCHAR = new Uint8Array(128);
for (const c of "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
  TCHAR[c.charCodeAt(0)] = 1;

function isTchar(c: number): boolean {
  return c < 128 && TCHAR[c] === 1;
}

/** qdtext and the byte after a backslash (quoted-pair) are the same set but for `"` and `\`. */
function isQuotedByte(c: number): boolean {
  return c === 0x09 || (c >= 0x20 && c !== 0x7f && c <= 0xff);
}

/**
 * Checks `ext`, everything after the chunk size up to the CRLF:
 * `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`, then optional whitespace.
 * Throws HttpError 400 naming the first offence.
 */
export function checkChunkExtensions(ext: string): void {
  let i = 0;
  const n = ext.length;
  const at = (): number => ext.charCodeAt(i);
  const skipBws = (): void => {
    while (i < n && (at() === 0x20 || at() === 0x09)) i++;
  };
  const bad = (what: string): never => {
    throw new HttpError(
      400,
      `invalid chunk extension: ${what} at byte ${i} (${JSON.stringify(ext.slice(Math.max(0, i - 10), i + 10))})`,
    );
  };
  const token = (what: string): void => {
    const start = i;
    while (i < n && isTchar(at())) i++;
    if (i === start) bad(`${what} is not a token`);
  };
  for (;;) {
    skipBws();
    if (i === n) return;
    if (at() !== 0x3b) bad(at() < 0x20 || at() === 0x7f ? "control character" : `";" expected`);
    i++;
    skipBws();
    token("name");
    const beforeValue = i;
    skipBws();
    if (i < n && at() === 0x3d) {
      i++;
      skipBws();
      if (i < n && at() === 0x22) quotedString();
      else token("value");
    } else {
      i = beforeValue;
    }
  }

  function quotedString(): void {
    i++;
    while (i < n) {
      const c = at();
      if (c === 0x22) {
        i++;
        return;
      }
      if (c === 0x5c) {
        i++;
        if (i >= n || !isQuotedByte(at())) bad("bad escape in quoted value");
        i++;
        continue;
      }
      if (!isQuotedByte(c)) bad("control character in quoted value");
      i++;
    }
    bad("unterminated quoted value");
  }
}

/**
 * Trailer fields that would change how the message is framed, routed, authenticated or handled
 * if a recipient merged them into the head: refused, not relayed (RFC 9110 §6.5.1). The list is
 * Go net/http's (badTrailer), which registry clients are built on.
 */
const FORBIDDEN_TRAILERS = new Set([
  "authorization",
  "cache-control",
  "connection",
  "content-encoding",
  "content-length",
  "content-range",
  "content-type",
  "expect",
  "host",
  "keep-alive",
  "max-forwards",
  "pragma",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "range",
  "realm",
  "te",
  "trailer",
  "transfer-encoding",
  "www-authenticate",
]);

/**
 * Checks one trailer line (without its CRLF) as a field line: `token ":" OWS value OWS`, with
 * the same rules as a head's fields (no folding, no bare CR, no control bytes), and not one of
 * the fields a trailer must not carry. Throws HttpError 400.
 */
export function checkTrailerLine(line: string): void {
  let name: string;
  try {
    name = parseHeaderLines([line], 0, "chunked trailer")[0]?.[0] ?? "";
  } catch (e) {
    throw new HttpError(
      400,
      `chunked trailer: ${e instanceof Error ? e.message : String(e)} in ${JSON.stringify(line.slice(0, 40))}`,
      { cause: e },
    );
  }
  if (FORBIDDEN_TRAILERS.has(name.toLowerCase()))
    throw new HttpError(
      400,
      `chunked trailer: field ${name} must not be sent in a trailer (RFC 9110 §6.5.1)`,
    );
}
