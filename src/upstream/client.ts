/**
 * crm's one HTTP/1.1 client for upstream traffic, on Bun sockets: the host is looked up with
 * crm's resolver (the SSRF guard judges the exact IP dialled), a kept-alive connection to that
 * IP with the same TLS trust is reused when there is one, the request is written through an
 * Outbox, and the answer's head is read strictly (response-head.ts) and framed by
 * response-framing.ts. A GET or HEAD that fails on a reused socket before any byte of the answer
 * is sent once more on a new one: the upstream closed an idle connection as crm picked it.
 */
import { isIP } from "node:net";
import { DialError, HttpError } from "../errors.ts";
import { lookupTarget } from "../net/dial.ts";
import type { HeaderList } from "../http/head.ts";
import { connectionHas, wantsKeepAlive } from "../http/head.ts";
import { responseFraming } from "../http/response-framing.ts";
import type { Resolver } from "../net/resolver.ts";
import { formatHostPort } from "../net/host-port.ts";
import { BodyFramer } from "./body-framer.ts";
import { UpstreamBody } from "./body.ts";
import { openConn, type TlsOptions, type UpstreamConn } from "./connect.ts";
import { UpstreamPool, type PoolLimits } from "./pool.ts";
import { readResponseHead, type ResponseHead } from "./response-head.ts";

/**
 * A body read as the upstream takes it (a client's request body, http/body.ts): `write` returning
 * false holds the source (the client socket is paused) until `resume()`.
 */
export interface BodySource {
  pipe(write: (piece: Uint8Array) => boolean): Promise<void>;
  resume(): void;
}

/** A request body: bytes at hand, or a source relayed as it arrives. */
export type RequestBody = Uint8Array | BodySource;

export interface UpstreamRequest {
  url: URL;
  method: string;
  /** Sent as given (hop-by-hop fields already removed); Host is added from the URL when absent. */
  headers: HeaderList;
  body?: RequestBody | null;
  /** The body's length; null sends a streamed body chunked. Ignored without a body. */
  bodyLength?: number | null;
  signal?: AbortSignal;
  /** Time from the start of the request to the answer's head (timeouts.upstream_header). */
  headTimeoutMs: number;
  /** DNS and TCP/TLS connect, each (timeouts.connect). */
  connectTimeoutMs: number;
  /** rt.resolve (guarded) for a client's target, rt.resolveConfigured for the operator's own hosts. */
  resolve: Resolver;
  insecureTls: boolean;
}

export interface UpstreamResponse {
  status: number;
  reason: string;
  version: string;
  /** As the upstream sent them, Content-Length and Transfer-Encoding included. */
  headers: HeaderList;
  /** The single Content-Length that frames the body, or null (chunked, close-delimited, none). */
  contentLength: number | null;
  body: UpstreamBody;
}

export interface ClientOptions {
  pool?: PoolLimits;
  /** PEM roots trusted besides the system ones and NODE_EXTRA_CA_CERTS. */
  extraCa?: readonly string[];
}

export class UpstreamClient {
  readonly pool: UpstreamPool;
  /** Connections opened, ever (tests and the status page read it). */
  opened = 0;
  /** Connections being opened ahead of a request (preconnect), by pool key. */
  private readonly opening = new Map<string, Promise<UpstreamConn | null>>();

  constructor(private readonly options: ClientOptions = {}) {
    this.pool = new UpstreamPool(options.pool);
  }

  close(): void {
    this.pool.close();
  }

  /**
   * Opens a connection to `url`'s origin (DNS, TCP, TLS) for a request that is about to come, and
   * leaves it in the pool: MITM calls it while the client's own TLS handshake with crm runs, so
   * the two handshakes overlap. Failures are dropped; the request itself meets and reports them.
   */
  preconnect(url: URL, resolve: Resolver, insecureTls: boolean, connectTimeoutMs: number): void {
    void this.origin(url, resolve, insecureTls, connectTimeoutMs).then(
      ({ address, port, tls, key, target }) => {
        if (this.pool.idleFor(key) > 0 || this.opening.has(key)) return;
        const opening = openConn(address, port, tls, connectTimeoutMs, target, key).then(
          (conn) => {
            this.opened++;
            return conn;
          },
          () => null,
        );
        this.opening.set(key, opening);
        void opening.then((conn) => {
          this.opening.delete(key);
          if (conn) this.pool.put(conn);
        });
      },
      () => {},
    );
  }

