/**
 * The absolute-form forward path: the request goes to its target with fetch() (pooled
 * keep-alive connections, TLS), hop-by-hop fields removed and Via added both ways, bodies
 * streamed untouched: never decompressed (bun.md: fetch decompresses unless told not to),
 * never re-encoded, never buffered whole.
 */
import type { Exchange } from "./connection.ts";
import type { Runtime } from "./context.ts";
import { classifyNetworkError, DialError, HttpError } from "./errors.ts";
import { lookupTarget } from "./dial.ts";
import { endToEnd, addVia, stripHopByHop } from "./http/hop-by-hop.ts";
import { headerValue, requestFraming } from "./http/head.ts";
import { relayedResponse } from "./upstream/relayed.ts";
import { formatHostPort } from "./router.ts";
import { fetchFramingFailure, relayableFraming } from "./upstream-framing.ts";
import { isIP } from "node:net";

/** Fields fetch() sets itself from the URL and body, that crm answered already, or that it rebuilds (Via). */
const NOT_FORWARDED = new Set(["host", "expect", "via"]);

/** The options every upstream fetch of crm's uses; see bun.md "fetch() as the upstream client". */
export function upstreamInit(rt: Runtime, signal: AbortSignal, serverName?: string): RequestInit & { decompress: false; proxy: false } {
  const tls = { ...(rt.config.insecureTls ? { rejectUnauthorized: false } : {}), ...(serverName ? { serverName } : {}) };
  return { redirect: "manual", decompress: false, proxy: false, signal, ...(Object.keys(tls).length > 0 ? { tls } : {}) };
}

/**
 * Runs `fetch` with a deadline for the response head; a body may take as long as it takes.
 * The host is looked up with crm's resolver and fetch connects to that address (Host and TLS
 * SNI/verification keep the name), so the address checked is the address used. Network
 * failures, and answers framed in a way crm cannot relay, become DialError.
 */
export async function fetchUpstream(
  rt: Runtime,
  url: URL,
  init: RequestInit,
  clientSignal: AbortSignal,
  headTimeoutMs: number,
  /** The host comes from the operator's config, not from a client: skip the SSRF guard. */
  configuredHost = false,
): Promise<Response> {
  const deadline = new AbortController();
  const timer = setTimeout(() => deadline.abort(), headTimeoutMs);
  const host = url.hostname.replace(/^\[|\]$/g, "");
  const target = formatHostPort(host, Number(url.port) || (url.protocol === "https:" ? 443 : 80));
  try {
    const lookup = lookupTarget(configuredHost ? rt.resolveConfigured : rt.resolve, host, target);
    // An IP literal answers at once (after the guard's check); only real lookups need a deadline.
    const address = isIP(host) ? await lookup : await withTimeout(lookup, rt.config.timeouts.connectMs, target);
    let direct = url;
    if (address !== host) {
      direct = new URL(url.href);
      direct.hostname = address.includes(":") ? `[${address}]` : address;
    }
    const headers = new Headers(init.headers);
    if (!headers.has("host")) headers.set("host", url.host);
    const signal = AbortSignal.any([clientSignal, deadline.signal]);
    const serverName = url.protocol === "https:" && !isIP(host) ? host : undefined;
    const res = await fetch(direct, { ...init, headers, ...upstreamInit(rt, signal, serverName) });
    return await relayableFraming(res, init.method ?? "GET", target);
  } catch (e) {
    if (e instanceof DialError) throw e;
    const framing = fetchFramingFailure(e);
    if (framing !== null) throw new DialError("framing", target, { cause: e, detail: framing });
    if (deadline.signal.aborted) throw new DialError("timeout", target, { cause: e });
    throw new DialError(clientSignal.aborted ? "other" : classifyNetworkError(e), target, { cause: e });
  } finally {
    clearTimeout(timer);
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, target: string): Promise<T> {
  let t: Timer | undefined;
  return Promise.race([p, new Promise<never>((_, rej) => (t = setTimeout(() => rej(new DialError("timeout", target)), ms)))]).finally(() => clearTimeout(t));
}

export async function forward(ex: Exchange, rt: Runtime): Promise<Response> {
  if (ex.route.kind !== "forward") throw new Error("forward() called for a non-forward route");
  const { head } = ex;
  // A body on GET or HEAD has no defined meaning (RFC 9110 §9.3.1) and servers split on it.
  if (ex.body !== null && (head.method === "GET" || head.method === "HEAD")) {
    throw new HttpError(400, `crm cannot forward a request body with ${head.method}`);
  }
  const headers = endToEnd(head.headers, NOT_FORWARDED).filter(([k]) => {
    const l = k.toLowerCase();
    return l !== "content-length" && l !== "transfer-encoding";
  });
  headers.push(["via", addVia(headerValue(head.headers, "via"))]);
  const framing = requestFraming(head);
  const url = ex.route.url;
  if (!headers.some(([k]) => k.toLowerCase() === "host")) headers.unshift(["host", url.host]);
  const up = await rt.upstream.request({
    url,
    method: head.method,
    headers,
    body: ex.body,
    bodyLength: framing.kind === "length" ? framing.length : null,
    signal: ex.signal,
    headTimeoutMs: rt.config.timeouts.upstreamHeaderMs,
    connectTimeoutMs: rt.config.timeouts.connectMs,
    resolve: rt.resolve,
    insecureTls: rt.config.insecureTls,
  });
  const out = new Headers();
  for (const [k, v] of up.headers) {
    const l = k.toLowerCase();
    if (l === "content-length" || l === "transfer-encoding") continue;
    out.append(k, v);
  }
  stripHopByHop(out);
  if (up.contentLength !== null) out.set("content-length", String(up.contentLength));
  out.set("via", addVia(headerValue(up.headers, "via")));
  return relayedResponse(up.body, { status: up.status, statusText: statusText(up.reason), headers: out });
}

/** A reason phrase the Response constructor takes (obs-text and odd bytes are dropped). */
function statusText(reason: string): string {
  return /^[\t\x20-\x7e]*$/.test(reason) ? reason : "";
}
