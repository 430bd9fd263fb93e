/**
 * Accepts connections on one address with Bun.listen (bun.md: Bun.serve cannot tunnel, so the
 * public port is a raw listener) and hands each socket's events to its Connection. A sweeper
 * enforces the header and idle deadlines of every connection with one timer, instead of one
 * timer per socket.
 */
import type { Socket, SocketHandler, SocketListener } from "bun";
import type { ListenAddress } from "../config/listen.ts";
import { Connection, type Dispatcher, type SocketData } from "./connection.ts";
import { clientKey, networkKey } from "../access/client-address.ts";
import { peerAddress } from "../access/peer-address.ts";
import type { Runtime } from "../context.ts";
import { HttpError } from "../errors.ts";
import { errorHead } from "../http/response.ts";
import { CHALLENGE_ONLY } from "../tls/challenge-budget.ts";

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
export function connectionHandlers(
  conns: ConnectionSet,
  create: (s: Socket<SocketData>) => Connection,
): SocketHandler<SocketData> {
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

/** How a connection was let in: as a client, or as a stranger that may reach only ACME challenges. */
export type Admitted = "client" | "challenge-only";

/**
 * Admission at accept: clients outside access.clients are closed at once (no answer that would
 * confirm a proxy is here); over a connection limit they get a complete 503/429 with Retry-After.
 */
export class Admission {
  private readonly perClient = new Map<string, number>();
  private total = 0;
  /** Challenge-only connections (admitStranger), apart from the clients' counts, by networkKey. */
  private readonly strangers = new Map<string, number>();
  /** Every challenge-only connection with its network, oldest first (eviction order). */
  private readonly strangerSockets = new Map<Socket<SocketData>, string>();

  constructor(private readonly rt: Runtime) {}

  /**
   * `openToAll`: a plain listener beside ACME lets anyone in for http-01 (plain-listener.ts
   * restricts the rest). Such a stranger is "challenge-only": counted in its own small budget
   * (tls/challenge-budget.ts), never in max_connections, so strangers cannot lock users out.
   * null: refused (the socket is already closed or answered).
   */
  admit(s: Socket<SocketData>, openToAll = false): Admitted | null {
    // A unix-socket peer has no address (Bun gives undefined); it is admitted by the socket's
    // file mode, and counted under one name for the per-client limit.
    const raw: string | undefined = s.remoteAddress;
    const ip = raw === undefined ? undefined : peerAddress(raw);
    const { rt } = this;
    if (ip === undefined) return this.count("unix");
    if (!rt.access.clientAllowed(ip)) {
      if (openToAll) return this.admitStranger(s, ip);
      rt.log.debug("client not in access.clients, closed", { client: ip });
      s.terminate();
      return null;
    }
    const { maxConnections, maxConnectionsPerClient } = rt.config.limits;
    const mine = this.perClient.get(clientKey(ip)) ?? 0;
    const refusal =
      this.total >= maxConnections
        ? errorHead(503, "crm: too many connections", { "retry-after": "5" })
        : mine >= maxConnectionsPerClient
          ? errorHead(429, "crm: too many connections from your address", { "retry-after": "5" })
          : null;
    if (refusal !== null) {
      rt.log.warn("connection refused: limit reached", {
        client: ip,
        total: this.total,
        from_client: mine,
      });
      s.end(refusal);
      return null;
    }
    return this.count(ip);
  }

  /**
   * A stranger counts against its network (IPv4 /24, IPv6 /48: holding many addresses of one
   * network buys no more) and the strangers' total. When the total is full the oldest stranger
   * connection makes room: refusing the newcomer would let whoever holds the budget first keep
   * the CA's validators out for as long as it likes, while evicting the oldest means a holder must
   * outpace every newcomer, and a validator needs its connection for one answer only.
   */
  private admitStranger(s: Socket<SocketData>, ip: string): Admitted | null {
    const key = networkKey(ip);
    const mine = this.strangers.get(key) ?? 0;
    if (mine >= CHALLENGE_ONLY.perClient) {
      this.rt.log.debug("connection refused: challenge-only budget of its network reached", {
        client: ip,
        network: key,
        from_network: mine,
      });
      s.end(errorHead(429, "crm: too many connections", { "retry-after": "5" }));
      return null;
    }
    if (this.strangerSockets.size >= CHALLENGE_ONLY.total) {
      const [oldest] = this.strangerSockets.keys();
      if (oldest !== undefined) {
        this.rt.log.debug("challenge-only budget full: oldest stranger connection closed", {
          client: ip,
        });
        this.releaseStranger(oldest);
        oldest.terminate();
      }
    }
    this.strangerSockets.set(s, key);
    this.strangers.set(key, mine + 1);
    return "challenge-only";
  }

  /** A challenge-only connection has ended (or was evicted); a second call is a no-op. */
  releaseStranger(s: Socket<SocketData>): void {
    const key = this.strangerSockets.get(s);
    if (key === undefined) return;
    this.strangerSockets.delete(s);
    const n = (this.strangers.get(key) ?? 1) - 1;
    if (n <= 0) this.strangers.delete(key);
    else this.strangers.set(key, n);
  }

  /**
   * A PROXY header named the real client behind a load balancer: the client list and the
   * per-client count apply to it, not to the balancer. False: refused (the caller closes).
   */
  rebind(conn: Connection, from: string, to: string): boolean {
    const { rt } = this;
    if (!rt.access.clientAllowed(to)) {
      rt.log.debug("client not in access.clients, closed", { client: to, via: from });
      conn.reset();
      return false;
    }
    const mine = this.perClient.get(clientKey(to)) ?? 0;
    if (mine >= rt.config.limits.maxConnectionsPerClient) {
      rt.log.warn("connection refused: limit reached", { client: to, from_client: mine });
      conn.fail(
        new HttpError(429, "crm: too many connections from your address", {
          headers: { "retry-after": "5" },
        }),
      );
      return false;
    }
    this.release(from);
    this.count(to);
    return true;
  }

  /** Counted per IPv4 address or IPv6 /64 (clientKey), like the other per-client limits. */
  private count(ip: string): Admitted {
    const key = clientKey(ip);
    this.total++;
    this.perClient.set(key, (this.perClient.get(key) ?? 0) + 1);
    return "client";
  }

  release(ip: string): void {
    const key = clientKey(ip);
    this.total--;
    const n = (this.perClient.get(key) ?? 1) - 1;
    if (n <= 0) this.perClient.delete(key);
    else this.perClient.set(key, n);
  }
}

export interface ListenTls {
  cert: string;
  key: string;
}

/** One Bun.listen on a TCP address or a unix socket, optionally TLS (the HTTPS listener). */
export function listen(
  addr: ListenAddress,
  rt: Runtime,
  dispatch: Dispatcher,
  conns: ConnectionSet,
  admission: Admission,
  tls: ListenTls | null,
  openToAll = false,
): SocketListener<SocketData> {
  const proxied = addr.proxyProtocol
    ? (c: Connection, from: string, to: string) => admission.rebind(c, from, to)
    : null;
  const handlers = connectionHandlers(
    conns,
    (s) => new Connection(s, rt, dispatch, null, undefined, proxied),
  );
  const socket: SocketHandler<SocketData> = {
    ...handlers,
    open(s) {
      const admitted = admission.admit(s, openToAll);
      if (admitted === null) return;
      handlers.open?.(s);
      if (admitted === "challenge-only") s.data.conn?.limitToChallenges();
    },
    close(s, err) {
      if (s.data.conn?.challengeOnly) admission.releaseStranger(s);
      else if (s.data.conn) admission.release(s.data.conn.peer);
      handlers.close?.(s, err);
    },
  };
  const common = {
    allowHalfOpen: true,
    data: { conn: null },
    socket,
    ...(tls ? { tls: { ...tls, ALPNProtocols: ALPN_HTTP1 } } : {}),
  };
  // Bun cannot change a listener's certificate, so a new one is bound beside it on the same port
  // before the old one stops (server.ts swapCertificate): SO_REUSEPORT on TLS listeners only, so
  // that window has no refused connections. Plain listeners keep the exclusive bind.
  return addr.unix !== undefined
    ? Bun.listen<SocketData>({ unix: addr.unix, ...common })
    : Bun.listen<SocketData>({
        hostname: addr.hostname,
        port: addr.port,
        ...(tls ? { reusePort: true } : {}),
        ...common,
      });
}

/** ALPN in wire format (length-prefixed): crm speaks HTTP/1.1 only. */
export const ALPN_HTTP1 = Buffer.from("\x08http/1.1", "latin1");
