/**
 * One client connection speaking HTTP/1.1 (plain, or decrypted by MITM): read a head, route it,
 * stream the body to the handler, write the handler's Response, and keep the connection for
 * the next request when both sides allow. CONNECT hands the socket to a tunnel.
 */
import type { Socket } from "bun";
import { isUnknownClient, stripForwarding, unknownClient } from "../access/client-address.ts";
import { DialError, HttpError } from "../errors.ts";
import type { Runtime } from "../context.ts";
import { BodyFeeder } from "../http/body.ts";
import {
  headerValue,
  readRequestHead,
  requestFraming,
  wantsKeepAlive,
  type RequestHead,
} from "../http/head.ts";
import { errorHead, writeResponse, type WriteResult } from "../http/response.ts";
import { formatHeaders, redactUrl } from "../log.ts";
import type { RequestKind } from "../metrics.ts";
import { Outbox } from "../net/outbox.ts";
import { readProxyHeader } from "../access/proxy-protocol.ts";
import {
  isForward,
  isLocal,
  type Authority,
  type ConnectRoute,
  type Exchange,
  type ForwardRoute,
  type HttpRoute,
  type LocalRoute,
  type Route,
} from "./exchange.ts";
import { errorAnswer } from "./error-answer.ts";
import { admit } from "./request-gate.ts";
import { route } from "./router.ts";
import { asStreamResponse, discardBody } from "../http/relayed.ts";
import { recordExchange, recordRefusal, trackExchange } from "../status/record.ts";
import { peerAddress } from "../access/peer-address.ts";
import { CHALLENGE_ONLY } from "../tls/challenge-budget.ts";
import { withStoreBudget } from "../cluster/budget.ts";

export interface SocketData {
  conn: Connection | null;
}

/** Where a routed request goes, one entry per route kind. */
export interface Dispatcher {
  forward(ex: Exchange<ForwardRoute>): Promise<Response>;
  local(ex: Exchange<LocalRoute>): Promise<Response>;
  connect(conn: Connection, route: ConnectRoute, head: RequestHead, rest: Buffer): void;
}

/** Hooks a CONNECT handler installs to receive the client's side of the socket. */
export interface TunnelPeer {
  data(d: Buffer): void;
  end(): void;
  close(): void;
}

/**
 * "proxy": waiting for the PROXY protocol header (listen[].proxy_protocol).
 * "upgraded": the socket now carries TLS handled by another Connection (MITM); this one ignores it.
 */
type Phase = "proxy" | "head" | "request" | "tunnel" | "upgraded" | "closed";

/**
 * Called once a PROXY header named the real client: admission re-checks it (access.clients,
 * per-client connection count); false closes the connection.
 */
export type ProxiedHook = (conn: Connection, from: string, to: string) => boolean;

/** How long a closed connection waits for the client's FIN before it is cut (and while a slow client reads the last bytes). */
const LINGER_MS = 30_000;

export class Connection {
  readonly outbox: Outbox;
  /** The address the connection comes from: the socket's peer, or what a PROXY header named. */
  peer: string;
  /** Who the current request is from: `peer`, or the client a trusted front names (client-address.ts). */
  client: string;
  /** Absolute time (ms) after which the sweeper expires this connection. */
  deadline: number;
  private phase: Phase = "head";
  private buf: Buffer | null = null;
  private requests = 0;
  private feeder: BodyFeeder | null = null;
  private abort: AbortController | null = null;
  private peerEnded = false;
  private paused = false;
  private tunnel: TunnelPeer | null = null;
  /**
   * Bytes of a next request arrived before this request's answer was done: a FIN then means "no
   * more requests". Reset once every answer is out and nothing is buffered (afterAnswer): one
   * pipelined pair must not make every later FIN on the connection look like the end of a pipeline.
   */
  private pipelined = false;
  /**
   * A stranger on the plain listener beside ACME (listener.ts admitStranger): it may reach only
   * the challenge route, so it gets a short head timeout and no proxy request is considered.
   */
  challengeOnly = false;
  /** A malformed request body seen mid-stream: it, not the handler's failure, is the answer. */
  private bodyError: HttpError | null = null;

