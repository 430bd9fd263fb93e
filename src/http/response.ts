/**
 * Writes a fetch `Response` onto an HTTP/1.1 connection: status line, fields, and the body
 * framed by Content-Length when known, else chunked (HTTP/1.1) or by close (HTTP/1.0). The
 * framing it announces is the framing it keeps: never a byte past a declared length (a client
 * would read it as the next response), and a short body never looks complete.
 */
import type { Outbox } from "../net/outbox.ts";
import { relayedBody, type RelaySource } from "./relayed.ts";
import { STATUS_TEXT } from "./status.ts";

export interface WriteOptions {
  method: string;
  version: string;
  keepAlive: boolean;
  /** Called with the body bytes sent so far, so the idle deadline (and the status page) follow real progress. */
  progress?: (bytes: number) => void;
}

export interface WriteResult {
  bytes: number;
  /** The body went out whole and framed, so the connection can carry another request. */
  complete: boolean;
  keepAlive: boolean;
}

/** Bodies up to this size (by Content-Length) are read whole and sent with the head. */
const SMALL_BODY = 16 * 1024;
const LAST_CHUNK = Buffer.from("0\r\n\r\n");
/** Ends the last data chunk (its CRLF) and the body. */
const LAST_CHUNK_AFTER_DATA = Buffer.from("\r\n0\r\n\r\n");

function hasNoBody(status: number, method: string): boolean {
  return method === "HEAD" || status === 204 || status === 304 || (status >= 100 && status < 200);
}

export async function writeResponse(
  out: Outbox,
  res: Response,
  opts: WriteOptions,
): Promise<WriteResult> {
  const noBody = hasNoBody(res.status, opts.method);
  const lengthText = res.headers.get("content-length");
  const length = lengthText !== null && /^\d+$/.test(lengthText) ? Number(lengthText) : null;
  const framing: "none" | "length" | "chunked" | "close" = noBody
    ? "none"
    : length !== null
      ? "length"
      : opts.version === "HTTP/1.1"
        ? "chunked"
        : "close";
  const relayed = relayedBody(res);
  // An upstream's chunked body goes to an HTTP/1.1 client as it came, chunk framing and all.
  const passChunks =
    relayed !== null && !noBody && framing === "chunked" && relayed.framing === "chunked";
  const keepAlive = opts.keepAlive && framing !== "close";

  let head = `HTTP/1.1 ${res.status} ${res.statusText || STATUS_TEXT[res.status] || "Status"}\r\n`;
  for (const [k, v] of res.headers) {
    if (
      k === "content-length" ||
      k === "transfer-encoding" ||
      k === "connection" ||
      k === "set-cookie"
    )
      continue;
    head += `${k}: ${v}\r\n`;
  }
  for (const c of res.headers.getSetCookie()) head += `set-cookie: ${c}\r\n`;
  if (
    framing === "length" ||
    (framing === "none" && length !== null && res.status !== 204 && res.status !== 304)
  ) {
    head += `content-length: ${length}\r\n`;
  } else if (framing === "chunked") head += "transfer-encoding: chunked\r\n";
  // HTTP/1.0 closes by default: a kept connection must be announced (RFC 9112 §C.2.2).
  head += keepAlive
    ? opts.version === "HTTP/1.0"
      ? "connection: keep-alive\r\n\r\n"
      : "\r\n"
    : "connection: close\r\n\r\n";

  if (relayed !== null && !noBody && !relayed.done)
    return relay(out, head, relayed, framing, length, passChunks, keepAlive, opts);
  if (relayed !== null) relayed.cancel();

  if (noBody || res.body === null) {
    if (!noBody && framing === "chunked") {
      out.write(head);
      out.write(LAST_CHUNK);
      return { bytes: 0, complete: true, keepAlive };
    }
    out.write(head);
    if (res.body !== null) await res.body.cancel().catch(() => {});
    return { bytes: 0, complete: framing !== "length" || length === 0, keepAlive };
  }

  if (framing === "length" && length !== null && length <= SMALL_BODY) {
    // A small body (bounded by SMALL_BODY, so memory stays bounded) leaves with its head in one
    // write: no stream reader, one syscall and one segment per answer instead of two.
    let body: Uint8Array | "overflow";
    try {
      body = await readAtMost(res.body, length);
    } catch {
      out.write(head);
      return { bytes: 0, complete: false, keepAlive: false };
    }
    if (out.closed) return { bytes: 0, complete: false, keepAlive: false };
    if (body === "overflow") {
      // Nothing is sent yet, so the client can be told plainly instead of getting a cut body.
      out.write(
        errorHead(
          502,
          "crm: the upstream sent more body bytes than its Content-Length",
          {},
          opts.method,
        ),
      );
      return { bytes: 0, complete: false, keepAlive: false };
    }
    const complete = body.byteLength === length;
    out.write(Buffer.concat([Buffer.from(head, "latin1"), body]));
    return { bytes: body.byteLength, complete, keepAlive: keepAlive && complete };
  }

  out.write(head);
  const reader = res.body.getReader();
  let bytes = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (out.closed) {
        await reader.cancel().catch(() => {});
        return { bytes, complete: false, keepAlive: false };
      }
      if (value.byteLength === 0) continue;
      if (framing === "length" && length !== null && bytes + value.byteLength > length) {
        // More than declared: what is sent stays short (so the client sees a cut body, never a
        // complete one) and the connection is closed, so the excess is nobody's next response.
        await reader.cancel().catch(() => {});
        return { bytes, complete: false, keepAlive: false };
      }
      bytes += value.byteLength;
      opts.progress?.(bytes);
      let ok: boolean;
      if (framing === "chunked") {
        // The size line (after the previous chunk's CRLF) and the payload go out as two writes;
        // Buffer.concat would copy every chunk into a fresh allocation.
        out.write(
          `${bytes === value.byteLength ? "" : "\r\n"}${value.byteLength.toString(16)}\r\n`,
        );
        ok = out.write(value);
      } else ok = out.write(value);
      if (!ok) await out.drained();
    }
  } catch {
    // The upstream body failed mid-way: the client must see a truncated message, never a
    // complete-looking one, so the connection is closed without the last chunk.
    return { bytes, complete: false, keepAlive: false };
  }
  if (framing === "chunked") out.write(bytes > 0 ? LAST_CHUNK_AFTER_DATA : LAST_CHUNK);
  const complete = framing !== "length" || bytes === length;
  return { bytes, complete, keepAlive: keepAlive && complete };
}