  /** Where a request for `url` goes: the address the guard approved, and the pool key. */
  private async origin(
    url: URL,
    resolve: Resolver,
    insecureTls: boolean,
    connectTimeoutMs: number,
  ): Promise<{
    address: string;
    port: number;
    tls: TlsOptions | null;
    key: string;
    target: string;
  }> {
    const https = url.protocol === "https:";
    const host = url.hostname.replace(/^\[|\]$/g, "");
    const port = Number(url.port) || (https ? 443 : 80);
    const target = formatHostPort(host, port);
    const lookup = lookupTarget(resolve, host, target);
    const address = isIP(host) ? await lookup : await withTimeout(lookup, connectTimeoutMs, target);
    const tls: TlsOptions | null = https
      ? {
          insecure: insecureTls,
          ...(isIP(host) ? {} : { serverName: host }),
          ...(this.options.extraCa ? { extraCa: this.options.extraCa } : {}),
        }
      : null;
    const key = `${https ? "https" : "http"}|${host}|${port}|${address}|${insecureTls ? "insecure" : "verify"}`;
    return { address, port, tls, key, target };
  }

  async request(req: UpstreamRequest): Promise<UpstreamResponse> {
    const started = Date.now();
    // The signal is checked before the first await and after every one: a client that left (FIN
    // or RST) while crm resolved, connected or waited for a preconnect must cost no upstream
    // request (for Docker Hub, a counted pull). A connection got meanwhile goes back to the pool.
    throwIfAborted(req, formatHostPort(req.url.hostname, Number(req.url.port) || 0));
    const { address, port, tls, key, target } = await this.origin(
      req.url,
      req.resolve,
      req.insecureTls,
      req.connectTimeoutMs,
    );
    const idempotent = req.method === "GET" || req.method === "HEAD";
    for (let attempt = 0; ; attempt++) {
      throwIfAborted(req, target);
      let conn = attempt === 0 ? this.pool.take(key) : null;
      const opening = attempt === 0 && conn === null ? this.opening.get(key) : undefined;
      // A preconnect under way: wait for it rather than open a second connection.
      if (opening) {
        conn = (await opening) === null ? null : this.pool.take(key);
        if (req.signal?.aborted) this.giveBack(conn);
        throwIfAborted(req, target);
      }
      if (conn === null) {
        const remaining = Math.max(
          1,
          Math.min(req.connectTimeoutMs, req.headTimeoutMs - (Date.now() - started)),
        );
        conn = await openConn(address, port, tls, remaining, target, key).catch((e: unknown) => {
          throw abortedOr(req, e, target);
        });
        this.opened++;
        if (req.signal?.aborted) this.giveBack(conn);
        throwIfAborted(req, target);
      }
      const reused = conn.uses > 0;
      conn.uses++;
      try {
        return await this.exchange(conn, req, target, started);
      } catch (e) {
        if (e instanceof RetryableError && reused && idempotent && attempt === 0) continue;
        throw e instanceof RetryableError ? e.dial : e;
      }
    }
  }

  /** An unused connection back to the pool (nothing was written on it), or nothing for null. */
  private giveBack(conn: UpstreamConn | null): void {
    if (conn !== null && !conn.closed) this.pool.put(conn);
  }