  constructor(
    readonly socket: Socket<SocketData>,
    readonly rt: Runtime,
    private readonly dispatch: Dispatcher,
    /** Set for a decrypted MITM connection: origin-form requests go to this host. */
    readonly secureAuthority: Authority | null = null,
    client?: string,
    /** Set on a proxy_protocol listener: the first bytes must be a PROXY header. */
    private readonly proxied: ProxiedHook | null = null,
  ) {
    this.outbox = new Outbox(socket as Socket<unknown>);
    // A unix-socket peer has no address: the socket's file mode decides who reaches it.
    const remote = socket.remoteAddress as string | undefined;
    this.peer = client ?? (remote === undefined ? "unix" : peerAddress(remote));
    this.client = this.peer;
    this.deadline = Date.now() + rt.config.timeouts.headerMs;
    if (proxied !== null) this.phase = "proxy";
  }

  /** Marks a challenge-only connection (see `challengeOnly`). */
  limitToChallenges(): void {
    this.challengeOnly = true;
    this.deadline = Math.min(this.deadline, Date.now() + this.headMs);
  }

  /** How long a request head may take (and, for a stranger, the wait for the next one). */
  private get headMs(): number {
    const { headerMs } = this.rt.config.timeouts;
    return this.challengeOnly ? Math.min(headerMs, CHALLENGE_ONLY.headMs) : headerMs;
  }

  get idle(): boolean {
    return this.phase === "head" && this.buf === null;
  }

  /** Read through a getter: the phase changes under an await, which TypeScript cannot see. */
  private get isClosed(): boolean {
    return this.phase === "closed";
  }

  // ---- socket events (from the listener or the MITM TLS socket) ----

  onData(d: Buffer): void {
    switch (this.phase) {
      case "proxy":
        this.buf = this.buf ? Buffer.concat([this.buf, d]) : d;
        this.readProxy();
        return;
      case "head":
        if (this.buf === null) this.deadline = Date.now() + this.headMs;
        this.buf = this.buf ? Buffer.concat([this.buf, d]) : d;
        this.readHead();
        return;
      case "request":
        this.touch();
        this.onRequestBytes(d);
        return;
      case "tunnel":
        this.tunnel?.data(d);
        return;
      default:
        return;
    }
  }

  onDrain(): void {
    if (this.phase === "request") this.touch();
    this.outbox.flush();
  }

  onEnd(): void {
    if (this.phase === "upgraded") return;
    this.peerEnded = true;
    if (this.phase === "tunnel") this.tunnel?.end();
    else if (this.phase === "request") {
      if (this.feeder !== null) this.feeder.fail(new Error("client sent FIN mid-body"));
      // A FIN after a bodiless request, with nothing pipelined, is a client that gave up: its
      // upstream request is cancelled as for an RST. After a body it may be an HTTP/1.0-style
      // half-close that still waits for the answer (the feeder ignores a FIN after the body).
      // A client that pipelined sends its FIN after its last request and still reads every answer.
      else if (this.buf === null && !this.pipelined)
        this.abort?.abort(new Error("client sent FIN"));
    } else if (this.phase === "head" || this.phase === "proxy") {
      if (this.buf !== null && this.buf.length > 0)
        this.fail(new HttpError(400, "connection closed inside the request head"));
      else this.close();
    }
  }

  onClose(): void {
    const was = this.phase;
    this.phase = "closed";
    this.outbox.kill();
    this.feeder?.fail(new Error("client closed the connection"));
    this.abort?.abort(new Error("client closed the connection"));
    if (was === "tunnel") this.tunnel?.close();
  }

