/**
 * Incremental decoder for chunked bodies, a client's or an upstream's (RFC 9112 §7.1). It yields the payload bytes
 * and reports where the body ended in the input, so the bytes after it (a pipelined request)
 * stay with the connection. Chunk extensions and trailers are checked by their grammar
 * (chunk-fields.ts: an upstream's are relayed as they came) and left out of the payload. Both are
 * bounded, since they cost crm reading time and the client nothing: a chunk line (size and
 * extensions) to 4 KiB like Go and llhttp, the trailer section to a head's 64 KiB, and
 * the framing overhead against the data it frames (Go's rule, net/http/internal/chunked.go).
 */
import { HttpError } from "../errors.ts";
import { checkChunkExtensions, checkTrailerLine } from "./chunk-fields.ts";
import { MAX_HEAD, trimOwsEnd } from "./head.ts";

const MAX_LINE = 4096;
/** Overhead beyond 16 bytes per chunk plus twice its data that may pile up before the body is refused. */
const MAX_EXCESS = 16 * 1024;

type State = "size" | "data" | "data-crlf" | "trailer" | "done";

export class ChunkedDecoder {
  private state: State = "size";
  private line = "";
  private remaining = 0;
  private excess = 0;
  private trailerBytes = 0;

  get done(): boolean {
    return this.state === "done";
  }

  /**
   * Feeds bytes; calls `emit` with payload slices (views into `input`). Returns the number of
   * input bytes consumed: less than input.length only when the body ended inside it.
   */
  feed(input: Uint8Array, emit: (payload: Uint8Array) => void): number {
    let i = 0;
    while (i < input.length && this.state !== "done") {
      if (this.state === "data") {
        const n = Math.min(this.remaining, input.length - i);
        emit(input.subarray(i, i + n));
        i += n;
        this.remaining -= n;
        if (this.remaining === 0) this.state = "data-crlf";
        continue;
      }
      const byte = input[i++] as number;
      // After chunk data comes exactly CRLF; anything else is a framing error at once.
      if (this.state === "data-crlf" && (this.line === "" ? byte !== 0x0d : byte !== 0x0a)) {
        throw new HttpError(400, "missing CRLF after chunk data");
      }
      if (this.state === "trailer" && ++this.trailerBytes > MAX_HEAD) {
        throw new HttpError(
          431,
          `chunked trailer section too large (limit ${MAX_HEAD / 1024} KiB)`,
        );
      }
      if (byte !== 0x0a) {
        if (this.line.length >= MAX_LINE) {
          if (this.state === "trailer")
            throw new HttpError(
              431,
              `chunked trailer line too long (limit ${MAX_LINE / 1024} KiB)`,
            );
          throw new HttpError(
            400,
            `chunk size line too long (limit ${MAX_LINE / 1024} KiB, extensions included)`,
          );
        }
        this.line += String.fromCharCode(byte);
        continue;
      }
      if (!this.line.endsWith("\r")) throw new HttpError(400, "bare LF in chunked body");
      const line = this.line.slice(0, -1);
      this.line = "";
      if (this.state === "data-crlf") {
        if (line !== "") throw new HttpError(400, "missing CRLF after chunk data");
        this.state = "size";
      } else if (this.state === "size") {
        this.remaining = parseChunkSize(line);
        // The size line and the CRLF after the data are overhead; each chunk may bring 16 bytes of
        // it, plus twice its data: 1-byte chunks pass, kilobytes of extension per byte do not.
        this.excess = Math.max(0, this.excess + line.length + 4 - 16 - 2 * this.remaining);
        if (this.excess > MAX_EXCESS)
          throw new HttpError(
            400,
            "chunked body has too much framing for its data (chunk extensions)",
          );
        this.state = this.remaining === 0 ? "trailer" : "data";
      } else if (line === "") {
        this.state = "done";
      } else {
        checkTrailerLine(line);
      }
    }
    return i;
  }
}

function parseChunkSize(line: string): number {
  const semi = line.indexOf(";");
  // Only SP/HTAB may stand between the size and its extension (BWS, RFC 9112 §7.1.1).
  const hex = trimOwsEnd(semi < 0 ? line : line.slice(0, semi));
  // At most 12 hex digits (256 TiB): larger values are attacks on the arithmetic, not bodies.
  if (!/^[0-9a-fA-F]{1,12}$/.test(hex))
    throw new HttpError(400, `invalid chunk size ${JSON.stringify(hex.slice(0, 20))}`);
  if (semi >= 0) checkChunkExtensions(line.slice(semi));
  return parseInt(hex, 16);
}
