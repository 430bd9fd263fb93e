/**
 * One registry's upstream, seen from crm: clients never see its auth challenges nor its
 * redirects. A request goes out with the best credentials crm knows for the registry, a 401
 * challenge is answered server-side (a token from the realm, or Basic), and 3xx hops to CDNs are
 * followed here, within the registry's trusted hosts, with Authorization sent to the registry's
 * own host:port only (a signed CDN URL refuses a request that carries one).
 */
import { createHash } from "node:crypto";
import type { Runtime } from "../../context.ts";
import { DialError } from "../../errors.ts";
import { upstreamResponse } from "./as-response.ts";
import { redactUrl } from "../../log.ts";
import type { RegistryConfig } from "../../config/registries.ts";
import { findChallenge, type Challenge } from "../auth/challenge.ts";
import { dialFailure } from "./dial-failure.ts";
import { MirrorError } from "../errors.ts";
import type { TokenCache } from "../auth/token-cache.ts";
import { basicAuthorization, fetchToken } from "../auth/token-fetch.ts";
import { RegistryTrust } from "../auth/trust.ts";

/** Go's http.Client and containerd stop at 10 as well. */
export const MAX_REDIRECTS = 10;

const REDIRECT_STATUS = new Set([301, 302, 303, 307, 308]);

export interface UpstreamRequest {
  method: "GET" | "HEAD";
  /** `/v2/...` with the query to forward, relative to the registry's upstream URL. */
  path: string;
  /** End-to-end fields to send; never an Authorization (crm sets its own). */
  headers: Headers;
  /** `repository:<name>:pull` */
  scope: string;
  /** The client's: aborting it cancels the upstream request and body. */
  signal: AbortSignal;
  /**
   * Deadline for each answer's head on this request, instead of timeouts.upstream_header: a
   * failover attempt (failover.ts) must leave time for the next upstream within containerd's 30 s.
   */
  headTimeoutMs?: number;
}

export type TokenState = "none" | "cached" | "fetched";

export interface UpstreamResult {
  /** The final, non-redirect answer; its body is the client's to stream. */
  response: Response;
  token: TokenState;
  /** The host of the last hop when a redirect led away from the registry's own host:port. */
  redirectHost: string | null;
  /** Docker-Content-Digest of the first answer: a CDN's final answer often lacks it. */
  firstDigest: string | null;
}

/** What to send on the registry's own hops, and where it came from. */
interface Auth {
  authorization: string | null;
  /** The Bearer token in `authorization`, and its cache key, to invalidate it if rejected. */
  token: { value: string; key: string } | null;
  state: TokenState;
}

const ANONYMOUS: Auth = { authorization: null, token: null, state: "none" };

export class RegistryClient {
  readonly trust: RegistryTrust;
  /**
   * The challenge this registry answered with last. With it, later requests fetch or reuse a
   * token before their first try instead of paying a 401 round trip each.
   */
  private learned: { scheme: "bearer"; challenge: Challenge } | { scheme: "basic" } | null = null;
  private readonly base: string;
  private readonly credentialId: string;

  constructor(
    private readonly rt: Runtime,
    readonly registry: RegistryConfig,
    private readonly tokens: TokenCache,
  ) {
    this.trust = new RegistryTrust(registry, rt.policy);
    this.base = registry.upstream.origin + registry.upstream.pathname.replace(/\/+$/, "");
    // Tokens are cached per credential; the key must not hold the password itself.
    this.credentialId =
      registry.username === null
        ? "anonymous"
        : createHash("sha256")
            .update(`${registry.username}\0${registry.password ?? ""}`)
            .digest("hex")
            .slice(0, 16);
  }

