/**
 * A blob (or a manifest by digest) whose upstream body ends early (reset, truncated, a broken
 * chunk) is continued instead of cut: crm asks the registry again (through the whole upstream
 * path, so a fresh token or a fresh signed CDN redirect: those URLs expire) with
 * `Range: bytes=<next>-<end>`, checks the 206's Content-Range, and goes on writing the client's
 * body where it stopped. The client sees one whole answer and never retries.
 *
 * - Up to MAX_RESUMES re-requests per answer, each after a short back-off and logged; then the
 *   client's connection is cut as it was before (a truncated body, never a complete-looking one).
 * - An upstream that answers the range with 200 (no range support) is read past the bytes already
 *   sent, up to MAX_SKIP; further than that the answer ends as a failure.
 * - The coordinates are those of the first answer: a client's own Range (a 206) is continued
 *   exactly to its end; a 200 without a length learns its end from the first 206.
 * - An answer that goes silent mid-body (no byte for timeouts.upstream_header while the client
 *   is ready for more) counts as dropped.
 * - Only GET; HEAD has no body to resume (index.ts decides what is resumable).
 *
 * The body stays relayable (upstream/relayed.ts): the writer pipes it socket to socket as before,
 * this class only stands between two upstream answers.
 */
import type { Runtime } from "../../context.ts";
import { relayedBody, relayedResponse, type RelaySource } from "../../http/relayed.ts";
import { ChunkPosition } from "./chunk-position.ts";
import { meteredFetch, type MeteredRequest } from "./metered.ts";
import type { MirrorState } from "../state.ts";
import type { MirrorClient } from "./failover.ts";
import { labelValue } from "../../metrics.ts";

/** Re-requests per answer before the client's connection is cut. */
export const MAX_RESUMES = 3;
/** Bytes of a 200 crm reads and drops to reach the offset, when the upstream ignores Range. */
export const MAX_SKIP = 64 * 1024 * 1024;
/** Back-off before re-request n is n × this. */
const BACKOFF_MS = 200;
/** Bytes a stream() consumer may leave unread before the upstream is paused (as UpstreamBody). */
const STREAM_AHEAD = 256 * 1024;
const CRLF = Buffer.from("\r\n");
const LAST_CHUNK = Buffer.from("0\r\n\r\n");

/**
 * One request for a byte range of a blob, through the registry's whole upstream path (auth,
 * redirects, failover); its answer's body is relayable. The fan-out (mirror/fanout/) asks the same
 * way for a reader that left the shared download.
 */
export type RangeFetch = (range: string, signal: AbortSignal) => Promise<Response>;

/** The registry's answer to `base` with `Range: <range>` instead of the client's own. */
export function blobRangeFetch(
  rt: Runtime,
  state: MirrorState,
  client: MirrorClient,
  base: MeteredRequest,
  logFields: Record<string, string | number>,
): RangeFetch {
  return async (range, signal) => {
    const headers = new Headers(base.headers);
    headers.delete("if-range");
    headers.set("range", range);
    const result = await meteredFetch(rt, state, client, { ...base, headers, signal }, logFields);
    return result.response;
  };
}

/** `bytes a-b/total` (total may be `*`); null for anything else. */
export function parseContentRange(
  v: string | null,
): { start: number; end: number; total: number | null } | null {
  if (v === null || v.length > 100) return null;
  const m = /^\s*bytes\s+(\d{1,15})-(\d{1,15})\/(\d{1,15}|\*)\s*$/i.exec(v);
  if (!m) return null;
  const start = Number(m[1]);
  const end = Number(m[2]);
  const total = m[3] === "*" ? null : Number(m[3]);
  if (end < start || (total !== null && end >= total)) return null;
  return { start, end, total };
}

/** Counts per registry for /metrics and the status page. */
export class ResumeStats {
  /** registry\nresult → count. Results: continued (a re-request's answer was taken), refused (it failed or did not fit), exhausted (the client's body was cut). */
  private readonly counts = new Map<string, number>();

  count(registry: string, result: "continued" | "refused" | "exhausted"): void {
    const k = `${registry}\n${result}`;
    this.counts.set(k, (this.counts.get(k) ?? 0) + 1);
  }

  views(): Array<{ registry: string; continued: number; refused: number; exhausted: number }> {
    const by = new Map<
      string,
      { registry: string; continued: number; refused: number; exhausted: number }
    >();
    for (const [k, n] of this.counts) {
      const [registry, result] = k.split("\n") as [string, "continued" | "refused" | "exhausted"];
      const v = by.get(registry) ?? { registry, continued: 0, refused: 0, exhausted: 0 };
      v[result] += n;
      by.set(registry, v);
    }
    return [...by.values()];
  }

