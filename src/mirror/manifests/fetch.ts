/**
 * One upstream manifest GET, shared by every concurrent identical request (single flight), and
 * kept in the manifest cache only once its bytes are checked against the digest: the one the
 * client asked for, or the upstream's Docker-Content-Digest for a GET by tag. A mismatch is a
 * 502 and never cached. A manifest over the OCI limit is streamed to the request that started
 * the GET (the others send their own), never held whole.
 */
import { createHash } from "node:crypto";
import type { Runtime } from "../../context.ts";
import { MirrorError } from "../errors.ts";
import { cacheScope, MAX_CACHED_MANIFEST, type CachedManifest } from "./cache.ts";
import type { MemoryBudget } from "./memory-body.ts";
import { meteredFetch, type MeteredRequest } from "../upstream/metered.ts";
import { blobRangeFetch, resumable } from "../upstream/resume.ts";
import { asStreamResponse } from "../../http/relayed.ts";
import { SingleFlight } from "./single-flight.ts";
import { readSmallBody } from "../small-body.ts";
import type { MirrorState } from "../state.ts";
import type { MirrorClient } from "../upstream/failover.ts";
import { quotaFields, type QuotaFields } from "../quota-headers.ts";
import { mirrorContentType } from "../content-safety.ts";

/** Algorithms crm can check; a digest of any other is passed through, never cached. */
const HASHES: Record<string, string> = { sha256: "sha256", sha512: "sha512" };
/** Upstream error bodies are small JSON (response.ts keeps the same bound). */
const ERROR_BODY_LIMIT = 64 * 1024;
export function verifiable(digest: string): boolean {
  return HASHES[digest.slice(0, digest.indexOf(":"))] !== undefined;
}

function digestOf(algorithm: string, bytes: Uint8Array): string {
  return `${algorithm}:${createHash(HASHES[algorithm] ?? "sha256")
    .update(bytes)
    .digest("hex")}`;
}

export type Fetched =
  /** Checked against its digest (and cached when it fits); `quota`: the GET's quota fields (quota-headers.ts). */
  | { kind: "manifest"; manifest: CachedManifest; quota: QuotaFields }
  /**
   * A small answer every waiter may send as is: an upstream error, or a manifest crm could not
   * check. `accept`: the Accept it was asked with (an error may depend on it, service.ts).
   */
  | { kind: "answer"; status: number; headers: Headers; body: Uint8Array; accept: string | null }
  /** Too big to hold: the first taker streams it; later ones (or all) get null and fetch on their own. */
  | { kind: "stream"; take(): Response | null };

export interface ManifestGet {
  rt: Runtime;
  state: MirrorState;
  client: MirrorClient;
  /** The upstream repository name. */
  name: string;
  /** Tag or digest. */
  reference: string;
  /** The digest the bytes must have; null for a GET by tag (the upstream's header names it). */
  expect: string | null;
  /** Accept and User-Agent of the request that starts the flight. */
  headers: Headers;
  scope: string;
  /** The log line of the request that starts the flight gets its token state. */
  logFields: Record<string, string | number>;
}

export class ManifestFetcher {
  private readonly flights = new SingleFlight<Fetched>();
  constructor(private readonly budget: MemoryBudget) {}

  /** By digest the bytes are fixed, so Accept is not part of the key; by tag it decides the answer. */
  get(req: ManifestGet, signal: AbortSignal): Promise<{ value: Fetched; leader: boolean }> {
    const key = [
      req.client.registry.name,
      req.name,
      req.reference,
      req.expect === null ? (req.headers.get("accept") ?? "") : "",
    ].join("\n");
    // With a cluster, a GET by digest is first shared with the other replicas (cluster/manifests.ts).
    const cluster = req.state.shared?.manifests ?? null;
    if (cluster !== null && req.expect !== null) {
      const scope = cacheScope(req.client.registry);
      const want = { scope, repository: req.name, digest: req.expect, logFields: req.logFields };
      // Read from the store: kept in memory too; it caused no upstream exchange, so no quota fields.
      const fromStore = (m: CachedManifest): Fetched => {
        req.state.cache.put(scope, req.name, m);
        return { kind: "manifest", manifest: m, quota: [] };
      };
      return this.flights.run(key, signal, (shared) =>
        cluster.fetch<Fetched>(
          want,
          shared,
          () => fetchManifest(req, shared, this.budget),
          (r) => (r.kind === "manifest" ? r.manifest : null),
          fromStore,
        ),
      );
    }
    return this.flights.run(key, signal, (shared) => fetchManifest(req, shared, this.budget));
  }
}

