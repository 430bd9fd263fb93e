/**
 * Manifest requests, answered at the cost of one counted pull per manifest instead of one per
 * node. By digest: from the manifest cache when it holds it, with no upstream request at all.
 * By tag: resolved upstream with a HEAD carrying the client's Accept (free on Docker Hub), so a
 * moved tag is seen on the very next request; the digest it names is then served from the cache
 * or fetched once by digest. An upstream whose HEAD names no digest (or answers 405) gets a
 * plain GET, as containerd does. Concurrent identical requests share their upstream requests.
 */
import { MemoryBudget, memoryBody } from "./memory-body.ts";
import type { Runtime } from "../../context.ts";
import { API_VERSION_HEADER } from "../errors.ts";
import { cacheScope, type CachedManifest } from "./cache.ts";
import { ManifestFetcher, verifiable, type Fetched } from "./fetch.ts";
import { meteredFetch } from "../upstream/metered.ts";
import { clientResponse } from "../response.ts";
import { isDigest, pullScope, type PullRoute } from "../routes.ts";
import { SingleFlight } from "./single-flight.ts";
import type { MirrorState } from "../state.ts";
import type { MirrorClient } from "../upstream/failover.ts";
import { failingStatus, upstreamFailure } from "../upstream/failover.ts";
import { staleWarning, tagKey, tagMemory, type TagMemory } from "./stale.ts";
import { DEFAULT_STALE_IF_ERROR_MS } from "./config.ts";
import { quotaFields, setQuotaFields, type QuotaFields } from "../quota-headers.ts";

export interface ManifestRequest {
  method: "GET" | "HEAD";
  route: PullRoute & { resource: "manifests"; reference: string };
  client: MirrorClient;
  /** The client's end-to-end fields (index.ts FORWARDED). */
  headers: Headers;
  signal: AbortSignal;
  logFields: Record<string, string | number>;
  /** The uncached path: the client's own request, forwarded as is. */
  passThrough(): Promise<Response>;
}

/** What a HEAD by tag told crm; shared by the requests that waited for it. */
interface TagHead {
  status: number;
  headers: Headers;
  firstDigest: string | null;
}

/** Statuses after which containerd (and crm) repeat a manifest HEAD as GET. */
const HEAD_UNSUPPORTED = new Set([405, 501]);

export class ManifestService {
  /** Every manifest read and large in-memory answer in flight, together (memory-body.ts). */
  private readonly budget = new MemoryBudget();
  private readonly fetcher = new ManifestFetcher(this.budget);
  private readonly heads = new SingleFlight<TagHead>();
  private readonly tags: TagMemory;

  constructor(
    private readonly rt: Runtime,
    private readonly state: MirrorState,
  ) {
    this.tags = tagMemory(rt);
  }

  /** null: this request is not one the cache can serve (disabled, or a Range / conditional request). */
  async serve(req: ManifestRequest): Promise<Response | null> {
    if (
      !this.state.cache.enabled ||
      req.headers.has("range") ||
      req.headers.has("if-range") ||
      req.headers.has("if-modified-since")
    )
      return null;
    const ref = req.route.reference;
    if (isDigest(ref)) return this.byDigest(req, ref);
    return this.byTag(req);
  }

  private async byDigest(req: ManifestRequest, digest: string): Promise<Response> {
    // An algorithm crm cannot check is never cached: plain pass-through.
    if (!verifiable(digest)) return this.bypass(req, "unverifiable");
    const hit = this.state.cache.get(cacheScope(req.route.registry), req.route.name, digest);
    if (hit) return this.fromCache(req, hit, "hit");
    // A HEAD is free upstream and its answer is the upstream's to give.
    if (req.method === "HEAD") return this.bypass(req, "head");
    return this.fetched(req, digest, digest);
  }

