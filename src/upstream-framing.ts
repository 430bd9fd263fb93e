/**
 * response-framing's decision applied to what fetch() hands crm. fetch de-chunks a body but keeps
 * the upstream's Content-Length and Transfer-Encoding fields as they came (both at once, for one),
 * and refuses some framings itself; every upstream answer crm relays (forward, MITM, mirror,
 * token service) passes through here, so no path can announce a length its body does not have.
 */
import { DialError } from "./errors.ts";
import { responseFraming } from "./http/response-framing.ts";

/**
 * Leaves on `res` at most one Content-Length, and only one that frames its body; an answer crm
 * cannot relay faithfully is cancelled and becomes DialError "framing" (502).
 */
export async function relayableFraming(res: Response, method: string, target: string): Promise<Response> {
  const framing = responseFraming({ status: res.status, method, headers: res.headers });
  if (!framing.ok) {
    await res.body?.cancel().catch(() => {});
    throw new DialError("framing", target, { detail: framing.reason });
  }
  // Transfer-Encoding is hop-by-hop (crm re-frames the body it relays); with it gone, a
  // Content-Length left next to it would be believed.
  res.headers.delete("transfer-encoding");
  if (framing.contentLength === null) res.headers.delete("content-length");
  else res.headers.set("content-length", String(framing.contentLength));
  return res;
}

/** fetch's own refusals of an upstream's framing (Bun error codes), in the words crm uses. */
const FETCH_FRAMING_ERRORS: Record<string, string> = {
  InvalidContentLength: "invalid or differing Content-Length values",
  UnsupportedTransferEncoding: "unsupported or repeated Transfer-Encoding",
};

/** The framing reason behind a fetch() failure, or null if it failed for another reason. */
export function fetchFramingFailure(e: unknown): string | null {
  const code = e && typeof e === "object" && "code" in e && typeof e.code === "string" ? e.code : "";
  return FETCH_FRAMING_ERRORS[code] ?? null;
}
