/**
 * Reads one HTTP/1.1 response head from an upstream's bytes (RFC 9112 §4), as strictly as
 * http/head.ts reads a client's request head and with the same field-line rules: an upstream is a
 * peer crm does not trust either, and a head two parsers read differently splits responses.
 */
import { HttpError } from "../errors.ts";
import { hasBareLf, parseHeaderLines, type HeaderList } from "../http/head.ts";

/** Like a request head: 64 KiB, more than any registry or CDN sends. */
export const MAX_RESPONSE_HEAD = 64 * 1024;

export interface ResponseHead {
  /** "HTTP/1.0" or "HTTP/1.1" */
  version: string;
  status: number;
  reason: string;
  headers: HeaderList;
  /** Bytes of the head including the final CRLFCRLF. */
  size: number;
}

export type ResponseHeadResult =
  { kind: "incomplete" } | { kind: "head"; head: ResponseHead; rest: Buffer };

const CRLFCRLF = Buffer.from("\r\n\r\n");
const STATUS_LINE = /^(HTTP\/\d\.\d) (\d{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?$/;

/** Tries to read a head from the start of `buf`; throws HttpError (502) naming what is wrong. */
export function readResponseHead(buf: Buffer): ResponseHeadResult {
  const end = buf.indexOf(CRLFCRLF);
  if (end < 0) {
    if (buf.length > MAX_RESPONSE_HEAD)
      throw fail(`response head too large (limit ${MAX_RESPONSE_HEAD / 1024} KiB)`);
    if (hasBareLf(buf)) throw fail("bare LF in response head: lines must end with CRLF");
    // Not even the start of a status line: say so now rather than wait for the header timeout.
    const probe = buf.toString("latin1", 0, Math.min(buf.length, 5));
    if (!"HTTP/".startsWith(probe)) throw fail("not an HTTP response (no status line)");
    return { kind: "incomplete" };
  }
  if (end + 4 > MAX_RESPONSE_HEAD)
    throw fail(`response head too large (limit ${MAX_RESPONSE_HEAD / 1024} KiB)`);
  const lines = buf.toString("latin1", 0, end).split("\r\n");
  const m = STATUS_LINE.exec(lines[0] ?? "");
  if (m === null)
    throw fail(`malformed status line ${JSON.stringify((lines[0] ?? "").slice(0, 80))}`);
  const [, version = "", code = "", reason = ""] = m;
  if (version !== "HTTP/1.1" && version !== "HTTP/1.0") throw fail(`${version} not supported`);
  const status = Number(code);
  if (status < 100 || status > 599) throw fail(`invalid status code ${code}`);
  let headers: HeaderList;
  try {
    headers = parseHeaderLines(lines, 1, "response head");
  } catch (e) {
    throw fail(e instanceof Error ? e.message : String(e));
  }
  return {
    kind: "head",
    head: { version, status, reason, headers, size: end + 4 },
    rest: buf.subarray(end + 4),
  };
}

function fail(message: string): HttpError {
  return new HttpError(502, message);
}
