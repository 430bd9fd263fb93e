/**
 * How an upstream answer is framed (RFC 9112 §6.3), and whether crm can relay it faithfully.
 * A proxy that relays a message's Content-Length next to a Transfer-Encoding it re-frames lets
 * the upstream split responses: the client reads the declared length, and the rest of the body as
 * the answer to its next request. So Transfer-Encoding always wins and the Content-Length goes
 * (§6.3 rule 3), and any framing crm would have to guess at is refused (502), never relayed.
 *
 * Pure, from the answer's status, its request method and its raw fields (crm's upstream client
 * calls it with the head it read).
 */
import { ows } from "./head.ts";

export type BodyFraming = "none" | "length" | "chunked" | "close";

export type ResponseFraming =
  | {
      ok: true;
      /** How the upstream's body ends: by rule (none), after `contentLength` bytes, by the 0-chunk, or by the close. */
      body: BodyFraming;
      /** The Content-Length to relay (one value), or null when none may be relayed. */
      contentLength: number | null;
    }
  | { ok: false; reason: string };

export interface UpstreamHead {
  status: number;
  /** The method of the request this answers (HEAD answers have no body, whatever they declare). */
  method: string;
  /** "HTTP/1.0" or "HTTP/1.1" when known (fetch does not say). */
  version?: string;
  headers: Iterable<[string, string]>;
}

/** At most 15 digits, like a request's Content-Length: larger values are attacks on the arithmetic. */
const LENGTH = /^\d{1,15}$/;

export function responseFraming(head: UpstreamHead): ResponseFraming {
  const te: string[] = [];
  const cl: string[] = [];
  for (const [k, v] of head.headers) {
    const l = k.toLowerCase();
    if (l === "transfer-encoding") te.push(v);
    else if (l === "content-length") cl.push(v);
  }
  const noBody =
    head.method === "HEAD" || head.status === 204 || head.status === 304 || head.status < 200;
  if (te.length > 0) {
    const raw = te.join(", ");
    // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means its framing is faulty.
    if (head.version === "HTTP/1.0")
      return {
        ok: false,
        reason: `Transfer-Encoding ${JSON.stringify(raw)} in an HTTP/1.0 answer`,
      };
    const codings = raw
      .split(",")
      .map((s) => ows(s).toLowerCase())
      .filter((s) => s !== "");
    // Anything before "chunked" (gzip, ...) would reach the client still encoded and unlabelled;
    // anything without it ends by the close, which a second parser may read differently.
    if (codings.length !== 1 || codings[0] !== "chunked") {
      return {
        ok: false,
        reason: `Transfer-Encoding ${JSON.stringify(raw)} (crm relays only "chunked")`,
      };
    }
    return { ok: true, body: noBody ? "none" : "chunked", contentLength: null };
  }
  // The usual answer, one well-formed value (the head parser already trimmed it), needs no more.
  if (cl.length === 1 && LENGTH.test(cl[0] as string))
    return { ok: true, body: noBody ? "none" : "length", contentLength: Number(cl[0]) };
  if (cl.length > 0) {
    const values = cl.join(",").split(",").map(ows);
    const bad = values.find((v) => !LENGTH.test(v));
    if (bad !== undefined)
      return { ok: false, reason: `invalid Content-Length ${JSON.stringify(bad)}` };
    const lengths = new Set(values.map(Number));
    // RFC 9110 §8.6: repeated identical values may be read as one; differing ones never.
    if (lengths.size !== 1)
      return {
        ok: false,
        reason: `differing Content-Length values ${JSON.stringify(cl.join(", "))}`,
      };
    const [length = 0] = lengths;
    return { ok: true, body: noBody ? "none" : "length", contentLength: length };
  }
  return { ok: true, body: noBody ? "none" : "close", contentLength: null };
}