  async fetch(req: UpstreamRequest): Promise<UpstreamResult> {
    // A client already gone costs nothing upstream, not even a token (the token fetch ignores
    // aborts, being shared); the upstream client checks again after every await of its own.
    if (req.signal.aborted) throw new MirrorError(499, "UNKNOWN", "client went away");
    let auth = await this.initialAuth(req.scope);
    let answeredChallenge = false;
    let retriedInvalid = false;
    for (;;) {
      const result = await this.follow(req, auth);
      const res = result.response;
      if (res.status !== 401) return { ...result, token: auth.state };
      if (!result.fromRegistry) {
        // A CDN's 401 cannot be answered (crm holds no credentials for it) and must not reach
        // the client as a challenge-less 401.
        await res.body?.cancel().catch(() => {});
        throw new MirrorError(
          502,
          "UNAVAILABLE",
          `redirect target ${result.redirectHost ?? "?"} of ${this.registry.name} answered 401`,
        );
      }
      const header = res.headers.get("www-authenticate");
      await res.body?.cancel().catch(() => {});
      const bearer = findChallenge(header, "bearer");
      const basic = findChallenge(header, "basic");
      if (bearer && bearer.params.realm) {
        if (auth.token !== null && bearer.params.error === "invalid_token" && !retriedInvalid) {
          // Revoked or expired early: drop it so the next fetch is a new token, not the cache.
          retriedInvalid = true;
          this.tokens.invalidate(auth.token.key, auth.token.value);
          auth = await this.bearerAuth(bearer, req.scope);
          this.learned = { scheme: "bearer", challenge: bearer };
          continue;
        }
        // First challenge, or a token for another realm/service than the one now named.
        if (
          !answeredChallenge &&
          (auth.token === null || auth.token.key !== this.tokenKey(bearer, req.scope))
        ) {
          answeredChallenge = true;
          auth = await this.bearerAuth(bearer, req.scope);
          // Only a challenge that produced a token is remembered: one that failed must not make
          // every later request fail before it even asks the upstream again.
          this.learned = { scheme: "bearer", challenge: bearer };
          continue;
        }
      } else if (basic) {
        const authorization = basicAuthorization(this.registry);
        if (authorization !== null && auth.authorization !== authorization && !answeredChallenge) {
          answeredChallenge = true;
          this.learned = { scheme: "basic" };
          auth = { authorization, token: null, state: "none" };
          continue;
        }
      }
      throw this.denied(req.scope, auth, bearer?.params.error ?? null);
    }
  }

  private async initialAuth(scope: string): Promise<Auth> {
    const learned = this.learned;
    if (learned?.scheme === "bearer") {
      try {
        return await this.bearerAuth(learned.challenge, scope);
      } catch (e) {
        // The realm that worked before fails now (moved, down, refused): forget it and ask the
        // upstream, whose 401 names the challenge that holds today.
        if (this.learned === learned) this.learned = null;
        this.rt.log.debug("mirror learned token realm failed; asking the upstream again", {
          registry: this.registry.name,
          error: e instanceof Error ? e.message : String(e),
        });
        return ANONYMOUS;
      }
    }
    if (learned?.scheme === "basic") {
      const authorization = basicAuthorization(this.registry);
      if (authorization !== null) return { authorization, token: null, state: "none" };
    }
    return ANONYMOUS;
  }

  /**
   * A token from a redirect target's own realm, for the scope it names (its repository path may
   * differ from the registry's). Anonymous: the registry's credentials never leave its host.
   */
  private async anonymousBearer(challenge: Challenge, scope: string): Promise<string> {
    const anonymous: RegistryConfig = { ...this.registry, username: null, password: null };
    const hopScope = challenge.params.scope ?? scope;
    const key = [
      this.registry.name,
      challenge.params.realm ?? "",
      challenge.params.service ?? "",
      hopScope,
      "anonymous",
    ].join("\n");
    const got = await this.tokens.get(key, () =>
      fetchToken(this.rt, anonymous, this.trust, challenge, hopScope),
    );
    return `Bearer ${got.token}`;
  }

  private async bearerAuth(challenge: Challenge, scope: string): Promise<Auth> {
    const key = this.tokenKey(challenge, scope);
    const got = await this.tokens.get(key, () =>
      fetchToken(this.rt, this.registry, this.trust, challenge, scope),
    );
    return {
      authorization: `Bearer ${got.token}`,
      token: { value: got.token, key },
      state: got.source,
    };
  }

  /** Per registry, realm, service, scope and credential (spec: cached per registry + scope + credential). */
  private tokenKey(challenge: Challenge, scope: string): string {
    return [
      this.registry.name,
      challenge.params.realm ?? "",
      challenge.params.service ?? "",
      scope,
      this.credentialId,
    ].join("\n");
  }

  /** The upstream still says 401 after crm authenticated as well as it can. */
  private denied(scope: string, auth: Auth, error: string | null): MirrorError {
    const how =
      auth.authorization === null
        ? "anonymously"
        : this.registry.username !== null
          ? "with the configured credentials"
          : "with an anonymous token";
    return new MirrorError(
      403,
      "DENIED",
      `upstream ${this.registry.name} refused ${scope} ${how}: the repository does not exist or needs other credentials`,
      {
        detail: { registry: this.registry.name, scope, ...(error ? { error } : {}) },
      },
    );
  }

