/**
 * One upstream download of a blob, read by several clients at once (issue 19 §1).
 *
 * The upstream body is read into a window of recent bytes (a list of the chunks as they came,
 * never copied); each reader is a pulled ReadableStream with its own offset into it. Memory is
 * bounded by the window plus a small read-ahead: the upstream is read only while the fastest
 * attached reader is within READ_AHEAD of the newest byte (so never faster than that reader), and
 * the chunks older than `window` bytes behind the newest are dropped. A reader whose offset falls
 * behind the window's start (a slow client, or one paced by client_bandwidth) is detached: it
 * neither slows the others nor pins memory, and continues from its own offset on its own upstream
 * request (`Range: bytes=<offset>-`), so its client still sees one whole answer. Before that, the
 * upstream waits for a reader at the window's edge, at most `lagGraceMs` in total per download
 * (mirror.fanout.lag_grace, however many readers stall): a client that stalls for a moment (a descheduled process, a lost
 * packet) then costs the others that moment rather than a second upstream download, and one that
 * stays slow is detached once its grace is spent and holds no one back again.
 *
 * Hashing: a download that only ever had one reader is not hashed (that is today's pass-through,
 * and a single pull must not pay for a digest its client checks anyway). When a second reader
 * joins, byte 0 is still in the window (joining is only allowed then), so the hash catches up on
 * the window and follows the stream from there. While a download is hashed, every reader's last
 * byte is held back until the digest is known: on a mismatch each reader's stream fails before
 * its last byte, which the writer turns into a cut connection, never a clean end.
 *
 * A detached reader checks its own bytes: the hash state at each chunk's start is kept with the
 * window (CryptoHasher.copy(), a few hundred bytes each), so at the detach point the reader takes
 * the hash of bytes [0, its offset), adds its own request's bytes, and holds its last byte until
 * its own digest is known. It never waits on the shared download's verdict (which needs every
 * attached reader to finish, however slow), and neither a shared download that ends unchecked
 * (its last attached reader left, the upstream broke off) nor a corrupted own answer can give it
 * a clean end with wrong bytes.
 *
 * When the last attached reader leaves, the upstream download is cancelled.
 *
 * A reader is handed to the writer as a RelaySource (upstream/relayed.ts): the writer pushes its
 * bytes into the client's socket as they come (`relay`), with no stream and no promise per chunk,
 * the way it relays an upstream socket's body; code that wraps streams (bandwidth pacing) gets a
 * pulled ReadableStream instead (`stream`). Both read the same window by the same rules.
 */
import { relayedBody, type RelaySource } from "../../http/relayed.ts";

/** What is read from a body: the part of a stream reader used here. */
export interface ChunkReader {
  read(): Promise<{ done: true; value?: undefined } | { done: false; value: Uint8Array }>;
  cancel(reason?: unknown): Promise<void>;
}

/** A reader's own upstream request for bytes [from, to] (inclusive), and how many leading bytes of its body to skip (an upstream that answered a range with 200). */
export type OwnRequest = (
  from: number,
  to: number,
  signal: AbortSignal,
) => Promise<{ reader: ChunkReader; skip: number }>;

export interface DownloadObserver {
  /** A reader fell behind the window and continues on its own request. */
  detached(): void;
  /** The bytes did not match the digest; every reader is being cut. */
  mismatch(expected: string, got: string): void;
  /** No new reader may join any more (byte 0 left the window, the download failed or was cancelled). */
  unjoinable(): void;
  /** Nothing is left: no reader, no upstream; the window's memory is released. */
  disposed(): void;
  /** The upstream waited this long for a reader at the window's edge (lag_grace). */
  waited(ms: number): void;
}

type Verdict = "pending" | "ok" | "mismatch" | "unchecked";

