/**
 * The one gate a request passes before crm works for it: the client's request rate
 * (limits.requests_per_second), then its credentials (access.users), where the password brake
 * lives. It answers with a refusal value, never a Response: the proxy says it in plain text
 * (407/429), the mirror in OCI error JSON (401/429), each caller formats the same decision.
 * Connection admission (counts per address) is listener.ts's.
 */
import type { Realm } from "../access/access.ts";
import type { Runtime } from "../context.ts";
import { HttpError } from "../errors.ts";

export interface Refusal {
  /** 429 (rate or brake), 407 or 401 (credentials missing or wrong). */
  status: number;
  /** What was refused, for metrics and the log line. */
  reason: "rate" | "brake" | "credentials";
  message: string;
  /** Retry-After, Proxy-Authenticate or WWW-Authenticate. */
  headers: Record<string, string>;
}

/**
 * Null when the request may go on. `authorization` is the realm's field (Proxy-Authorization or
 * Authorization). Synchronous unless a password must be checked, so a request without users
 * configured pays no promise for it. The status page is not rate limited (`rate: false`).
 */
export function admit(
  rt: Runtime,
  realm: Realm,
  client: string,
  authorization: string | null,
  rate = true,
): Refusal | null | Promise<Refusal | null> {
  if (rate && rt.rate.enabled) {
    // With a cluster the rate is counted in its store (limits/request-rate.ts check): a promise.
    if (rt.rate.shared !== null)
      return rt.rate
        .check(client)
        .then((wait) =>
          wait !== null
            ? rateRefusal(rt, client, wait)
            : credentials(rt, realm, client, authorization),
        );
    const wait = rt.rate.take(client);
    if (wait !== null) return rateRefusal(rt, client, wait);
  }
  return credentials(rt, realm, client, authorization);
}

function rateRefusal(rt: Runtime, client: string, wait: number): Refusal {
  rt.metrics.limited(client, "rate");
  return {
    status: 429,
    reason: "rate",
    message: "too many requests from your address (limits.requests_per_second)",
    headers: { "retry-after": String(wait) },
  };
}

function credentials(
  rt: Runtime,
  realm: Realm,
  client: string,
  authorization: string | null,
): Refusal | null | Promise<Refusal | null> {
  if (!rt.access.required(realm)) return null;
  return rt.access.authenticate(realm, authorization, client).then(
    () => null,
    (e: unknown) => {
      if (!(e instanceof HttpError)) throw e;
      const reason = e.status === 429 ? "brake" : "credentials";
      if (reason === "brake") rt.metrics.limited(client, "brake");
      return { status: e.status, reason, message: e.message, headers: e.headers };
    },
  );
}
