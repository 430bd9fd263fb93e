/**
 * Assembles a running crm from a Config: the runtime, the dispatcher that sends each route to
 * its handler, one listener per address, reload on SIGHUP, and graceful shutdown.
 */
import { readFileSync } from "node:fs";
import type { SocketListener } from "bun";
import type { Config } from "../config/types.ts";
import { acmeCertificateState, certificateStateOf } from "../tls/certificate-state.ts";
import type { Connection, Dispatcher, SocketData } from "./connection.ts";
import { applyConfig, createRuntime, type Runtime } from "../context.ts";
import { forward } from "./forward.ts";
import { Admission, ConnectionSet, listen, type ListenTls } from "./listener.ts";
import { plainListenerDispatcher } from "./plain-listener.ts";
import { local, type LocalRoutes } from "./local.ts";
import type { LogSink } from "../log.ts";
import { createMirrorHandler } from "../mirror/index.ts";
import { openProxyWarnings } from "../access/exposure.ts";
import { Mitm } from "./mitm.ts";
import type { Resolver } from "../net/resolver.ts";
import { formatHostPort } from "../net/host-port.ts";
import { openTunnel } from "./tunnel.ts";
import { listenerIsTls } from "../config/listen.ts";
import { TlsCertificates } from "../tls/index.ts";
import { renderTlsMetrics } from "../tls/status.ts";
import { prepareUnixPath, removeSocket, setSocketMode, socketInode } from "../net/unix-socket.ts";
import { Cluster } from "../cluster/index.ts";

export interface StartOptions {
  /** Where log lines go (tests read them); stderr by default. */
  sink?: LogSink;
  resolver?: Resolver;
}

/** Hooks features plug in: the mirror at /v2/, MITM on CONNECT. */
export interface Extensions extends LocalRoutes {
  intercept: ((conn: Connection, host: string, port: number, rest: Buffer) => boolean) | null;
}

interface Bound {
  listener: SocketListener<SocketData>;
  addr: Config["listen"][number];
  tls: boolean;
  /** For a unix socket: its path and inode, so only our own socket is removed at exit. */
  unix: { path: string; inode: number } | null;
}

/** Reads the HTTPS listener's certificate and key from files; failures name the file. */
function readListenTls(config: Config): ListenTls | null {
  if (config.tls === null || config.tls.certPath === null || config.tls.keyPath === null)
    return null;
  const { certPath, keyPath } = config.tls;
  const read = (path: string, what: string): string => {
    try {
      return readFileSync(path, "utf8");
    } catch (cause) {
      throw new Error(
        `tls.${what}: cannot read ${path}: ${(cause as NodeJS.ErrnoException).code ?? (cause as Error).message}`,
        { cause },
      );
    }
  };
  return { cert: read(certPath, "cert_path"), key: read(keyPath, "key_path") };
}

/** Everything a config needs loaded from disk, read before anything is applied. */
interface Prepared {
  config: Config;
  tls: ListenTls | null;
  mitm: Awaited<ReturnType<typeof Mitm.load>> | null;
}

async function prepare(config: Config): Promise<Prepared> {
  const tls = readListenTls(config);
  const mitm = config.mitm.enabled ? await Mitm.load(config) : null;
  return { config, tls, mitm };
}

export class CrmServer {
  private bound: Bound[] = [];
  private readonly conns = new ConnectionSet();
  private readonly admission: Admission;
  private readonly dispatch: Dispatcher;
  /** For plain listeners next to TLS ones: ACME challenges, redirect_http. */
  private readonly plainDispatch: Dispatcher;
  private stopping: Promise<void> | null = null;
  private tls: ListenTls | null = null;
  /** ACME (or file) certificates: the challenge answers, the status for /metrics and `/`. */
  readonly certificates: TlsCertificates;
  /** Set when MITM is enabled. */
  mitm: Mitm | null = null;
  /** State shared with the other replicas (cluster:); null without a cluster section. */
  cluster: Cluster | null = null;

