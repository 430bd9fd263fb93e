/**
 * Where a chunked body relayed as it came stands, byte by byte: in a chunk-size line, inside a
 * chunk's data (and how much of it is still owed), in the CRLF after the data, or in the trailer.
 * resume.ts needs it to continue a chunked answer that was cut: the client has already seen a
 * chunk-size line, so the rest of that chunk must come before crm's own chunks. The syntax itself
 * is checked by the upstream client's decoder (upstream/body-framer.ts); this only follows it, so a
 * size line is bounded but not validated twice.
 */

/** Longest chunk-size line (with extensions) followed; the decoder refuses longer ones anyway. */
const MAX_LINE = 4096;

export type ChunkState = "size" | "data" | "data-crlf" | "trailer" | "done";

export class ChunkPosition {
  state: ChunkState = "size";
  /** Data bytes of the current chunk not yet seen (state "data"). */
  owed = 0;
  /** CRLF bytes after the data not yet seen (state "data-crlf"). */
  crlfOwed = 0;
  /** Bytes of the size line (or trailer line) seen so far. */
  private line = "";

  /** Follows `raw`; returns how many content (data) bytes it held. */
  feed(raw: Uint8Array): number {
    let content = 0;
    let i = 0;
    while (i < raw.length && this.state !== "done") {
      if (this.state === "data") {
        const n = Math.min(this.owed, raw.length - i);
        this.owed -= n;
        content += n;
        i += n;
        if (this.owed === 0) {
          this.state = "data-crlf";
          this.crlfOwed = 2;
        }
        continue;
      }
      if (this.state === "data-crlf") {
        i++;
        if (--this.crlfOwed === 0) this.state = "size";
        continue;
      }
      // "size" or "trailer": a line up to LF.
      const lf = raw.indexOf(0x0a, i);
      const end = lf < 0 ? raw.length : lf;
      if (this.line.length < MAX_LINE)
        this.line += Buffer.from(raw.subarray(i, Math.min(end, i + MAX_LINE))).toString("latin1");
      i = end;
      if (lf < 0) break;
      i = lf + 1;
      const line = this.line.replace(/\r$/, "");
      this.line = "";
      if (this.state === "trailer") {
        if (line === "") this.state = "done";
        continue;
      }
      const size = parseInt(/^[0-9a-fA-F]+/.exec(line)?.[0] ?? "0", 16);
      if (size === 0) this.state = "trailer";
      else {
        this.state = "data";
        this.owed = size;
      }
    }
    return content;
  }

  /** The client can be given the rest of the body with crm's own chunks from here. */
  get resumable(): boolean {
    return (
      this.state === "data" ||
      this.state === "data-crlf" ||
      (this.state === "size" && this.line === "")
    );
  }
}
