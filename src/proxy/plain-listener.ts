/**
 * What a plain listener does when crm also serves TLS: it answers ACME http-01 challenges
 * (`/.well-known/acme-challenge/TOKEN`, to anyone: the CA's validators are not in
 * access.clients), and with `tls.redirect_http` sends other origin-form requests to https.
 * For clients in access.clients, proxy requests (CONNECT, absolute-form) pass through unchanged,
 * so the proxy works here too; everyone else gets only the challenges.
 */
import type { Dispatcher } from "./connection.ts";
import type { Exchange, LocalRoute } from "./exchange.ts";
import type { Runtime } from "../context.ts";
import { headerValue } from "../http/head.ts";
import { textResponse } from "../http/response.ts";
import { formatHostPort } from "../net/host-port.ts";
import { parseAuthority } from "./router.ts";

export const CHALLENGE_PREFIX = "/.well-known/acme-challenge/";

export interface PlainListenerHooks {
  /** The key authorization for a token, when an ACME order is waiting for it. */
  challenge(token: string): string | null;
  /** The DNS names of the certificate served (from files or ACME), for redirects. */
  certificateNames(): readonly string[];
  /** The port of the first TLS listener (for redirects); null when there is none. */
  httpsPort(): number | null;
}

export function plainListenerDispatcher(
  inner: Dispatcher,
  rt: Runtime,
  hooks: PlainListenerHooks,
): Dispatcher {
  return {
    // Strangers were let in only for the CA's validators (see `openToAll` in listener.ts): they
    // get an origin-form GET/HEAD of a challenge and nothing else, not even a proxy request.
    forward(ex) {
      if (!rt.access.clientAllowed(ex.client)) return Promise.resolve(strangerRefused(ex));
      return inner.forward(ex);
    },
    local(ex) {
      const stranger = !rt.access.clientAllowed(ex.client);
      const path = ex.route.path.split("?")[0] ?? "";
      if (
        path.startsWith(CHALLENGE_PREFIX) &&
        (!stranger || ex.head.method === "GET" || ex.head.method === "HEAD")
      ) {
        return Promise.resolve(answerChallenge(ex, rt, hooks, path.slice(CHALLENGE_PREFIX.length)));
      }
      if (stranger) return Promise.resolve(strangerRefused(ex));
      if (rt.config.tls?.redirectHttp)
        return Promise.resolve(
          redirect(ex, hooks.httpsPort(), rt.config.tls.acme?.domains ?? hooks.certificateNames()),
        );
      return inner.local(ex);
    },
    connect(conn, route, head, rest) {
      if (!rt.access.clientAllowed(conn.client)) {
        conn.close();
        return;
      }
      inner.connect(conn, route, head, rest);
    },
  };
}

function strangerRefused(ex: Exchange): Response {
  ex.kind = "local";
  return textResponse(403, "crm: only ACME challenges are answered for your address");
}

function answerChallenge(
  ex: Exchange<LocalRoute>,
  rt: Runtime,
  hooks: PlainListenerHooks,
  token: string,
): Response {
  if (ex.head.method !== "GET" && ex.head.method !== "HEAD")
    return textResponse(405, "method not allowed", { allow: "GET, HEAD" });
  const answer = /^[A-Za-z0-9_-]{1,256}$/.test(token) ? hooks.challenge(token) : null;
  ex.kind = "local";
  ex.logFields.acme = answer === null ? "unknown token" : "challenge answered";
  if (answer === null) return textResponse(404, "crm: no ACME challenge is pending for this token");
  rt.log.info("ACME: answered an http-01 challenge", { client: ex.client });
  return new Response(answer, {
    headers: {
      "content-type": "application/octet-stream",
      "content-length": String(Buffer.byteLength(answer)),
    },
  });
}

/**
 * 301 for GET/HEAD, 308 for the rest (keeps the method and body), to the same host over https.
 * A Host the certificate does not cover (the ACME names, or the DNS names of the certificate
 * from files) is sent to its first name instead: no redirect to a name crm cannot serve, or to
 * whatever a client put in Host.
 */
function redirect(
  ex: Exchange<LocalRoute>,
  port: number | null,
  names: readonly string[],
): Response {
  const hostHeader = headerValue(ex.head.headers, "host");
  let host: string;
  try {
    host = parseAuthority(hostHeader ?? "", 80)
      .host.toLowerCase()
      .replace(/\.$/, "");
  } catch {
    return textResponse(400, "crm: a Host header is needed to redirect to https");
  }
  const first = names.find((n) => !n.startsWith("*."));
  if (!names.some((n) => covers(n, host))) {
    if (first === undefined)
      return textResponse(
        400,
        "crm: the certificate names no host this request could be redirected to; use https directly",
      );
    host = first;
  }
  const authority =
    port === null || port === 443
      ? host.includes(":")
        ? `[${host}]`
        : host
      : formatHostPort(host, port);
  const location = `https://${authority}${ex.route.path}`;
  const status = ex.head.method === "GET" || ex.head.method === "HEAD" ? 301 : 308;
  return textResponse(status, `crm: use ${location}\n`, { location });
}

/** A certificate name covers a host: equal, or a wildcard for exactly one more label (RFC 6125 §6.4.3). */
function covers(name: string, host: string): boolean {
  const n = name.toLowerCase();
  if (!n.startsWith("*.")) return n === host;
  const dot = host.indexOf(".");
  return dot > 0 && host.slice(dot + 1) === n.slice(2);
}