class Reader {
  attached = true;
  gone = false;
  failure: Error | null = null;
  /** Called when bytes (or the verdict) arrive for a reader waiting for them. */
  wake: (() => void) | null = null;
  /** Push mode: the writer's sink, paused when it said "enough", and how the relay promise ends. */
  sink: ((bytes: Uint8Array) => boolean) | null = null;
  paused = false;
  feeding = false;
  pumping = false;
  settle: { resolve(): void; reject(e: Error): void } | null = null;
  /** Pull mode: the stream's controller, errored at once when the download fails. */
  ctrl: ReadableStreamDefaultController<Uint8Array> | null = null;
  streamed = false;
  /** What is left of the time this reader may hold the download back (mirror.fanout.lag_grace). */
  graceMs: number;
  own: ChunkReader | null = null;
  ownSkip = 0;
  ownAbort: AbortController | null = null;
  /** The last byte of an own request's body, held until the reader's own digest is known. */
  held: Uint8Array | null = null;
  /** A detached reader's hash of every byte it was given (null when the download was not hashed). */
  hasher: Bun.CryptoHasher | null = null;
  constructor(
    public pos: number,
    /** Exclusive. */
    readonly end: number,
    readonly ownRequest: OwnRequest,
    graceMs: number,
  ) {
    this.graceMs = graceMs;
  }
}

/** Bytes the upstream may be read ahead of the fastest reader (a few socket reads). */
const MAX_READ_AHEAD = 1024 * 1024;

export class SharedDownload {
  private readonly chunks: Uint8Array[] = [];
  private readonly starts: number[] = [];
  /** Index of the oldest chunk kept in `chunks`. */
  private first = 0;
  /** Absolute offset of the oldest byte kept. */
  private base = 0;
  /** Bytes received from the upstream. */
  private received = 0;
  /** Bytes held in the window now (for /metrics). */
  retained = 0;
  private readonly readers = new Set<Reader>();
  private attachedCount = 0;
  /** Offset of the fastest attached reader. */
  private fastest = 0;
  private waiters: Reader[] = [];
  private hasher: Bun.CryptoHasher | null = null;
  /** While hashed: the hash state before each chunk in `chunks` (same index), for readers that detach. */
  private readonly snaps: Array<Bun.CryptoHasher | null> = [];
  private verdict: Verdict = "pending";
  private started = false;
  private finished = false;
  private paused = false;
  private joinable = true;
  private disposedAlready = false;
  private body: RelaySource | null = null;
  private pump: ChunkReader | null = null;
  private resumePump: (() => void) | null = null;
  private readonly readAhead: number;
  /**
   * What is left of the time this download may wait for readers at its window's edge, all of
   * them together: K stalled readers must not hold the others K × lag_grace.
   */
  private graceLeftMs: number;
  /** The reader the upstream waits for now (it is at the window's edge), since when, and the timer that ends its grace. */
  private hold: { reader: Reader; since: number; timer: ReturnType<typeof setTimeout> } | null =
    null;

  constructor(
    private readonly res: Response,
    /** Content-Length of the upstream's 200. */
    readonly total: number,
    private readonly digest: { algorithm: "sha256" | "sha512"; hex: string },
    private readonly window: number,
    private readonly observer: DownloadObserver,
    private readonly lagGraceMs = 0,
  ) {
    this.readAhead = Math.min(MAX_READ_AHEAD, Math.max(64 * 1024, Math.floor(window / 4)));
    this.graceLeftMs = lagGraceMs;
  }

  get canJoin(): boolean {
    return this.joinable;
  }

  /** Readers still reading (attached or on their own request). */
  get readerCount(): number {
    return this.readers.size;
  }

  /**
   * A new reader for bytes [start, end) (end exclusive, at most `total`), or null when the bytes
   * from `start` on are no longer all here or to come (the caller makes its own request).
   * Only ranges that end at the blob's end share: a reader's last byte is what is held back until
   * the digest is known, so a range ending earlier would get a clean end before any verdict.
   */
  join(
    start: number,
    end: number,
    signal: AbortSignal,
    ownRequest: OwnRequest,
  ): RelaySource | null {
    if (this.refusal(start, end) !== null) return null;
    const r = new Reader(start, end, ownRequest, this.lagGraceMs);
    this.readers.add(r);
    this.attachedCount++;
    if (this.readers.size > 1 && this.hasher === null) this.startHashing();
    const onAbort = (): void => this.cut(r, new Error("client gone"));
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
    if (!this.started) this.start();
    return new ReaderBody(this, r);
  }

