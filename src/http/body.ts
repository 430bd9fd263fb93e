/**
 * Turns the request body bytes arriving on a socket into a ReadableStream for fetch(),
 * with backpressure both ways: when the stream's queue is full the socket is paused, and
 * the consumer's pull() resumes it. Framing (length or chunked) decides where the body ends;
 * the bytes after it belong to the next request and are handed back.
 */
import { HttpError } from "../errors.ts";
import { ChunkedDecoder } from "./chunked.ts";
import type { BodyFraming } from "./head.ts";

const HIGH_WATER = 256 * 1024;

export interface FlowControl {
  pause(): void;
  resume(): void;
}

export class BodyFeeder {
  readonly stream: ReadableStream<Uint8Array>;
  private ctrl!: ReadableStreamDefaultController<Uint8Array>;
  private remaining: number;
  private readonly chunked: ChunkedDecoder | null;
  private finished = false;
  private cancelled = false;
  /** Payload bytes received so far (for the log line). */
  bytes = 0;

  constructor(
    framing: Exclude<BodyFraming, { kind: "none" }>,
    flow: FlowControl,
    /** A chunked body longer than this fails with 413 (a sized one is refused before reading). */
    private readonly maxBytes = Infinity,
  ) {
    this.remaining = framing.kind === "length" ? framing.length : Infinity;
    this.chunked = framing.kind === "chunked" ? new ChunkedDecoder() : null;
    this.stream = new ReadableStream<Uint8Array>(
      {
        start: (c) => {
          this.ctrl = c;
        },
        pull: () => flow.resume(),
        cancel: () => {
          // The consumer (fetch) gave up: the rest of the body is read and dropped until the
          // connection is closed after the response.
          this.cancelled = true;
          flow.resume();
        },
      },
      { highWaterMark: HIGH_WATER, size: (c) => c?.byteLength ?? 0 },
    );
    this.flow = flow;
  }
  private readonly flow: FlowControl;

  /** No more bytes belong to this body: it ended, or it failed. */
  get done(): boolean {
    return this.finished;
  }

  /** Whether the consumer has room for more bytes (the socket may be resumed). */
  get wantsMore(): boolean {
    return !this.finished && (this.ctrl.desiredSize ?? 0) > 0;
  }

  /** The body's end was seen intact, so the connection can carry another request. */
  get complete(): boolean {
    return this.finished && !this.failed;
  }
  private failed = false;

  /** Feeds socket bytes; returns what lies beyond the end of the body (or null). Throws HttpError 400. */
  feed(data: Buffer): Buffer | null {
    if (this.finished) return data;
    let consumed: number;
    if (this.chunked) {
      consumed = this.chunked.feed(data, (p) => this.emit(p));
      if (this.chunked.done) this.finish();
    } else {
      consumed = Math.min(this.remaining, data.byteLength);
      this.emit(data.subarray(0, consumed));
      this.remaining -= consumed;
      if (this.remaining === 0) this.finish();
    }
    return consumed < data.byteLength ? data.subarray(consumed) : null;
  }

  /** The client went away or sent garbage: the consumer sees an error, never a short "complete" body. */
  fail(err: Error): void {
    if (this.finished) return;
    this.finished = true;
    this.failed = true;
    if (!this.cancelled) {
      try {
        this.ctrl.error(err instanceof HttpError ? err : new Error("client closed the connection mid-body", { cause: err }));
      } catch {
        /* already errored */
      }
    }
  }

  private emit(p: Uint8Array): void {
    if (p.byteLength === 0) return;
    this.bytes += p.byteLength;
    if (this.bytes > this.maxBytes) throw new HttpError(413, `request body exceeds limits.max_body (${this.maxBytes} bytes)`);
    if (this.cancelled) return;
    this.ctrl.enqueue(p);
    if ((this.ctrl.desiredSize ?? 0) <= 0) this.flow.pause();
  }

  private finish(): void {
    this.finished = true;
    if (!this.cancelled) this.ctrl.close();
  }
}