  /** Sends the request and follows redirects; the final answer may be any non-3xx status. */
  private async follow(
    req: UpstreamRequest,
    auth: Auth,
  ): Promise<Omit<UpstreamResult, "token"> & { fromRegistry: boolean }> {
    const first = new URL(this.base + req.path);
    let url = first;
    let firstDigest: string | null = null;
    let redirectHost: string | null = null;
    /** An anonymous token for a redirect target that challenges on its own (registry.k8s.io → Artifact Registry). */
    let hopAuth: { host: string; authorization: string } | null = null;
    for (let hop = 0; ; hop++) {
      const own = url.host === first.host && url.protocol === first.protocol;
      const headers = new Headers(req.headers);
      // Only the registry's own host:port gets credentials, on every hop (RFC 9110 §15.4 leaves
      // it to the client; Go and containerd do the same).
      if (own && auth.authorization !== null) headers.set("authorization", auth.authorization);
      // A redirect target gets only a token it issued itself, never the registry's credentials.
      if (!own && hopAuth !== null && hopAuth.host === url.host)
        headers.set("authorization", hopAuth.authorization);
      this.rt.log.debug("mirror upstream", {
        registry: this.registry.name,
        method: req.method,
        url: redactUrl(url.href),
        hop,
        auth: own && auth.authorization !== null ? auth.authorization.split(" ")[0] : "none",
      });
      let res: Response;
      try {
        // The configured upstream itself may be on a private network (a LAN registry the
        // operator named); redirect targets are chosen by the upstream and stay guarded.
        res = await upstreamResponse(
          this.rt,
          url,
          { method: req.method, headers },
          req.signal,
          req.headTimeoutMs ?? this.rt.config.timeouts.upstreamHeaderMs,
          this.trust.exemptFromGuard(url),
        );
      } catch (e) {
        if (e instanceof DialError)
          throw dialFailure(
            e,
            hop === 0
              ? `upstream ${this.registry.name}`
              : `redirect target ${url.hostname} of ${this.registry.name}`,
          );
        throw e;
      }
      if (hop === 0) firstDigest = res.headers.get("docker-content-digest");
      if (res.status === 401 && !own && (hopAuth === null || hopAuth.host !== url.host)) {
        // Another registry behind the redirect (Artifact Registry behind registry.k8s.io) wants
        // its own Bearer token, even for public images: fetch one anonymously and retry this hop.
        const bearer = findChallenge(res.headers.get("www-authenticate"), "bearer");
        if (bearer?.params.realm) {
          await res.body?.cancel().catch(() => {});
          hopAuth = {
            host: url.host,
            authorization: await this.anonymousBearer(bearer, req.scope),
          };
          if (hop >= MAX_REDIRECTS)
            throw new MirrorError(
              502,
              "UNAVAILABLE",
              `upstream ${this.registry.name} redirected more than ${MAX_REDIRECTS} times`,
            );
          continue;
        }
      }
      const location = res.headers.get("location");
      if (!REDIRECT_STATUS.has(res.status) || location === null)
        return { response: res, redirectHost, firstDigest, fromRegistry: own };
      await res.body?.cancel().catch(() => {});
      if (hop >= MAX_REDIRECTS) {
        throw new MirrorError(
          502,
          "UNAVAILABLE",
          `upstream ${this.registry.name} redirected more than ${MAX_REDIRECTS} times`,
        );
      }
      let next: URL;
      try {
        next = new URL(location, url);
      } catch (cause) {
        throw new MirrorError(
          502,
          "UNAVAILABLE",
          `upstream ${this.registry.name} redirected to an invalid URL`,
          { cause },
        );
      }
      const check = this.trust.check(next);
      if (!check.ok) {
        throw new MirrorError(
          502,
          "UNAVAILABLE",
          `redirect to ${check.host} refused for ${this.registry.name}: ${check.reason}; ${check.fix}`,
          {
            detail: { host: check.host, registry: this.registry.name, fix: check.fix },
          },
        );
      }
      redirectHost = next.host !== first.host ? check.host : null;
      url = next;
    }
  }
}
