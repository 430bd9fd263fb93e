/**
 * Assembles a running crm from a Config: the runtime, the dispatcher that sends each route to
 * its handler, one listener per address, and graceful shutdown.
 */
import type { TCPSocketListener } from "bun";
import type { Config } from "./config.ts";
import type { Connection, Dispatcher, SocketData } from "./connection.ts";
import { createRuntime, type Runtime } from "./context.ts";
import { forward } from "./forward.ts";
import { Admission, ConnectionSet, listen } from "./listener.ts";
import { local, type LocalRoutes } from "./local.ts";
import { createMirrorHandler } from "./mirror/index.ts";
import { Mitm } from "./mitm.ts";
import type { LogSink } from "./log.ts";
import type { Resolver } from "./resolver.ts";
import { formatHostPort } from "./router.ts";
import { openTunnel } from "./tunnel.ts";

export interface StartOptions {
  /** Where log lines go (tests read them); stderr by default. */
  sink?: LogSink;
  resolver?: Resolver;
}

/** Hooks later features plug in: the mirror at /v2/, MITM on CONNECT. */
export interface Extensions extends LocalRoutes {
  intercept: ((conn: Connection, host: string, port: number, rest: Buffer) => boolean) | null;
}

export class CrmServer {
  private readonly listeners: TCPSocketListener<SocketData>[] = [];
  private readonly conns = new ConnectionSet();
  private stopping: Promise<void> | null = null;
  /** Set when MITM is enabled. */
  mitm: Mitm | null = null;

  private constructor(
    readonly rt: Runtime,
    private readonly ext: Extensions,
  ) {}

  static async start(config: Config, opts: StartOptions = {}): Promise<CrmServer> {
    const rt = createRuntime(config, opts.sink, opts.resolver);
    const ext: Extensions = { mirror: config.mirror.enabled ? createMirrorHandler(rt) : null, intercept: null };
    const server = new CrmServer(rt, ext);
    const dispatch: Dispatcher = {
      http: (ex) => (ex.route.kind === "forward" ? forward(ex, rt) : local(ex, rt, ext)),
      connect: (conn, r, _head, rest) => {
        if (ext.intercept?.(conn, r.host, r.port, rest)) return;
        openTunnel(conn, r.host, r.port, rest);
      },
    };
    if (config.mitm.enabled) {
      const { ca, warnings } = await Mitm.load(config);
      for (const w of warnings) rt.log.warn(`MITM CA: ${w}`);
      const mitm = new Mitm(rt, ca, server.conns, dispatch);
      server.mitm = mitm;
      ext.intercept = (conn, host, port, rest) => mitm.intercept(conn, host, port, rest);
      rt.log.warn("MITM enabled: CONNECT traffic is decrypted; use for debugging only", { ca: config.mitm.caCertPath, hosts: config.mitm.hosts?.join(",") ?? "all allowed" });
    }
    try {
      const admission = new Admission(rt);
      for (const addr of config.listen) server.listeners.push(listen(addr, rt, dispatch, server.conns, admission));
    } catch (cause) {
      server.stopNow();
      throw new Error(`cannot listen: ${(cause as Error).message}`, { cause });
    }
    for (const l of server.listeners) rt.log.info("listening", { address: formatHostPort(l.hostname, l.port) });
    return server;
  }

  /** Actual bound addresses (port 0 resolved). */
  get addresses(): Array<{ hostname: string; port: number }> {
    return this.listeners.map((l) => ({ hostname: l.hostname, port: l.port }));
  }

  get port(): number {
    return this.listeners[0]?.port ?? 0;
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
    for (const l of this.listeners) l.stop(false);
    const graceEnd = Date.now() + rt.config.timeouts.shutdownGraceMs;
    rt.log.info("shutting down", { connections: this.conns.all.size, grace_ms: rt.config.timeouts.shutdownGraceMs });
    while (this.conns.all.size > 0 && Date.now() < graceEnd) {
      for (const c of this.conns.all) c.drain();
      await Bun.sleep(50);
    }
    if (this.conns.all.size > 0) rt.log.warn("grace period over, closing connections", { connections: this.conns.all.size });
    this.stopNow();
  }

  stopNow(): void {
    for (const c of this.conns.all) c.socket.terminate();
    for (const l of this.listeners) l.stop(true);
    this.conns.stop();
  }
}