  /**
   * Why a reader for [start, end) may not join now, or null if it may: "ended" (the download
   * failed or was cancelled), "late" (byte 0 left the window), "range" (the range does not reach
   * the blob's end, or starts beyond the bytes received and the read-ahead: a joiner that far
   * ahead would set the pace without reading).
   */
  refusal(start: number, end: number): "ended" | "late" | "range" | null {
    if (this.finished && this.verdict !== "ok" && this.verdict !== "pending") return "ended";
    if (!this.joinable || start < this.base) return "late";
    if (end !== this.total || start > end || start > this.received + this.readAhead) return "range";
    return null;
  }

  // ------------------------------------------------------------------ upstream side

  private start(): void {
    this.started = true;
    const body = relayedBody(this.res);
    if (body !== null) {
      this.body = body;
      body
        .contents((b) => this.arrive(b))
        .then(
          () => this.complete(),
          (e: unknown) => this.upstreamFailed(e),
        );
      return;
    }
    // Not an upstream socket body (a plain stream): pumped with the same backpressure rule.
    const stream = this.res.body;
    if (stream === null) {
      this.complete();
      return;
    }
    const reader: ChunkReader = stream.getReader();
    this.pump = reader;
    void (async () => {
      try {
        for (;;) {
          if (this.paused) await new Promise<void>((resolve) => (this.resumePump = resolve));
          if (this.finished) return;
          const { done, value } = await reader.read();
          if (done) break;
          if (!this.arrive(value)) this.paused = true;
        }
        this.complete();
      } catch (e) {
        this.upstreamFailed(e);
      }
    })();
  }

  /** One chunk from the upstream; the answer says whether to keep reading. */
  private arrive(b: Uint8Array): boolean {
    if (this.finished || b.byteLength === 0) return !this.finished;
    if (this.received + b.byteLength > this.total) {
      this.fail(
        new Error(`upstream sent more than its Content-Length of ${this.total} bytes`),
        "unchecked",
      );
      return false;
    }
    if (this.hasher !== null) {
      this.snaps.push(this.hasher.copy());
      this.hasher.update(b);
    } else this.snaps.push(null);
    this.chunks.push(b);
    this.starts.push(this.received);
    this.received += b.byteLength;
    this.retained += b.byteLength;
    this.trim();
    this.wakeAll();
    const more = this.wantMore();
    if (!more) this.paused = true;
    return more;
  }

  /**
   * Whether to read on from the upstream: only while the fastest attached reader is within the
   * read-ahead of the newest byte, and not while a reader with grace left would be pushed out of
   * the window by the next read (the upstream waits for it, up to its grace; then it is detached).
   */
  private wantMore(): boolean {
    if (this.finished || this.attachedCount === 0) return false;
    if (this.received - this.fastest >= this.readAhead) return false;
    let slowest: Reader | null = null;
    for (const r of this.readers)
      if (r.attached && r.pos < r.end && (slowest === null || r.pos < slowest.pos)) slowest = r;
    // A window that holds the whole blob never pushes anyone out: no reason to wait.
    const atEdge =
      slowest !== null &&
      slowest.graceMs > 0 &&
      this.graceLeftMs > 0 &&
      this.window < this.total &&
      this.received - slowest.pos >= this.window - this.readAhead &&
      this.received < this.total;
    if (!atEdge) {
      this.endHold();
      return true;
    }
    if (this.hold === null || this.hold.reader !== slowest) {
      this.endHold();
      const reader = slowest as Reader;
      const timer = setTimeout(
        () => {
          // Its grace is spent: it goes on its own request when the next read leaves it behind.
          if (this.hold?.reader !== reader) return;
          const downloadLimited = this.graceLeftMs <= reader.graceMs;
          this.endHold();
          reader.graceMs = 0;
          if (downloadLimited) this.graceLeftMs = 0;
          this.resumeIfWanted();
        },
        Math.min(reader.graceMs, this.graceLeftMs),
      );
      this.hold = { reader, since: performance.now(), timer };
    }
    return false;
  }