  private constructor(
    readonly rt: Runtime,
    private readonly ext: Extensions,
  ) {
    this.admission = new Admission(rt);
    this.dispatch = {
      forward: (ex) => forward(ex, rt),
      local: (ex) => local(ex, rt, ext),
      connect: (conn, r, _head, rest) => {
        if (ext.intercept?.(conn, r.host, r.port, rest)) return;
        openTunnel(conn, r.host, r.port, rest);
      },
    };
    this.certificates = new TlsCertificates(rt, (pem) => this.swapCertificate(pem));
    this.plainDispatch = plainListenerDispatcher(this.dispatch, rt, {
      challenge: (token) => this.certificates.challenge(token),
      certificateNames: () => this.certificates.status()[0]?.names ?? [],
      httpsPort: () => {
        const b = this.bound.find((x) => x.tls && x.unix === null);
        return b ? (b.listener as SocketListener<SocketData> & { port: number }).port : null;
      },
    });
    rt.metrics.gauges = {
      connections: () => this.conns.all.size,
      certificates: () => this.mitm?.cachedCertificates ?? 0,
      tls: () => this.certificates.status(),
    };
    rt.metrics.sections.push(() => renderTlsMetrics(this.certificates.status()));
    // The status page shows what is served now, not what the files say.
    rt.sources.certificate = () => {
      const served = this.certificates.status()[0];
      return served === undefined ? certificateStateOf(rt.config) : acmeCertificateState(served);
    };
  }

  static async start(config: Config, opts: StartOptions = {}): Promise<CrmServer> {
    const prepared = await prepare(config);
    const rt = createRuntime(config, opts.sink, opts.resolver);
    const server = new CrmServer(rt, { mirror: null, intercept: null });
    // Before the mirror is built, so its token cache and quota are shared; a refused password stops start-up.
    if (config.cluster !== null) server.cluster = await Cluster.start(rt, config.cluster);
    server.applyFeatures(prepared);
    // Never waits for a CA: without a stored certificate a temporary one is served at once.
    await server.certificates.configure(config, prepared.tls);
    server.tls = server.certificates.served;
    try {
      for (const addr of config.listen) server.bound.push(await server.bind(addr));
    } catch (cause) {
      server.stopNow();
      throw new Error(`cannot listen: ${(cause as Error).message}`, { cause });
    }
    // Read at each check: a listener rebound for a new certificate keeps its address and port.
    rt.self.setListeners(() => server.addresses);
    for (const b of server.bound)
      rt.log.info("listening", { address: server.describe(b), tls: b.tls ? "on" : undefined });
    for (const w of openProxyWarnings(config)) rt.log.warn(w);
    server.certificates.start();
    return server;
  }

  private async bind(addr: Config["listen"][number]): Promise<Bound> {
    const tls = listenerIsTls(addr, this.rt.config.tls !== null);
    if (addr.unix !== undefined) {
      await prepareUnixPath(addr.unix);
      const listener = this.listenOn(addr, tls);
      setSocketMode(addr.unix, this.rt.config.unixSocketMode);
      return { listener, addr, tls, unix: { path: addr.unix, inode: socketInode(addr.unix) } };
    }
    return { listener: this.listenOn(addr, tls), addr, tls, unix: null };
  }

  /** A TLS listener gets the current certificate; a plain one beside TLS answers ACME and may redirect. */
  private listenOn(addr: Config["listen"][number], tls: boolean): SocketListener<SocketData> {
    if (tls) return listen(addr, this.rt, this.dispatch, this.conns, this.admission, this.tls);
    if (this.rt.config.tls === null)
      return listen(addr, this.rt, this.dispatch, this.conns, this.admission, null);
    const acme = this.rt.config.tls.acme !== null;
    return listen(addr, this.rt, this.plainDispatch, this.conns, this.admission, null, acme);
  }

  /**
   * Bun cannot swap a listener's certificate: each TLS listener is re-bound on its address.
   * Open connections belong to the old listener's sockets and carry on with the old certificate.
   */
  private swapCertificate(pem: ListenTls): void {
    this.tls = pem;
    if (this.stopping) return;
    for (const b of this.bound) {
      if (!b.tls || b.unix) continue;
      const l = b.listener as SocketListener<SocketData> & { hostname: string; port: number };
      this.rebind(b, l, { ...b.addr, hostname: l.hostname, port: l.port }, 0);
    }
  }

  /**
   * The new listener is bound beside the old one (SO_REUSEPORT, listener.ts) and only then is the
   * old one stopped, so no connection is refused in between; open connections keep their sockets
   * and the old certificate. If the bind fails the old listener keeps serving, and it is retried.
   */
  private rebind(
    b: Bound,
    old: SocketListener<SocketData>,
    addr: Config["listen"][number],
    tries: number,
  ): void {
    if (this.stopping || b.listener !== old) return;
    try {
      b.listener = this.listenOn(addr, true);
      old.stop(false);
    } catch (e) {
      this.rt.log.error(
        "cannot listen with the new certificate, the old one is still served; retrying",
        {
          address: formatHostPort(addr.hostname, addr.port),
          error: (e as Error).message,
          tries: tries + 1,
        },
      );
      setTimeout(
        () => this.rebind(b, old, addr, tries + 1),
        Math.min(30_000, 100 * 2 ** tries),
      ).unref();
    }
  }