async function fetchManifest(
  req: ManifestGet,
  signal: AbortSignal,
  budget: MemoryBudget,
): Promise<Fetched> {
  const { rt, state, client } = req;
  const registry = client.registry.name;
  const headers = new Headers(req.headers);
  // The bytes must be the ones the digest covers; Bun's fetch would otherwise ask for gzip.
  headers.set("accept-encoding", "identity");
  const timeoutMs = rt.config.timeouts.upstreamHeaderMs;
  // The flight's signal: aborted only when every waiting client has gone.
  const get: MeteredRequest = {
    method: "GET",
    path: `/v2/${req.name}/manifests/${req.reference}`,
    headers,
    scope: req.scope,
    signal,
    resource: "manifests",
  };
  const result = await meteredFetch(rt, state, client, get, req.logFields);
  // By digest the bytes are fixed: a body the upstream drops is continued (upstream/resume.ts).
  const res =
    req.expect === null
      ? result.response
      : asStreamResponse(
          resumable(result.response, {
            rt,
            idleMs: timeoutMs,
            registry,
            what: req.reference,
            request: blobRangeFetch(rt, state, client, get, req.logFields),
            signal,
            logFields: req.logFields,
          }),
        );
  const upHeaders = new Headers(res.headers);
  if (!upHeaders.has("docker-content-digest") && result.firstDigest !== null)
    upHeaders.set("docker-content-digest", result.firstDigest);
  const encoded = (res.headers.get("content-encoding") ?? "identity").toLowerCase() !== "identity";
  if (res.status !== 200 || encoded) {
    if (res.status >= 200 && res.status < 300) return streamOnce(res, upHeaders);
    const { bytes } = await readSmallBody(res, ERROR_BODY_LIMIT, timeoutMs);
    return {
      kind: "answer",
      status: res.status,
      headers: upHeaders,
      body: bytes,
      accept: req.headers.get("accept"),
    };
  }
  const lengthText = res.headers.get("content-length");
  const declared = lengthText !== null && /^\d+$/.test(lengthText) ? Number(lengthText) : null;
  if (declared !== null && declared > MAX_CACHED_MANIFEST) return streamOnce(res, upHeaders);
  const charge = declared ?? MAX_CACHED_MANIFEST + 1;
  if (!budget.take(charge)) {
    rt.log.debug("manifests held in memory at their bound; streamed uncached", {
      registry,
      repo: req.name,
      ref: req.reference,
      reading: budget.used,
    });
    return streamOnce(res, upHeaders);
  }
  let read: { bytes: Uint8Array; truncated: boolean };
  try {
    read = await readSmallBody(res, MAX_CACHED_MANIFEST + 1, timeoutMs);
  } finally {
    budget.give(charge);
  }
  const { bytes, truncated } = read;
  if (truncated && bytes.byteLength > MAX_CACHED_MANIFEST) {
    // Over the limit without saying so up front: what was read is gone, each waiter streams its own.
    return { kind: "stream", take: () => null };
  }
  if (truncated)
    throw new MirrorError(
      502,
      "UNAVAILABLE",
      `upstream ${registry} broke off a manifest body or did not finish it within ${timeoutMs} ms`,
    );

  const named = upHeaders.get("docker-content-digest");
  const want = req.expect ?? named;
  if (want === null || !verifiable(want)) {
    // Nothing to check the bytes against: pass them on as received, keep nothing.
    return {
      kind: "answer",
      status: 200,
      headers: upHeaders,
      body: bytes,
      accept: req.headers.get("accept"),
    };
  }
  const got = digestOf(want.slice(0, want.indexOf(":")), bytes);
  if (got !== want) {
    rt.log.warn("upstream manifest does not match its digest; not served, not cached", {
      registry,
      repo: req.name,
      ref: req.reference,
      expected: want,
      got,
    });
    const what =
      req.expect !== null ? `the requested digest ${want}` : `its Docker-Content-Digest ${want}`;
    throw new MirrorError(
      502,
      "DIGEST_INVALID",
      `upstream ${registry} answered ${req.name}:${req.reference} with a manifest that does not match ${what} (its bytes are ${got}); not served`,
      {
        detail: { registry, expected: want, got },
      },
    );
  }
  // Stored as it may be served (content-safety.ts): a cached answer never carries what a fresh one may not.
  const type = res.headers.get("content-type");
  const manifest: CachedManifest = {
    digest: want,
    body: bytes,
    mediaType: type === null ? null : mirrorContentType(type),
    etag: res.headers.get("etag"),
  };
  state.cache.put(cacheScope(client.registry), req.name, manifest);
  return { kind: "manifest", manifest, quota: quotaFields(res.headers) };
}

/** Hands the answer to the first taker; the others get null and send their own request. */
function streamOnce(res: Response, headers: Headers): Fetched {
  let taken = false;
  return {
    kind: "stream",
    take() {
      if (taken) return null;
      taken = true;
      return new Response(res.body, { status: res.status, headers });
    },
  };
}