  private endHold(): void {
    const h = this.hold;
    if (h === null) return;
    this.hold = null;
    clearTimeout(h.timer);
    const ms = performance.now() - h.since;
    h.reader.graceMs = Math.max(0, h.reader.graceMs - ms);
    this.graceLeftMs = Math.max(0, this.graceLeftMs - ms);
    this.observer.waited(ms);
  }

  private resumeIfWanted(): void {
    if (this.paused && this.wantMore()) this.resumeUpstream();
  }

  private complete(): void {
    if (this.finished) return;
    if (this.received !== this.total) {
      this.upstreamFailed(
        new Error(`upstream body ended after ${this.received} of ${this.total} bytes`),
      );
      return;
    }
    this.finished = true;
    this.endHold();
    if (this.hasher !== null) this.judge();
    this.wakeAll();
    this.maybeDispose();
  }

  private upstreamFailed(e: unknown): void {
    if (this.finished) return;
    const err = e instanceof Error ? e : new Error(String(e));
    // Attached readers cannot get the rest from here: their clients see a cut body, as without fan-out.
    this.fail(
      new Error(`shared upstream download failed: ${err.message}`, { cause: err }),
      "unchecked",
      true,
    );
  }

  private judge(): void {
    const got = (this.hasher as Bun.CryptoHasher).digest("hex");
    if (got === this.digest.hex) {
      this.verdict = "ok";
      return;
    }
    this.observer.mismatch(
      `${this.digest.algorithm}:${this.digest.hex}`,
      `${this.digest.algorithm}:${got}`,
    );
    this.fail(
      new Error(`blob bytes do not match ${this.digest.algorithm}:${this.digest.hex}`),
      "mismatch",
    );
  }

  /**
   * Ends the download. "mismatch" cuts every reader, attached or on its own request; otherwise
   * only the attached ones when `cutAttached` (the upstream broke off); readers on their own
   * request go on and check their own bytes.
   */
  private fail(err: Error, verdict: Verdict, cutAttached = verdict === "mismatch"): void {
    const wasFinished = this.finished;
    this.finished = true;
    this.endHold();
    this.verdict = verdict;
    this.unlist();
    if (!wasFinished) this.stopUpstream();
    for (const r of [...this.readers]) {
      // Cut at once, not at the reader's next read: a client that is not reading now must not
      // keep its connection (and a paced one must not get its last byte later).
      if (verdict === "mismatch" || (cutAttached && r.attached)) this.cut(r, err);
    }
    this.wakeAll();
    this.maybeDispose();
  }

  private stopUpstream(): void {
    this.body?.cancel();
    if (this.pump !== null) void this.pump.cancel().catch(() => {});
    else if (this.body === null) void this.res.body?.cancel().catch(() => {});
    this.resumePump?.();
  }

  private resumeUpstream(): void {
    if (!this.paused || this.finished) return;
    this.paused = false;
    if (this.body !== null) this.body.resume();
    else {
      const r = this.resumePump;
      this.resumePump = null;
      r?.();
    }
  }

  private startHashing(): void {
    // Joining is allowed only while byte 0 is in the window, so the hash can catch up from it.
    if (this.base !== 0) return;
    this.hasher = new Bun.CryptoHasher(this.digest.algorithm);
    for (let i = this.first; i < this.chunks.length; i++) {
      this.snaps[i] = this.hasher.copy();
      this.hasher.update(this.chunks[i] as Uint8Array);
    }
    if (this.finished && this.verdict === "pending") this.judge();
  }

  /**
   * Drops what no one needs: bytes more than `window` behind the newest (attached readers there
   * are detached), and while no one may join any more, bytes behind the slowest attached reader.
   */
  private trim(): void {
    const floor = this.received - this.window;
    let keep = floor;
    if (floor > 0 || !this.joinable) {
      let slowest = this.received;
      for (const r of this.readers) {
        if (!r.attached) continue;
        if (r.pos < floor && r.pos < r.end) this.detach(r);
        else if (r.pos < slowest) slowest = r.pos;
      }
      if (!this.joinable) keep = Math.max(floor, slowest);
    }
    while (this.first < this.chunks.length) {
      const c = this.chunks[this.first] as Uint8Array;
      const s = this.starts[this.first] as number;
      if (s + c.byteLength > keep) break;
      this.retained -= c.byteLength;
      this.chunks[this.first] = EMPTY;
      this.snaps[this.first] = null;
      this.first++;
      this.base = s + c.byteLength;
    }
    if (this.first > 1024 && this.first * 2 > this.chunks.length) {
      this.chunks.splice(0, this.first);
      this.starts.splice(0, this.first);
      this.snaps.splice(0, this.first);
      this.first = 0;
    }
    if (this.base > 0 && this.joinable) this.unlist();
  }

