/**
 * The mirror answers every failure the way registry clients parse them: OCI error JSON
 * (`{"errors":[{"code","message","detail"}]}`) with an exact Content-Length. A MirrorError is the
 * value every mirror layer throws or returns; only index.ts turns it into a Response.
 */

/** OCI distribution error codes, plus TAG_INVALID and UNAVAILABLE from distribution's errcode set. */
export type OciErrorCode =
  | "BLOB_UNKNOWN"
  | "DENIED"
  | "DIGEST_INVALID"
  | "MANIFEST_UNKNOWN"
  | "NAME_INVALID"
  | "NAME_UNKNOWN"
  | "TAG_INVALID"
  | "TOOMANYREQUESTS"
  | "UNAUTHORIZED"
  | "UNAVAILABLE"
  | "UNKNOWN"
  | "UNSUPPORTED";

/** Every mirror answer carries this (registry-clients.md: OCI distribution). */
export const API_VERSION_HEADER = ["docker-distribution-api-version", "registry/2.0"] as const;

export class MirrorError extends Error {
  override name = "MirrorError";
  readonly headers: Record<string, string>;
  constructor(
    readonly status: number,
    readonly code: OciErrorCode,
    message: string,
    options?: ErrorOptions & { detail?: unknown; headers?: Record<string, string> },
  ) {
    super(message, options);
    this.detail = options?.detail ?? null;
    this.headers = options?.headers ?? {};
  }
  readonly detail: unknown;
}

/** Serialises one OCI error body; shared by crm's own errors and synthesised upstream ones. */
export function ociErrorBody(
  code: OciErrorCode | string,
  message: string,
  detail: unknown = null,
): string {
  return JSON.stringify({ errors: [{ code, message, detail }] });
}

export function jsonResponse(
  status: number,
  body: string,
  headers: Record<string, string> = {},
): Response {
  return new Response(body, {
    status,
    headers: {
      "content-type": "application/json; charset=utf-8",
      "content-length": String(Buffer.byteLength(body)),
      [API_VERSION_HEADER[0]]: API_VERSION_HEADER[1],
      ...headers,
    },
  });
}

export function errorResponse(err: MirrorError): Response {
  return jsonResponse(err.status, ociErrorBody(err.code, err.message, err.detail), err.headers);
}

/** The code a client expects for a status when the upstream gave no OCI body of its own. */
export function codeForStatus(
  status: number,
  resource: "manifests" | "blobs" | "tags" | "referrers",
): OciErrorCode {
  if (status === 404)
    return resource === "blobs"
      ? "BLOB_UNKNOWN"
      : resource === "manifests"
        ? "MANIFEST_UNKNOWN"
        : "NAME_UNKNOWN";
  if (status === 429) return "TOOMANYREQUESTS";
  if (status === 401) return "UNAUTHORIZED";
  if (status === 403) return "DENIED";
  return "UNKNOWN";
}