  metricLines(): string[] {
    const out = [
      "# HELP crm_mirror_blob_resumes_total Re-requests for the rest of a blob whose upstream body ended early, by result (continued, refused, exhausted: the client's body was cut).",
      "# TYPE crm_mirror_blob_resumes_total counter",
    ];
    for (const [k, n] of this.counts) {
      const [registry, result] = k.split("\n") as [string, string];
      out.push(
        `crm_mirror_blob_resumes_total{registry="${labelValue(registry)}",result="${result}"} ${n}`,
      );
    }
    return out;
  }
}

const stats = new WeakMap<Runtime, ResumeStats>();

export function resumeStats(rt: Runtime): ResumeStats {
  let s = stats.get(rt);
  if (!s) {
    const made = new ResumeStats();
    rt.metrics.sections.push(() => made.metricLines());
    stats.set(rt, made);
    s = made;
  }
  return s;
}

export interface ResumeContext {
  rt: Runtime;
  /**
   * An upstream body that sends nothing for this long while the client is ready for more is taken
   * as dropped and resumed (timeouts.upstream_header: the upstream had as long to start answering).
   */
  idleMs: number;
  registry: string;
  /** The digest, for log lines. */
  what: string;
  request: RangeFetch;
  /** The client's request: gone, nothing is re-requested. */
  signal: AbortSignal;
  logFields: Record<string, string | number>;
}

/**
 * The client's answer with a body that resumes; `res` unchanged when it has nothing to resume
 * (an error, no body, a multipart range answer, a body that already came whole).
 */
export function resumable(res: Response, ctx: ResumeContext): Response {
  if (res.status !== 200 && res.status !== 206) return res;
  const first = relayedBody(res);
  if (first === null || first.done) return res;
  let start = 0;
  let end: number | null;
  if (res.status === 206) {
    if (/multipart/i.test(res.headers.get("content-type") ?? "")) return res;
    const cr = parseContentRange(res.headers.get("content-range"));
    if (cr === null) return res;
    start = cr.start;
    end = cr.end;
  } else {
    const len = res.headers.get("content-length");
    end = len !== null && /^\d{1,15}$/.test(len) ? Number(len) - 1 : null;
    if (end !== null && end < 0) return res;
  }
  const body = new ResumingBody(first, start, end, ctx);
  return relayedResponse(body, {
    status: res.status,
    statusText: res.statusText,
    headers: res.headers,
  });
}

type Write = (bytes: Uint8Array) => boolean;

class ResumingBody implements RelaySource {
  readonly framing: string;
  private cur: RelaySource;
  private sink: Write | null = null;
  private finished = false;
  private cancelled = false;
  /** Content bytes handed to the client so far. */
  private delivered = 0;
  /** Bytes of the current answer to drop first (a 200 to a range). */
  private skip = 0;
  private resumes = 0;
  /** When the last byte came (or the client was last ready), for the idle check. */
  private lastByte = 0;
  /** The client is not ready (its write said "enough"): silence is then not the upstream's fault. */
  private held = false;
  /** Between answers (back-off, re-request): no idle check. */
  private between = false;
  /** Set when the idle check cancelled the current answer: its failure is a stall, not a cancel. */
  private stalled = false;

  constructor(
    first: RelaySource,
    /** Absolute offset of the first byte of the client's body. */
    private readonly start: number,
    /** Absolute offset of its last byte; null until an answer says (a 200 without a length). */
    private end: number | null,
    private readonly ctx: ResumeContext,
  ) {
    this.cur = first;
    // A chunked first answer keeps its own framing on the way to a client that takes chunks (its
    // chunk extensions and sizes, as crm relays any body); otherwise content, framed by the writer.
    this.passChunks = first.framing === "chunked";
    this.framing = this.passChunks ? "chunked" : end === null ? "close" : "length";
  }

  private readonly passChunks: boolean;
  /** Where the upstream's chunk framing, relayed as it came, stands (raw mode only). */
  private readonly position = new ChunkPosition();
  /** Raw mode after a resume: crm frames the rest itself, after finishing the cut chunk. */
  private ownChunks = false;

