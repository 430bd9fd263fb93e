/**
 * A request body as its bytes arrive on the client socket, with backpressure both ways. The
 * forward path pipes it straight into the upstream socket's Outbox (`pipe`): a write the Outbox
 * cannot take pauses the client socket until the upstream drains, with no stream in between.
 * Code that wants a ReadableStream asks for `stream`. Framing (length or chunked) decides where
 * the body ends; the bytes after it belong to the next request and are handed back.
 *
 * What waits is measured in what it costs to hold, not in payload bytes: a chunked body can carry
 * 4 KiB of extension per payload byte, and a 1-byte view of a socket read keeps the whole read
 * (up to 512 KiB) alive. So each held piece is charged the wire bytes that produced it, the
 * buffer it pins, and a fixed cost per piece; small slices are copied out of large reads.
 */
import { HttpError } from "../errors.ts";
import { ChunkedDecoder } from "./chunked.ts";
import type { BodyFraming } from "./head.ts";

/** What may wait for the consumer (see above) before the socket is paused. */
const HIGH_WATER = 256 * 1024;
/** Charged per held piece beyond its bytes (the objects around it), so a flood of tiny pieces counts too. */
const PIECE_COST = 512;

export interface FlowControl {
  pause(): void;
  resume(): void;
}

/** Where the body's payload goes: `write` returning false means "hold on until resume()". */
interface Sink {
  write(piece: Uint8Array, charge: number): boolean;
  end(): void;
  fail(e: Error): void;
}

interface Held {
  piece: Uint8Array;
  charge: number;
}

export class BodyFeeder {
  private remaining: number;
  private readonly chunked: ChunkedDecoder | null;
  private finished = false;
  private failure: Error | null = null;
  private cancelled = false;
  private sink: Sink | null = null;
  /** Pieces read before a consumer came, or while it was full. */
  private held: Held[] = [];
  private heldCharge = 0;
  /** The consumer said "enough": nothing more is handed to it until resume(). */
  private full = false;
  /** The socket was paused for held pieces and not resumed since (so a full consumer need not pause it again). */
  private heldPaused = false;
  private streamed: ReadableStream<Uint8Array> | null = null;
  /** The sink was told the body's end (or failure). */
  private settled = false;
  /** Payload bytes received so far (for the log line). */
  bytes = 0;
  /** Wire bytes read since the last piece (chunk lines, extensions, trailers): charged to the next piece. */
  private unchargedWire = 0;

  constructor(
    framing: Exclude<BodyFraming, { kind: "none" }>,
    private readonly flow: FlowControl,
    /** A chunked body longer than this fails with 413 (a sized one is refused before reading). */
    private readonly maxBytes = Infinity,
  ) {
    this.remaining = framing.kind === "length" ? framing.length : Infinity;
    this.chunked = framing.kind === "chunked" ? new ChunkedDecoder() : null;
  }

  /** No more bytes belong to this body: it ended, or it failed. */
  get done(): boolean {
    return this.finished;
  }

  /** Whether the consumer has room for more bytes (the socket may be resumed). */
  get wantsMore(): boolean {
    return !this.finished && !this.full && this.heldCharge < HIGH_WATER;
  }

  /** The body's end was seen intact, so the connection can carry another request. */
  get complete(): boolean {
    return this.finished && this.failure === null;
  }

  /**
   * Hands the payload to `write` as it arrives; `write` returning false pauses the client socket
   * until `resume()`. Settles when the body has ended (or failed: the client went away, or sent
   * a malformed body).
   */
  pipe(write: (piece: Uint8Array) => boolean): Promise<void> {
    return new Promise<void>((resolve, reject) =>
      this.attach({ write: (p) => write(p), end: resolve, fail: reject }),
    );
  }

  /** The consumer has room again. */
  resume(): void {
    this.full = false;
    this.flushHeld();
    if (!this.full && !this.finished) this.resumeFlow();
  }

  /** The payload as a ReadableStream (made on first use; pulled, so the socket reads only while it wants more). */
  get stream(): ReadableStream<Uint8Array> {
    if (this.streamed) return this.streamed;
    let charge = 0;
    this.streamed = new ReadableStream<Uint8Array>(
      {
        start: (c) =>
          this.attach({
            write: (p, cost) => {
              charge = cost;
              c.enqueue(p);
              return (c.desiredSize ?? 0) > 0;
            },
            end: () => c.close(),
            fail: (e) => c.error(e),
          }),
        pull: () => this.resume(),
        cancel: () => this.cancel(),
      },
      { highWaterMark: HIGH_WATER, size: () => charge },
    );
    return this.streamed;
  }

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
    this.failure =
      err instanceof HttpError
        ? err
        : new Error("client closed the connection mid-body", { cause: err });
    this.held = [];
    this.heldCharge = 0;
    this.settle();
  }

  /**
   * The consumer gave up: the rest of the body is read and dropped until the connection is
   * closed after the response.
   */
  cancel(): void {
    this.cancelled = true;
    this.held = [];
    this.heldCharge = 0;
    this.full = false;
    this.resumeFlow();
  }

  private attach(sink: Sink): void {
    if (this.sink) throw new Error("request body consumed twice");
    this.sink = sink;
    this.flushHeld();
    if (!this.full && !this.finished && !this.cancelled) this.resumeFlow();
  }

  /** Queues the payload `parts` of one socket read, which took `wire` bytes of it, as one piece. */
  private emit(parts: Uint8Array[], wire: number): void {
    this.unchargedWire += wire;
    let n = 0;
    for (const p of parts) n += p.byteLength;
    if (n === 0) return;
    this.bytes += n;
    if (this.bytes > this.maxBytes)
      throw new HttpError(413, `request body exceeds limits.max_body (${this.maxBytes} bytes)`);
    if (this.cancelled) return;
    const only = parts.length === 1 ? (parts[0] as Uint8Array) : null;
    // A view that uses most of its buffer is passed as it is; anything else is copied out, so
    // what stays alive is the payload, not the socket reads it came in.
    const piece =
      only !== null && only.byteLength * 2 >= only.buffer.byteLength
        ? only
        : Buffer.concat(parts, n);
    const charge = Math.max(this.unchargedWire, piece.buffer.byteLength) + PIECE_COST;
    this.unchargedWire = 0;
    if (this.sink !== null && !this.full && this.held.length === 0) {
      if (!this.sink.write(piece, charge)) this.stop();
      return;
    }
    this.held.push({ piece, charge });
    this.heldCharge += charge;
    if (this.sink === null ? this.heldCharge >= HIGH_WATER : true) {
      this.heldPaused = true;
      this.flow.pause();
    }
  }

  private stop(): void {
    this.full = true;
    if (!this.heldPaused) this.flow.pause();
  }

  private resumeFlow(): void {
    this.heldPaused = false;
    this.flow.resume();
  }

  private flushHeld(): void {
    const sink = this.sink;
    if (sink === null || this.cancelled) return;
    while (this.held.length > 0 && !this.full) {
      const h = this.held.shift() as Held;
      this.heldCharge -= h.charge;
      if (!sink.write(h.piece, h.charge)) this.stop();
    }
    if (this.held.length === 0 && this.finished) this.settle();
  }

  private finish(): void {
    this.finished = true;
    if (this.held.length === 0) this.settle();
  }

  /** Tells the sink, once, that the body ended or failed. */
  private settle(): void {
    const sink = this.sink;
    if (sink === null || this.settled || this.cancelled) return;
    this.settled = true;
    if (this.failure) sink.fail(this.failure);
    else sink.end();
  }
}
