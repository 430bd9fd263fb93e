/**
 * The CONNECT splice (RFC 9110 §9.3.6): dial the target, answer exactly
 * `HTTP/1.1 200 Connection Established`, then relay bytes both ways as they come. Each
 * direction pauses its source while the other side's Outbox is full, and a FIN is passed on
 * with shutdown() so half-closed streams deliver everything (bun.md: half-close).
 */
import type { Socket, SocketHandler } from "bun";
import type { Connection } from "./connection.ts";
import { dial } from "../net/dial.ts";
import { DialError } from "../errors.ts";
import { Outbox } from "../net/outbox.ts";
import { formatHostPort } from "../net/host-port.ts";
import { recordTunnel, trackTunnel, type TunnelRecord } from "../status/record.ts";

/** The exact CONNECT answer (RFC 9110 §9.3.6: a 2xx carries no Content-Length or Transfer-Encoding). */
export const ESTABLISHED = "HTTP/1.1 200 Connection Established\r\n\r\n";
/** Bytes a client may send before the dial completes (a ClientHello is ~0.5–2 KiB). */
const EARLY_LIMIT = 64 * 1024;

interface UpstreamData {
  tunnel: Tunnel | null;
}

const upstreamHandlers: SocketHandler<UpstreamData> = {
  data(s, d) {
    s.data.tunnel?.fromUpstream(d);
  },
  drain(s) {
    s.data.tunnel?.upstreamDrain();
  },
  end(s) {
    s.data.tunnel?.upstreamEnd();
  },
  close(s) {
    s.data.tunnel?.upstreamClose();
  },
  error() {
    // `close` follows; the tunnel ends there.
  },
};

class Tunnel {
  private upstream: Socket<UpstreamData> | null = null;
  /** Set for a tunnel to crm itself: drops its note in rt.self. */
  private forgetSelf: (() => void) | null = null;
  private upOut: Outbox | null = null;
  private early: Buffer[] = [];
  private earlyBytes = 0;
  private clientEnded = false;
  private upstreamEnded = false;
  private upstreamPaused = false;
  /** Chunks not yet granted by the bandwidth limit (bandwidth.ts): upstream stays paused meanwhile. */
  private pacing = 0;
  private done = false;
  private bytesUp = 0;
  private bytesDown = 0;
  private readonly started = performance.now();
  private record: TunnelRecord | null = null;

  constructor(
    private readonly conn: Connection,
    private readonly target: string,
  ) {}

  async open(host: string, port: number, rest: Buffer): Promise<void> {
    const { conn } = this;
    conn.becomeTunnel({
      data: (d) => this.fromClient(d),
      end: () => this.clientEnd(),
      close: () => this.clientClose(),
    });
    if (rest.length > 0) this.fromClient(rest);
    let up: Socket<UpstreamData>;
    try {
      up = await dial<UpstreamData>(
        conn.rt.resolve,
        host,
        port,
        conn.rt.config.timeouts.connectMs,
        upstreamHandlers,
        { tunnel: null },
      );
    } catch (e) {
      const err = e as DialError;
      conn.rt.metrics.upstreamError(err.reason);
      conn.rt.metrics.observe(
        "connect",
        err.status,
        0,
        0,
        (performance.now() - this.started) / 1000,
      );
      conn.rt.log.warn("tunnel dial failed", {
        client: conn.client,
        target: this.target,
        reason: err.message,
      });
      recordTunnel(
        conn.rt,
        { id: conn.rt.journal.nextId(), client: conn.client, target: this.target },
        err.status,
        0,
        0,
        performance.now() - this.started,
        err.message,
      );
      this.done = true;
      conn.fail(err);
      return;
    }
    if (this.done) {
      up.end();
      return;
    }
    up.data.tunnel = this;
    this.upstream = up;
    // A tunnel to crm itself: what crm accepts from it is this client's, not crm's own address
    // (net/self-targets.ts). Noted before any of the client's bytes go through.
    if (conn.rt.self.matches(up.remoteAddress, port))
      this.forgetSelf = conn.rt.self.noteTunnel(up.localAddress, up.localPort, conn.client);
    conn.rt.metrics.tunnelOpened();
    this.record = { id: conn.rt.journal.nextId(), client: conn.client, target: this.target };
    trackTunnel(conn.rt, this.record, () => this.bytesUp + this.bytesDown);
    this.upOut = new Outbox(up as Socket<unknown>);
    // Upstream accepted more: let the client send again.
    this.upOut.onDrained(() => {
      conn.resume();
      if (this.clientEnded) this.upstream?.shutdown();
    });
    // Client took our backlog: read from upstream again.
    conn.outbox.onDrained(() => this.resumeUpstream());
    conn.outbox.write(ESTABLISHED);
    conn.touch();
    for (const b of this.early) this.sendUp(b);
    this.early = [];
    // fromClient paused the client past EARLY_LIMIT; if upstream took everything, no drain will resume it.
    if (this.upOut.backlog === 0) conn.resume();
    if (this.clientEnded) this.forwardClientFin();
  }

