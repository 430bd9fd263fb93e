/**
 * Manifests shared by every replica: a manifest one replica has checked against its digest is
 * written to the store (bytes, media type, digest, ETag; TTL cluster.manifest_ttl), so another
 * replica that misses in memory pays no upstream pull for it. What is read back is data from the
 * network: its digest is checked again before it is served, and a wrong (poisoned, truncated,
 * foreign) entry is deleted and never served.
 *
 * Single flight across replicas: before its upstream GET by digest a replica takes a short lock
 * (SET NX PX). A replica that finds the lock taken waits for the holder's "done" message
 * (pub/sub) or for the lock to go (polled), at most WAIT_MS, then reads the store; if the entry
 * is still not there it sends its own request. With the store down nobody waits: each replica
 * fetches as it would alone. Tags are never stored: a tag is resolved upstream each time
 * (manifests/service.ts), only the digest it names is shared.
 */
import { createHash } from "node:crypto";
import type { Logger } from "../log.ts";
import { MAX_CACHED_MANIFEST, type CachedManifest } from "../mirror/manifests/cache.ts";
import { verifiable } from "../mirror/manifests/fetch.ts";
import { mirrorContentType } from "../mirror/content-safety.ts";
import type {
  SharedManifests as SharedManifestsHook,
  SharedManifestWant,
} from "../mirror/manifests/shared.ts";
import { detachedFromBudget } from "./budget.ts";
import { script, type Store } from "./store.ts";

const MAGIC = "crm-manifest/1\n";
/** The JSON line after the magic: digest, media type, ETag. */
const MAX_HEADER = 2048;
/** How long a lock holder may take before others stop trusting it (its own fetch goes on). */
const LOCK_MS = 10_000;
/** How long a replica waits for another's upstream GET before sending its own. */
export const WAIT_MS = 3000;
/** The poll beside pub/sub: a lost message (or a holder that died) costs at most this. */
const POLL_MS = 250;

/**
 * Takes the lock (SET NX PX); a lock without a TTL (written by hand, or by a broken peer) would
 * never go, so it is taken over. "OK": taken; anything else: held by another.
 */
