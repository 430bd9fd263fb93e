/**
 * Bearer tokens, reused until shortly before they expire. Registries rate-limit their token
 * services and a pull of one image is dozens of requests for one scope, so each key
 * (registry + realm + service + scope + credential) is fetched once per lifetime, and concurrent
 * requests for a key that is being fetched wait for that one fetch (single-flight) instead of
 * starting their own. With a cluster (cluster/tokens.ts) a key missing here is looked up in the
 * shared store before it is fetched, and a fetched token is shared.
 */

/** Tokens shared with other replicas (cluster/tokens.ts implements it). */
export interface SharedTokenStore {
  /** A token another replica fetched, with the ms it may still be used; null: fetch one. */
  get(key: string): Promise<{ token: string; leftMs: number } | null>;
  put(key: string, token: string, useForMs: number): void;
  invalidate(key: string, token: string): void;
}

/** Token lifetime when the answer has no `expires_in` (distribution token-auth spec). */
export const DEFAULT_EXPIRES_IN_S = 60;
/** Refresh this long before expiry at most, so a token is not used while it is running out. */
const MAX_MARGIN_MS = 30_000;

export interface IssuedToken {
  token: string;
  /** Seconds, as the token service said (or DEFAULT_EXPIRES_IN_S). */
  expiresIn: number;
}

export type TokenSource = "cached" | "fetched";

interface Entry {
  token: string;
  /** After this instant (ms) the token is fetched again. */
  refreshAt: number;
}

/**
 * RFC 6750 b64token: what a Bearer credential is made of. Anything else (CR/LF, non-Latin-1)
 * cannot go into an Authorization field: a "token" with it would fail every pull, so it is none.
 */
export const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

/**
 * When a token received at `receivedAt` stops being used. The margin is min(30 s, 10 % of the
 * lifetime): a 300 s Docker Hub token is renewed at 270 s, a 2 s test token at 1.8 s. The local
 * receive time is the base, not the service's `issued_at`, so clock skew cannot stretch it.
 */
export function refreshAt(receivedAt: number, expiresInS: number): number {
  const lifetime = Math.max(0, expiresInS) * 1000;
  return receivedAt + lifetime - Math.min(MAX_MARGIN_MS, lifetime / 10);
}

export class TokenCache {
  private readonly entries = new Map<string, Entry>();
  private readonly inflight = new Map<string, Promise<string>>();

  constructor(
    private readonly now: () => number = Date.now,
    /** Keys are per repository; bound the map for a long-running mirror of many repositories. */
    private readonly maxEntries = 4096,
    private readonly shared: SharedTokenStore | null = null,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /**
   * A valid token for `key`: the cached one, the one another request is fetching right now, or a
   * new one from `fetchToken`. A failed fetch is not cached; every waiter sees its error.
   */
  async get(
    key: string,
    fetchToken: () => Promise<IssuedToken>,
  ): Promise<{ token: string; source: TokenSource }> {
    const hit = this.entries.get(key);
    if (hit && this.now() < hit.refreshAt) return { token: hit.token, source: "cached" };
    const running = this.inflight.get(key);
    if (running) return { token: await running, source: "cached" };
    // A token another replica fetched counts as cached: no token request went out for it.
    let source: TokenSource = "fetched";
    const fetching =
      this.shared === null
        ? fetchToken().then((issued) => {
            this.store(key, issued);
            return issued.token;
          })
        : this.viaShared(key, this.shared, fetchToken).then((got) => {
            source = got.source;
            return got.token;
          });
    this.inflight.set(key, fetching);
    try {
      const token = await fetching;
      return { token, source };
    } finally {
      this.inflight.delete(key);
    }
  }

  /** Another replica's token when the store has one, else a fetch whose token is then shared. */
  private async viaShared(
    key: string,
    shared: SharedTokenStore,
    fetchToken: () => Promise<IssuedToken>,
  ): Promise<{ token: string; source: TokenSource }> {
    const got = await shared.get(key);
    if (got !== null) {
      this.put(key, got.token, this.now() + got.leftMs);
      return { token: got.token, source: "cached" };
    }
    const issued = await fetchToken();
    const at = this.now();
    this.store(key, issued);
    shared.put(key, issued.token, refreshAt(at, issued.expiresIn) - at);
    return { token: issued.token, source: "fetched" };
  }

  /**
   * The upstream called `token` invalid. Only that token is dropped: when many requests fail
   * with one stale token, the first refetches and the rest must not throw its fresh one away.
   */
  invalidate(key: string, token: string): void {
    if (this.entries.get(key)?.token === token) this.entries.delete(key);
    this.shared?.invalidate(key, token);
  }

  private store(key: string, issued: IssuedToken): void {
    this.put(key, issued.token, refreshAt(this.now(), issued.expiresIn));
  }

  private put(key: string, token: string, until: number): void {
    this.entries.delete(key); // re-insert at the end: Map order is the eviction order
    this.entries.set(key, { token, refreshAt: until });
    if (this.entries.size <= this.maxEntries) return;
    const now = this.now();
    for (const [k, e] of this.entries) if (e.refreshAt <= now) this.entries.delete(k);
    for (const k of this.entries.keys()) {
      if (this.entries.size <= this.maxEntries) break;
      this.entries.delete(k);
    }
  }
}
