/**
 * crm's own endpoints, reached with origin-form requests only: an absolute-form
 * `http://host/healthz` is a forward request and never lands here.
 */
import type { Exchange, LocalHandler, LocalRoute } from "./exchange.ts";
import type { Runtime } from "../context.ts";
import { headerValue } from "../http/head.ts";
import { textResponse as text } from "../http/response.ts";
import { errorResponse, MirrorError } from "../mirror/errors.ts";
import { markMirrorAnswer } from "../mirror/index.ts";
import { statusAllowed } from "../status/config.ts";
import { isStatusPath, statusEndpoint } from "../status/live/endpoints.ts";
import { isRequestsPath, requestsAnswer } from "../status/requests-endpoint.ts";
import { admit } from "./request-gate.ts";

function healthz(ex: Exchange<LocalRoute>, rt: Runtime): Response {
  if (ex.head.method !== "GET" && ex.head.method !== "HEAD")
    return text(405, "method not allowed", { allow: "GET, HEAD" });
  // 503 while draining tells a load balancer to stop sending new work before crm exits.
  return rt.draining ? text(503, "shutting down") : text(200, "ok");
}

function metrics(ex: Exchange<LocalRoute>, rt: Runtime): Response {
  if (!rt.config.metrics.enabled) return text(404, "crm: metrics are disabled (metrics.enabled)");
  if (!rt.access.metricsAllowed(ex.client))
    return text(403, "crm: your address is not in metrics.clients");
  const body = rt.metrics.render();
  return new Response(body, {
    headers: {
      "content-type": "text/plain; version=0.0.4; charset=utf-8",
      "content-length": String(Buffer.byteLength(body)),
    },
  });
}

export interface LocalRoutes {
  /** Handles `/v2/...` when the mirror is enabled (set by the mirror module). */
  mirror: LocalHandler | null;
}

export async function local(
  ex: Exchange<LocalRoute>,
  rt: Runtime,
  routes: LocalRoutes,
): Promise<Response> {
  const path = ex.route.path.split("?")[0] ?? "";
  if (path === "/healthz") return healthz(ex, rt);
  if (path === "/metrics") return metrics(ex, rt);
  if (isStatusPath(path) && (ex.head.method === "GET" || ex.head.method === "HEAD")) {
    // Every client's address and images are on it: only status.clients may look (status/config.ts),
    // checked before any password is.
    if (!statusAllowed(rt.config.status, ex.client))
      return text(403, "crm: your address is not in status.clients");
    const refusal = await admit(
      rt,
      "page",
      ex.client,
      headerValue(ex.head.headers, "authorization"),
      false,
    );
    if (refusal !== null) return text(refusal.status, `crm: ${refusal.message}`, refusal.headers);
    return statusEndpoint(ex, rt, path);
  }
  const mirrorPath = routes.mirror
    ? stripMirrorPrefix(ex.route.path, rt.config.mirror.pathPrefix)
    : null;
  if (routes.mirror && mirrorPath !== null) {
    ex.kind = "mirror";
    // The same exchange, not a copy: what the mirror sets on it (pull, log fields) is recorded.
    ex.route = { kind: "local", path: mirrorPath };
    const refusal = await admit(
      rt,
      "mirror",
      ex.client,
      headerValue(ex.head.headers, "authorization"),
    );
    if (refusal !== null) {
      // Registry clients parse OCI error JSON; WWW-Authenticate / Retry-After stay in the headers.
      if (refusal.reason === "rate") ex.logFields.error = "rate limited";
      const message = refusal.reason === "rate" ? `${refusal.message}; slow down` : refusal.message;
      return markMirrorAnswer(
        errorResponse(
          new MirrorError(
            refusal.status,
            refusal.status === 429 ? "TOOMANYREQUESTS" : "UNAUTHORIZED",
            message,
            { headers: refusal.headers },
          ),
        ),
        ex,
      );
    }
    // crm's record of this client's requests, reached exactly the way the runtime reaches the mirror.
    if (isRequestsPath(mirrorPath)) return markMirrorAnswer(requestsAnswer(ex, rt, mirrorPath), ex);
    return routes.mirror(ex, rt);
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