  /** Called by the sweeper once `deadline` has passed. */
  expire(): void {
    if (this.phase === "upgraded") return;
    if (this.phase === "closed") {
      this.socket.terminate();
      return;
    }
    if (this.phase === "proxy")
      this.fail(new HttpError(400, "PROXY protocol header not received in time"));
    else if (this.phase === "head") {
      // A client that never finished its head gets 408 (RFC 9110 §15.5.9); an idle kept-alive
      // connection is simply closed, as clients expect.
      if (this.buf !== null || this.requests === 0)
        this.fail(new HttpError(408, "request head not received in time"));
      else this.close();
    } else if (this.phase === "tunnel") {
      this.rt.log.debug("tunnel idle timeout", { client: this.client });
      this.close();
      this.tunnel?.close();
    } else if (this.phase === "request") {
      // Nothing moved either way for timeouts.idle: a client that stopped reading or sending,
      // or an upstream that went silent mid-body. Free the upstream and the socket.
      this.rt.log.warn("request idle timeout, closing", { client: this.client });
      this.abort?.abort(new Error("idle timeout"));
      this.feeder?.fail(new Error("idle timeout"));
      this.close();
    }
  }

  /** On shutdown: idle connections close now, busy ones after their current response. */
  drain(): void {
    if (this.idle) this.close();
  }

  // ---- tunnel hand-off ----

  /** Gives the client socket to a tunnel; `peer` receives the client's bytes from now on. */
  becomeTunnel(peer: TunnelPeer): void {
    this.phase = "tunnel";
    this.tunnel = peer;
    this.touch();
  }

  /** MITM took the socket over with upgradeTLS; the old handlers keep seeing ciphertext (bun.md). */
  handOver(): void {
    this.phase = "upgraded";
    this.deadline = Infinity;
  }

  /** Traffic moved (tunnel bytes, request body, response progress): push the idle deadline out. */
  touch(): void {
    this.deadline = Date.now() + this.rt.config.timeouts.idleMs;
  }

  pause(): void {
    if (!this.paused) {
      this.paused = true;
      this.socket.pause();
    }
  }

  resume(): void {
    if (this.paused && this.phase !== "closed") {
      this.paused = false;
      this.socket.resume();
    }
  }

  /** Sends a complete error answer, then closes once it is flushed. */
  fail(err: HttpError | DialError, method = "GET"): void {
    if (this.phase === "closed") return;
    // Anything else thrown while reading a request is still answered as a bad request.
    if (!(err instanceof HttpError) && !(err instanceof DialError))
      err = new HttpError(400, "malformed request", { cause: err });
    const headers = err instanceof HttpError ? err.headers : {};
    this.outbox.write(errorHead(err.status, err.message, headers, method));
    void this.closeAfterFlush();
  }

  /** Ends the connection with a TCP reset (Bun's terminate()): the client sees an error, not an end. */
  reset(): void {
    this.phase = "closed";
    this.outbox.kill();
    this.socket.terminate();
  }

  close(): void {
    this.phase = "closed";
    this.lingerThenTerminate();
    this.socket.end();
  }

  async closeAfterFlush(): Promise<void> {
    this.phase = "closed";
    this.lingerThenTerminate();
    await this.outbox.drained();
    this.socket.end();
  }

  /**
   * end() sends our FIN, but with allowHalfOpen the socket lives until the client closes too.
   * A client that never does is cut after a short linger, so closed connections cannot pile up.
   */
  private lingerThenTerminate(): void {
    this.deadline = Math.min(this.deadline, Date.now() + LINGER_MS);
  }

  // ---- request handling ----

