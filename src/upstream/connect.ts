/**
 * Opens one upstream connection on Bun.connect, plain or TLS. TLS verifies against Bun's roots,
 * which include NODE_EXTRA_CA_CERTS (measured); `extraCa` adds roots for one client (tests, a
 * private CA) without losing those. ALPN offers only http/1.1: crm speaks nothing else upstream.
 * The socket's events go to whoever holds the connection now (a request, or the idle pool).
 */
import type { Socket } from "bun";
import { readFileSync } from "node:fs";
import { rootCertificates } from "node:tls";
import { classifyNetworkError, DialError } from "../errors.ts";
import { Outbox } from "../net/outbox.ts";

export interface TlsOptions {
  /** SNI and the name the certificate must carry; absent for an IP literal. */
  serverName?: string;
  /** insecure_tls: accept any certificate. */
  insecure: boolean;
  /** PEM roots added to the system ones. */
  extraCa?: readonly string[];
}

/** What the current holder of a connection is told. */
export interface ConnListener {
  data(bytes: Buffer): void;
  /** The socket is gone; `error` when it failed rather than closed. */
  close(error: Error | null): void;
}

export class UpstreamConn {
  readonly outbox: Outbox;
  listener: ConnListener | null = null;
  closed = false;
  /** Requests this connection has carried. */
  uses = 0;
  private error: Error | null = null;

  constructor(
    readonly socket: Socket<UpstreamConn | undefined>,
    readonly key: string,
  ) {
    this.outbox = new Outbox(socket as Socket<unknown>);
  }

  onData(bytes: Buffer): void {
    this.listener?.data(bytes);
  }

  onError(e: Error): void {
    this.error ??= e;
  }

  onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.outbox.kill();
    this.listener?.close(this.error);
  }

  destroy(): void {
    if (!this.closed) this.socket.terminate();
    this.onClose();
  }
}

let extraFromEnv: string | null | undefined;
/** NODE_EXTRA_CA_CERTS again: an explicit `ca` replaces every root, the ones it added too. */
function envExtraCa(): string | null {
  if (extraFromEnv === undefined) {
    const file = process.env.NODE_EXTRA_CA_CERTS;
    try {
      extraFromEnv = file ? readFileSync(file, "utf8") : null;
    } catch {
      extraFromEnv = null;
    }
  }
  return extraFromEnv;
}

function tlsConfig(tls: TlsOptions): Record<string, unknown> {
  const out: Record<string, unknown> = {
    rejectUnauthorized: !tls.insecure,
    ALPNProtocols: "http/1.1",
  };
  if (tls.serverName) out.serverName = tls.serverName;
  if (tls.extraCa && tls.extraCa.length > 0) {
    const env = envExtraCa();
    out.ca = [...rootCertificates, ...(env ? [env] : []), ...tls.extraCa];
  }
  return out;
}

/** Connects to `address:port` (already checked by the SSRF guard) within `timeoutMs`. */
export function openConn(
  address: string,
  port: number,
  tls: TlsOptions | null,
  timeoutMs: number,
  target: string,
  key: string,
): Promise<UpstreamConn> {
  return new Promise<UpstreamConn>((resolve, reject) => {
    let settled = false;
    let conn: UpstreamConn | null = null;
    const settle = (e: DialError | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (e === null && conn) return resolve(conn);
      conn?.destroy();
      reject(e);
    };
    const timer = setTimeout(() => settle(new DialError("timeout", target)), timeoutMs);
    Bun.connect<UpstreamConn | undefined>({
      hostname: address,
      port,
      data: undefined,
      ...(tls ? { tls: tlsConfig(tls) } : {}),
      socket: {
        open(s) {
          conn = new UpstreamConn(s, key);
          s.data = conn;
          if (settled) return conn.destroy();
          if (!tls) settle(null);
        },
        handshake(s, ok, err) {
          if (ok || tls?.insecure) settle(null);
          else settle(new DialError("tls", target, { cause: err, detail: err?.message }));
        },
        data(s, bytes) {
          s.data?.onData(bytes);
        },
        drain(s) {
          s.data?.outbox.flush();
        },
        error(s, e) {
          s.data?.onError(e);
          if (!settled)
            settle(
              new DialError(
                tls && classifyNetworkError(e) === "other" ? "tls" : classifyNetworkError(e),
                target,
                { cause: e, detail: e.message },
              ),
            );
        },
        close(s) {
          s.data?.onClose();
          if (!settled)
            settle(
              new DialError(tls ? "tls" : "reset", target, { detail: "closed during connect" }),
            );
        },
        connectError(_s, e) {
          settle(new DialError(classifyNetworkError(e), target, { cause: e }));
        },
      },
    }).catch((e: unknown) => settle(new DialError(classifyNetworkError(e), target, { cause: e })));
  });
}
