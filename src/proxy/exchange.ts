/**
 * What a handler is given, and nothing else: the route a request head was sent by, and the
 * exchange for one HTTP request. Types only, a leaf under every handler (mirror, status, forward,
 * local), so handlers never import the connection that calls them (Hono keeps its handler types
 * the same way).
 */
import type { Runtime } from "../context.ts";
import type { BodyFeeder } from "../http/body.ts";
import type { RequestHead } from "../http/head.ts";
import type { RequestKind } from "../metrics.ts";
import type { Active, PullFields } from "../status/activity.ts";

export interface ConnectRoute {
  kind: "connect";
  host: string;
  port: number;
}

export interface ForwardRoute {
  kind: "forward";
  url: URL;
  host: string;
  port: number;
}

export interface LocalRoute {
  kind: "local";
  path: string;
}

export type Route = ConnectRoute | ForwardRoute | LocalRoute;

/** The routes that carry an HTTP request (CONNECT hands the socket to a tunnel instead). */
export type HttpRoute = ForwardRoute | LocalRoute;

export interface Authority {
  host: string;
  port: number;
}

/** What a handler gets for one request, typed by the route that sent it there. */
export interface Exchange<R extends HttpRoute = HttpRoute> {
  head: RequestHead;
  route: R;
  /** The request body as it arrives (piped to the upstream socket by the forward path), or null. */
  body: BodyFeeder | null;
  client: string;
  /** This request's id in rt.journal; the mirror sends it as X-Crm-Request-Id. */
  id: string;
  /** Aborted when the client goes away: cancels the upstream request. */
  signal: AbortSignal;
  /** Fields the handler wants on the request's log line (token state, cache, error, ...). */
  logFields: Record<string, string | number>;
  /** Set by the mirror once it knows which image a request pulls: logs, journal, status page. */
  pull: PullFields | null;
  /** Set by a local route that is really a feature of its own (the mirror), for logs and metrics. */
  kind?: RequestKind;
  /** Its entry on the activity board while in flight (status/record.ts). */
  tracked: Active | null;
}

export type Handler<R extends HttpRoute> = (
  ex: Exchange<R>,
  rt: Runtime,
) => Promise<Response> | Response;

/** crm's own endpoints and the mirror: origin-form requests. */
export type LocalHandler = Handler<LocalRoute>;

export function isForward(ex: Exchange): ex is Exchange<ForwardRoute> {
  return ex.route.kind === "forward";
}

export function isLocal(ex: Exchange): ex is Exchange<LocalRoute> {
  return ex.route.kind === "local";
}
