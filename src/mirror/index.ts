/**
 * The pull-through registry mirror at `/v2/`: Docker's registry-mirrors, containerd hosts.toml
 * (`?ns=`) and containers/image registries.conf mirrors all land here. Nothing is cached on disk;
 * each request is answered from its registry's upstream, authenticated and redirected
 * server-side (upstream/registry-client.ts), and streamed back (response.ts).
 */
import type { Exchange, LocalHandler, LocalRoute } from "../proxy/exchange.ts";
import type { Runtime } from "../context.ts";
import { DialError, HttpError } from "../errors.ts";
import { headerValue } from "../http/head.ts";
import { dialFailure } from "./upstream/dial-failure.ts";
import {
  API_VERSION_HEADER,
  codeForStatus,
  errorResponse,
  jsonResponse,
  MirrorError,
} from "./errors.ts";
import { ManifestService } from "./manifests/service.ts";
import { meteredFetch, type MeteredRequest } from "./upstream/metered.ts";
import { clientResponse } from "./response.ts";
import { isDigest, parseMirrorTarget, pullScope, upstreamPath, type PullRoute } from "./routes.ts";
import { mirrorState, type MirrorState } from "./state.ts";
import { enforceRules, rulesFor, type RuleSet } from "./rules.ts";
import { TokenCache } from "./auth/token-cache.ts";
import { confineMirrorAnswer, resourceOf } from "./content-safety.ts";
import { fanoutRegistry, type FanoutRegistry } from "./fanout/registry.ts";
import { serveShared } from "./fanout/serve.ts";
import { UpstreamChain, upstreamHealth, type MirrorClient } from "./upstream/failover.ts";
import { blobRangeFetch, resumable, resumeStats } from "./upstream/resume.ts";
import { registerResilience } from "./upstream/resilience.ts";

export const REQUEST_ID_HEADER = "x-crm-request-id";

/** Request fields a registry answer depends on; everything else (Authorization above all) stays here. */
const FORWARDED = [
  "accept",
  "accept-encoding",
  "range",
  "if-range",
  "if-none-match",
  "if-modified-since",
  "user-agent",
];

export function createMirrorHandler(rt: Runtime): LocalHandler {
  // With a cluster, tokens are shared with the other replicas (mirror/state.ts MirrorShared).
  const tokens = new TokenCache(Date.now, 4096, mirrorState(rt).shared?.tokens ?? null);
  const clients = new Map<string, MirrorClient>();
  // One client per registry; a registry with several upstreams gets a chain that fails over (upstream/failover.ts).
  const health = upstreamHealth(rt);
  // Registered at start, so /metrics shows the resume counter (at zero) before the first resume.
  resumeStats(rt);
  registerResilience(rt);
  // Kept across reloads (state.ts); the manifest service only holds requests in flight.
  const state = mirrorState(rt);
  for (const reg of rt.config.mirror.registries.values()) {
    // A 429 failed over still tells the quota (its ratelimit-* fields), as a final answer does.
    const observe = (h: Headers): void => state.quota.observe(reg.name, h, rt.log);
    clients.set(
      reg.name,
      new UpstreamChain(rt, reg, tokens, health, rt.config.mirror.failover, observe),
    );
  }
  const mirror: Mirror = {
    clients,
    state,
    manifests: new ManifestService(rt, state),
    rules: rulesFor(rt.config.mirror),
    fanout: fanoutRegistry(rt),
  };
  return async (ex) => markMirrorAnswer(await handle(ex, rt, mirror), ex);
}

/**
 * Every mirror answer, errors included, carries the API version and crm's request id, and the
 * upstream's bytes on crm's origin are never rendered (content-safety.ts).
 */
export function markMirrorAnswer(res: Response, ex: Exchange<LocalRoute>): Response {
  if (!res.headers.has(API_VERSION_HEADER[0]))
    res.headers.set(API_VERSION_HEADER[0], API_VERSION_HEADER[1]);
  // Marks every mirror answer as crm's: a runtime that silently used the upstream has none.
  res.headers.set(REQUEST_ID_HEADER, ex.id);
  confineMirrorAnswer(res.headers, resourceOf(ex.route.path), res.status);
  return res;
}

interface Mirror {
  clients: ReadonlyMap<string, MirrorClient>;
  state: MirrorState;
  manifests: ManifestService;
  rules: ReadonlyMap<string, RuleSet>;
  fanout: FanoutRegistry;
}

