/**
 * An upstream response body as it arrives on the socket: handed on as the upstream framed it
 * (`relay`, for a proxy that passes bytes) or as its content (`readAll` for small bodies,
 * `stream` for code that wants a ReadableStream). Backpressure is the socket's own: when the
 * consumer says "enough" the upstream socket is paused until `resume()`, so memory is bounded by
 * one read whatever the upstream sends and however slowly the client reads.
 */
import { DialError } from "../errors.ts";
import type { RelaySource } from "../http/relayed.ts";
import type { BodyFramer } from "./body-framer.ts";
import type { UpstreamConn } from "./connect.ts";

/** Bytes a stream() consumer may leave unread before the socket is paused. */
const STREAM_AHEAD = 256 * 1024;

type Sink = { raw: boolean; write(bytes: Uint8Array): boolean; end(): void; fail(e: Error): void };

export class UpstreamBody implements RelaySource {
  private sink: Sink | null = null;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private finished = false;
  private failure: Error | null = null;
  private paused = false;

  constructor(
    private readonly conn: UpstreamConn,
    private readonly framer: BodyFramer,
    private readonly target: string,
    /** Called once when the body has ended by its framing: whether the bytes after it were none. */
    private readonly onEnd: (clean: boolean) => void,
    first: Buffer,
  ) {
    if (framer.done) {
      // No body by rule (HEAD, 204, 304, Content-Length: 0): the connection is free at once.
      this.finished = true;
      onEnd(first.length === 0);
      return;
    }
    conn.listener = { data: (b) => this.arrive(b), close: (e) => this.closed(e) };
    if (first.length > 0) this.pending.push(first);
  }

  /** How the upstream framed it: "length", "chunked", "close" or "none". */
  get framing(): string {
    return this.framer.framing;
  }

  get done(): boolean {
    return this.finished;
  }

  /** Passes the body's bytes as they came; `write` returning false pauses the upstream until `resume()`. */
  relay(write: (bytes: Uint8Array) => boolean): Promise<void> {
    return this.attach(true, write);
  }

  /** Passes the body's content (chunk framing removed) as it comes, with the same backpressure. */
  contents(write: (bytes: Uint8Array) => boolean): Promise<void> {
    return this.attach(false, write);
  }

