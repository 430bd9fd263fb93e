/**
 * One token request to a Bearer realm (distribution token-auth spec): `GET realm?service=&scope=`
 * with the registry's Basic credentials when configured, anonymous otherwise. The realm comes
 * from an upstream answer, so it is checked like a redirect target before anything is sent.
 */
import type { Runtime } from "../../context.ts";
import { DialError } from "../../errors.ts";
import { upstreamResponse } from "../upstream/as-response.ts";
import { redactUrl } from "../../log.ts";
import type { RegistryConfig } from "../../config/registries.ts";
import type { Challenge } from "./challenge.ts";
import { dialFailure } from "../upstream/dial-failure.ts";
import { MirrorError } from "../errors.ts";
import { readSmallBody } from "../small-body.ts";
import { B64TOKEN, DEFAULT_EXPIRES_IN_S, type IssuedToken } from "./token-cache.ts";
import type { RegistryTrust } from "./trust.ts";

/** Token answers are a few KiB; anything bigger is not a token service. */
const TOKEN_BODY_LIMIT = 256 * 1024;

export function basicAuthorization(registry: RegistryConfig): string | null {
  if (registry.username === null || registry.password === null) return null;
  return "Basic " + Buffer.from(`${registry.username}:${registry.password}`).toString("base64");
}

export async function fetchToken(
  rt: Runtime,
  registry: RegistryConfig,
  trust: RegistryTrust,
  challenge: Challenge,
  scope: string,
): Promise<IssuedToken> {
  const realmText = challenge.params.realm ?? "";
  let url: URL;
  try {
    url = new URL(realmText);
  } catch (cause) {
    throw new MirrorError(
      502,
      "UNAVAILABLE",
      `upstream ${registry.name} named an invalid token realm`,
      { cause, detail: { realm: realmText.slice(0, 200) } },
    );
  }
  const check = trust.check(url);
  if (!check.ok) {
    throw new MirrorError(
      502,
      "UNAVAILABLE",
      `token realm host ${check.host} refused for ${registry.name}: ${check.reason}; ${check.fix}`,
      {
        detail: { host: check.host, registry: registry.name },
      },
    );
  }
  const service = challenge.params.service;
  if (service !== undefined) url.searchParams.set("service", service);
  url.searchParams.set("scope", scope);

  const headers = new Headers({ "user-agent": "crm" });
  const basic = basicAuthorization(registry);
  if (basic !== null) headers.set("authorization", basic);
  rt.log.debug("mirror token fetch", {
    registry: registry.name,
    url: redactUrl(url.href),
    scope,
    credentials: basic !== null ? "basic" : "anonymous",
  });

  // A token fetch is shared by every request waiting for it (single-flight), so no client's
  // disconnect may cancel it; its own deadline bounds it instead (head, then body).
  const headMs = rt.config.timeouts.upstreamHeaderMs;
  let res: Response;
  try {
    // A realm on the operator-named upstream's own host:port is that upstream (a LAN registry
    // serving /token itself); any other realm host is guarded like a redirect target.
    res = await upstreamResponse(
      rt,
      url,
      { method: "GET", headers },
      AbortSignal.timeout(headMs * 2),
      headMs,
      trust.exemptFromGuard(url),
    );
  } catch (e) {
    if (e instanceof DialError)
      throw dialFailure(e, `token service ${check.host} for ${registry.name}`);
    throw e;
  }
  const body = await readSmallBody(res, TOKEN_BODY_LIMIT, headMs);
  if (res.status !== 200) {
    const who =
      basic !== null
        ? `the credentials configured for ${registry.name}`
        : `an anonymous request for ${registry.name}`;
    throw new MirrorError(
      502,
      "UNAUTHORIZED",
      `token service ${check.host} answered ${res.status} to ${who}`,
      { detail: { scope } },
    );
  }
  const issued = body.truncated ? null : parseTokenAnswer(body.bytes);
  if (issued === null)
    throw new MirrorError(502, "UNAVAILABLE", `token service ${check.host} sent no usable token`, {
      detail: { scope },
    });
  return issued;
}

/** `token` and/or `access_token`; `expires_in` in seconds, DEFAULT_EXPIRES_IN_S when absent. */
export function parseTokenAnswer(bytes: Uint8Array): IssuedToken | null {
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
  if (typeof doc !== "object" || doc === null) return null;
  const o = doc as { token?: unknown; access_token?: unknown; expires_in?: unknown };
  const token =
    typeof o.token === "string" && o.token !== ""
      ? o.token
      : typeof o.access_token === "string" && o.access_token !== ""
        ? o.access_token
        : null;
  if (token === null || !B64TOKEN.test(token)) return null;
  const expiresIn =
    typeof o.expires_in === "number" && Number.isFinite(o.expires_in) && o.expires_in > 0
      ? o.expires_in
      : DEFAULT_EXPIRES_IN_S;
  return { token, expiresIn };
}