  private detach(r: Reader): void {
    if (this.hasher !== null) {
      // The hash of bytes [0, r.pos): the state at its chunk's start plus the part of it before r.pos.
      const i = this.chunkAt(r.pos);
      const snap = this.snaps[i];
      if (snap !== null && snap !== undefined) {
        const h = snap.copy();
        h.update((this.chunks[i] as Uint8Array).subarray(0, r.pos - (this.starts[i] as number)));
        r.hasher = h;
      }
    }
    r.attached = false;
    this.attachedCount--;
    this.observer.detached();
    if (r.pos >= this.fastest) this.recomputeFastest();
    this.wakeOne(r);
    if (this.attachedCount === 0) this.cancelUpstream();
  }

  private unlist(): void {
    if (!this.joinable) return;
    this.joinable = false;
    this.observer.unjoinable();
  }

  // ------------------------------------------------------------------ reader side

  /** Bytes attached readers may have now: while hashed, the last byte waits for the verdict. */
  private releasable(): number {
    if (this.hasher === null || this.verdict === "ok" || this.verdict === "unchecked")
      return this.received;
    return Math.min(this.received, this.total - 1);
  }

  /** Bytes from `pos` up to `limit` (exclusive), within one chunk, never copied. */
  private slice(pos: number, limit: number): Uint8Array {
    const i = this.chunkAt(pos);
    const c = this.chunks[i] as Uint8Array;
    const s = this.starts[i] as number;
    const from = pos - s;
    const to = Math.min(c.byteLength, limit - s);
    return from === 0 && to === c.byteLength ? c : c.subarray(from, to);
  }

  /** An attached reader moved on to `pos`: the upstream may be read further if it was the fastest. */
  private advanced(pos: number): void {
    if (pos > this.fastest) this.fastest = pos;
    if (this.paused && (this.hold !== null || this.received - this.fastest < this.readAhead))
      this.resumeIfWanted();
  }