  private readProxy(): void {
    const buf = this.buf as Buffer;
    // Only the balancer may name the client: from anyone else a PROXY header is a forged identity.
    if (!this.rt.clientAddress.trusts(this.peer)) {
      this.rt.log.warn("PROXY header from a peer not in access.trusted_proxies, refused", {
        peer: this.peer,
      });
      this.fail(
        new HttpError(
          400,
          "this listener takes connections only from the balancers in access.trusted_proxies",
        ),
      );
      return;
    }
    let r;
    try {
      r = readProxyHeader(buf);
    } catch (e) {
      this.rt.log.warn("connection without a valid PROXY header, refused", {
        peer: this.peer,
        reason: (e as Error).message,
      });
      this.fail(new HttpError(400, (e as Error).message, { cause: e }));
      return;
    }
    if (r.kind === "incomplete") return;
    this.buf = null;
    this.phase = "head";
    // No client named (v1 UNKNOWN, v2 UNSPEC, UNIX or LOCAL): an identity that is no address
    // (client-address.ts unknownClient), while `peer` stays the balancer for its connection count.
    if (r.client === null) this.client = unknownClient(this.peer);
    else if (r.client !== this.peer) {
      const from = this.peer;
      if (!(this.proxied as ProxiedHook)(this, from, r.client)) return;
      this.peer = r.client;
      this.client = r.client;
    }
    if (r.rest.length > 0) this.onData(r.rest);
  }

  private readHead(): void {
    const buf = this.buf;
    if (buf === null) return;
    // 0x16 starts a TLS handshake record, never an HTTP method: a client trying https on a
    // plain port (skopeo does before falling back). Refusing at once lets it fall back now.
    if (buf[0] === 0x16) {
      this.fail(new HttpError(400, "TLS handshake received on a plain-HTTP port"));
      return;
    }
    let r;
    try {
      r = readRequestHead(buf);
    } catch (e) {
      this.fail(e as HttpError);
      return;
    }
    if (r.kind === "incomplete") return;
    this.buf = null;
    const { head, rest } = r;
    // With a cluster, the request's hooks share one store budget (cluster/budget.ts).
    void (this.rt.access.shared !== null
      ? withStoreBudget(() => this.handle(head, rest))
      : this.handle(head, rest));
  }

  private onRequestBytes(d: Buffer): void {
    const f = this.feeder;
    if (f && !f.done) {
      let rest: Buffer | null;
      try {
        rest = f.feed(d);
      } catch (e) {
        // A malformed chunked body: the handler's stream errors, and the answer is 400.
        this.bodyError = e as HttpError;
        f.fail(e as HttpError);
        this.abort?.abort(e);
        return;
      }
      if (rest === null) return;
      d = rest;
    }
    // Bytes past this request's body: a pipelined request, read after the response.
    if (d.length > 0) this.pipelined = true;
    this.buf = this.buf ? Buffer.concat([this.buf, d]) : d;
    this.pause();
  }

  /**
   * One request, in the order its checks must run: who it is from, the gate (rate, credentials)
   * for proxy requests, the route (allow-list), then the exchange with its handler.
   */
  private async handle(head: RequestHead, rest: Buffer): Promise<void> {
    this.requests++;
    const started = performance.now();
    if (!this.identify(head)) return;
    // From here on, bytes belong to this request (its body, a tunnel's first bytes), never to a
    // new head: while authentication awaits, they are held in `buf` and taken up below.
    this.phase = "request";
    this.deadline = Infinity;
    if (!(await this.passGate(head))) return;
    if (this.buf !== null) {
      rest = Buffer.concat([rest, this.buf]);
      this.buf = null;
    }
    const r = this.routeOrRefuse(head, started);
    if (r === null) return;
    if (r.kind === "connect") {
      this.phase = "tunnel";
      this.resume();
      this.dispatch.connect(this, r, head, rest);
      return;
    }
    await this.exchange(head, r, rest, started);
  }

