/**
 * Turns the request body bytes arriving on a socket into a ReadableStream for fetch(),
 * with backpressure both ways: when the stream's queue is full the socket is paused, and
 * the consumer's pull() resumes it. Framing (length or chunked) decides where the body ends;
 * the bytes after it belong to the next request and are handed back.
 *
 * The queue is measured in what it costs to hold, not in payload bytes: a chunked body can carry
 * 4 KiB of extension per payload byte, and a 1-byte view of a socket read keeps the whole read
 * (up to 512 KiB) alive. So each queued piece is charged the wire bytes that produced it, the
 * buffer it pins, and a fixed cost per piece; small slices are copied out of large reads.
 */
import { HttpError } from "../errors.ts";
import { ChunkedDecoder } from "./chunked.ts";
import type { BodyFraming } from "./head.ts";

/** What the queue may hold (see above) before the socket is paused. */
const HIGH_WATER = 256 * 1024;
/** Charged per queued piece beyond its bytes (the objects around it), so a flood of tiny pieces counts too. */
const PIECE_COST = 512;

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
  /** Wire bytes read since the last queued piece (chunk lines, extensions, trailers): charged to the next piece. */
  private unchargedWire = 0;
  /** The charge of the piece being enqueued, read by the queue's size() during enqueue(). */
  private charge = 0;

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
      { highWaterMark: HIGH_WATER, size: () => this.charge },
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
    const parts: Uint8Array[] = [];
    let consumed: number;
    if (this.chunked) {
      consumed = this.chunked.feed(data, (p) => parts.push(p));
    } else {
      consumed = Math.min(this.remaining, data.byteLength);
      parts.push(data.subarray(0, consumed));
      this.remaining -= consumed;
    }
    this.emit(parts, consumed);
    if (this.chunked ? this.chunked.done : this.remaining === 0) this.finish();
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

  /** Queues the payload `parts` of one socket read, which took `wire` bytes of it, as one piece. */
  private emit(parts: Uint8Array[], wire: number): void {
    this.unchargedWire += wire;
    let n = 0;
    for (const p of parts) n += p.byteLength;
    if (n === 0) return;
    this.bytes += n;
    if (this.bytes > this.maxBytes) throw new HttpError(413, `request body exceeds limits.max_body (${this.maxBytes} bytes)`);
    if (this.cancelled) return;
    const only = parts.length === 1 ? (parts[0] as Uint8Array) : null;
    // A view that uses most of its buffer is passed as it is; anything else is copied out, so
    // what stays alive is the payload, not the socket reads it came in.
    const piece = only !== null && only.byteLength * 2 >= only.buffer.byteLength ? only : Buffer.concat(parts, n);
    this.charge = Math.max(this.unchargedWire, piece.buffer.byteLength) + PIECE_COST;
    this.unchargedWire = 0;
    this.ctrl.enqueue(piece);
    if ((this.ctrl.desiredSize ?? 0) <= 0) this.flow.pause();
  }

  private finish(): void {
    this.finished = true;
    if (!this.cancelled) this.ctrl.close();
  }
}
