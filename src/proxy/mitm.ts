/**
 * MITM debugging: an intercepted CONNECT is answered with 200, then TLS is terminated on the
 * same socket with a leaf certificate for the CONNECT host, signed by the operator's CA. The
 * decrypted stream is an ordinary HTTP/1.1 Connection whose origin-form requests go to the real
 * host over verified TLS, so the forward path's rules (hop-by-hop, Via, streaming, errors) and
 * its log lines apply unchanged.
 */
import { refusingSelf } from "../net/self-targets.ts";
import type { Socket } from "bun";
import type { Config } from "../config/types.ts";
import { HttpError } from "../errors.ts";
import { Connection, type Dispatcher, type SocketData } from "./connection.ts";
import type { Runtime } from "../context.ts";
import { HostMatcher } from "../host-policy.ts";
import { ALPN_HTTP1, connectionHandlers, type ConnectionSet } from "./listener.ts";
import { CertCache, LeafIssuer, caWarnings, loadCa, normalizeHost, type Ca } from "../pki/index.ts";
import { formatHostPort } from "../net/host-port.ts";
import { ESTABLISHED } from "./tunnel.ts";

interface TlsData extends SocketData {
  handshaken: boolean;
  reported: boolean;
}

export class Mitm {
  private readonly certs: CertCache;
  private readonly only: HostMatcher | null;

  constructor(
    private readonly rt: Runtime,
    readonly ca: Ca,
    private readonly conns: ConnectionSet,
    private readonly dispatch: Dispatcher,
  ) {
    this.certs = new CertCache(new LeafIssuer(ca), { maxEntries: 1000 });
    this.only = rt.config.mitm.hosts ? new HostMatcher(rt.config.mitm.hosts) : null;
  }

  /** Loads and checks the CA; any problem stops start-up (never a silent fallback to tunnelling). */
  static async load(config: Config): Promise<{ ca: Ca; warnings: string[] }> {
    const { caCertPath, caKeyPath } = config.mitm;
    if (caCertPath === null || caKeyPath === null)
      throw new Error("mitm.enabled needs ca_cert_path and ca_key_path");
    const ca = await loadCa(caCertPath, caKeyPath);
    return { ca, warnings: caWarnings(ca) };
  }

  get cachedCertificates(): number {
    return this.certs.size;
  }

  /** Returns false when the host is not to be decrypted (the caller tunnels it untouched). */
  intercept(conn: Connection, host: string, port: number, rest: Buffer): boolean {
    if (this.only && !this.only.matches(host)) return false;
    const target = formatHostPort(host, port);
    if (rest.length > 0) {
      // The client sent its ClientHello before our 200: those bytes were read as plain data and
      // cannot be fed back into a TLS layer. Curl, Go and Docker all wait for the 200.
      this.rt.log.warn("MITM: client sent TLS data before the CONNECT answer; closing", {
        client: conn.client,
        target,
      });
      conn.close();
      return true;
    }
    // The leaf first, so a host crm cannot issue for is refused with a status, not a TLS EOF after
    // a 200. Then the 200, the preconnect (the upstream's DNS, TCP and TLS overlap the client's
    // handshake) and the upgrade run in this one task: the ClientHello cannot reach the plain-text
    // handlers before upgradeTLS below.
    let leaf;
    try {
      normalizeHost(host);
      leaf = this.certs.get(host);
    } catch (e) {
      this.rt.log.warn("MITM: cannot issue a certificate", {
        client: conn.client,
        target,
        reason: (e as Error).message,
      });
      conn.fail(
        new HttpError(
          502,
          `crm cannot issue a certificate for ${JSON.stringify(host)}: ${(e as Error).message}`,
        ),
      );
      return true;
    }
    conn.outbox.write(ESTABLISHED);
    conn.handOver();
    this.rt.upstream.preconnect(
      new URL(`https://${target}/`),
      refusingSelf(
        this.rt.resolve,
        this.rt.self,
        Number(new URL(`https://${target}/`).port) || 443,
      ),
      this.rt.config.insecureTls,
      this.rt.config.timeouts.connectMs,
    );
    const data: TlsData = { conn: null, handshaken: false, reported: false };
    const base = connectionHandlers(
      this.conns,
      (s) => new Connection(s, this.rt, this.dispatch, { host, port }, conn.client),
    );
    const [, tls] = (conn.socket as Socket<SocketData>).upgradeTLS<TlsData>({
      data,
      tls: { cert: leaf.certPem, key: leaf.keyPem, ALPNProtocols: ALPN_HTTP1 },
      socket: {
        ...(base as unknown as import("bun").SocketHandler<TlsData>),
        handshake: (s, success, err) => {
          s.data.handshaken = success;
          if (!success) {
            s.data.reported = true;
            this.rejected(conn.client, target, err);
          }
        },
        close: (s) => {
          if (!s.data.handshaken && !s.data.reported) this.rejected(conn.client, target, null);
          base.close?.(s as unknown as Socket<SocketData>, undefined);
        },
      },
    });
    if (tls.data.conn === null) {
      const c = new Connection(
        tls as unknown as Socket<SocketData>,
        this.rt,
        this.dispatch,
        { host, port },
        conn.client,
      );
      tls.data.conn = c;
      this.conns.add(c);
    }
    this.rt.log.debug("MITM: intercepting", {
      client: conn.client,
      target,
      certificates: this.certs.size,
    });
    return true;
  }

  private rejected(client: string, target: string, err: Error | null): void {
    this.rt.log.warn(
      `MITM: TLS handshake with the client failed for ${target}; the client probably does not trust crm's CA (${this.ca.certPath ?? "mitm.ca_cert_path"}): install it as described in the README, section "MITM debugging"`,
      {
        client,
        reason: err?.message ?? "connection closed during the handshake",
      },
    );
  }
}
