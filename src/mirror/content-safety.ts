/**
 * Mirror answers are served on crm's own origin, beside the status page and status.json, but
 * their bytes are the upstream's: a registry (or anyone who can push to a public one) could
 * serve text/html that a browser would run with the viewer's access to that page. So no mirror
 * answer is ever rendered: every one carries `X-Content-Type-Options: nosniff` and a CSP that
 * sandboxes it with nothing allowed; blobs are `application/octet-stream` whatever the upstream
 * said (registry clients do not read a blob's type); a manifest keeps its type only when it is
 * a manifest type, other answers (tags lists, referrers, errors) only such a JSON type.
 */

export const MIRROR_CSP = "sandbox; default-src 'none'";

/** Types a registry client reads a manifest as (OCI image spec, Docker schema 2 and 1). */
const MANIFEST_TYPES = new Set([
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.oci.artifact.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.v2+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
  "application/vnd.docker.distribution.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.v1+prettyjws",
  // Docker schema 1 as old registries label it; JSON is never rendered as a document.
  "application/json",
]);

const OCTET = "application/octet-stream";

/** What a mirror path asks for, from its last segments (routes.ts parses the same shape). */
export type MirrorResource = "blob" | "manifest" | "other";

export function resourceOf(target: string): MirrorResource {
  const path = target.split("?")[0] ?? "";
  if (/\/blobs\/[^/]+$/.test(path)) return "blob";
  if (/\/manifests\/[^/]+$/.test(path)) return "manifest";
  return "other";
}

/**
 * The Content-Type a mirror answer (or a cached manifest) may carry for what the upstream sent:
 * the lower-cased essence of a manifest type, without parameters, or application/octet-stream.
 * A value with a comma is never a manifest type: it is two values folded into one field (or a
 * list smuggled into one), and a browser may take the last one (`application/json; a=b,
 * text/html` renders as text/html in Chromium), whatever crm judged by the first.
 */
export function mirrorContentType(type: string): string {
  if (type.includes(",")) return OCTET;
  const essence = (type.split(";")[0] ?? "").trim().toLowerCase();
  return MANIFEST_TYPES.has(essence) ? essence : OCTET;
}

/** Sets the safe Content-Type and the no-render fields on a mirror answer, in place. */
export function confineMirrorAnswer(
  headers: Headers,
  resource: MirrorResource,
  status: number,
): void {
  headers.set("x-content-type-options", "nosniff");
  headers.set("content-security-policy", MIRROR_CSP);
  const type = headers.get("content-type");
  if (resource === "blob" && status >= 200 && status < 300) {
    headers.set("content-type", OCTET);
    return;
  }
  if (type === null) return;
  // Tags lists, referrers (an OCI index) and crm's own answers are JSON of these types too.
  headers.set("content-type", mirrorContentType(type));
}
