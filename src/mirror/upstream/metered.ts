/**
 * Every mirror request to an upstream goes through here, so what it costs is seen in one place:
 * token cache use, manifest GETs (the requests Docker Hub counts as pulls), the quota figures the
 * answer reports, and a 429 turned into the TOOMANYREQUESTS that names the fix.
 */
import type { Runtime } from "../../context.ts";
import type { Resource } from "../routes.ts";
import { readSmallBody } from "../small-body.ts";
import type { MirrorState } from "../state.ts";
import type { UpstreamRequest, UpstreamResult } from "./registry-client.ts";
import type { MirrorClient } from "./failover.ts";

/** A 429's body is small OCI JSON (response.ts keeps the same bound). */
const ERROR_BODY_LIMIT = 64 * 1024;

export interface MeteredRequest extends UpstreamRequest {
  resource: Resource;
}

/** `logFields`: the log line of the request that sent it (token state, redirect host). */
export async function meteredFetch(
  rt: Runtime,
  state: MirrorState,
  client: MirrorClient,
  req: MeteredRequest,
  logFields: Record<string, string | number>,
): Promise<UpstreamResult> {
  if (req.method === "GET" && req.resource === "manifests")
    state.quota.countManifestGet(client.registry.name);
  const result = await client.fetch(req);
  logFields.token = result.token;
  if (result.redirectHost !== null) logFields.redirect = result.redirectHost;
  if (result.token === "cached") rt.metrics.tokenCacheHits++;
  else if (result.token === "fetched") rt.metrics.tokenCacheMisses++;
  const res = result.response;
  state.quota.observe(client.registry.name, res.headers, rt.log);
  if (res.status === 429) {
    const { bytes } = await readSmallBody(
      res,
      ERROR_BODY_LIMIT,
      rt.config.timeouts.upstreamHeaderMs,
    );
    throw state.quota.tooManyRequests(client.registry, res.headers, upstreamMessage(bytes));
  }
  return result;
}

/** The first message of an OCI error body, for the detail of crm's own error. */
function upstreamMessage(bytes: Uint8Array): string | null {
  try {
    const doc = JSON.parse(new TextDecoder().decode(bytes)) as {
      errors?: Array<{ message?: unknown }>;
    };
    const m = doc.errors?.[0]?.message;
    return typeof m === "string" ? m.slice(0, 300) : null;
  } catch {
    return null;
  }
}