  /** Who the request is from; false when that client is refused (the answer is sent). */
  private identify(head: RequestHead): boolean {
    // Behind a trusted front the request names its client; anyone else's forwarding fields go.
    // Inside a decrypted tunnel the client is the tunnel's, and no field in it is vouched for.
    // On a PROXY listener the header names the client, and the bytes after it are a client's,
    // v2 LOCAL included (HAProxy sends LOCAL for relayed clients of unix-socket frontends): the
    // same holds for its fields.
    // From a tunnel crm opened to itself the client is the one that asked for the tunnel, never
    // crm's own address, and nothing it sends about a client is vouched for (net/self-targets.ts).
    const tunnelled = this.rt.self.claimedBy(this.socket.remoteAddress, this.socket.remotePort);
    if (tunnelled !== null) {
      this.client = tunnelled;
      stripForwarding(head.headers);
    } else if (this.secureAuthority === null && this.proxied === null)
      this.client = this.rt.clientAddress.resolve(this.peer, head.headers);
    else stripForwarding(head.headers);
    // A balancer's health check (v2 LOCAL) names no client and must still reach /healthz.
    const healthCheck = isUnknownClient(this.client) && head.target === "/healthz";
    if (this.client !== this.peer && !healthCheck && !this.rt.access.clientAllowed(this.client)) {
      // access.clients holds for the client a trusted front names, as for a direct one.
      this.rt.log.info("client not in access.clients, refused", {
        client: this.client,
        via: this.peer,
      });
      this.fail(new HttpError(403, "crm: your address is not in access.clients"), head.method);
      return false;
    }
    return true;
  }

  /** Proxy requests pass request-gate.ts; false when refused (answered) or the client left. */
  private async passGate(head: RequestHead): Promise<boolean> {
    // Proxy requests authenticate before the allow-list is consulted, so a stranger cannot map
    // the allow-list by telling 403 from 407. RFC 9110 §11.7.2: the credentials are crm's own
    // and are removed as hop-by-hop before anything is forwarded.
    const proxyRequest =
      this.secureAuthority === null && (head.method === "CONNECT" || !head.target.startsWith("/"));
    // A stranger let in for ACME challenges never proxies: refused before any limit or password
    // check spends anything on it (plain-listener.ts answers its challenge requests).
    if (proxyRequest && this.challengeOnly) {
      this.rt.log.debug(
        "proxy request from outside access.clients on the ACME plain listener, refused",
        { client: this.client },
      );
      this.fail(
        new HttpError(403, "crm: only ACME challenges are answered for your address"),
        head.method,
      );
      return false;
    }
    if (proxyRequest) {
      let refusal = admit(
        this.rt,
        "proxy",
        this.client,
        headerValue(head.headers, "proxy-authorization"),
      );
      if (refusal instanceof Promise) {
        this.pause();
        refusal = await refusal;
        // The client may have gone while the password was checked: nothing may be dialled for it.
        if (refusal === null && this.isClosed) return false;
      }
      if (refusal !== null) {
        const what = refusal.reason === "rate" ? "rate limited" : "proxy authentication failed";
        this.rt.log.info(what, {
          client: this.client,
          method: head.method,
          target: redactUrl(head.target),
          status: refusal.status,
          retry_after: refusal.headers["retry-after"],
        });
        this.fail(
          new HttpError(refusal.status, refusal.message, { headers: refusal.headers }),
          head.method,
        );
        return false;
      }
    }
    return true;
  }

  /** The route (allow-list applied); null when refused, which is answered, counted and recorded. */
  private routeOrRefuse(head: RequestHead, started: number): Route | null {
    try {
      return route(head, this.rt.policy, this.secureAuthority);
    } catch (e) {
      const err = e as HttpError;
      this.rt.metrics.observe(
        head.method === "CONNECT" ? "connect" : "forward",
        err.status,
        0,
        0,
        (performance.now() - started) / 1000,
      );
      if (err.status === 403)
        this.rt.log.info("refused", {
          client: this.client,
          method: head.method,
          target: redactUrl(head.target),
          reason: err.message,
        });
      recordRefusal(
        this.rt,
        this.client,
        head.method === "CONNECT" ? "connect" : "forward",
        head.method,
        redactUrl(head.target),
        err.status,
        err.message,
      );
      this.fail(err, head.method);
      return null;
    }
  }

