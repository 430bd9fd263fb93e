/**
 * The absolute-form forward path: the request goes to its target with fetch() (pooled
 * keep-alive connections, TLS), hop-by-hop fields removed and Via added both ways, bodies
 * streamed untouched: never decompressed (bun.md: fetch decompresses unless told not to),
 * never re-encoded, never buffered whole.
 */
import type { Exchange } from "./connection.ts";
import type { Runtime } from "./context.ts";
import { classifyNetworkError, DialError } from "./errors.ts";
import { endToEnd, addVia, stripHopByHop } from "./http/hop-by-hop.ts";
import { headerValue } from "./http/head.ts";
import { formatHostPort } from "./router.ts";

/** Fields fetch() sets itself from the URL and body, or that crm answered already. */
const NOT_FORWARDED = new Set(["host", "expect"]);

/** The options every upstream fetch of crm's uses; see bun.md "fetch() as the upstream client". */
export function upstreamInit(rt: Runtime, signal: AbortSignal): RequestInit & { decompress: false; proxy: false } {
  return {
    redirect: "manual",
    decompress: false,
    proxy: false,
    signal,
    ...(rt.config.insecureTls ? { tls: { rejectUnauthorized: false } } : {}),
  };
}

/**
 * Runs `fetch` with a deadline for the response head. A body may take as long as it takes;
 * the timer is cleared once the head is in. Network failures become DialError.
 */
export async function fetchUpstream(rt: Runtime, url: URL, init: RequestInit, clientSignal: AbortSignal, headTimeoutMs: number): Promise<Response> {
  const deadline = new AbortController();
  const timer = setTimeout(() => deadline.abort(), headTimeoutMs);
  const target = formatHostPort(url.hostname.replace(/^\[|\]$/g, ""), Number(url.port) || (url.protocol === "https:" ? 443 : 80));
  try {
    return await fetch(url, { ...init, ...upstreamInit(rt, AbortSignal.any([clientSignal, deadline.signal])) });
  } catch (e) {
    if (deadline.signal.aborted) throw new DialError("timeout", target, { cause: e });
    throw new DialError(clientSignal.aborted ? "other" : classifyNetworkError(e), target, { cause: e });
  } finally {
    clearTimeout(timer);
  }
}

export async function forward(ex: Exchange, rt: Runtime): Promise<Response> {
  if (ex.route.kind !== "forward") throw new Error("forward() called for a non-forward route");
  const { head } = ex;
  const headers = endToEnd(head.headers, NOT_FORWARDED);
  headers.push(["via", addVia(headerValue(head.headers, "via"))]);
  const res = await fetchUpstream(
    rt,
    ex.route.url,
    { method: head.method, headers, body: ex.body, duplex: "half" } as RequestInit,
    ex.signal,
    rt.config.timeouts.upstreamHeaderMs,
  );
  const out = stripHopByHop(new Headers(res.headers));
  out.set("via", addVia(res.headers.get("via")));
  const noBody = res.status === 204 || res.status === 304 || head.method === "HEAD";
  return new Response(noBody ? null : res.body, { status: res.status, statusText: res.statusText, headers: out });
}
