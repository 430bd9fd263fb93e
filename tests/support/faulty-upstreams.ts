/**
 * Upstreams that misbehave on purpose, as real TCP servers on 127.0.0.1 (port 0), plus the
 * byte-exact client side the fuzz and soak runs use to judge what crm answered: a strict
 * HTTP/1.1 response reader (it tells a complete message from a truncated one) and a raw
 * exchange with a deadline.
 *
 * Upstream kinds:
 * - reset-mid-body: answers `Content-Length: N`, sends N/2 bytes, then terminate()s the socket;
 * - stall: accepts and reads, never answers (crm's upstream_header timeout must give 504);
 * - garbage: answers bytes that are not HTTP, then closes;
 * - chunked-cut: answers `Transfer-Encoding: chunked`, sends some chunks, then closes without
 *   the terminating 0-chunk (`cut: "between"`) or inside a chunk's data (`cut: "inside"`).
 * startScriptedUpstream answers each request head with bytes a test computes from it (any framing,
 * lawful or not: Content-Length next to Transfer-Encoding, differing lengths, forged responses
 * inside a body), over plain TCP or TLS.
 */
import type { Socket, TCPSocketListener } from "bun";

export type FaultKind = "reset-mid-body" | "stall" | "garbage" | "chunked-cut";

export interface FaultyUpstream {
  kind: FaultKind;
  port: number;
  /** Requests whose head was read. */
  readonly hits: number;
  /** Sockets currently open on the server side. */
  readonly open: number;
  stop(): void;
}

export interface FaultOptions {
  /** Declared body size for reset-mid-body (default 64 KiB; half of it is sent). */
  length?: number;
  /** Where chunked-cut stops (default "between"). */
  cut?: "between" | "inside";
}

interface ServerData {
  buf: Buffer;
  /** Request body bytes still to drop. */
  skip: number;
  answered: boolean;
  queue: Buffer[];
  after: "none" | "end" | "terminate";
}

/** Deterministic body bytes (same rule as origins.ts `pattern`). */
function bodyBytes(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = i % 251;
  return b;
}

/** Writes what the socket takes and queues the rest for `drain` (bun.md: write() drops the excess). */
function pump(s: Socket<ServerData>): void {
  const d = s.data;
  while (d.queue.length > 0) {
    const head = d.queue[0] as Buffer;
    const n = s.write(head);
    if (n < head.byteLength) {
      d.queue[0] = head.subarray(Math.max(0, n));
      return;
    }
    d.queue.shift();
  }
  if (d.after === "terminate") s.terminate();
  else if (d.after === "end") s.end();
  d.after = "none";
}

export const GARBAGE = Buffer.concat([
  Buffer.from("SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02"),
  Buffer.from([0xff, 0xfe, 0x00, 0x0d, 0x0a, 0x0d, 0x0a]),
  Buffer.from("not http at all\r\n\r\n"),
]);

export function startFaultyUpstream(kind: FaultKind, opts: FaultOptions = {}): FaultyUpstream {
  const length = opts.length ?? 64 * 1024;
  const answer = (): ScriptedAnswer => {
    switch (kind) {
      case "stall":
        return { bytes: Buffer.alloc(0), after: "keep" };
      case "reset-mid-body":
        return {
          bytes: Buffer.concat([
            Buffer.from(
              `HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ${length}\r\n\r\n`,
            ),
            bodyBytes(Math.floor(length / 2)),
          ]),
          after: "terminate",
        };
      case "garbage":
        return { bytes: GARBAGE, after: "end" };
      case "chunked-cut": {
        const chunk = bodyBytes(1000);
        const parts: Buffer[] = [
          Buffer.from(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
          ),
        ];
        for (let i = 0; i < 4; i++) parts.push(Buffer.from("3e8\r\n"), chunk, Buffer.from("\r\n"));
        if ((opts.cut ?? "between") === "inside")
          parts.push(Buffer.from("3e8\r\n"), chunk.subarray(0, 500));
        return { bytes: Buffer.concat(parts), after: "terminate" };
      }
    }
  };
  const up = startScriptedUpstream(answer);
  return {
    kind,
    port: up.port,
    get hits() {
      return up.heads.length;
    },
    get open() {
      return up.open;
    },
    stop: () => up.stop(),
  };
}

