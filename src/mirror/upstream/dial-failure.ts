/**
 * A network failure on the way to an upstream, as the client sees it: 502 (or 504 for a
 * timeout) with a short reason naming which upstream, never addresses or stack traces.
 */
import type { DialError } from "../../errors.ts";
import { MirrorError } from "../errors.ts";

const REASON: Record<DialError["reason"], string> = {
  refused: "connection refused",
  dns: "name lookup failed",
  timeout: "no answer in time",
  reset: "connection reset",
  tls: "TLS handshake failed",
  unreachable: "network unreachable",
  private: "resolves to a non-public address (allow_private_networks is off)",
  self: "is crm's own listener",
  framing: "answered with a message framing crm cannot relay",
  other: "connection failed",
};

export function dialFailure(e: DialError, what: string): MirrorError {
  // The SSRF guard's refusal is 403 on the proxy path; here the upstream is the operator's own
  // configuration, so the client is told the gateway failed, like any unusable upstream.
  const status = e.reason === "timeout" ? 504 : 502;
  return new MirrorError(
    status,
    "UNAVAILABLE",
    `${what}: ${REASON[e.reason] ?? REASON.other}${e.detail ? `: ${e.detail}` : ""}`,
    { cause: e },
  );
}