  /** In raw mode after a resume: the rest of the upstream's cut chunk first, then crm's own chunks. */
  private writeOwn(write: Write, content: Uint8Array): boolean {
    let b = content;
    let more = true;
    const pos = this.position;
    if (pos.state === "data" && pos.owed > 0) {
      const n = Math.min(pos.owed, b.byteLength);
      more = write(b.subarray(0, n)) && more;
      pos.owed -= n;
      b = b.subarray(n);
      if (pos.owed === 0) {
        pos.state = "data-crlf";
        pos.crlfOwed = 2;
      }
    }
    if (pos.state === "data-crlf" && pos.crlfOwed > 0) {
      more = write(CRLF.subarray(2 - pos.crlfOwed)) && more;
      pos.crlfOwed = 0;
      pos.state = "size";
    }
    if (b.byteLength === 0) return more;
    more = write(Buffer.from(`${b.byteLength.toString(16)}\r\n`, "latin1")) && more;
    more = write(b) && more;
    return write(CRLF) && more;
  }

  get done(): boolean {
    return this.finished;
  }

  get consumed(): boolean {
    return this.sink !== null;
  }

  relay(write: Write): Promise<void> {
    return this.run(write, this.passChunks);
  }

  contents(write: Write): Promise<void> {
    return this.run(write, false);
  }

  resume(): void {
    this.held = false;
    this.lastByte = performance.now();
    this.cur.resume();
  }

  cancel(): void {
    if (this.finished) return;
    this.cancelled = true;
    this.finished = true;
    this.cur.cancel();
  }

  stream(): ReadableStream<Uint8Array> {
    let started = false;
    // Once the reader cancelled, the controller is closed: enqueue/close/error on it would throw
    // (an unhandled rejection), and the last bytes or the end may still come after a cancel.
    let open = true;
    return new ReadableStream<Uint8Array>(
      {
        pull: (c) => {
          if (started) return this.resume();
          started = true;
          this.run((b) => {
            if (!open) return false;
            c.enqueue(b);
            return (c.desiredSize ?? 0) > -STREAM_AHEAD;
          }, false).then(
            () => {
              if (open) c.close();
            },
            (e: unknown) => {
              if (open) c.error(e);
            },
          );
        },
        cancel: () => {
          open = false;
          this.cancel();
        },
      },
      { highWaterMark: 0, size: (b) => b?.byteLength ?? 0 },
    );
  }

  private get expected(): number | null {
    return this.end === null ? null : this.end - this.start + 1;
  }

  /** `raw`: the writer passes the upstream's chunk framing on (relay of a chunked first answer). */
  private async run(write: Write, raw: boolean): Promise<void> {
    if (this.sink) throw new Error("resumable body consumed twice");
    this.sink = write;
    this.lastByte = performance.now();
    const idleMs = this.ctx.idleMs;
    const idle = setInterval(
      () => {
        if (
          this.held ||
          this.between ||
          this.finished ||
          performance.now() - this.lastByte <= idleMs
        )
          return;
        // The upstream went silent mid-body with the connection open: as good as dropped.
        this.stalled = true;
        this.cur.cancel();
      },
      Math.max(25, Math.floor(idleMs / 4)),
    );
    try {
      await this.relayAll(write, raw);
    } finally {
      clearInterval(idle);
    }
  }

  private async relayAll(write: Write, raw: boolean): Promise<void> {
    for (;;) {
      const body = this.cur;
      let full = false;
      try {
        if (raw && !this.ownChunks) {
          // The first answer, chunked, relayed as it came: follow its framing to count content.
          await body.relay((chunk) => {
            this.delivered += this.position.feed(chunk);
            this.lastByte = performance.now();
            const more = write(chunk);
            if (!more) this.held = true;
            return more;
          });
          return this.succeed();
        }
        // Raw bytes are the content unless the upstream chunked it (relay skips the framer's copy).
        await (body.framing === "chunked" ? body.contents.bind(body) : body.relay.bind(body))(
          (chunk) => {
            let b = chunk;
            if (this.skip > 0) {
              if (b.byteLength <= this.skip) {
                this.skip -= b.byteLength;
                return true;
              }
              b = b.subarray(this.skip);
              this.skip = 0;
            }
            const expected = this.expected;
            if (expected !== null && this.delivered + b.byteLength >= expected) {
              // The client's last byte: a 200 read past a range may go on; it is dropped (below).
              b = b.subarray(0, expected - this.delivered);
              full = true;
              queueMicrotask(() => {
                if (!body.done) body.cancel();
              });
            }
            this.delivered += b.byteLength;
            this.lastByte = performance.now();
            if (b.byteLength === 0) return !full;
            const more = this.ownChunks ? this.writeOwn(write, b) : write(b);
            if (!more) this.held = true;
            return more && !full;
          },
        );
        const expected = this.expected;
        if (expected === null || this.delivered >= expected) return this.succeed(write);
        throw new Error(`upstream body ended after ${this.delivered} of ${expected} bytes`);
      } catch (e) {
        if (full) return this.succeed(write);
        if (this.cancelled || this.ctx.signal.aborted) throw e;
        if (raw && !this.ownChunks) {
          // The client has seen part of a chunk-size line: nothing crm sends next can be framed right.
          if (!this.position.resumable) throw e;
          this.ownChunks = true;
        }
        const cause = this.stalled
          ? new Error(`upstream sent nothing for ${this.ctx.idleMs} ms mid-body`, { cause: e })
          : e;
        this.stalled = false;
        this.between = true;
        try {
          await this.reopen(cause);
        } finally {
          this.between = false;
          this.lastByte = performance.now();
        }
      }
    }
  }