  /** Writes the request on `conn` and reads the answer's head. */
  private exchange(
    conn: UpstreamConn,
    req: UpstreamRequest,
    target: string,
    started: number,
  ): Promise<UpstreamResponse> {
    return new Promise<UpstreamResponse>((resolve, reject) => {
      // Nothing is written for a client already gone; the untouched connection stays usable.
      if (req.signal?.aborted) {
        this.giveBack(conn);
        return reject(abortError(req, target));
      }
      let buf: Buffer = Buffer.alloc(0);
      let gotBytes = false;
      let settled = false;
      let requestSent = req.body == null;
      const head = requestHead(req);
      let keepRequested = !head.close;
      const fail = (e: Error): void => {
        if (settled) return;
        settled = true;
        cleanup();
        conn.destroy();
        reject(e);
      };
      const onAbort = (): void =>
        fail(
          new DialError("other", target, { cause: req.signal?.reason, detail: "request aborted" }),
        );
      // timeouts.upstream_header counts from the end of the request: an upload may take as long as
      // it takes (the client's idle timeout covers one that stalls), then the answer must start.
      let timer: Timer | undefined;
      const arm = (ms: number): void => {
        if (!settled)
          timer = setTimeout(() => fail(new DialError("timeout", target)), Math.max(1, ms));
      };
      if (req.body == null) arm(req.headTimeoutMs - (Date.now() - started));
      const cleanup = (): void => {
        clearTimeout(timer);
        req.signal?.removeEventListener("abort", onAbort);
      };
      req.signal?.addEventListener("abort", onAbort, { once: true });
      conn.listener = {
        data: (bytes) => {
          if (settled) return;
          gotBytes = true;
          buf = buf.length === 0 ? bytes : Buffer.concat([buf, bytes]);
          for (;;) {
            let r;
            try {
              r = readResponseHead(buf);
            } catch (e) {
              return fail(
                new DialError("framing", target, {
                  cause: e,
                  detail: e instanceof HttpError ? e.message : String(e),
                }),
              );
            }
            if (r.kind === "incomplete") return;
            buf = r.rest;
            if (r.head.status === 101)
              return fail(
                new DialError("framing", target, {
                  detail: "101 Switching Protocols to a request that asked for no upgrade",
                }),
              );
            // 1xx: 100 Continue and informational answers are dropped; the final answer follows.
            if (r.head.status < 200) continue;
            settled = true;
            cleanup();
            return this.answer(
              conn,
              req,
              r.head,
              r.rest,
              target,
              () => requestSent && keepRequested,
              resolve,
              reject,
            );
          }
        },
        close: (error) => {
          const dial = new DialError("reset", target, {
            cause: error ?? undefined,
            detail: "upstream closed the connection before answering",
          });
          if (!gotBytes) fail(new RetryableError(dial));
          else fail(dial);
        },
      };
      if (!conn.outbox.write(head.text) && conn.closed)
        return fail(
          new RetryableError(new DialError("reset", target, { detail: "connection closed" })),
        );
      if (req.body != null) {
        writeBody(conn, req.body, req.bodyLength ?? null).then(
          () => {
            requestSent = true;
            arm(req.headTimeoutMs);
          },
          (e: unknown) => {
            keepRequested = false;
            if (!settled)
              fail(new DialError("other", target, { cause: e, detail: "request body failed" }));
            else conn.destroy();
          },
        );
      }
    });
  }

  private answer(
    conn: UpstreamConn,
    req: UpstreamRequest,
    head: ResponseHead,
    rest: Buffer,
    target: string,
    requestDone: () => boolean,
    resolve: (r: UpstreamResponse) => void,
    reject: (e: Error) => void,
  ): void {
    // The client left as the head arrived: its body is never read, so the connection cannot be reused.
    if (req.signal?.aborted) {
      conn.destroy();
      return reject(abortError(req, target));
    }
    const framing = responseFraming({
      status: head.status,
      method: req.method,
      version: head.version,
      headers: head.headers,
    });
    if (!framing.ok) {
      conn.destroy();
      return reject(new DialError("framing", target, { detail: framing.reason }));
    }
    // The answer's own framing and Connection decide, as for a client's request (RFC 9112 §9.3).
    const reusable = framing.body !== "close" && wantsKeepAlive(head);
    const onAbort = (): void => body.cancel();
    req.signal?.addEventListener("abort", onAbort, { once: true });
    const body: UpstreamBody = new UpstreamBody(
      conn,
      new BodyFramer(framing.body, framing.contentLength),
      target,
      (clean) => {
        req.signal?.removeEventListener("abort", onAbort);
        if (clean && reusable && requestDone() && !conn.closed) this.pool.put(conn);
        else if (framing.body !== "close") conn.destroy();
      },
      rest,
    );
    resolve({
      status: head.status,
      reason: head.reason,
      version: head.version,
      headers: head.headers,
      contentLength: framing.contentLength,
      body,
    });
  }
}

