/**
 * What a `/v2/...` request asks for: the pull endpoint, the repository name and reference checked
 * against the OCI grammar, and which configured registry serves it. Pure functions of the
 * request target and the config, so every routing rule is testable without a socket.
 *
 * Registry choice, in order (registry-clients.md):
 *  1. `?ns=<registry>`: containerd names the image's registry when pulling through a mirror host;
 *     the parameter is removed before forwarding.
 *  2. A first path segment that is a configured registry (`/v2/gcr.io/distroless/static/...`):
 *     how containers/image mirrors with a location path reach a non-default registry.
 *  3. `default_registry` (Docker's `registry-mirrors`, which only ever means docker.io).
 * A first segment that looks like a registry host (has a dot or colon, or is `localhost`, the rule
 * Docker's reference parser uses) but is not configured is refused with NAME_UNKNOWN instead of
 * being looked up as a repository of the default registry, so the operator sees what is missing.
 */
import type { MirrorConfig } from "../config/types.ts";
import type { RegistryConfig } from "../config/registries.ts";
import { MirrorError } from "./errors.ts";

export type Resource = "manifests" | "blobs" | "tags" | "referrers";

/** How the client named the registry; a Link to the next page must route the same way. */
export type RegistryVia = "ns" | "prefix" | "default";

export interface PullRoute {
  kind: "pull";
  registry: RegistryConfig;
  via: RegistryVia;
  /** The repository as the client wrote it, registry prefix removed. */
  clientName: string;
  /** The repository as the upstream knows it (`library/` added for docker.io). */
  name: string;
  resource: Resource;
  /** Tag or digest; null for tags/list. */
  reference: string | null;
  /** The query to forward: everything the client sent except `ns`. */
  query: URLSearchParams;
}

export type MirrorRoute = { kind: "base" } | PullRoute;

const COMPONENT = "[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*";
const NAME = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);
const TAG = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
const DIGEST = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;
/** OCI image-spec: the registered algorithms have fixed-length lower-case hex. */
const DIGEST_HEX: Record<string, RegExp> = { sha256: /^[a-f0-9]{64}$/, sha512: /^[a-f0-9]{128}$/ };
/** distribution refuses longer names (with the registry host); clients never produce them. */
const MAX_NAME = 255;

const PULL_PATH = /^(.+)\/(manifests|blobs|referrers)\/([^/]+)$/;
const TAGS_PATH = /^(.+)\/tags\/list$/;

export function isDigest(ref: string): boolean {
  if (!DIGEST.test(ref)) return false;
  const colon = ref.indexOf(":");
  const hex = DIGEST_HEX[ref.slice(0, colon)];
  return hex === undefined || hex.test(ref.slice(colon + 1));
}

export function isTag(ref: string): boolean {
  return TAG.test(ref);
}

export function isName(name: string): boolean {
  return name.length <= MAX_NAME && NAME.test(name);
}

/** The first segment names a registry host by Docker's rule. */
function looksLikeRegistry(segment: string): boolean {
  return segment.includes(".") || segment.includes(":") || segment === "localhost";
}

function notMirrored(registry: string, mirror: MirrorConfig): MirrorError {
  const known = [...mirror.registries.keys()];
  return new MirrorError(
    404,
    "NAME_UNKNOWN",
    `registry ${registry} is not mirrored here; mirrored: ${known.length > 0 ? known.join(", ") : "none"}`,
    {
      detail: { registry, mirrored: known },
    },
  );
}

