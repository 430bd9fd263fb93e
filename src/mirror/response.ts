/**
 * The upstream's final answer as the client gets it: status and body passed through (bodies
 * streamed, never decompressed, never buffered), only the fields a registry client reads, the
 * pagination Link pointed back at crm, and OCI error JSON for every error status.
 */
import {
  API_VERSION_HEADER,
  codeForStatus,
  jsonResponse,
  MirrorError,
  ociErrorBody,
} from "./errors.ts";
import { rewriteLink } from "./link.ts";
import type { PullRoute } from "./routes.ts";
import { readSmallBody } from "./small-body.ts";
import type { UpstreamResult } from "./upstream/registry-client.ts";

/** Fields a registry client or containerd acts on (registry-clients.md); nothing else is passed. */
const PASSED = new Set([
  "docker-content-digest",
  "content-type",
  "content-length",
  "content-range",
  // Bodies are relayed as sent: a client that asked for an encoding must be told it got one.
  "content-encoding",
  "etag",
  "retry-after",
  "accept-ranges",
  "last-modified",
  "link",
  "oci-subject",
  "oci-filters-applied",
  "docker-ratelimit-source",
]);
const PASSED_PREFIXES = ["ratelimit-", "x-ratelimit-"];

/** Upstream error bodies are small JSON; anything bigger is not one and is replaced. */
const ERROR_BODY_LIMIT = 64 * 1024;

function passedHeaders(upstream: Headers): Headers {
  const out = new Headers();
  for (const [k, v] of upstream) {
    if (PASSED.has(k) || PASSED_PREFIXES.some((p) => k.startsWith(p))) out.append(k, v);
  }
  out.set(API_VERSION_HEADER[0], API_VERSION_HEADER[1]);
  return out;
}

/** `mountPrefix`: mirror.path_prefix ("" or "/SECRET"), which crm's own links must carry. */
export async function clientResponse(
  route: PullRoute,
  method: "GET" | "HEAD",
  result: UpstreamResult,
  mountPrefix: string,
  bodyTimeoutMs: number,
): Promise<Response> {
  const up = result.response;
  const headers = passedHeaders(up.headers);
  if (!headers.has("docker-content-digest") && result.firstDigest !== null && up.status < 300) {
    headers.set("docker-content-digest", result.firstDigest);
  }
  rewriteLink(headers, route, mountPrefix);

  if (up.status >= 300 && up.status < 400 && up.status !== 304) {
    // A redirect crm could not follow (no Location): the client cannot either.
    await up.body?.cancel().catch(() => {});
    throw new MirrorError(
      502,
      "UNAVAILABLE",
      `upstream ${route.registry.name} answered ${up.status} without a Location`,
    );
  }
  if (up.status >= 400) {
    if (method === "HEAD") {
      // The type a GET gets (errorPassThrough always answers OCI error JSON), not the upstream's.
      headers.set("content-type", "application/json");
      return new Response(null, { status: up.status, headers });
    }
    return errorPassThrough(route, up, headers, bodyTimeoutMs);
  }
  const noBody = method === "HEAD" || up.status === 304 || up.status === 204;
  if (noBody) await up.body?.cancel().catch(() => {});
  return new Response(noBody ? null : up.body, { status: up.status, headers });
}

/**
 * An upstream 4xx/5xx: its own OCI error body if it sent one (clients show its message), else
 * an OCI error built from the status, so every error crm answers parses as OCI JSON.
 */
async function errorPassThrough(
  route: PullRoute,
  up: Response,
  headers: Headers,
  timeoutMs: number,
): Promise<Response> {
  const { bytes, truncated } = await readSmallBody(up, ERROR_BODY_LIMIT, timeoutMs);
  let body: string | null = null;
  if (!truncated) {
    const text = new TextDecoder().decode(bytes);
    if (isOciErrorJson(text)) body = text;
  }
  body ??= ociErrorBody(
    codeForStatus(up.status, route.resource),
    `upstream ${route.registry.name} answered ${up.status}`,
  );
  const extra: Record<string, string> = {};
  for (const [k, v] of headers)
    if (k !== "content-type" && k !== "content-length" && k !== "content-encoding") extra[k] = v;
  return jsonResponse(up.status, body, extra);
}

function isOciErrorJson(text: string): boolean {
  try {
    const doc = JSON.parse(text) as unknown;
    return (
      typeof doc === "object" && doc !== null && Array.isArray((doc as { errors?: unknown }).errors)
    );
  } catch {
    return false;
  }
}