/** A failure before any byte of the answer, on a connection that may just have gone stale. */
class RetryableError extends Error {
  constructor(readonly dial: DialError) {
    super(dial.message, { cause: dial });
  }
}

/** The request's head, and whether it asked the upstream to close after the answer. */
function requestHead(req: UpstreamRequest): { text: string; close: boolean } {
  let target = req.url.pathname + req.url.search;
  if (target === "") target = "/";
  let fields = "";
  let host = false;
  let close = false;
  for (const [k, v] of req.headers) {
    const l =
      k.length === 4 || k.length === 10 || k.length === 14 || k.length === 17
        ? k.toLowerCase()
        : "";
    if (l === "content-length" || l === "transfer-encoding") continue;
    if (l === "host") host = true;
    else if (l === "connection" && connectionHas(v, "close")) close = true;
    fields += `${k}: ${v}\r\n`;
  }
  let out = `${req.method} ${target} HTTP/1.1\r\n`;
  if (!host) out += `host: ${req.url.host}\r\n`;
  out += fields;
  if (req.body != null) {
    if (req.body instanceof Uint8Array) out += `content-length: ${req.body.byteLength}\r\n`;
    else if (req.bodyLength != null) out += `content-length: ${req.bodyLength}\r\n`;
    else out += "transfer-encoding: chunked\r\n";
  } else if (req.method === "POST" || req.method === "PUT" || req.method === "PATCH") {
    out += "content-length: 0\r\n";
  }
  return { text: out + "\r\n", close };
}

async function writeBody(
  conn: UpstreamConn,
  body: RequestBody,
  length: number | null,
): Promise<void> {
  if (body instanceof Uint8Array) {
    conn.outbox.write(body);
    return conn.outbox.drained();
  }
  // Socket to socket: each piece goes to the upstream's Outbox as it arrives; a write the
  // upstream cannot take holds the client until the upstream drains. A sized body is framed by
  // the client's own Content-Length (the source never gives more or less); anything else is sent
  // in chunks, one per piece, the CRLF that ends a chunk riding with the next size line.
  const chunked = length === null;
  let pieces = 0;
  const resume = (): void => body.resume();
  conn.outbox.onDrained(resume);
  try {
    await body.pipe((piece) => {
      if (chunked)
        conn.outbox.write(`${pieces++ === 0 ? "" : "\r\n"}${piece.byteLength.toString(16)}\r\n`);
      return conn.outbox.write(piece) && !conn.closed;
    });
  } finally {
    conn.outbox.offDrained(resume);
  }
  if (chunked) conn.outbox.write(pieces > 0 ? "\r\n0\r\n\r\n" : "0\r\n\r\n");
  await conn.outbox.drained();
  if (conn.closed) throw new Error("upstream connection closed");
}

/** What a request whose client left fails with: a dial failure "request aborted", with the reason. */
function abortError(req: UpstreamRequest, target: string): DialError {
  return new DialError("other", target, { cause: req.signal?.reason, detail: "request aborted" });
}

function throwIfAborted(req: UpstreamRequest, target: string): void {
  if (req.signal?.aborted) throw abortError(req, target);
}

function abortedOr(req: UpstreamRequest, e: unknown, target: string): unknown {
  if (req.signal?.aborted)
    return new DialError("other", target, { cause: e, detail: "request aborted" });
  return e;
}

function withTimeout<T>(p: Promise<T>, ms: number, target: string): Promise<T> {
  let t: Timer | undefined;
  return Promise.race([
    p,
    new Promise<never>(
      (_, rej) => (t = setTimeout(() => rej(new DialError("timeout", target)), ms)),
    ),
  ]).finally(() => clearTimeout(t));
}