  private async byTag(req: ManifestRequest): Promise<Response> {
    let head: TagHead;
    try {
      head = await this.resolve(req);
    } catch (e) {
      const why = upstreamFailure(e);
      const detail = e instanceof Error ? e.message : String(e);
      const stale =
        why === null
          ? null
          : await this.stale(
              req,
              why,
              `${/^\d+$/.test(why) ? `upstream answered ${why}` : `upstream ${why}`}: ${detail}`,
            );
      if (stale !== null) return stale;
      throw e;
    }
    if (failingStatus(head.status)) {
      const stale = await this.stale(req, String(head.status), `upstream answered ${head.status}`);
      if (stale !== null) return stale;
    }
    const digest = head.headers.get("docker-content-digest") ?? head.firstDigest;
    const ok = head.status >= 200 && head.status < 300;
    if (ok && digest !== null && isDigest(digest)) this.tags.remember(this.tagKeyOf(req), digest);
    if (!ok && !HEAD_UNSUPPORTED.has(head.status) && req.method === "GET") {
      // Not found, refused, broken: the client's own GET carries the upstream's own error body.
      return this.bypass(req, "unresolved");
    }
    if (req.method === "HEAD") {
      req.logFields.cache = "resolve";
      return clientResponse(
        req.route,
        req.method,
        {
          response: new Response(null, { status: head.status, headers: head.headers }),
          token: "none",
          redirectHost: null,
          firstDigest: head.firstDigest,
        },
        this.rt.config.mirror.pathPrefix,
        this.rt.config.timeouts.upstreamHeaderMs,
      );
    }
    if (!ok || digest === null || !isDigest(digest)) {
      // The HEAD said nothing usable: one shared GET by tag, checked against its own digest header.
      return this.fetched(req, req.route.reference, null);
    }
    if (!verifiable(digest)) return this.bypass(req, "unverifiable");
    req.logFields.digest = digest;
    // The HEAD was an upstream exchange: its quota fields go with the answer, also from memory.
    const headQuota = quotaFields(head.headers);
    const hit = this.state.cache.get(cacheScope(req.route.registry), req.route.name, digest);
    if (hit) return this.fromCache(req, hit, "hit", headQuota);
    return this.fetched(req, digest, digest, true, headQuota);
  }

  /** HEAD by tag, once for all concurrent identical requests (same registry, repository, tag, Accept). */
  private async resolve(req: ManifestRequest): Promise<TagHead> {
    const { route, client } = req;
    const key = [
      route.registry.name,
      route.name,
      route.reference,
      req.headers.get("accept") ?? "",
    ].join("\n");
    const { value } = await this.heads.run(key, req.signal, async (signal) => {
      const headers = new Headers();
      for (const name of ["accept", "user-agent"]) {
        const v = req.headers.get(name);
        if (v !== null) headers.set(name, v);
      }
      const result = await meteredFetch(
        this.rt,
        this.state,
        client,
        {
          method: "HEAD",
          path: `/v2/${route.name}/manifests/${route.reference}`,
          headers,
          scope: pullScope(route),
          signal,
          resource: "manifests",
        },
        req.logFields,
      );
      await result.response.body?.cancel().catch(() => {});
      return {
        status: result.response.status,
        headers: new Headers(result.response.headers),
        firstDigest: result.firstDigest,
      };
    });
    return value;
  }

  /**
   * `tagFallback`: the digest came from a HEAD by tag. An upstream that names a digest it then
   * does not serve by digest (a redirecting front that routes tags only) gets the client's GET by tag.
   */
  private async fetched(
    req: ManifestRequest,
    reference: string,
    expect: string | null,
    tagFallback = false,
    headQuota: QuotaFields = [],
  ): Promise<Response> {
    const { route } = req;
    const headers = new Headers();
    for (const name of ["accept", "user-agent"]) {
      const v = req.headers.get(name);
      if (v !== null) headers.set(name, v);
    }
    const get = {
      rt: this.rt,
      state: this.state,
      client: req.client,
      name: route.name,
      reference,
      expect,
      headers,
      scope: pullScope(route),
      logFields: req.logFields,
    };
    const { value, leader } = await this.fetcher.get(get, req.signal);
    if (tagFallback && value.kind === "answer" && value.status === 404)
      return this.bypass(req, "digest-unknown");
    // By digest the flight is shared whatever the Accept, but an error may be the Accept's doing (a
    // distribution registry answers 404 for an index the Accept does not name): a waiter that
    // asked otherwise asks for itself.
    if (
      !leader &&
      value.kind === "answer" &&
      value.status >= 400 &&
      value.accept !== req.headers.get("accept")
    )
      return this.bypass(req, "accept-differs");
    return this.answer(req, value, leader, headQuota);
  }