  /** The request's body reader, after the checks that refuse it (417, 413); undefined when refused. */
  private bodyOf(head: RequestHead, r: HttpRoute, rest: Buffer): BodyFeeder | null | undefined {
    let feeder: BodyFeeder | null = null;
    try {
      const framing = requestFraming(head);
      const expect = headerValue(head.headers, "expect");
      if (expect !== null && expect.toLowerCase() !== "100-continue")
        throw new HttpError(417, `unsupported Expect: ${expect}`);
      const maxBody = r.kind === "forward" ? this.rt.config.limits.maxBody : Infinity;
      if (framing.kind === "length" && framing.length > maxBody) {
        throw new HttpError(
          413,
          `request body of ${framing.length} bytes exceeds limits.max_body (${maxBody} bytes)`,
        );
      }
      if (framing.kind !== "none") {
        feeder = new BodyFeeder(framing, this, maxBody);
        // RFC 9110 §10.1.1: the request passed every check, so the client may send its body.
        if (expect !== null && r.kind === "forward" && rest.length === 0)
          this.outbox.write("HTTP/1.1 100 Continue\r\n\r\n");
      }
    } catch (e) {
      this.fail(e as HttpError, head.method);
      return undefined;
    }
    return feeder;
  }

  /** An HTTP request with its handler: dispatch, write the answer, then keep or end the connection. */
  private async exchange(
    head: RequestHead,
    r: HttpRoute,
    rest: Buffer,
    started: number,
  ): Promise<void> {
    const feeder = this.bodyOf(head, r, rest);
    if (feeder === undefined) return;
    const abort = this.startBody(feeder, rest);
    const ex: Exchange = {
      head,
      route: r,
      body: feeder,
      client: this.client,
      id: this.rt.journal.nextId(),
      signal: abort.signal,
      logFields: {},
      pull: null,
      tracked: null,
    };
    if (this.rt.log.enabled("debug"))
      this.rt.log.debug(`> ${head.method} ${redactUrl(head.target)}`, {
        client: this.client,
        headers: formatHeaders(head.headers),
      });
    let sent = 0;
    trackExchange(
      this.rt,
      ex,
      () => redactUrl(r.kind === "forward" ? r.url.href : head.target),
      () => (this.secureAuthority ? "mitm" : (ex.kind ?? ex.route.kind)),
      () => sent + (feeder?.bytes ?? 0),
    );
    const { res, close: ownError } = await this.answerFor(ex);
    if (this.isClosed) {
      await discardBody(res);
      this.logRequest(ex, res.status, 0, started, "client gone");
      return;
    }
    if (this.rt.log.enabled("debug"))
      this.rt.log.debug(`< ${res.status} ${redactUrl(head.target)}`, {
        client: this.client,
        headers: formatHeaders(res.headers),
      });
    // A client that pipelined more requests before its FIN still gets every answer.
    const ended = this.peerEnded && this.buf === null;
    // A stranger's connection serves one challenge answer: a kept-alive one would be a budget
    // slot it could hold with a GET now and then, keeping the CA's validators out.
    const keepAlive =
      wantsKeepAlive(head) && !this.rt.draining && !ended && !ownError && !this.challengeOnly;
    const w = await writeResponse(this.outbox, res, {
      method: head.method,
      version: head.version,
      keepAlive,
      progress: (bytes) => {
        sent = bytes;
        this.touch();
      },
    });
    this.logRequest(ex, res.status, w.bytes, started, w.complete ? undefined : "incomplete");
    this.abort = null;
    this.feeder = null;
    this.bodyError = null;
    if (this.isClosed) return;
    await this.afterAnswer(head, res, w, feeder === null || feeder.complete);
  }