/** What a scripted upstream sends for one request, and how its side of the connection ends. */
export interface ScriptedAnswer {
  bytes: Buffer;
  /** keep: read the next request on the same connection; end: FIN; terminate: TCP reset. */
  after: "keep" | "end" | "terminate";
}

export interface ScriptedUpstream {
  port: number;
  /** Request heads read so far (latin1, without the final CRLFCRLF). */
  readonly heads: string[];
  /** Sockets currently open on the server side. */
  readonly open: number;
  stop(): void;
}

/**
 * An upstream that answers each request head with `answer(head)`, byte for byte, as soon as the
 * head is in; request bodies are dropped by Content-Length (a pipelined head after one is answered
 * when the answer says "keep").
 */
export function startScriptedUpstream(
  answer: (head: string) => ScriptedAnswer,
  tls?: { cert: string; key: string },
): ScriptedUpstream {
  const heads: string[] = [];
  const sockets = new Set<Socket<ServerData>>();
  const fresh = (): ServerData => ({
    buf: Buffer.alloc(0),
    skip: 0,
    answered: false,
    queue: [],
    after: "none",
  });
  const listener: TCPSocketListener<ServerData> = Bun.listen<ServerData>({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    ...(tls ? { tls } : {}),
    data: fresh(),
    socket: {
      open(s) {
        s.data = fresh();
        sockets.add(s);
      },
      data(s, chunk) {
        const d = s.data;
        if (d.answered) return;
        // The rest of the previous request's body (by Content-Length) is read and dropped.
        const skipped = Math.min(d.skip, chunk.byteLength);
        d.skip -= skipped;
        d.buf = Buffer.concat([d.buf, chunk.subarray(skipped)]);
        while (!d.answered) {
          const end = d.buf.indexOf("\r\n\r\n");
          if (end < 0) {
            if (d.buf.byteLength > 256 * 1024) s.terminate();
            break;
          }
          const head = d.buf.toString("latin1", 0, end);
          const body = Number(/\r\ncontent-length:[ \t]*(\d+)/i.exec(head)?.[1] ?? 0);
          const after = d.buf.byteLength - end - 4;
          d.skip = Math.max(0, body - after);
          d.buf = after > body ? d.buf.subarray(end + 4 + body) : Buffer.alloc(0);
          heads.push(head);
          const a = answer(head);
          d.queue.push(a.bytes);
          if (a.after === "keep") d.after = "none";
          else {
            d.answered = true;
            d.after = a.after;
          }
        }
        pump(s);
      },
      drain(s) {
        pump(s);
      },
      end(s) {
        // The client gave up (crm's timeout or abort): close our side too.
        s.end();
      },
      close(s) {
        sockets.delete(s);
      },
      error() {},
    },
  });
  return {
    port: listener.port,
    heads,
    get open() {
      return sockets.size;
    },
    stop() {
      for (const s of sockets) s.terminate();
      sockets.clear();
      listener.stop(true);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Client side: a strict reader of HTTP/1.1 responses.

export interface ParsedResponse {
  version: string;
  status: number;
  reason: string;
  headers: Array<[string, string]>;
  /** none: no body by rule (HEAD, 1xx, 204, 304, 2xx to CONNECT); close: delimited by the close. */
  framing: "none" | "length" | "chunked" | "close";
  /** Declared Content-Length, if any. */
  declared: number | null;
  /** Payload bytes (de-chunked). */
  body: Buffer;
  /** The whole message arrived as framed (for chunked: the 0-chunk and the final CRLF). */
  complete: boolean;
  /** A 2xx answer to CONNECT: everything after it is tunnel data. */
  tunnel: boolean;
}

export interface ParseResult {
  responses: ParsedResponse[];
  /** Protocol violation in what crm sent (never a mere truncation). */
  error: string | null;
  /** Bytes after the last complete response (a partial head, or tunnel data). */
  rest: Buffer;
}

export function header(r: ParsedResponse, name: string): string | null {
  const l = name.toLowerCase();
  const v = r.headers.filter(([k]) => k.toLowerCase() === l).map(([, v]) => v);
  return v.length === 0 ? null : v.join(", ");
}

/**
 * Reads every response in `buf`. `methods[i]` is the method of the request the i-th final
 * response answers (decides HEAD/CONNECT framing; the last one repeats). `closed` says whether
 * the server closed the connection, which completes a close-delimited body.
 */
export function parseResponses(
  buf: Buffer,
  methods: readonly string[],
  closed: boolean,
): ParseResult {
  const responses: ParsedResponse[] = [];
  let off = 0;
  let finals = 0;
  const fail = (error: string): ParseResult => ({ responses, error, rest: buf.subarray(off) });
  while (off < buf.byteLength) {
    const end = buf.indexOf("\r\n\r\n", off);
    if (end < 0) {
      // A partial head is only legitimate if it could still become one.
      if (
        !"HTTP/1.".startsWith(
          buf.toString("latin1", off, Math.min(off + 7, buf.byteLength)).slice(0, 7),
        )
      ) {
        return fail(
          `garbage where a status line should be: ${JSON.stringify(buf.toString("latin1", off, off + 60))}`,
        );
      }
      break;
    }
    const lines = buf.toString("latin1", off, end).split("\r\n");
    const m = /^(HTTP\/1\.[01]) ([1-5]\d\d) ([\t -~\x80-\xff]*)$/.exec(lines[0] ?? "");
    if (!m) return fail(`malformed status line ${JSON.stringify((lines[0] ?? "").slice(0, 100))}`);
    const headers: Array<[string, string]> = [];
    for (const line of lines.slice(1)) {
      const hm = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\r\n]*?)[ \t]*$/.exec(line);
      if (!hm) return fail(`malformed header line ${JSON.stringify(line.slice(0, 100))}`);
      headers.push([hm[1] as string, hm[2] as string]);
    }
    const status = Number(m[2]);
    const r: ParsedResponse = {
      version: m[1] as string,
      status,
      reason: m[3] as string,
      headers,
      framing: "none",
      declared: null,
      body: Buffer.alloc(0),
      complete: true,
      tunnel: false,
    };
    off = end + 4;
    responses.push(r);
    if (status < 200) continue; // interim: no body, the final answer follows
    const method = methods[Math.min(finals, methods.length - 1)] ?? "GET";
    finals++;
    const te = header(r, "transfer-encoding");
    const cl = header(r, "content-length");
    if (cl !== null) {
      if (!/^\d+$/.test(cl)) return fail(`bad Content-Length ${JSON.stringify(cl)}`);
      r.declared = Number(cl);
    }
    if (te !== null && cl !== null)
      return fail("response with both Transfer-Encoding and Content-Length");
    if (method === "CONNECT" && status < 300) {
      r.tunnel = true;
      break;
    }
    if (method === "HEAD" || status === 204 || status === 304) continue;
    if (te !== null) {
      if (te.toLowerCase() !== "chunked") return fail(`unexpected Transfer-Encoding ${te}`);
      r.framing = "chunked";
      const body: Buffer[] = [];
      let done = false;
      for (;;) {
        const le = buf.indexOf("\r\n", off);
        if (le < 0) break;
        const sizeLine = buf.toString("latin1", off, le);
        // BWS may stand before an extension (RFC 9112 §7.1.1).
        const sm = /^([0-9a-fA-F]{1,12})([ \t]*;[^\r\n]*)?$/.exec(sizeLine);
        if (!sm) return fail(`malformed chunk size line ${JSON.stringify(sizeLine.slice(0, 40))}`);
        const size = parseInt(sm[1] as string, 16);
        if (size === 0) {
          // Trailers (crm sends none) end with an empty line.
          const te2 = buf.indexOf("\r\n\r\n", le);
          if (te2 >= 0) {
            off = te2 + 4;
            done = true;
          }
          break;
        }
        if (le + 2 + size + 2 > buf.byteLength) {
          body.push(buf.subarray(le + 2, Math.min(buf.byteLength, le + 2 + size)));
          off = buf.byteLength;
          break;
        }
        if (buf[le + 2 + size] !== 0x0d || buf[le + 3 + size] !== 0x0a)
          return fail("chunk data not followed by CRLF");
        body.push(buf.subarray(le + 2, le + 2 + size));
        off = le + 4 + size;
      }
      r.body = Buffer.concat(body);
      r.complete = done;
      if (!done) {
        off = buf.byteLength;
        break;
      }
      continue;
    }
    if (r.declared !== null) {
      r.framing = "length";
      const n = Math.min(r.declared, buf.byteLength - off);
      r.body = buf.subarray(off, off + n);
      off += n;
      r.complete = n === r.declared;
      if (!r.complete) break;
      continue;
    }
    // Neither: the body runs to the close (RFC 9112 §6.3 rule 8).
    r.framing = "close";
    r.body = buf.subarray(off);
    off = buf.byteLength;
    r.complete = closed;
    break;
  }
  return { responses, error: null, rest: buf.subarray(off) };
}

// ---------------------------------------------------------------------------------------------
// Client side: a raw connection that records everything and knows when the server closed.

export interface RawConn {
  socket: Socket<undefined>;
  chunks: Buffer[];
  bytes: number;
  /** Server FIN or close seen. */
  closed: boolean;
  /** The server's FIN arrived (a clean end of its side). */
  finSeen: boolean;
  /** The connection ended with an error (a TCP reset): what a client must see for a cut body it cannot otherwise tell from a whole one. */
  resetSeen: boolean;
  /** Resolves at the server's FIN/close. */
  closedP: Promise<void>;
  /** Called after every data event (for waiters). */
  onData: (() => void) | null;
  received(): Buffer;
  /** Writes everything, waiting for drain as needed (resolves false if the socket died). */
  send(d: Uint8Array | string): Promise<boolean>;
}

export async function openRaw(port: number, host = "127.0.0.1"): Promise<RawConn> {
  let resolveClosed: () => void = () => {};
  let drainWaiter: (() => void) | null = null;
  const conn: Partial<RawConn> & {
    chunks: Buffer[];
    bytes: number;
    closed: boolean;
    finSeen: boolean;
    resetSeen: boolean;
    onData: (() => void) | null;
  } = {
    chunks: [],
    bytes: 0,
    closed: false,
    finSeen: false,
    resetSeen: false,
    onData: null,
  };
  conn.closedP = new Promise<void>((r) => (resolveClosed = r));
  const markClosed = (): void => {
    conn.closed = true;
    resolveClosed();
    conn.onData?.();
    drainWaiter?.();
  };
  const socket = await Bun.connect({
    hostname: host,
    port,
    allowHalfOpen: true,
    socket: {
      data(_s, d) {
        conn.chunks.push(Buffer.from(d));
        conn.bytes += d.byteLength;
        conn.onData?.();
      },
      drain() {
        drainWaiter?.();
      },
      end() {
        conn.finSeen = true;
        markClosed();
      },
      close(_s, err) {
        if (err && !conn.finSeen) conn.resetSeen = true;
        markClosed();
      },
      error() {},
    },
  });
  conn.socket = socket;
  conn.received = () => Buffer.concat(conn.chunks);
  conn.send = async (d) => {
    let buf = typeof d === "string" ? Buffer.from(d, "latin1") : d;
    while (buf.byteLength > 0) {
      if (conn.closed && socket.readyState !== 1) return false;
      const n = socket.write(buf);
      if (n < 0) return false;
      buf = buf.subarray(n);
      if (buf.byteLength > 0) {
        const ok = await new Promise<boolean>((resolve) => {
          const t = setTimeout(() => resolve(false), 5000);
          drainWaiter = () => {
            clearTimeout(t);
            drainWaiter = null;
            resolve(true);
          };
        });
        if (!ok) return false;
      }
    }
    return true;
  };
  return conn as RawConn;
}

/** Waits until `pred()` holds, new data arrives and re-checks, or `ms` passes; returns pred(). */
export async function waitUntil(conn: RawConn, pred: () => boolean, ms: number): Promise<boolean> {
  if (pred()) return true;
  return new Promise<boolean>((resolve) => {
    const t = setTimeout(() => {
      conn.onData = null;
      resolve(pred());
    }, ms);
    conn.onData = () => {
      if (pred()) {
        clearTimeout(t);
        conn.onData = null;
        resolve(true);
      }
    };
  });
}