  private async answer(
    req: ManifestRequest,
    got: Fetched,
    leader: boolean,
    headQuota: QuotaFields,
  ): Promise<Response> {
    // The GET's own fields are the newest count; the tag's HEAD's when the GET sent none.
    if (got.kind === "manifest")
      return this.fromCache(
        req,
        got.manifest,
        leader ? "miss" : "shared",
        got.quota.length > 0 ? got.quota : headQuota,
      );
    if (got.kind === "answer") {
      req.logFields.cache = leader ? "uncached" : "shared";
      const body = req.method === "HEAD" ? null : memoryBody(got.body, this.budget);
      if (body === null) return this.bypass(req, "memory-bound");
      const response = new Response(req.method === "HEAD" ? null : body, {
        status: got.status,
        headers: got.headers,
      });
      return this.answerWith(req, response);
    }
    const response = got.take();
    if (response === null) return this.bypass(req, "too-big");
    req.logFields.cache = "too-big";
    return this.answerWith(req, response);
  }

  /** A manifest crm holds (verified, or too big to keep), answered as the upstream's would be. */
  private answerWith(req: ManifestRequest, response: Response): Promise<Response> {
    return clientResponse(
      req.route,
      req.method,
      { response, token: "none", redirectHost: null, firstDigest: null },
      this.rt.config.mirror.pathPrefix,
      this.rt.config.timeouts.upstreamHeaderMs,
    );
  }

  private tagKeyOf(req: ManifestRequest): string {
    return tagKey(
      cacheScope(req.route.registry),
      req.route.name,
      req.route.reference,
      req.headers.get("accept") ?? "",
    );
  }

  /**
   * Every upstream failed for this tag (`short`: the status or connection failure, for the
   * counter): the digest it resolved to within stale_if_error, from the cache, marked stale; null
   * when there is none (the failure is then the answer).
   */
  private async stale(
    req: ManifestRequest,
    short: string,
    reason: string,
  ): Promise<Response | null> {
    const windowMs =
      this.rt.config.mirror.manifestCache.staleIfErrorMs ?? DEFAULT_STALE_IF_ERROR_MS;
    const digest = this.tags.recall(this.tagKeyOf(req), windowMs);
    if (digest === null) return null;
    const m = this.state.cache.get(cacheScope(req.route.registry), req.route.name, digest);
    if (m === null) return null;
    this.tags.countServed(req.route.registry.name, short);
    this.rt.log.warn("mirror tag answered stale: every upstream failed", {
      registry: req.route.registry.name,
      repo: req.route.name,
      tag: req.route.reference,
      digest,
      reason: reason.slice(0, 200),
    });
    req.logFields.digest = digest;
    const res = await this.fromCache(req, m, "stale");
    res.headers.set("warning", staleWarning(reason));
    return res;
  }

  private bypass(req: ManifestRequest, why: string): Promise<Response> {
    req.logFields.cache = why;
    return req.passThrough();
  }

  /**
   * The upstream's own fields for these bytes: Content-Type, Docker-Content-Digest, Content-Length,
   * ETag; plus `quota`, the quota fields of the upstream exchange this answer caused (none when
   * it caused none).
   */
  private fromCache(
    req: ManifestRequest,
    m: CachedManifest,
    how: string,
    quota: QuotaFields = [],
  ): Response | Promise<Response> {
    req.logFields.cache = how;
    const headers = new Headers({
      "docker-content-digest": m.digest,
      "content-length": String(m.body.byteLength),
      [API_VERSION_HEADER[0]]: API_VERSION_HEADER[1],
    });
    setQuotaFields(headers, quota);
    if (m.mediaType !== null) headers.set("content-type", m.mediaType);
    if (m.etag !== null) headers.set("etag", m.etag);
    const inm = req.headers.get("if-none-match");
    if (
      inm !== null &&
      m.etag !== null &&
      inm.split(",").some((t) => t.trim() === m.etag || t.trim() === "*")
    ) {
      headers.delete("content-length");
      return new Response(null, { status: 304, headers });
    }
    if (req.method === "HEAD") return new Response(null, { status: 200, headers });
    const body = memoryBody(m.body, this.budget);
    // Too much is held for clients already: this one is served from the upstream, as it comes.
    if (body === null) return this.bypass(req, "memory-bound");
    return new Response(body, { status: 200, headers });
  }
}