  private chunkAt(pos: number): number {
    let lo = this.first;
    let hi = this.chunks.length - 1;
    // Readers are usually at the newest bytes: try the end first.
    if ((this.starts[hi] as number) <= pos) return hi;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if ((this.starts[mid] as number) <= pos) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** The next piece for an attached reader now, "wait" if it must wait, or null at its end. */
  private nextAttached(r: Reader): Uint8Array | "wait" | null {
    if (r.pos >= r.end) return null;
    const limit = Math.min(r.end, this.releasable());
    if (r.pos < limit) {
      const chunk = this.slice(r.pos, limit);
      r.pos += chunk.byteLength;
      this.advanced(r.pos);
      return chunk;
    }
    // Nothing more will come (a failed download has already set the failure it cuts with).
    if (this.finished) r.failure ??= new Error("shared upstream download ended early");
    return "wait";
  }

  private waitFor(r: Reader, wake: () => void): void {
    r.wake = wake;
    this.waiters.push(r);
  }

  // Push mode (the writer relays): bytes go into the sink as they come, no promise per chunk.

  attachPush(r: Reader, write: (bytes: Uint8Array) => boolean): Promise<void> {
    if (r.sink !== null || r.streamed) return Promise.reject(new Error("reader consumed twice"));
    return new Promise<void>((resolve, reject) => {
      r.sink = write;
      r.settle = { resolve, reject };
      this.feed(r);
    });
  }

  resumePush(r: Reader): void {
    if (!r.paused) return;
    r.paused = false;
    this.feed(r);
  }

  private feed(r: Reader): void {
    if (r.feeding || r.sink === null) return;
    r.feeding = true;
    try {
      while (!r.paused) {
        if (r.failure !== null) return this.endPush(r, r.failure);
        if (!r.attached) {
          if (!r.pumping) void this.pumpOwn(r);
          else this.wakeOne(r);
          return;
        }
        const next = this.nextAttached(r);
        if (next === null) return this.endPush(r, null);
        if (next === "wait") {
          if (r.failure !== null) continue;
          if (r.wake === null) this.waitFor(r, () => this.feed(r));
          return;
        }
        if (!r.sink(next)) r.paused = true;
      }
    } finally {
      r.feeding = false;
    }
  }

  private wakeOne(r: Reader): void {
    const w = r.wake;
    r.wake = null;
    w?.();
  }

  private endPush(r: Reader, err: Error | null): void {
    const settle = r.settle;
    r.settle = null;
    this.leave(r);
    if (settle === null) return;
    if (err) settle.reject(err);
    else settle.resolve();
  }

  /** A detached push reader: its own request's bytes into the sink, pausing with it. */
  private async pumpOwn(r: Reader): Promise<void> {
    r.pumping = true;
    try {
      for (;;) {
        if (r.failure !== null) throw r.failure;
        if (r.paused) {
          await new Promise<void>((resolve) => (r.wake = resolve));
          continue;
        }
        const v = await this.nextOwn(r);
        if (v === null) return this.endPush(r, null);
        if (r.sink !== null && !r.sink(v)) r.paused = true;
      }
    } catch (e) {
      r.failure ??= e instanceof Error ? e : new Error(String(e));
      this.endPush(r, r.failure);
    } finally {
      r.pumping = false;
    }
  }

  /**
   * The next bytes of a detached reader's own request (opened on first use), or null at its end.
   * A reader that detached from a hashed download holds its last byte until its own digest (the
   * shared bytes it had, then its own) is known; a mismatch fails it before that byte.
   */
  private async nextOwn(r: Reader): Promise<Uint8Array | null> {
    if (r.own === null) {
      r.ownAbort = new AbortController();
      const got = await r.ownRequest(r.pos, r.end - 1, r.ownAbort.signal);
      r.own = got.reader;
      r.ownSkip = got.skip;
    }
    for (;;) {
      if (r.failure !== null) throw r.failure;
      if (r.held !== null) {
        const last = r.held;
        this.verifyOwn(r, last);
        r.held = null;
        r.pos += last.byteLength;
        return last;
      }
      if (r.pos >= r.end) return null;
      const { done, value } = await r.own.read();
      if (r.failure !== null) throw r.failure;
      if (done) throw new Error(`own upstream request ended at byte ${r.pos} of ${r.end}`);
      let v = value;
      if (r.ownSkip > 0) {
        const n = Math.min(r.ownSkip, v.byteLength);
        r.ownSkip -= n;
        v = v.subarray(n);
      }
      if (v.byteLength === 0) continue;
      if (r.pos + v.byteLength > r.end)
        throw new Error("own upstream request sent more bytes than asked for");
      if (r.pos + v.byteLength === r.end && r.hasher !== null) {
        r.held = v.subarray(v.byteLength - 1);
        v = v.subarray(0, v.byteLength - 1);
        if (v.byteLength === 0) continue;
      }
      r.hasher?.update(v);
      r.pos += v.byteLength;
      return v;
    }
  }

  /** A detached reader's last byte `last`: throws (the reader is cut before it) unless its bytes match the digest. */
  private verifyOwn(r: Reader, last: Uint8Array): void {
    const h = r.hasher;
    if (h === null) return;
    r.hasher = null;
    h.update(last);
    const got = h.digest("hex");
    if (got === this.digest.hex) return;
    r.failure ??= new Error(
      `blob bytes do not match ${this.digest.algorithm}:${this.digest.hex} (a reader on its own range request)`,
    );
    throw r.failure;
  }

  // Pull mode (code that wraps streams): one read, one piece.

  stream(r: Reader): ReadableStream<Uint8Array> {
    return new ReadableStream<Uint8Array>(
      {
        start: (c) => {
          r.ctrl = c;
        },
        pull: (c) => this.pull(r, c),
        cancel: () => this.cut(r, new Error("reader cancelled")),
      },
      { highWaterMark: 0 },
    );
  }

  private async pull(r: Reader, c: ReadableStreamDefaultController<Uint8Array>): Promise<void> {
    if (r.sink !== null) throw new Error("reader consumed twice");
    r.streamed = true;
    try {
      for (;;) {
        if (r.failure !== null) throw r.failure;
        if (r.gone) return;
        if (!r.attached) {
          const v = await this.nextOwn(r);
          if (v === null) {
            this.leave(r);
            c.close();
          } else c.enqueue(v);
          return;
        }
        const next = this.nextAttached(r);
        if (next === null) {
          this.leave(r);
          c.close();
          return;
        }
        if (next !== "wait") {
          c.enqueue(next);
          return;
        }
        if (r.failure !== null) continue;
        await new Promise<void>((resolve) => this.waitFor(r, resolve));
        r.wake = null;
      }
    } catch (e) {
      r.failure ??= e instanceof Error ? e : new Error(String(e));
      this.leave(r);
      c.error(r.failure);
    }
  }

  /** Ends a reader now with `err`: its writer sees a failed body (a cut connection), whatever mode it reads in. */
  cut(r: Reader, err: Error): void {
    if (r.gone) return;
    r.failure ??= err;
    r.ownAbort?.abort(err);
    if (r.settle !== null) return this.endPush(r, r.failure);
    const c = r.ctrl;
    this.leave(r);
    if (c !== null) {
      try {
        c.error(r.failure);
      } catch {
        // Already closed or errored.
      }
    }
  }

  private wakeAll(): void {
    if (this.waiters.length === 0) return;
    const w = this.waiters;
    this.waiters = [];
    for (const r of w) this.wakeOne(r);
  }

  /** A reader is done, cut, or its client went away. */
  private leave(r: Reader): void {
    if (r.gone) return;
    r.gone = true;
    this.readers.delete(r);
    this.wakeOne(r);
    if (r.ownAbort !== null && r.pos < r.end)
      r.ownAbort.abort(r.failure ?? new Error("reader left"));
    if (r.own !== null && r.pos < r.end) void r.own.cancel().catch(() => {});
    if (r.attached) {
      r.attached = false;
      this.attachedCount--;
      if (r.pos >= this.fastest) this.recomputeFastest();
      if (this.attachedCount === 0) this.cancelUpstream();
    }
    this.maybeDispose();
  }

  /** No attached reader is left: the upstream download stops (nothing outlives its readers). */
  private cancelUpstream(): void {
    if (this.finished) {
      this.unlist();
      return;
    }
    this.fail(new Error("every reader left"), "unchecked", false);
  }

  private recomputeFastest(): void {
    let f = 0;
    // A range joiner that has not reached the bytes received yet counts from there: it must not
    // let the upstream be read on at the pace of no one.
    for (const r of this.readers) if (r.attached) f = Math.max(f, Math.min(r.pos, this.received));
    this.fastest = f;
    this.resumeIfWanted();
  }

  private maybeDispose(): void {
    if (this.disposedAlready || this.readers.size > 0 || !this.finished) return;
    this.disposedAlready = true;
    this.unlist();
    this.chunks.length = 0;
    this.starts.length = 0;
    this.snaps.length = 0;
    this.first = 0;
    this.retained = 0;
    this.observer.disposed();
  }
}

/** One reader as the writer sees it: a RelaySource over the shared download. */
class ReaderBody implements RelaySource {
  readonly framing = "length";

  constructor(
    private readonly download: SharedDownload,
    private readonly r: Reader,
  ) {}

  get done(): boolean {
    return this.r.gone;
  }

  get consumed(): boolean {
    return this.r.sink !== null || this.r.streamed;
  }

  relay(write: (bytes: Uint8Array) => boolean): Promise<void> {
    return this.download.attachPush(this.r, write);
  }

  contents(write: (bytes: Uint8Array) => boolean): Promise<void> {
    return this.download.attachPush(this.r, write);
  }

  resume(): void {
    this.download.resumePush(this.r);
  }

  cancel(): void {
    this.download.cut(this.r, new Error("reader cancelled"));
  }

  stream(): ReadableStream<Uint8Array> {
    return this.download.stream(this.r);
  }
}

const EMPTY = new Uint8Array(0);