  private fromClient(d: Buffer): void {
    this.bytesUp += d.byteLength;
    this.conn.touch();
    if (this.upOut === null) {
      this.early.push(d);
      this.earlyBytes += d.byteLength;
      if (this.earlyBytes > EARLY_LIMIT) this.conn.pause();
      return;
    }
    this.sendUp(d);
  }

  private sendUp(d: Buffer): void {
    if (!this.upOut?.write(d)) this.conn.pause();
  }

  fromUpstream(d: Buffer): void {
    this.bytesDown += d.byteLength;
    this.conn.touch();
    if (!this.conn.outbox.write(d) && !this.upstreamPaused) {
      this.upstreamPaused = true;
      this.upstream?.pause();
    }
    const bw = this.conn.rt.bandwidth;
    if (bw.active) this.pace(bw.acquire(this.conn.client, d.byteLength));
  }

  /** Reads from upstream wait until these bytes are paid for; the client's backpressure still rules. */
  private pace(grant: Promise<void> | null): void {
    if (grant === null) return;
    if (this.pacing === 0 && !this.upstreamPaused) this.upstream?.pause();
    this.pacing++;
    void grant.then(() => {
      this.pacing--;
      if (this.pacing === 0 && !this.upstreamPaused && !this.done) this.upstream?.resume();
    });
  }

  upstreamDrain(): void {
    this.upOut?.flush();
  }

  private resumeUpstream(): void {
    if (this.upstreamPaused) {
      this.upstreamPaused = false;
      if (this.pacing === 0) this.upstream?.resume();
    }
    if (this.upstreamEnded) this.forwardUpstreamFin();
  }

  private clientEnd(): void {
    this.clientEnded = true;
    if (this.upOut !== null) this.forwardClientFin();
  }

  /** Pass the client's FIN on once everything it sent has been written upstream. */
  private forwardClientFin(): void {
    if (this.upOut?.backlog === 0) this.upstream?.shutdown();
    this.maybeFinish();
  }

  upstreamEnd(): void {
    this.upstreamEnded = true;
    this.forwardUpstreamFin();
  }

  private forwardUpstreamFin(): void {
    if (this.conn.outbox.backlog === 0) this.conn.socket.shutdown();
    this.maybeFinish();
  }

  private maybeFinish(): void {
    if (
      this.clientEnded &&
      this.upstreamEnded &&
      this.conn.outbox.backlog === 0 &&
      (this.upOut?.backlog ?? 0) === 0
    ) {
      this.conn.close();
      this.upstream?.end();
      this.finish();
    }
  }

  private clientClose(): void {
    this.upstream?.end();
    this.finish();
  }

  upstreamClose(): void {
    this.upOut?.kill();
    // Whatever the upstream sent is queued for the client; close once it has gone out.
    void this.conn.closeAfterFlush();
    this.finish();
  }

  private finish(): void {
    if (this.done) return;
    this.done = true;
    this.forgetSelf?.();
    const { conn } = this;
    const seconds = (performance.now() - this.started) / 1000;
    if (this.upstream) conn.rt.metrics.tunnelClosed();
    conn.rt.metrics.observe(
      "connect",
      this.upstream ? 200 : 0,
      this.bytesUp,
      this.bytesDown,
      seconds,
    );
    conn.rt.metrics.client(conn.client, this.bytesDown);
    if (this.record)
      recordTunnel(conn.rt, this.record, 200, this.bytesUp, this.bytesDown, seconds * 1000);
    conn.rt.log.info(`CONNECT ${this.target}`, {
      kind: "connect",
      client: conn.client,
      status: this.upstream ? 200 : 0,
      in: this.bytesUp,
      out: this.bytesDown,
      ms: Math.round(performance.now() - this.started),
      note: this.upstream ? undefined : "client gone before dial completed",
    });
  }
}

export function openTunnel(conn: Connection, host: string, port: number, rest: Buffer): void {
  void new Tunnel(conn, formatHostPort(host, port)).open(host, port, rest);
}