const LOCK = script(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'OK' end
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 'OK'
end
return 'HELD'
`);

/** Releases a lock only if it is still this replica's. */
const RELEASE = script(
  "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
);

interface Header {
  digest: string;
  mediaType: string | null;
  etag: string | null;
}

export function encodeManifest(m: CachedManifest): Uint8Array {
  const head = Buffer.from(
    MAGIC +
      JSON.stringify({ digest: m.digest, mediaType: m.mediaType, etag: m.etag } satisfies Header) +
      "\n",
  );
  const out = new Uint8Array(head.byteLength + m.body.byteLength);
  out.set(head, 0);
  out.set(m.body, head.byteLength);
  return out;
}

/** The entry as stored, or why it is not a manifest with the digest `want`. */
export function decodeManifest(bytes: Uint8Array, want: string): CachedManifest | string {
  const magic = Buffer.from(MAGIC);
  if (
    bytes.byteLength < magic.byteLength ||
    !Buffer.from(bytes.subarray(0, magic.byteLength)).equals(magic)
  )
    return "not a crm manifest entry";
  const nl = bytes.indexOf(10, magic.byteLength);
  if (nl < 0 || nl - magic.byteLength > MAX_HEADER) return "no header line";
  let h: Header;
  try {
    h = JSON.parse(Buffer.from(bytes.subarray(magic.byteLength, nl)).toString("utf8")) as Header;
  } catch {
    return "header is not JSON";
  }
  if (typeof h !== "object" || h === null || h.digest !== want)
    return `entry names digest ${String((h as Header | null)?.digest).slice(0, 80)}`;
  const str = (v: unknown): string | null => (typeof v === "string" && v.length <= 256 ? v : null);
  const body = bytes.slice(nl + 1);
  if (body.byteLength > MAX_CACHED_MANIFEST) return "body over the manifest size limit";
  const alg = want.slice(0, want.indexOf(":"));
  const got = `${alg}:${createHash(alg).update(body).digest("hex")}`;
  if (got !== want) return `bytes hash to ${got}`;
  const mediaType = str(h.mediaType);
  const etag = str(h.etag);
  // Right bytes are not enough: the type and ETag become header fields of the answer.
  const typeWrong = mediaTypeProblem(mediaType, body);
  if (typeWrong !== null) return typeWrong;
  if (etag !== null && !ETAG.test(etag)) return "ETag is not a quoted entity tag";
  return { digest: want, body, mediaType, etag };
}

/** An entity tag as RFC 9110 spells it: what an ETag field may carry, nothing to split a head with. */
const ETAG = /^(W\/)?"[\x21\x23-\x7e]*"$/;

/** A kept ETag a store entry may carry (null when the upstream's is not one). */
export function safeEtag(etag: string | null): string | null {
  return etag !== null && etag.length <= 256 && ETAG.test(etag) ? etag : null;
}

/**
 * null when `type` is what this replica would have kept for these bytes: absent, or a bare
 * manifest type (or application/octet-stream, what crm keeps for any other) that agrees with the
 * body's own mediaType field when it has one.
 */
function mediaTypeProblem(type: string | null, body: Uint8Array): string | null {
  if (type === null) return null;
  if (mirrorContentType(type) !== type)
    return `media type ${JSON.stringify(type.slice(0, 80))} is not a manifest type`;
  if (type === "application/octet-stream") return null;
  let own: unknown;
  try {
    own = (JSON.parse(Buffer.from(body).toString("utf8")) as { mediaType?: unknown } | null)
      ?.mediaType;
  } catch {
    own = undefined;
  }
  if (typeof own === "string" && own.toLowerCase() !== type && type !== "application/json")
    return `media type ${type} but the manifest says ${own.slice(0, 80)}`;
  return null;
}

export class SharedManifests implements SharedManifestsHook {
  readonly stats = { hit: 0, miss: 0, poisoned: 0, waited: 0, led: 0, written: 0 };
  /** Keys this replica waits on → wake-ups. */
  private readonly waiters = new Map<string, Set<() => void>>();

  constructor(
    private readonly store: Store,
    private readonly replicaId: string,
    private readonly log: () => Logger,
  ) {
    store.onMessage((message) => {
      if (!message.startsWith("m ")) return;
      const set = this.waiters.get(message.slice(2));
      if (set) for (const wake of set) wake();
    });
    store.onDown(() => {
      for (const set of this.waiters.values()) for (const wake of set) wake();
    });
  }

  /** The entry's key without the prefix: whose manifests (cache.ts cacheScope), repository, digest. */
  static id(scope: string, repository: string, digest: string): string {
    return `${createHash("sha256").update(scope).digest("hex").slice(0, 16)}:${repository}:${digest}`;
  }

  keyOf(id: string): string {
    return this.store.key("m", id);
  }

  /**
   * A verified entry, or null (absent, store down, or wrong: then deleted). Its size is asked
   * first: an entry over the manifest limit is never read into memory.
   */
  async read(id: string, digest: string, deadlineMs?: number): Promise<CachedManifest | null> {
    const key = this.keyOf(id);
    const bytes = await this.store.call(async (c) => {
      const size = Number(await c.send("STRLEN", [key]));
      if (size === 0) return null;
      if (size > MAX_CACHED_MANIFEST + MAGIC.length + MAX_HEADER + 1) return new Uint8Array(0);
      return c.getBuffer(key);
    }, deadlineMs);
    if (bytes === undefined || bytes === null) return null;
    const m = decodeManifest(bytes, digest);
    if (typeof m !== "string") return m;
    this.stats.poisoned++;
    this.log().warn("cluster store held a wrong manifest entry; deleted, not served", {
      key,
      digest,
      why: m,
    });
    this.store.detached((c) => c.del(key));
    return null;
  }

  async write(id: string, m: CachedManifest, ttlMs: number): Promise<void> {
    if (m.body.byteLength > MAX_CACHED_MANIFEST) return;
    // An ETag the readers would refuse is not shared (the bytes still are).
    const kept = { ...m, etag: safeEtag(m.etag) };
    const ok = await this.store.call((c) =>
      c.set(this.keyOf(id), encodeManifest(kept), "PX", ttlMs),
    );
    if (ok !== undefined) this.stats.written++;
  }

  /**
   * A GET by digest, shared with the other replicas; `local` is this replica's own upstream GET
   * (fetch.ts), which also fills the memory cache.
   */
  async fetch<R>(
    want: SharedManifestWant,
    signal: AbortSignal,
    local: () => Promise<R>,
    manifestOf: (r: R) => CachedManifest | null,
    fromStored: (m: CachedManifest) => R,
  ): Promise<R> {
    const { digest } = want;
    if (!verifiable(digest) || !this.store.up) return local();
    const id = SharedManifests.id(want.scope, want.repository, digest);
    // The read and the lock together get one deadline: the store never costs a pull more.
    const budgetEnd = performance.now() + this.store.config.deadlineMs;
    const left = (): number => Math.max(1, Math.round(budgetEnd - performance.now()));
    const fromStore = async (deadlineMs?: number): Promise<R | null> => {
      const m = await this.read(id, digest, deadlineMs);
      if (m === null) return null;
      this.stats.hit++;
      want.logFields.cluster = "hit";
      return fromStored(m);
    };
    const hit = await fromStore(left());
    if (hit !== null) return hit;
    this.stats.miss++;

    // Listening before the lock is tried: a holder that finishes in between still wakes us.
    let woken = false;
    let wake: () => void = () => {};
    const woke = new Promise<void>((r) => (wake = () => ((woken = true), r())));
    let set = this.waiters.get(id);
    if (!set) this.waiters.set(id, (set = new Set()));
    set.add(wake);
    const lockKey = this.store.key("l", id);
    try {
      const lock = await this.store.script(
        LOCK,
        [lockKey],
        [this.replicaId, String(LOCK_MS)],
        left(),
      );
      if (lock === "OK") {
        // Another replica may have written it and let go between our read and our lock.
        const late = await fromStore(left());
        if (late === null) return await this.lead(want, id, lockKey, local, manifestOf);
        this.store.detachedScript(RELEASE, [lockKey], [this.replicaId]);
        return late;
      }
      if (lock === undefined) {
        want.logFields.cluster = "down";
        return await local();
      }
      // Another replica is fetching it: wait for its word, the lock to go, or WAIT_MS.
      this.stats.waited++;
      want.logFields.cluster = "waited";
      const end = performance.now() + WAIT_MS;
      while (!woken && !signal.aborted && this.store.up && performance.now() < end) {
        await Promise.race([
          woke,
          Bun.sleep(Math.min(POLL_MS, Math.max(1, end - performance.now()))),
        ]);
        if (woken || !this.store.up) break;
        const held = await this.store.call((c) => c.exists(lockKey));
        if (held !== true) break;
      }
      const stored = await fromStore();
      if (stored !== null) return stored;
      // Nobody shared it in time: this replica's own GET is shared in turn, so the next one
      // does not wait for nothing again.
      const r = await local();
      const m = manifestOf(r);
      if (m !== null)
        void detachedFromBudget(() => this.write(id, m, this.store.config.manifestTtlMs));
      return r;
    } finally {
      set.delete(wake);
      if (set.size === 0 && this.waiters.get(id) === set) this.waiters.delete(id);
    }
  }

  private async lead<R>(
    want: SharedManifestWant,
    id: string,
    lockKey: string,
    local: () => Promise<R>,
    manifestOf: (r: R) => CachedManifest | null,
  ): Promise<R> {
    this.stats.led++;
    want.logFields.cluster = "led";
    let got: CachedManifest | null = null;
    try {
      const r = await local();
      got = manifestOf(r);
      return r;
    } finally {
      // Done (or failed): written, then the lock goes and the waiters read the store or fetch on
      // their own. The client that led is answered at once, not after the store.
      const done = got;
      void detachedFromBudget(async () => {
        if (done !== null) await this.write(id, done, this.store.config.manifestTtlMs);
        await this.store.script(RELEASE, [lockKey], [this.replicaId]);
        this.store.publish(`m ${id}`);
      });
    }
  }

  metricLines(): string[] {
    return [
      "# HELP crm_cluster_manifests_total Shared manifest store use: hit (served from the store), miss, poisoned (a wrong entry deleted), waited (for another replica's upstream GET), led (this replica's GET for the others), written.",
      "# TYPE crm_cluster_manifests_total counter",
      ...Object.entries(this.stats).map(
        ([k, v]) => `crm_cluster_manifests_total{result="${k}"} ${v}`,
      ),
    ];
  }
}
