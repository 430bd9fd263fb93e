/**
 * A reference point, not crm: the smallest CONNECT proxy Bun can run (Bun.listen + Bun.connect,
 * a write queue with pause/resume, nothing else: no policy, no logs, no metrics, no timeouts).
 * The benchmark runs it next to crm so a gap to "direct" can be split into what Bun's sockets
 * cost and what crm adds. `bun scripts/bench/ref-splice.ts LIFETIME_MS [HOST:PORT]` prints
 * `{"port":N}`. With HOST:PORT every connection is relayed there as it is, without a CONNECT
 * (a plain TCP relay: the upper bound for any HTTP relay written on Bun sockets).
 */
import type { Socket } from "bun";
import { serveUntilStopped } from "./lib.ts";

interface Side {
  peer: Socket<Side> | null;
  queue: Uint8Array[];
  /** The other socket was paused because this one's queue was not empty. */
  pausedPeer: boolean;
  head: Buffer | null;
  upstream: boolean;
}

function send(to: Socket<Side>, from: Socket<Side>, d: Uint8Array): void {
  if (to.data.queue.length > 0) {
    to.data.queue.push(d);
    return;
  }
  const n = Math.max(0, to.write(d));
  if (n < d.byteLength) {
    to.data.queue.push(d.subarray(n));
    from.pause();
    to.data.pausedPeer = true;
  }
}

function flush(s: Socket<Side>): void {
  const q = s.data.queue;
  while (q.length > 0) {
    const head = q[0] as Uint8Array;
    const n = Math.max(0, s.write(head));
    if (n < head.byteLength) {
      q[0] = head.subarray(n);
      return;
    }
    q.shift();
  }
  if (s.data.pausedPeer) {
    s.data.pausedPeer = false;
    s.data.peer?.resume();
  }
}

const side = (upstream: boolean): Side => ({
  peer: null,
  queue: [],
  pausedPeer: false,
  head: null,
  upstream,
});

if (import.meta.main) {
  const lifetimeMs = Number(process.argv[2] ?? "600000");
  const fixed = process.argv[3] ? /^(.+):(\d+)$/.exec(process.argv[3]) : null;
  const upstreamHandlers = {
    data(s: Socket<Side>, d: Buffer) {
      const p = s.data.peer;
      if (p) send(p, s, d);
    },
    drain: flush,
    end(s: Socket<Side>) {
      s.data.peer?.end();
    },
    close(s: Socket<Side>) {
      s.data.peer?.end();
    },
    error() {},
  };
  const l = Bun.listen<Side>({
    hostname: "127.0.0.1",
    port: 0,
    data: side(false),
    socket: {
      open(s) {
        s.data = side(false);
        if (!fixed) return;
        s.pause();
        void Bun.connect<Side>({
          hostname: fixed[1] as string,
          port: Number(fixed[2]),
          data: side(true),
          socket: upstreamHandlers,
        }).then(
          (up) => {
            up.data.peer = s;
            s.data.peer = up;
            s.resume();
          },
          () => s.end(),
        );
      },
      data(s, d) {
        if (s.data.peer) return send(s.data.peer, s, d);
        const buf = s.data.head ? Buffer.concat([s.data.head, d]) : d;
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) {
          s.data.head = buf;
          return;
        }
        s.data.head = null;
        const m = /^CONNECT ([^ :]+):(\d+) /.exec(buf.subarray(0, end).toString("latin1"));
        if (!m) return void s.end("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        s.pause();
        void Bun.connect<Side>({
          hostname: m[1] as string,
          port: Number(m[2]),
          data: side(true),
          socket: upstreamHandlers,
        }).then(
          (up) => {
            up.data.peer = s;
            s.data.peer = up;
            send(s, up, Buffer.from("HTTP/1.1 200 Connection Established\r\n\r\n"));
            const rest = buf.subarray(end + 4);
            if (rest.byteLength > 0) send(up, s, rest);
            s.resume();
          },
          () => s.end("HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n"),
        );
      },
      drain: flush,
      end(s) {
        s.data.peer?.end();
      },
      close(s) {
        s.data.peer?.end();
      },
      error() {},
    },
  });
  serveUntilStopped(l, lifetimeMs);
}
