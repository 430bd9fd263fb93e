/**
 * The absolute-form forward path (and MITM's decrypted requests): the request goes to its target
 * on crm's upstream client (src/upstream/), hop-by-hop fields removed and Via added both ways,
 * bodies streamed untouched: never decompressed, never re-encoded, never buffered whole. The
 * answer's body stays on the upstream socket until the writer relays it (http/relayed.ts).
 */
import type { Exchange, ForwardRoute } from "./exchange.ts";
import type { Runtime } from "../context.ts";
import { HttpError } from "../errors.ts";
import { endToEnd, addVia } from "../http/hop-by-hop.ts";
import { headerValue, requestFraming } from "../http/head.ts";
import { relayedResponse } from "../http/relayed.ts";
import { refusingSelf } from "../net/self-targets.ts";

/**
 * Fields crm sets itself from the URL (Host: RFC 9112 §3.2.2, the target's authority), answered already
 * (Expect), rebuilds (Via), or frames itself (Content-Length; Transfer-Encoding is hop-by-hop).
 */
const NOT_FORWARDED = new Set(["host", "expect", "via", "content-length"]);
/** Fields of the answer the writer sets itself (framing) or crm rebuilds (Via). */
const NOT_RELAYED = new Set(["content-length", "via"]);

export async function forward(ex: Exchange<ForwardRoute>, rt: Runtime): Promise<Response> {
  const { head } = ex;
  // A body on GET or HEAD has no defined meaning (RFC 9110 §9.3.1) and servers split on it.
  if (ex.body !== null && (head.method === "GET" || head.method === "HEAD")) {
    throw new HttpError(400, `crm cannot forward a request body with ${head.method}`);
  }
  const headers = endToEnd(head.headers, NOT_FORWARDED);
  headers.push(["via", addVia(headerValue(head.headers, "via"))]);
  const framing = requestFraming(head);
  const url = ex.route.url;
  headers.unshift(["host", url.host]);
  const up = await rt.upstream.request({
    url,
    method: head.method,
    headers,
    body: ex.body,
    bodyLength: framing.kind === "length" ? framing.length : null,
    signal: ex.signal,
    headTimeoutMs: rt.config.timeouts.upstreamHeaderMs,
    connectTimeoutMs: rt.config.timeouts.connectMs,
    // The SSRF guard, and never crm itself: it would come back in from crm's own address.
    resolve: refusingSelf(
      rt.resolve,
      rt.self,
      Number(url.port) || (url.protocol === "https:" ? 443 : 80),
    ),
    insecureTls: rt.config.insecureTls,
  });
  // Framing fields go (the writer frames the body), hop-by-hop ones too (RFC 9110 §7.6.1), and
  // Via is rebuilt with crm in it (§7.6.3).
  const out = new Headers();
  for (const [k, v] of endToEnd(up.headers, NOT_RELAYED)) out.append(k, v);
  if (up.contentLength !== null) out.set("content-length", String(up.contentLength));
  out.set("via", addVia(headerValue(up.headers, "via")));
  return relayedResponse(up.body, {
    status: up.status,
    statusText: statusText(up.reason),
    headers: out,
  });
}

/** A reason phrase the Response constructor takes (obs-text and odd bytes are dropped). */
function statusText(reason: string): string {
  return /^[\t\x20-\x7e]*$/.test(reason) ? reason : "";
}