  private describe(b: Bound): string {
    if (b.unix) return b.unix.path;
    const l = b.listener as SocketListener<SocketData> & { hostname: string; port: number };
    return formatHostPort(l.hostname, l.port);
  }

  /** Mirror and MITM, from a prepared config (start-up and reload). */
  private applyFeatures(p: Prepared): void {
    const { rt, ext } = this;
    ext.mirror = p.config.mirror.enabled ? createMirrorHandler(rt) : null;
    if (p.mitm) {
      for (const w of p.mitm.warnings) rt.log.warn(`MITM CA: ${w}`);
      const mitm = new Mitm(rt, p.mitm.ca, this.conns, this.dispatch);
      this.mitm = mitm;
      ext.intercept = (conn, host, port, rest) => mitm.intercept(conn, host, port, rest);
      rt.log.warn("MITM enabled: CONNECT traffic is decrypted; use for debugging only", {
        ca: p.config.mitm.caCertPath,
        hosts: p.config.mitm.hosts?.join(",") ?? "all allowed",
      });
    } else {
      this.mitm = null;
      ext.intercept = null;
    }
  }

  /**
   * SIGHUP: applies a new config without dropping connections. Everything the new config needs
   * from disk (TLS certificate, MITM CA) is read first; if any of it fails, the old config stays.
   * Listen addresses cannot change without a restart.
   */
  async reload(config: Config): Promise<void> {
    const { rt } = this;
    const same = (a: Config["listen"], b: Config["listen"]): boolean =>
      JSON.stringify(a) === JSON.stringify(b);
    const prepared = await prepare(config);
    if (!same(config.listen, rt.config.listen))
      rt.log.warn("listen addresses changed; they apply after a restart");
    if (JSON.stringify(config.cluster) !== JSON.stringify(rt.config.cluster))
      rt.log.warn("cluster section changed; it applies after a restart");
    // A changed acme section starts a new manager; the same one keeps its schedule.
    await this.certificates.configure(config, prepared.tls);
    const next = this.certificates.served;
    const tlsChanged = JSON.stringify(next) !== JSON.stringify(this.tls);
    applyConfig(this.rt, config);
    this.applyFeatures(prepared);
    if (tlsChanged && next !== null) this.swapCertificate(next);
    else if (tlsChanged)
      rt.log.warn("tls removed from the config; the listener stays TLS until a restart");
    this.certificates.start();
    rt.log.info("configuration reloaded", {
      file: config.file,
      allowed_hosts: config.allowedHosts.length,
      registries: config.mirror.registries.size,
    });
    for (const w of openProxyWarnings(config)) rt.log.warn(w);
  }

  /** Actual bound addresses (port 0 resolved); unix sockets have port 0. */
  get addresses(): Array<{ hostname: string; port: number }> {
    return this.bound.map((b) => {
      const l = b.listener as SocketListener<SocketData> & { hostname?: string; port?: number };
      return { hostname: l.hostname ?? b.unix?.path ?? "", port: l.port ?? 0 };
    });
  }

  get port(): number {
    return this.addresses.find((a) => a.port !== 0)?.port ?? 0;
  }

  get connectionCount(): number {
    return this.conns.all.size;
  }

  /**
   * SIGTERM: stop accepting, answer /healthz with 503, let requests and tunnels finish within
   * the grace period, then cut what is left.
   */
  shutdown(): Promise<void> {
    this.stopping ??= this.drain();
    return this.stopping;
  }

  private async drain(): Promise<void> {
    const { rt } = this;
    rt.draining = true;
    this.certificates.stop();
    for (const b of this.bound) b.listener.stop(false);
    const graceEnd = Date.now() + rt.config.timeouts.shutdownGraceMs;
    rt.log.info("shutting down", {
      connections: this.conns.all.size,
      grace_ms: rt.config.timeouts.shutdownGraceMs,
    });
    while (this.conns.all.size > 0 && Date.now() < graceEnd) {
      for (const c of this.conns.all) c.drain();
      await Bun.sleep(50);
    }
    if (this.conns.all.size > 0)
      rt.log.warn("grace period over, closing connections", { connections: this.conns.all.size });
    this.stopNow();
  }

  stopNow(): void {
    this.certificates.stop();
    for (const c of this.conns.all) c.socket.terminate();
    for (const b of this.bound) {
      b.listener.stop(true);
      if (b.unix) removeSocket(b.unix.path, b.unix.inode);
    }
    this.conns.stop();
    this.rt.upstream.close();
    void this.cluster?.stop();
  }
}
