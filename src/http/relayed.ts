/**
 * A handler's answer whose body is still on the upstream socket. The handler returns an ordinary
 * Response (status, fields, no body) with the RelaySource attached here; the writer
 * (response.ts) finds it and pipes the upstream's bytes into the client's Outbox as they
 * come, pausing either socket for the other, with no ReadableStream between them. Code that needs
 * a stream (bandwidth pacing) asks for one and gets the body's content.
 */

/**
 * A body still on its source socket, as the writer needs it. http/ owns this interface and
 * upstream/body.ts implements it, so the copier never imports the socket's module.
 */
export interface RelaySource {
  /** "length", "chunked", "close" or "none": how the bytes on the wire are framed. */
  readonly framing: string;
  /** Every byte has arrived (or the body failed). */
  readonly done: boolean;
  /** A reader has taken the body (stream, relay or contents). */
  readonly consumed: boolean;
  /** Writes the body's bytes as framed on the wire; resolves at its end, rejects on a cut. */
  relay(write: (bytes: Uint8Array) => boolean): Promise<void>;
  /** Writes the body's content (chunked framing removed). */
  contents(write: (bytes: Uint8Array) => boolean): Promise<void>;
  /** The writer drained: let the source read again. */
  resume(): void;
  /** Nobody will read the rest: free the source. */
  cancel(): void;
  stream(): ReadableStream<Uint8Array>;
}

/**
 * The body rides on the Response (and on streams made by RelaySource.stream(), which a Response
 * may carry on untouched: the mirror's answers) as a symbol-keyed property, not in a WeakMap: an
 * entry per request in a long-lived table is the churn linked-list.ts describes, and a weak one
 * adds work to every collection.
 */
const BODY = Symbol("crm.upstreamBody");
type Carrier = { [BODY]?: RelaySource };
const carried = (o: object): RelaySource | undefined => (o as Carrier)[BODY];

export function relayedResponse(body: RelaySource, init: ResponseInit): Response {
  const res = new Response(null, init);
  (res as Carrier)[BODY] = body;
  return res;
}

/** `body.stream()`, marked so a writer that gets it unread can relay the raw bytes instead. */
export function relayableStream(body: RelaySource): ReadableStream<Uint8Array> {
  const s = body.stream();
  (s as Carrier)[BODY] = body;
  return s;
}

/** The upstream body behind `res`, if it is a relayed answer or carries a relayable stream nobody has read. */
export function relayedBody(res: Response): RelaySource | null {
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
  return new Response(body.done ? null : body.stream(), {
    status: res.status,
    statusText: res.statusText,
    headers: res.headers,
  });
}

/** Drops whatever body `res` has (the client is gone). */
export async function discardBody(res: Response): Promise<void> {
  carried(res)?.cancel();
  await res.body?.cancel().catch(() => {});
}
