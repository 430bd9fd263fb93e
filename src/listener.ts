/**
 * Accepts connections on one address with Bun.listen (bun.md: Bun.serve cannot tunnel, so the
 * public port is a raw listener) and hands each socket's events to its Connection. A sweeper
 * enforces the header and idle deadlines of every connection with one timer, instead of one
 * timer per socket.
 */
import type { Socket, SocketHandler, TCPSocketListener } from "bun";
import type { ListenAddress } from "./config.ts";
import { Connection, type Dispatcher, type SocketData } from "./connection.ts";
import type { Runtime } from "./context.ts";

const SWEEP_MS = 250;

export class ConnectionSet {
  readonly all = new Set<Connection>();
  private timer: Timer | null = null;

  add(c: Connection): void {
    this.all.add(c);
    if (this.timer === null) {
      this.timer = setInterval(() => this.sweep(), SWEEP_MS);
      this.timer.unref();
    }
  }

  delete(c: Connection): void {
    this.all.delete(c);
  }

  private sweep(): void {
    const now = Date.now();
    for (const c of this.all) if (c.deadline <= now) c.expire();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }
}

/** Socket handlers that drive a Connection; shared by the plain listener and MITM's TLS sockets. */
export function connectionHandlers(conns: ConnectionSet, create: (s: Socket<SocketData>) => Connection): SocketHandler<SocketData> {
  return {
    open(s) {
      const c = create(s);
      s.data = { conn: c };
      conns.add(c);
    },
    data(s, d) {
      s.data.conn?.onData(d);
    },
    drain(s) {
      s.data.conn?.onDrain();
    },
    end(s) {
      s.data.conn?.onEnd();
    },
    close(s) {
      const c = s.data.conn;
      if (c) {
        conns.delete(c);
        c.onClose();
      }
    },
    error() {
      // `close` always follows an error; cleanup happens there.
    },
  };
}

export function listen(addr: ListenAddress, rt: Runtime, dispatch: Dispatcher, conns: ConnectionSet): TCPSocketListener<SocketData> {
  return Bun.listen<SocketData>({
    hostname: addr.hostname,
    port: addr.port,
    allowHalfOpen: true,
    data: { conn: null },
    socket: connectionHandlers(conns, (s) => new Connection(s, rt, dispatch)),
  });
}
