/**
 * A TCP relay in front of an upstream (a registry, a bench origin) that paces what the upstream
 * sends: all its connections together get at most `rate` bytes per second (an uplink shared by
 * every download). So a download lasts long enough for clients to overlap, and a benchmark can
 * count the bytes the upstream really sent.
 *
 * Options for fan-out tests:
 * - `gateAfter`: each connection stops after this many bytes from the upstream until `openGate()`
 *   (a test lets every client arrive while the first download is in flight, without guessing at
 *   timing).
 * - `corruptAt`: the byte at this offset of each connection's upstream stream is flipped (far
 *   enough in, that is inside a blob body, not in a head).
 *
 * Requests (client → upstream) pass unpaced. Backpressure both ways: the upstream socket is
 * paused while its connection has more than a little queued, a client that reads slowly keeps
 * its bytes queued (bounded by that pause).
 */
import type { Socket, TCPSocketListener } from "bun";

export interface PacingRelayOptions {
  /** Bytes per second for all connections together (upstream → client). */
  rate: number;
  gateAfter?: number;
  corruptAt?: number;
}

export interface PacingRelay {
  port: number;
  /** Bytes the upstream sent to the relay, all connections. */
  upstreamBytes(): number;
  openGate(): void;
  stop(): void;
}

interface Conn {
  client: Socket<Conn>;
  upstream: Socket<undefined> | null;
  /** Client bytes waiting for the upstream connection. */
  early: Uint8Array[];
  queue: Uint8Array[];
  queued: number;
  /** Upstream bytes passed to the client so far. */
  sent: number;
  upstreamEnded: boolean;
  paused: boolean;
  closed: boolean;
}

const TICK_MS = 5;
const QUEUE_MAX = 1024 * 1024;

export function startPacingRelay(targetPort: number, opts: PacingRelayOptions): PacingRelay {
  const conns = new Set<Conn>();
  let gateOpen = opts.gateAfter === undefined;
  let fromUpstream = 0;
  let credit = 0;
  let last = performance.now();

  const closeBoth = (c: Conn): void => {
    if (c.closed) return;
    c.closed = true;
    conns.delete(c);
    c.client.end();
    c.upstream?.end();
  };

  const pump = (): void => {
    const now = performance.now();
    credit = Math.min(credit + ((now - last) / 1000) * opts.rate, opts.rate * 0.05);
    last = now;
    // Round-robin: every connection with bytes queued gets an equal share of this tick's credit.
    const ready = [...conns].filter(
      (c) => c.queued > 0 && (gateOpen || opts.gateAfter === undefined || c.sent < opts.gateAfter),
    );
    for (const c of ready) {
      if (credit < 1) break;
      let share = Math.max(1, Math.floor(credit / ready.length));
      if (!gateOpen && opts.gateAfter !== undefined)
        share = Math.min(share, opts.gateAfter - c.sent);
      while (share > 0 && c.queue.length > 0) {
        const head = c.queue[0] as Uint8Array;
        let piece = head.byteLength > share ? head.subarray(0, share) : head;
        if (
          opts.corruptAt !== undefined &&
          c.sent <= opts.corruptAt &&
          opts.corruptAt < c.sent + piece.byteLength
        ) {
          piece = Uint8Array.from(piece);
          const i = opts.corruptAt - c.sent;
          piece[i] = (piece[i] as number) ^ 0xff;
        }
        const wrote = c.client.write(piece);
        if (wrote <= 0) break;
        c.sent += wrote;
        c.queued -= wrote;
        credit -= wrote;
        share -= wrote;
        if (wrote >= head.byteLength) c.queue.shift();
        else c.queue[0] = head.subarray(wrote);
        if (wrote < piece.byteLength) break;
      }
      if (c.paused && c.queued < QUEUE_MAX / 2) {
        c.paused = false;
        c.upstream?.resume();
      }
    }
    for (const c of conns) if (c.upstreamEnded && c.queued === 0) closeBoth(c);
  };
  const timer = setInterval(pump, TICK_MS);

  const server: TCPSocketListener<Conn> = Bun.listen<Conn>({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    socket: {
      open(client) {
        const c: Conn = {
          client,
          upstream: null,
          early: [],
          queue: [],
          queued: 0,
          sent: 0,
          upstreamEnded: false,
          paused: false,
          closed: false,
        };
        client.data = c;
        conns.add(c);
        void Bun.connect<undefined>({
          hostname: "127.0.0.1",
          port: targetPort,
          allowHalfOpen: true,
          socket: {
            data(_s, d) {
              fromUpstream += d.byteLength;
              c.queue.push(new Uint8Array(d));
              c.queued += d.byteLength;
              if (c.queued > QUEUE_MAX && !c.paused) {
                c.paused = true;
                c.upstream?.pause();
              }
            },
            end() {
              c.upstreamEnded = true;
            },
            close() {
              c.upstreamEnded = true;
            },
            error() {
              c.upstreamEnded = true;
            },
          },
        }).then(
          (up) => {
            if (c.closed) {
              up.end();
              return;
            }
            c.upstream = up;
            for (const b of c.early.splice(0)) up.write(b);
          },
          () => closeBoth(c),
        );
      },
      data(client, d) {
        const c = client.data;
        if (c.upstream) c.upstream.write(d);
        else c.early.push(new Uint8Array(d));
      },
      drain() {
        // The pump retries on its next tick.
      },
      end(client) {
        closeBoth(client.data);
      },
      close(client) {
        closeBoth(client.data);
      },
      error(client) {
        closeBoth(client.data);
      },
    },
  });

  return {
    port: server.port,
    upstreamBytes: () => fromUpstream,
    openGate() {
      gateOpen = true;
    },
    stop() {
      clearInterval(timer);
      for (const c of [...conns]) closeBoth(c);
      server.stop(true);
    },
  };
}
