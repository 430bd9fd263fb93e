/**
 * The upstream client for code written around a fetch Response (the mirror, token fetches, the
 * doctor): the answer's fields with exactly one framing Content-Length or none (never a
 * Transfer-Encoding: the body is handed on as content), and the body as a pulled
 * ReadableStream whose backpressure is the upstream socket's. A handler that passes that stream
 * on unread (the mirror's blobs) gets it relayed as raw bytes: the writer finds the socket behind
 * it (relayed.ts) and no stream is read at all.
 */
import type { Runtime } from "../../context.ts";
import type { HeaderList } from "../../http/head.ts";
import { relayableStream } from "../../http/relayed.ts";

export interface SimpleRequest {
  method: string;
  headers?: Headers | Record<string, string>;
}

/**
 * `url` with crm's resolver, the SSRF guard (skipped when `configuredHost`: a host the operator
 * named), timeouts.connect and a deadline of `headTimeoutMs` for the answer's head. Failures are
 * DialError, as on the forward path.
 */
export async function upstreamResponse(
  rt: Runtime,
  url: URL,
  init: SimpleRequest,
  signal: AbortSignal,
  headTimeoutMs: number,
  configuredHost = false,
): Promise<Response> {
  const headers: HeaderList = [];
  for (const [k, v] of new Headers(init.headers ?? {})) headers.push([k, v]);
  const up = await rt.upstream.request({
    url,
    method: init.method,
    headers,
    signal,
    headTimeoutMs,
    connectTimeoutMs: rt.config.timeouts.connectMs,
    resolve: configuredHost ? rt.resolveConfigured : rt.resolve,
    insecureTls: rt.config.insecureTls,
  });
  const out = new Headers();
  for (const [k, v] of up.headers) {
    const l = k.toLowerCase();
    if (l !== "content-length" && l !== "transfer-encoding") out.append(k, v);
  }
  if (up.contentLength !== null) out.set("content-length", String(up.contentLength));
  const nullBody = up.body.done || up.status === 204 || up.status === 205 || up.status === 304;
  if (nullBody) up.body.cancel();
  const res = new Response(nullBody ? null : relayableStream(up.body), {
    status: up.status,
    statusText: /^[\t\x20-\x7e]*$/.test(up.reason) ? up.reason : "",
    headers: out,
  });
  // Like fetch's: the URL this answer came from (the doctor reads a redirect target's port from it).
  Object.defineProperty(res, "url", { value: url.href });
  return res;
}
