/**
 * A handler's answer whose body is still on the upstream socket. The handler returns an ordinary
 * Response (status, fields, no body) with the UpstreamBody attached here; the writer
 * (http/response.ts) finds it and pipes the upstream's bytes into the client's Outbox as they
 * come, pausing either socket for the other, with no ReadableStream between them. Code that needs
 * a stream (bandwidth pacing) asks for one and gets the body's content.
 */
import type { UpstreamBody } from "./body.ts";

/**
 * What the writer needs of a relayed body: UpstreamBody, or a body made of several upstream
 * answers in a row (mirror/resume.ts continues a blob after the upstream dropped it).
 */
export type RelayableBody = Pick<UpstreamBody, "framing" | "done" | "consumed" | "relay" | "contents" | "resume" | "cancel" | "stream">;

/**
 * The body rides on the Response (and on streams made by UpstreamBody.stream(), which a Response
 * may carry on untouched: the mirror's answers) as a symbol-keyed property, not in a WeakMap: an
 * entry per request in a long-lived table is the churn linked-list.ts describes, and a weak one
 * adds work to every collection.
 */
const BODY = Symbol("crm.upstreamBody");
type Carrier = { [BODY]?: RelayableBody };
const carried = (o: object): RelayableBody | undefined => (o as Carrier)[BODY];

export function relayedResponse(body: RelayableBody, init: ResponseInit): Response {
  const res = new Response(null, init);
  (res as Carrier)[BODY] = body;
  return res;
}

/** `body.stream()`, marked so a writer that gets it unread can relay the raw bytes instead. */
export function relayableStream(body: UpstreamBody): ReadableStream<Uint8Array> {
  const s = body.stream();
  (s as Carrier)[BODY] = body;
  return s;
}

/** The upstream body behind `res`, if it is a relayed answer or carries a relayable stream nobody has read. */
export function relayedBody(res: Response): RelayableBody | null {
  const direct = carried(res);
  if (direct) return direct;
  const s = res.body;
  if (s === null || s.locked || res.bodyUsed) return null;
  const body = carried(s);
  return body && !body.consumed ? body : null;
}

/** The same answer with its body as a ReadableStream (for code that wraps streams). */
export function asStreamResponse(res: Response): Response {
  const body = carried(res);
  if (!body) return res;
  return new Response(body.done ? null : body.stream(), { status: res.status, statusText: res.statusText, headers: res.headers });
}

/** Drops whatever body `res` has (the client is gone). */
export async function discardBody(res: Response): Promise<void> {
  carried(res)?.cancel();
  await res.body?.cancel().catch(() => {});
}
