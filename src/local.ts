/**
 * crm's own endpoints, reached with origin-form requests only: an absolute-form
 * `http://host/healthz` is a forward request and never lands here.
 */
import type { Exchange } from "./connection.ts";
import type { Runtime } from "./context.ts";
import { headerValue } from "./http/head.ts";
import { textResponse as text } from "./http/response.ts";
import { HttpError } from "./errors.ts";
import { errorResponse, MirrorError } from "./mirror/errors.ts";
import { isStatusPath, statusEndpoint } from "./status/endpoints.ts";

export type LocalHandler = (ex: Exchange, rt: Runtime) => Promise<Response> | Response;

function healthz(ex: Exchange, rt: Runtime): Response {
  if (ex.head.method !== "GET" && ex.head.method !== "HEAD") return text(405, "method not allowed", { allow: "GET, HEAD" });
  // 503 while draining tells a load balancer to stop sending new work before crm exits.
  return rt.draining ? text(503, "shutting down") : text(200, "ok");
}

function metrics(ex: Exchange, rt: Runtime): Response {
  if (!rt.config.metrics.enabled) return text(404, "crm: metrics are disabled (metrics.enabled)");
  if (!rt.access.metricsAllowed(ex.client)) return text(403, "crm: your address is not in metrics.clients");
  const body = rt.metrics.render();
  return new Response(body, {
    headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8", "content-length": String(Buffer.byteLength(body)) },
  });
}

export interface LocalRoutes {
  /** Handles `/v2/...` when the mirror is enabled (set by the mirror module). */
  mirror: LocalHandler | null;
}

export async function local(ex: Exchange, rt: Runtime, routes: LocalRoutes): Promise<Response> {
  if (ex.route.kind !== "local") throw new Error("local() called for a non-local route");
  const path = ex.route.path.split("?")[0] ?? "";
  if (path === "/healthz") return healthz(ex, rt);
  if (path === "/metrics") return metrics(ex, rt);
  if (isStatusPath(path) && (ex.head.method === "GET" || ex.head.method === "HEAD")) return statusEndpoint(ex, rt, path);
  const mirrorPath = routes.mirror ? stripMirrorPrefix(ex.route.path, rt.config.mirror.pathPrefix) : null;
  if (routes.mirror && mirrorPath !== null) {
    ex.kind = "mirror";
    // With a cluster the rate is counted in its store (limits/request-rate.ts check).
    const wait = !rt.rate.enabled ? null : rt.rate.shared !== null ? await rt.rate.check(ex.client) : rt.rate.take(ex.client);
    if (wait !== null) {
      rt.metrics.limited(ex.client, "rate");
      ex.logFields.error = "rate limited";
      return errorResponse(new MirrorError(429, "TOOMANYREQUESTS", "too many requests from your address (limits.requests_per_second); slow down", { headers: { "retry-after": String(wait) } }));
    }
    try {
      await rt.access.authenticate("mirror", headerValue(ex.head.headers, "authorization"), ex.client);
    } catch (e) {
      // Registry clients parse OCI error JSON; WWW-Authenticate / Retry-After stay in e.headers.
      if (!(e instanceof HttpError)) throw e;
      if (e.status === 429) rt.metrics.limited(ex.client, "brake");
      return errorResponse(new MirrorError(e.status, e.status === 429 ? "TOOMANYREQUESTS" : "UNAUTHORIZED", e.message, { headers: e.headers }));
    }
    return routes.mirror({ ...ex, route: { kind: "local", path: mirrorPath } }, rt);
  }
  return text(404, `crm: no such endpoint ${path.slice(0, 200)}`);
}

/**
 * `/SECRET/v2/...` → `/v2/...` when mirror.path_prefix is `/SECRET` (a Docker mirror URL may
 * carry a path but no credentials); null when the path is not the mirror's.
 */
function stripMirrorPrefix(target: string, prefix: string): string | null {
  if (prefix !== "") {
    if (!target.startsWith(prefix + "/")) return null;
    target = target.slice(prefix.length);
  }
  const path = target.split("?")[0] ?? "";
  return path === "/v2" || path.startsWith("/v2/") ? target : null;
}
