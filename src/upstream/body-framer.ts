/**
 * Finds where an upstream's response body ends in the bytes as they arrive, so crm can relay
 * them as they came (no re-encoding) and know when the connection is free for the next request.
 * A chunked body is checked chunk by chunk with the same decoder that reads clients' bodies:
 * what crm passes on is well framed, whatever the upstream sent.
 */
import { ChunkedDecoder } from "../http/chunked.ts";
import type { BodyFraming } from "../http/response-framing.ts";
import { HttpError } from "../errors.ts";

export interface Fed {
  /** The body's bytes in this input, as they came (chunk framing included). */
  raw: Uint8Array;
  /** Bytes after the body's end (an upstream that sent more than it framed). */
  rest: Uint8Array;
}

export class BodyFramer {
  private remaining: number;
  private readonly chunked: ChunkedDecoder | null;
  private ended: boolean;

  constructor(
    readonly framing: BodyFraming,
    contentLength: number | null,
  ) {
    this.remaining = framing === "length" ? (contentLength ?? 0) : 0;
    this.chunked = framing === "chunked" ? new ChunkedDecoder() : null;
    this.ended = framing === "none" || (framing === "length" && this.remaining === 0);
  }

  /** The body has ended by its framing (a close-delimited body ends only by `closed()`). */
  get done(): boolean {
    return this.ended;
  }

  /**
   * Feeds bytes; `payload` (optional) gets the body's content without chunk framing. Throws
   * HttpError (502) on a chunked body that breaks its framing.
   */
  feed(input: Uint8Array, payload?: (bytes: Uint8Array) => void): Fed {
    if (this.ended) return { raw: input.subarray(0, 0), rest: input };
    if (this.framing === "close") {
      payload?.(input);
      return { raw: input, rest: input.subarray(input.length) };
    }
    if (this.framing === "length") {
      const n = Math.min(this.remaining, input.length);
      this.remaining -= n;
      if (this.remaining === 0) this.ended = true;
      const raw = input.subarray(0, n);
      payload?.(raw);
      return { raw, rest: input.subarray(n) };
    }
    const decoder = this.chunked as ChunkedDecoder;
    let n: number;
    try {
      n = decoder.feed(input, payload ?? (() => {}));
    } catch (e) {
      throw new HttpError(
        502,
        `upstream's chunked body: ${e instanceof Error ? e.message : String(e)}`,
        { cause: e },
      );
    }
    if (decoder.done) this.ended = true;
    return { raw: input.subarray(0, n), rest: input.subarray(n) };
  }

  /** The upstream closed: whether the body was complete (only a close-delimited one ends so). */
  closed(): boolean {
    if (this.framing === "close") this.ended = true;
    return this.ended;
  }
}
