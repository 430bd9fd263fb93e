/**
 * The one place a thrown error becomes an answer (Go's ReverseProxy.ErrorHandler, Hono's
 * onError). Handlers throw values with causes (HttpError, DialError, MirrorError); this decides
 * what the client is told and whether the connection may be kept: the mirror answers in OCI
 * error JSON and keeps the connection (registry clients pull many blobs over one), everything
 * else in one line of text, and the connection ends (nothing of a failed exchange lingers).
 */
import type { Runtime } from "../context.ts";
import { DialError, HttpError } from "../errors.ts";
import { textResponse } from "../http/response.ts";
import { redactUrl } from "../log.ts";
import { mirrorFailure } from "../mirror/index.ts";
import { isLocal, type Exchange } from "./exchange.ts";

export interface ErrorAnswer {
  res: Response;
  /** End the connection after this answer. */
  close: boolean;
}

export function errorAnswer(e: unknown, ex: Exchange, rt: Runtime): ErrorAnswer {
  if (ex.kind === "mirror" && isLocal(ex)) return { res: mirrorFailure(e, ex, rt), close: false };
  if (e instanceof HttpError || e instanceof DialError) {
    if (e instanceof DialError) {
      rt.metrics.upstreamError(e.reason);
      rt.log.warn("upstream failed", {
        client: ex.client,
        target: redactUrl(ex.head.target),
        reason: e.message,
      });
    }
    const headers = e instanceof HttpError ? e.headers : {};
    return {
      res: textResponse(e.status, `crm: ${e.message.replace(/^crm: /, "")}`, headers),
      close: true,
    };
  }
  if (ex.signal.aborted) {
    // The client left (RST, FIN) or the request idled out: a cancellation, never an internal error.
    rt.log.debug("request cancelled", {
      client: ex.client,
      target: redactUrl(ex.head.target),
      reason: e instanceof Error ? e.message : String(e),
    });
    return { res: textResponse(503, "crm: request cancelled"), close: true };
  }
  rt.log.error("handler failed", {
    client: ex.client,
    target: redactUrl(ex.head.target),
    error: e instanceof Error ? e.message : String(e),
  });
  return { res: textResponse(500, "crm: internal error"), close: true };
}