  /** The content (chunk framing removed), whole, refused past `limit` bytes. */
  async readAll(limit: number): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    let size = 0;
    await this.attach(false, (b) => {
      size += b.byteLength;
      if (size > limit)
        throw new DialError("framing", this.target, { detail: `body larger than ${limit} bytes` });
      parts.push(b);
      return true;
    });
    return Buffer.concat(parts);
  }

  /**
   * The content as a ReadableStream, pulled: nothing is read until the first read, so a writer
   * that gets the stream untouched can still relay the raw bytes instead (relayed.ts). At most
   * STREAM_AHEAD bytes wait in the stream; then the socket is paused until the next pull.
   */
  stream(): ReadableStream<Uint8Array> {
    let started = false;
    return new ReadableStream<Uint8Array>(
      {
        pull: (c) => {
          if (started) return this.resume();
          started = true;
          this.attach(false, (b) => {
            c.enqueue(b);
            return (c.desiredSize ?? 0) > -STREAM_AHEAD;
          }).then(
            () => c.close(),
            (e: unknown) => c.error(e),
          );
        },
        cancel: () => this.cancel(),
      },
      // highWaterMark 0: no pull before somebody reads.
      { highWaterMark: 0, size: (b) => b?.byteLength ?? 0 },
    );
  }

  /** A consumer has taken the body (relay, contents, readAll or a stream that was read). */
  get consumed(): boolean {
    return this.sink !== null;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.flushPending();
    if (!this.paused && !this.conn.closed) this.conn.socket.resume();
  }

  /** The consumer is gone: the connection is not reused, unless the whole body had already come unread. */
  cancel(): void {
    if (this.finished) return;
    // Nobody read it (the mirror drops a 401's or a redirect's small body): what already came may
    // hold the whole body, and then the connection is as good as after a read.
    if (!this.sink && this.unreadBodyComplete()) return;
    this.finish(new DialError("other", this.target, { detail: "response body cancelled" }));
    this.conn.destroy();
  }

  /** Runs the bytes waiting for a consumer through the framer; true (and the body ended) if they hold all of it. */
  private unreadBodyComplete(): boolean {
    let clean = false;
    try {
      for (let i = 0; i < this.pending.length && !this.framer.done; i++) {
        const fed = this.framer.feed(this.pending[i] as Buffer);
        clean = fed.rest.byteLength === 0 && i === this.pending.length - 1;
      }
    } catch {
      return false;
    }
    if (!this.framer.done) return false;
    // As in deliver(): nothing may follow the body, here or in the kernel behind a paused socket.
    clean = clean && !this.paused && this.closedWith === undefined;
    this.finish(null);
    this.onEnd(clean);
    return true;
  }

  private attach(raw: boolean, write: (bytes: Uint8Array) => boolean): Promise<void> {
    if (this.sink) throw new Error("upstream body consumed twice");
    return new Promise<void>((resolve, reject) => {
      this.sink = { raw, write, end: resolve, fail: reject };
      if (this.failure) return reject(this.failure);
      if (this.finished) return resolve();
      // Paused only because nobody read yet: a consumer that arrives late must get the rest.
      this.paused = false;
      this.flushPending();
      if (!this.paused && !this.conn.closed) this.conn.socket.resume();
    });
  }

  private arrive(bytes: Buffer): void {
    if (this.finished) return;
    if (!this.sink || this.paused) {
      this.pending.push(bytes);
      this.pendingBytes += bytes.byteLength;
      // Before anyone reads, a little may wait (a small body usually follows its head in a read of
      // its own): pausing and resuming the socket for it would cost two syscalls per answer.
      if (this.sink || this.pendingBytes >= STREAM_AHEAD) this.pause();
      return;
    }
    this.deliver(bytes);
  }

  private flushPending(): void {
    while (this.pending.length > 0 && !this.paused && !this.finished) {
      const b = this.pending.shift() as Buffer;
      this.pendingBytes -= b.byteLength;
      this.deliver(b);
    }
    if (this.pending.length === 0 && this.closedWith !== undefined) this.closed(this.closedWith);
  }

  private deliver(bytes: Buffer): void {
    const sink = this.sink as Sink;
    let more = true;
    try {
      const fed = this.framer.feed(
        bytes,
        sink.raw ? undefined : (p) => (more = sink.write(p) && more),
      );
      if (sink.raw && fed.raw.byteLength > 0) more = sink.write(fed.raw);
      if (this.framer.done) {
        // Reusable only if nothing follows the body: not in this read, not queued behind it, and
        // not possibly waiting in the kernel behind a socket paused for backpressure (bytes the
        // upstream sent unasked would be the next request's "answer").
        const clean = fed.rest.byteLength === 0 && this.pending.length === 0 && !this.paused;
        this.finish(null);
        this.onEnd(clean);
        return;
      }
    } catch (e) {
      this.finish(
        e instanceof DialError
          ? e
          : new DialError("framing", this.target, {
              cause: e,
              detail: e instanceof Error ? e.message : String(e),
            }),
      );
      this.conn.destroy();
      return;
    }
    if (!more) this.pause();
  }

  private pause(): void {
    if (this.paused) return;
    this.paused = true;
    if (!this.conn.closed) this.conn.socket.pause();
  }

  private closed(error: Error | null): void {
    if (this.finished) return;
    // Bytes still queued behind a slow consumer are delivered before the end is judged.
    if (this.pending.length > 0 || !this.sink) {
      this.closedWith = error;
      return;
    }
    this.closedWith = undefined;
    if (this.framer.closed()) {
      this.finish(null);
      this.onEnd(false);
      return;
    }
    this.finish(
      new DialError(error ? "reset" : "framing", this.target, {
        cause: error ?? undefined,
        detail: "upstream closed before the end of the body",
      }),
    );
  }

  /** Set when the upstream closed while bytes still waited for the consumer. */
  private closedWith: Error | null | undefined = undefined;

  private finish(e: Error | null): void {
    if (this.finished) return;
    this.finished = true;
    this.pending = [];
    this.pendingBytes = 0;
    const sink = this.sink;
    if (e) this.failure = e;
    if (!sink) return;
    if (e) sink.fail(e);
    else sink.end();
  }
}