  private succeed(write?: Write): void {
    // crm's own chunks end with its own last chunk (the upstream's never came).
    if (this.ownChunks && write) write(LAST_CHUNK);
    this.finished = true;
    if (this.resumes > 0) this.ctx.logFields.resumes = this.resumes;
  }

  /** Re-requests until an answer continues the body; throws (the client is cut) after MAX_RESUMES. */
  private async reopen(cause: unknown): Promise<void> {
    const { rt, registry } = this.ctx;
    const stats = resumeStats(rt);
    let last = cause;
    for (;;) {
      const reason = last instanceof Error ? last.message : String(last);
      const at = this.start + this.delivered;
      if (this.resumes >= MAX_RESUMES) {
        stats.count(registry, "exhausted");
        rt.log.warn("mirror blob resume gave up; the client's body is cut", {
          registry,
          digest: this.ctx.what,
          at,
          resumes: this.resumes,
          reason: reason.slice(0, 300),
        });
        this.ctx.logFields.resumes = this.resumes;
        this.finished = true;
        throw last;
      }
      this.resumes++;
      rt.log.info("mirror blob resume", {
        registry,
        digest: this.ctx.what,
        at,
        attempt: this.resumes,
        reason: reason.slice(0, 300),
      });
      await Bun.sleep(BACKOFF_MS * this.resumes);
      if (this.cancelled || this.ctx.signal.aborted) throw last;
      let taken = false;
      try {
        await this.continueAt(at);
        taken = true;
      } catch (e) {
        stats.count(registry, "refused");
        last = e;
      }
      if (taken) {
        if (this.cancelled) {
          // The client left while crm was asking: the new answer is nobody's.
          this.cur.cancel();
          throw last;
        }
        stats.count(registry, "continued");
        return;
      }
    }
  }

  /** Asks for the bytes from `at` and takes the answer if it continues the body exactly. */
  private async continueAt(at: number): Promise<void> {
    const to = this.end;
    const res = await this.ctx.request(`bytes=${at}-${to ?? ""}`, this.ctx.signal);
    const drop = async (why: string): Promise<never> => {
      await res.body?.cancel().catch(() => {});
      throw new Error(why);
    };
    const body = relayedBody(res);
    if (res.status === 206) {
      const cr = parseContentRange(res.headers.get("content-range"));
      if (cr === null || cr.start !== at || (to !== null && cr.end !== to)) {
        return drop(
          `the resumed answer's Content-Range ${JSON.stringify(res.headers.get("content-range")?.slice(0, 80) ?? null)} is not bytes ${at}-${to ?? ""}`,
        );
      }
      if (body === null) return drop("the resumed answer has no body");
      this.end = cr.end;
      this.cur = body;
      this.skip = 0;
      return;
    }
    if (res.status === 200) {
      if (at > MAX_SKIP)
        return drop(
          `the upstream ignores Range: ${at} bytes would have to be read and dropped (more than ${MAX_SKIP})`,
        );
      const len = res.headers.get("content-length");
      if (len !== null && to !== null && Number(len) <= to)
        return drop(`the whole answer has ${len} bytes, fewer than the ${to + 1} expected`);
      if (body === null) return drop("the resumed answer has no body");
      this.cur = body;
      this.skip = at;
      return;
    }
    return drop(`the upstream answered ${res.status} to the resume`);
  }
}