  /** The request's body starts flowing to its handler; the controller is aborted when the client goes. */
  private startBody(feeder: BodyFeeder | null, rest: Buffer): AbortController {
    this.touch();
    this.feeder = feeder;
    const abort = new AbortController();
    this.abort = abort;
    if (rest.length > 0) this.onRequestBytes(rest);
    // A FIN that came before this controller did (in the request's own packet, or while the
    // password was checked) would otherwise be lost: the same rule as onEnd, applied now.
    if (this.peerEnded && this.buf === null && !this.pipelined) {
      if (feeder === null) abort.abort(new Error("client sent FIN"));
      else if (feeder.wantsMore) feeder.fail(new Error("client sent FIN mid-body"));
    }
    if (this.buf === null && (feeder === null || feeder.wantsMore)) this.resume();
    return abort;
  }

  /**
   * The handler's answer, or the one error-answer.ts makes of what it threw (`close`: every error
   * crm answers itself outside the mirror ends the connection), paced for bandwidth limits.
   */
  private async answerFor(ex: Exchange): Promise<{ res: Response; close: boolean }> {
    let res: Response;
    let close = false;
    try {
      res = await (isForward(ex)
        ? this.dispatch.forward(ex)
        : isLocal(ex)
          ? this.dispatch.local(ex)
          : Promise.reject(new Error("no handler for this route")));
    } catch (e) {
      // A malformed request body seen mid-stream, not the handler's failure, is the answer.
      ({ res, close } = errorAnswer(this.bodyError ?? e, ex, this.rt));
    }
    // Bandwidth limits pace the body's reads from the upstream side (bandwidth.ts).
    if (this.rt.bandwidth.active) res = this.rt.bandwidth.pace(asStreamResponse(res), this.client);
    return { res, close };
  }

  /** After an answer: the next request on this connection, or its end (cut, reset or flushed). */
  private async afterAnswer(
    head: RequestHead,
    res: Response,
    w: WriteResult,
    bodyRead: boolean,
  ): Promise<void> {
    if (!w.keepAlive || !bodyRead || this.rt.draining || (this.peerEnded && this.buf === null)) {
      // An incomplete body must look truncated to the client, so nothing more is flushed. When
      // the close itself delimits the body (HTTP/1.0, no Content-Length), a FIN would make the cut
      // body look whole: reset the connection instead (RFC 9112 §6.3, §8).
      if (
        !w.complete &&
        head.version === "HTTP/1.0" &&
        !/^\d+$/.test(res.headers.get("content-length") ?? "")
      )
        this.reset();
      else if (!w.complete) this.close();
      else await this.closeAfterFlush();
      return;
    }
    this.phase = "head";
    this.deadline =
      Date.now() + (this.challengeOnly ? this.headMs : this.rt.config.timeouts.idleMs);
    if (this.buf !== null) {
      this.deadline = Date.now() + this.headMs;
      this.resume();
      this.readHead();
      // The client has finished sending, so a head still incomplete now never will be.
      if (this.peerEnded && this.phase === "head" && this.buf !== null)
        this.fail(new HttpError(400, "connection closed inside the request head"));
    } else {
      // Idle with every answer out: the pipeline, if there was one, is over.
      this.pipelined = false;
      this.resume();
    }
  }

  private logRequest(
    ex: Exchange,
    status: number,
    bytesOut: number,
    started: number,
    note?: string,
  ): void {
    const kind: RequestKind = this.secureAuthority ? "mitm" : (ex.kind ?? ex.route.kind);
    const ms = performance.now() - started;
    this.rt.metrics.observe(kind, status, this.feeder?.bytes ?? 0, bytesOut, ms / 1000);
    this.rt.metrics.client(this.client, bytesOut);
    const target = redactUrl(ex.route.kind === "forward" ? ex.route.url.href : ex.head.target);
    recordExchange(this.rt, ex, kind, target, status, this.feeder?.bytes ?? 0, bytesOut, ms, note);
    if (!this.rt.log.enabled("info")) return;
    this.rt.log.info(`${ex.head.method} ${target}`, {
      kind,
      client: this.client,
      status,
      in: this.feeder?.bytes ?? 0,
      out: bytesOut,
      ms: Math.round(ms),
      ...ex.pull,
      ...ex.logFields,
      note,
    });
  }
}