async function handle(
  ex: Exchange<LocalRoute>,
  rt: Runtime,
  { clients, state, manifests, rules, fanout }: Mirror,
): Promise<Response> {
  const method = ex.head.method;
  if (method !== "GET" && method !== "HEAD") {
    throw new MirrorError(
      405,
      "UNSUPPORTED",
      `${method.slice(0, 20)} is not supported: crm mirrors pulls only`,
      { headers: { allow: "GET, HEAD" } },
    );
  }
  // local.ts hands over the path with mirror.path_prefix already removed.
  const route = parseMirrorTarget(ex.route.path, rt.config.mirror);
  // The version check every client starts with; crm needs no credentials from its clients.
  if (route.kind === "base") return jsonResponse(200, "{}");

  logRoute(ex, route);
  enforceRules(rules.get(route.registry.name) ?? null, route.registry.name, route.name);
  const client = clients.get(route.registry.name);
  if (!client)
    throw new MirrorError(
      404,
      "NAME_UNKNOWN",
      `registry ${route.registry.name} is not mirrored here`,
    );
  const headers = new Headers();
  for (const name of FORWARDED) {
    // Every Accept line counts: Docker sends one per manifest type, and what is left out
    // decides which manifest kind the upstream answers with.
    const v = headerValue(ex.head.headers, name);
    if (v !== null) headers.set(name, v);
  }
  if (!headers.has("user-agent")) headers.set("user-agent", "crm");
  // Every upstream answer by digest continues over a dropped connection (upstream/resume.ts), the shared
  // blob downloads of fanout/ included; HEAD has no body.
  const answer = async (h: Headers, signal: AbortSignal): Promise<Response> => {
    const req: MeteredRequest = {
      method,
      path: upstreamPath(route),
      headers: h,
      scope: pullScope(route),
      signal,
      resource: route.resource,
    };
    const result = await meteredFetch(rt, state, client, req, ex.logFields);
    const res = await clientResponse(
      route,
      method,
      result,
      rt.config.mirror.pathPrefix,
      rt.config.timeouts.upstreamHeaderMs,
    );
    const byDigest =
      route.resource === "blobs" ||
      (route.resource === "manifests" && route.reference !== null && isDigest(route.reference));
    if (method !== "GET" || !byDigest || route.query.size > 0) return res;
    return resumable(res, {
      rt,
      idleMs: rt.config.timeouts.upstreamHeaderMs,
      registry: route.registry.name,
      what: route.reference ?? "",
      request: blobRangeFetch(rt, state, client, req, ex.logFields),
      signal,
      logFields: ex.logFields,
    });
  };
  const passThrough = (): Promise<Response> => answer(headers, ex.signal);
  // Concurrent GETs of one blob share one upstream download (fanout/serve.ts says which).
  if (route.resource === "blobs")
    return (
      (await serveShared(fanout, {
        route,
        method,
        headers,
        signal: ex.signal,
        logFields: ex.logFields,
        answer,
      })) ?? passThrough()
    );
  const reference = route.reference;
  // A manifest by tag or digest may be answered from memory (manifests/service.ts); with a query it is not the plain resource.
  if (route.resource === "manifests" && reference !== null && route.query.size === 0) {
    const res = await manifests.serve({
      method,
      route: { ...route, resource: "manifests", reference },
      client,
      headers,
      signal: ex.signal,
      logFields: ex.logFields,
      passThrough,
    });
    if (res !== null) return res;
  }
  return passThrough();
}

function logRoute(ex: Exchange, route: PullRoute): void {
  ex.pull = {
    registry: route.registry.name,
    repo: route.name,
    ref: route.reference ?? "tags/list",
  };
}

function isAbort(e: unknown): boolean {
  return e instanceof Error && (e.name === "AbortError" || e.name === "TimeoutError");
}

/**
 * A failure inside the mirror as registry clients parse it (OCI error JSON); proxy/error-answer.ts,
 * the one place errors become answers, calls it for mirror exchanges.
 */
export function mirrorFailure(e: unknown, ex: Exchange<LocalRoute>, rt: Runtime): Response {
  let err: MirrorError;
  if (e instanceof MirrorError) err = e;
  else if (e instanceof DialError) err = dialFailure(e, "upstream");
  else if (e instanceof HttpError)
    err = new MirrorError(e.status, codeForStatus(e.status, "manifests"), e.message, {
      headers: e.headers,
      cause: e,
    });
  else if (isAbort(e) || ex.signal.aborted) {
    // A cancelled upstream request (the client left, or a deadline) is never an internal error.
    rt.log.debug("mirror request cancelled", {
      client: ex.client,
      reason: e instanceof Error ? e.message : String(e),
    });
    err = new MirrorError(503, "UNAVAILABLE", "the upstream request was cancelled");
  } else {
    rt.log.error("mirror handler failed", {
      client: ex.client,
      error: e instanceof Error ? e.message : String(e),
    });
    err = new MirrorError(500, "UNKNOWN", "internal error");
  }
  ex.logFields.error = err.message;
  return markMirrorAnswer(errorResponse(err), ex);
}