/** Parses an origin-form target under /v2. Throws MirrorError (400/404) for anything else. */
export function parseMirrorTarget(target: string, mirror: MirrorConfig): MirrorRoute {
  const q = target.indexOf("?");
  const path = q < 0 ? target : target.slice(0, q);
  const query = new URLSearchParams(q < 0 ? "" : target.slice(q + 1));
  if (path === "/v2" || path === "/v2/") return { kind: "base" };
  if (!path.startsWith("/v2/"))
    throw new MirrorError(404, "UNSUPPORTED", "not an OCI distribution path");
  const rest = path.slice("/v2/".length);

  let fullName: string;
  let resource: Resource;
  let reference: string | null;
  const tags = TAGS_PATH.exec(rest);
  const pull = tags ? null : PULL_PATH.exec(rest);
  if (tags) {
    fullName = tags[1] ?? "";
    resource = "tags";
    reference = null;
  } else if (pull) {
    fullName = pull[1] ?? "";
    resource = pull[2] as Resource;
    reference = pull[3] ?? "";
  } else {
    throw new MirrorError(
      404,
      "UNSUPPORTED",
      "crm mirrors the pull endpoints only: manifests, blobs, tags/list, referrers",
      {
        detail: { path: path.slice(0, 200) },
      },
    );
  }

  const { registry, via, clientName } = chooseRegistry(fullName, query, mirror);

  if (!isName(clientName)) {
    throw new MirrorError(400, "NAME_INVALID", "invalid repository name", {
      detail: { name: clientName.slice(0, 300) },
    });
  }
  if (reference !== null) {
    const wantsDigest = resource !== "manifests" || reference.includes(":");
    if (wantsDigest && !isDigest(reference)) {
      throw new MirrorError(400, "DIGEST_INVALID", "invalid digest", {
        detail: { digest: reference.slice(0, 200) },
      });
    }
    if (!wantsDigest && !isTag(reference)) {
      throw new MirrorError(400, "TAG_INVALID", "invalid tag", {
        detail: { tag: reference.slice(0, 200) },
      });
    }
  }
  // Docker Hub serves official images under library/; clients that mirror it may omit it.
  const name =
    registry.name === "docker.io" && !clientName.includes("/")
      ? `library/${clientName}`
      : clientName;
  return { kind: "pull", registry, via, clientName, name, resource, reference, query };
}

function chooseRegistry(
  fullName: string,
  query: URLSearchParams,
  mirror: MirrorConfig,
): { registry: RegistryConfig; via: RegistryVia; clientName: string } {
  const ns = query.get("ns");
  if (ns !== null) {
    query.delete("ns");
    const registry = mirror.registries.get(ns.toLowerCase());
    if (!registry) throw notMirrored(ns.slice(0, 100), mirror);
    return { registry, via: "ns", clientName: fullName };
  }
  const slash = fullName.indexOf("/");
  if (slash > 0) {
    const first = fullName.slice(0, slash).toLowerCase();
    const registry = mirror.registries.get(first);
    if (registry) return { registry, via: "prefix", clientName: fullName.slice(slash + 1) };
    if (looksLikeRegistry(first)) throw notMirrored(first.slice(0, 100), mirror);
  }
  const registry = mirror.registries.get(mirror.defaultRegistry);
  if (!registry) throw notMirrored(mirror.defaultRegistry, mirror);
  return { registry, via: "default", clientName: fullName };
}

/** The upstream path of a route, below the registry's base URL. */
export function upstreamPath(route: PullRoute): string {
  const tail =
    route.resource === "tags" ? "tags/list" : `${route.resource}/${route.reference ?? ""}`;
  const qs = route.query.toString();
  return `/v2/${route.name}/${tail}${qs ? `?${qs}` : ""}`;
}

/**
 * crm's own path for the same resource with another query (the next page of tags/list or
 * referrers), naming the registry the way the client did so the next request routes the same.
 */
export function clientPath(route: PullRoute, query: URLSearchParams): string {
  const q = new URLSearchParams(query);
  q.delete("ns");
  if (route.via === "ns") q.set("ns", route.registry.name);
  const prefix = route.via === "prefix" ? `${route.registry.name}/` : "";
  const tail =
    route.resource === "tags" ? "tags/list" : `${route.resource}/${route.reference ?? ""}`;
  const qs = q.toString();
  return `/v2/${prefix}${route.clientName}/${tail}${qs ? `?${qs}` : ""}`;
}

/** The token scope a pull of this route needs. */
export function pullScope(route: PullRoute): string {
  return `repository:${route.name}:pull`;
}
