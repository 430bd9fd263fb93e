/**
 * Reads one HTTP/1.1 request head from bytes (RFC 9112 §2–§6), strictly: anything a second
 * parser could read differently is refused, so nothing can be smuggled past crm on a
 * kept-alive connection.
 */
import { HttpError } from "../errors.ts";

export const MAX_REQUEST_LINE = 8 * 1024;
export const MAX_HEAD = 64 * 1024;

export type HeaderList = Array<[name: string, value: string]>;

export interface RequestHead {
  method: string;
  target: string;
  /** "HTTP/1.0" or "HTTP/1.1" */
  version: string;
  headers: HeaderList;
  /** Bytes of the head including the final CRLFCRLF. */
  size: number;
}

const CRLFCRLF = Buffer.from("\r\n\r\n");
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// Field values: visible ASCII, obs-text, SP and HTAB only; any other control byte (bare CR,
// NUL, LF inside a value) is refused (RFC 9110 §5.5).
const BAD_VALUE = /[\x00-\x08\x0a-\x1f\x7f]/;

/**
 * Strips optional whitespace: SP and HTAB only, never the Unicode spaces String.trim() knows.
 * An index scan, not a regex: /[ \t]+$/ retries from every space of a long run of them (a 60 KB
 * value of spaces cost 4 s of the event loop).
 */
export function ows(s: string): string {
  let start = 0;
  while (start < s.length && isOws(s.charCodeAt(start))) start++;
  return trimOwsEnd(start === 0 ? s : s.slice(start));
}

/** Only the trailing optional whitespace (BWS before a chunk extension, RFC 9112 §7.1.1), by the same scan. */
export function trimOwsEnd(s: string): string {
  let end = s.length;
  while (end > 0 && isOws(s.charCodeAt(end - 1))) end--;
  return end === s.length ? s : s.slice(0, end);
}

const isOws = (c: number): boolean => c === 0x20 || c === 0x09;

export type HeadResult = { kind: "incomplete" } | { kind: "head"; head: RequestHead; rest: Buffer };

/**
 * Tries to read a head from the start of `buf`. Leading empty lines are skipped (RFC 9112 §2.2:
 * some clients send a stray CRLF after a body). Throws HttpError 400/414/431/505.
 */
export function readRequestHead(buf: Buffer): HeadResult {
  let start = 0;
  while (buf.length >= start + 2 && buf[start] === 0x0d && buf[start + 1] === 0x0a) start += 2;
  // One or two stray CRLFs are tolerated; a flood of them is not a request.
  if (start > MAX_REQUEST_LINE)
    throw new HttpError(400, "too many empty lines before the request line");
  if (start > 0) buf = buf.subarray(start);
  const end = buf.indexOf(CRLFCRLF);
  const lineEnd = buf.indexOf(0x0a);
  if ((lineEnd < 0 && buf.length > MAX_REQUEST_LINE) || lineEnd > MAX_REQUEST_LINE) {
    throw new HttpError(414, "request line too long (limit 8 KiB)");
  }
  if (end < 0) {
    if (buf.length > MAX_HEAD) throw new HttpError(431, "request head too large (limit 64 KiB)");
    // A head ending in bare LF (`\n\n`) will never see its CRLFCRLF: refuse it now rather than
    // leave the client waiting for the header timeout.
    if (hasBareLf(buf))
      throw new HttpError(400, "bare LF in request head: lines must end with CRLF");
    return { kind: "incomplete" };
  }
  if (end + 4 > MAX_HEAD) throw new HttpError(431, "request head too large (limit 64 KiB)");
  const head = parseHead(buf.toString("latin1", 0, end));
  head.size = start + end + 4;
  return { kind: "head", head, rest: buf.subarray(end + 4) };
}

function parseHead(text: string): RequestHead {
  const lines = text.split("\r\n");
  const requestLine = lines[0] ?? "";
  const parts = requestLine.split(" ");
  if (parts.length !== 3) throw new HttpError(400, "malformed request line");
  const [method = "", target = "", version = ""] = parts;
  if (!TOKEN.test(method)) throw new HttpError(400, "malformed request method");
  if (target === "" || /[\x00-\x20\x7f-\xff]/.test(target))
    throw new HttpError(400, "malformed request target");
  if (!/^HTTP\/\d\.\d$/.test(version)) throw new HttpError(400, "malformed HTTP version");
  if (version !== "HTTP/1.1" && version !== "HTTP/1.0")
    throw new HttpError(505, `${version} not supported`);
  const headers = parseHeaderLines(lines, 1, "request head");
  return { method, target, version, headers, size: 0 };
}

