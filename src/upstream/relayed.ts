/**
 * A handler's answer whose body is still on the upstream socket. The handler returns an ordinary
 * Response (status, fields, no body) with the UpstreamBody attached here; the writer
 * (http/response.ts) finds it and pipes the upstream's bytes into the client's Outbox as they
 * come, pausing either socket for the other, with no ReadableStream between them. Code that needs
 * a stream (bandwidth pacing) asks for one and gets the body's content.
 */
import type { UpstreamBody } from "./body.ts";

const attached = new WeakMap<Response, UpstreamBody>();
/** Streams made by UpstreamBody.stream(), which a Response may carry on untouched (the mirror's answers). */
const streams = new WeakMap<ReadableStream<Uint8Array>, UpstreamBody>();

export function relayedResponse(body: UpstreamBody, init: ResponseInit): Response {
  const res = new Response(null, init);
  attached.set(res, body);
  return res;
}

/** `body.stream()`, remembered so a writer that gets it unread can relay the raw bytes instead. */
export function relayableStream(body: UpstreamBody): ReadableStream<Uint8Array> {
  const s = body.stream();
  streams.set(s, body);
  return s;
}

/** The upstream body behind `res`, if it is a relayed answer or carries a relayable stream nobody has read. */
export function relayedBody(res: Response): UpstreamBody | null {
  const direct = attached.get(res);
  if (direct) return direct;
  const s = res.body;
  if (s === null || s.locked || res.bodyUsed) return null;
  const body = streams.get(s);
  return body && !body.consumed ? body : null;
}

/** The same answer with its body as a ReadableStream (for code that wraps streams). */
export function asStreamResponse(res: Response): Response {
  const body = attached.get(res);
  if (!body) return res;
  return new Response(body.done ? null : body.stream(), { status: res.status, statusText: res.statusText, headers: res.headers });
}

/** Drops whatever body `res` has (the client is gone). */
export async function discardBody(res: Response): Promise<void> {
  attached.get(res)?.cancel();
  await res.body?.cancel().catch(() => {});
}