/**
 * Pipes an upstream body into the client's Outbox: each read from the upstream socket is written
 * as it came; a short write pauses the upstream until the client's socket drains.
 */
async function relay(
  out: Outbox,
  head: string,
  body: RelaySource,
  framing: "none" | "length" | "chunked" | "close",
  length: number | null,
  passChunks: boolean,
  keepAlive: boolean,
  opts: WriteOptions,
): Promise<WriteResult> {
  if (framing === "length" && length !== null && length <= SMALL_BODY) {
    // As for a small fetch body: the body (usually in the head's own read) leaves with its head
    // in one write, one segment instead of two.
    const parts: Uint8Array[] = [Buffer.from(head, "latin1")];
    let n = 0;
    try {
      await body.relay((chunk) => {
        n += chunk.byteLength;
        parts.push(chunk);
        return true;
      });
    } catch {
      out.write(head);
      return { bytes: 0, complete: false, keepAlive: false };
    }
    if (out.closed) return { bytes: 0, complete: false, keepAlive: false };
    out.write(parts.length === 2 && n === 0 ? (parts[0] as Uint8Array) : Buffer.concat(parts));
    opts.progress?.(n);
    return { bytes: n, complete: n === length, keepAlive: keepAlive && n === length };
  }
  out.write(head);
  let bytes = 0;
  let over = false;
  const resume = (): void => body.resume();
  out.onDrained(resume);
  const write = (chunk: Uint8Array): boolean => {
    if (framing === "length" && length !== null && bytes + chunk.byteLength > length) {
      over = true;
      body.cancel();
      return false;
    }
    bytes += chunk.byteLength;
    opts.progress?.(bytes);
    if (framing !== "chunked" || passChunks) return out.write(chunk);
    // A close-delimited upstream body to an HTTP/1.1 client: crm frames it in chunks.
    out.write(`${bytes === chunk.byteLength ? "" : "\r\n"}${chunk.byteLength.toString(16)}\r\n`);
    return out.write(chunk);
  };
  try {
    // Raw bytes are the content unless the upstream chunked a body crm must frame otherwise.
    await (passChunks || body.framing !== "chunked" ? body.relay(write) : body.contents(write));
  } catch {
    return { bytes, complete: false, keepAlive: false };
  } finally {
    out.offDrained(resume);
  }
  if (over || out.closed) return { bytes, complete: false, keepAlive: false };
  if (framing === "chunked" && !passChunks)
    out.write(bytes > 0 ? LAST_CHUNK_AFTER_DATA : LAST_CHUNK);
  const complete = framing !== "length" || bytes === length;
  return { bytes, complete, keepAlive: keepAlive && complete };
}

/** The whole body if it has at most `limit` bytes; "overflow" (the rest cancelled) if it has more. */
async function readAtMost(
  body: ReadableStream<Uint8Array>,
  limit: number,
): Promise<Uint8Array | "overflow"> {
  const reader = body.getReader();
  const parts: Uint8Array[] = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.byteLength;
    if (n > limit) {
      await reader.cancel().catch(() => {});
      return "overflow";
    }
    parts.push(value);
  }
  return parts.length === 1 ? (parts[0] as Uint8Array) : Buffer.concat(parts);
}

/**
 * A complete error answer: UTF-8 text body with its exact length (none for HEAD, RFC 9110
 * §9.3.2), then the caller closes.
 */
export function errorHead(
  status: number,
  message: string,
  extra: Record<string, string> = {},
  method = "GET",
): Buffer {
  const body = Buffer.from(message + "\n", "utf8");
  let head = `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? "Error"}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${body.byteLength}\r\n`;
  for (const [k, v] of Object.entries(extra)) head += `${k}: ${v}\r\n`;
  const h = Buffer.from(head + "connection: close\r\n\r\n", "latin1");
  return method === "HEAD" ? h : Buffer.concat([h, body]);
}

/** A small text/plain answer with its exact length: crm's own endpoints and error answers. */
export function textResponse(
  status: number,
  body: string,
  headers: Record<string, string> = {},
): Response {
  const b = body.endsWith("\n") ? body : body + "\n";
  return new Response(b, {
    status,
    headers: {
      "content-type": "text/plain; charset=utf-8",
      "content-length": String(Buffer.byteLength(b)),
      ...headers,
    },
  });
}