/**
 * The field lines of a head, `lines[from..]`, by the rules every head crm reads follows (requests
 * from clients, responses from upstreams): token names, no folding, no bare CR/LF, no control
 * bytes in values, only SP/HTAB trimmed. `what` names the head in the error ("request head").
 */
export function parseHeaderLines(lines: readonly string[], from: number, what: string): HeaderList {
  const headers: HeaderList = [];
  for (let i = from; i < lines.length; i++) {
    const line = lines[i] ?? "";
    if (line.includes("\r") || line.includes("\n"))
      throw new HttpError(400, `bare CR or LF in ${what}`);
    if (line.startsWith(" ") || line.startsWith("\t"))
      throw new HttpError(400, `obsolete line folding in ${what}`);
    const colon = line.indexOf(":");
    if (colon <= 0) throw new HttpError(400, "malformed header line");
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) throw new HttpError(400, "invalid header name");
    const raw = line.slice(colon + 1);
    if (BAD_VALUE.test(raw)) throw new HttpError(400, `control character in header ${name}`);
    // RFC 9110 §5.6.3: String.trim() would also eat NBSP, letting "5\xa0" pass as Content-Length 5.
    headers.push([name, ows(raw)]);
  }
  return headers;
}

/** Whether a head that has not ended yet has a line ending in bare LF (it never will end). */
export function hasBareLf(buf: Buffer): boolean {
  for (let i = buf.indexOf(0x0a); i >= 0; i = buf.indexOf(0x0a, i + 1))
    if (i === 0 || buf[i - 1] !== 0x0d) return true;
  return false;
}

/** All values of one field, case-insensitively. */
export function headerValues(headers: HeaderList, name: string): string[] {
  const lower = name.toLowerCase();
  const out: string[] = [];
  for (const [k, v] of headers)
    if (k.length === lower.length && k.toLowerCase() === lower) out.push(v);
  return out;
}

export function headerValue(headers: HeaderList, name: string): string | null {
  const all = headerValues(headers, name);
  return all.length === 0 ? null : all.join(", ");
}

export type BodyFraming =
  { kind: "none" } | { kind: "length"; length: number } | { kind: "chunked" };

/**
 * How the request body is delimited (RFC 9112 §6.3). Content-Length together with
 * Transfer-Encoding is refused outright: it is the classic smuggling shape (§6.1).
 */
export function requestFraming(head: RequestHead): BodyFraming {
  const te = headerValues(head.headers, "transfer-encoding");
  const cl = headerValues(head.headers, "content-length");
  if (te.length > 0 && cl.length > 0)
    throw new HttpError(400, "both Content-Length and Transfer-Encoding");
  if (te.length > 0) {
    if (head.version === "HTTP/1.0")
      throw new HttpError(400, "Transfer-Encoding in an HTTP/1.0 request");
    const codings = te
      .join(",")
      .split(",")
      .map((s) => ows(s).toLowerCase())
      .filter((s) => s !== "");
    if (codings.length !== 1 || codings[0] !== "chunked") {
      throw new HttpError(
        codings.at(-1) === "chunked" ? 501 : 400,
        `unsupported Transfer-Encoding ${JSON.stringify(te.join(", "))}`,
      );
    }
    return { kind: "chunked" };
  }
  if (cl.length > 0) {
    const values = new Set(cl.join(",").split(",").map(ows));
    if (values.size !== 1) throw new HttpError(400, "conflicting Content-Length values");
    const [v = ""] = values;
    if (!/^\d{1,15}$/.test(v)) throw new HttpError(400, "invalid Content-Length");
    const length = Number(v);
    return length === 0 ? { kind: "none" } : { kind: "length", length };
  }
  return { kind: "none" };
}

/** Whether the sender of this head (a client, or an upstream answering) wants the connection kept after the exchange (RFC 9112 §9.3). */
export function wantsKeepAlive(head: { version: string; headers: HeaderList }): boolean {
  const conn = headerValue(head.headers, "connection");
  if (head.version === "HTTP/1.0") return connectionHas(conn, "keep-alive");
  return !connectionHas(conn, "close");
}

/** Whether a Connection value lists `token` (lower-case; RFC 9110 §7.6.1: case-insensitive). */
export function connectionHas(value: string | null, token: string): boolean {
  return (
    value !== null &&
    value
      .toLowerCase()
      .split(",")
      .some((s) => s.trim() === token)
  );
}
