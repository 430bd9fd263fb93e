/**
 * Upstream tokens shared by the replicas, per registry, realm, service, scope and credential
 * (the token cache's own key, hashed: it names no password), with the lifetime the token
 * service gave. One replica's token fetch serves the others until shortly before expiry, so a
 * fleet pays one token request per scope, not one per replica. Tokens are crm's own upstream
 * credentials: the store must be as private as the config (README), and
 * `cluster.share_tokens: false` keeps them per replica.
 */
import { createHash } from "node:crypto";
import { script, type Store } from "./store.ts";

/** The token and its remaining time, read in one step (the store's clock, not ours). */
const GET_WITH_TTL = script("return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}");
/** Drops the entry only if it still holds the token the upstream refused. */
const DROP_IF = script(
  "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
);
/** A shared token with less left than this is fetched again rather than used. */
const MIN_LEFT_MS = 1000;
const MAX_TOKEN = 16 * 1024;
/**
 * A shared token is used this long at most, whatever TTL the entry claims: an entry written by
 * hand (or a sick peer) must not pin a token in every replica's memory for days.
 */
const MAX_LEFT_MS = 60 * 60_000;
/**
 * RFC 6750 b64token (token-cache.ts has the same for fetched tokens; this layer sits below the
 * mirror): anything else (CR/LF, non-Latin-1) cannot go into an Authorization field, so a shared
 * "token" with it would fail every pull: it is none.
 */
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

export class SharedTokens {
  hits = 0;
  constructor(private readonly store: Store) {}

  private keyOf(key: string): string {
    return this.store.key("t", createHash("sha256").update(key).digest("hex"));
  }

  /** A token another replica fetched, with the ms it may still be used; null: fetch one. */
  async get(key: string): Promise<{ token: string; leftMs: number } | null> {
    const got = await this.store.script(GET_WITH_TTL, [this.keyOf(key)], []);
    if (!Array.isArray(got)) return null;
    const [token, ttl] = got as [unknown, unknown];
    if (
      typeof token !== "string" ||
      token === "" ||
      token.length > MAX_TOKEN ||
      !B64TOKEN.test(token) ||
      typeof ttl !== "number" ||
      ttl < MIN_LEFT_MS
    )
      return null;
    this.hits++;
    return { token, leftMs: Math.min(ttl, MAX_LEFT_MS) };
  }

  /** `useForMs`: until the token cache's own refresh point (token-cache.ts refreshAt). */
  put(key: string, token: string, useForMs: number): void {
    if (useForMs < MIN_LEFT_MS || token.length > MAX_TOKEN || !B64TOKEN.test(token)) return;
    this.store.detached((c) => c.set(this.keyOf(key), token, "PX", Math.floor(useForMs)));
  }

  invalidate(key: string, token: string): void {
    this.store.detachedScript(DROP_IF, [this.keyOf(key)], [token]);
  }
}
