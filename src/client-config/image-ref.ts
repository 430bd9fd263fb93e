/**
 * An image reference as runtimes read it (`busybox`, `gcr.io/distroless/static:nonroot`), split
 * into what crm's journal records for its manifest request: registry, repository, reference.
 */
export interface ImageRef {
  registry: string;
  /** As crm asks the upstream for it: `library/` added for docker.io official images. */
  repo: string;
  /** Tag or digest. */
  ref: string;
  /** The reference written out in full, for the runtime's command line. */
  full: string;
}

/** The image `--check` pulls when none is given: small, public, long-lived. */
export const CHECK_IMAGES: Record<string, string> = {
  "docker.io": "docker.io/library/busybox:latest",
  "gcr.io": "gcr.io/distroless/static:nonroot",
  "registry.k8s.io": "registry.k8s.io/pause:3.9",
  "k8s.gcr.io": "k8s.gcr.io/pause:3.9",
  "quay.io": "quay.io/prometheus/busybox:latest",
  "ghcr.io": "ghcr.io/linuxcontainers/alpine:latest",
  "docker.elastic.co": "docker.elastic.co/elasticsearch/elasticsearch:8.15.0",
};

export function parseImageRef(text: string): ImageRef | string {
  const s = text.trim();
  if (!/^[a-zA-Z0-9][a-zA-Z0-9._:/@-]*$/.test(s))
    return `${JSON.stringify(text)} is not an image reference such as docker.io/library/busybox:latest`;
  let rest = s;
  let registry = "docker.io";
  const slash = rest.indexOf("/");
  const first = slash > 0 ? rest.slice(0, slash) : "";
  if (first.includes(".") || first.includes(":") || first === "localhost") {
    registry = first.toLowerCase();
    rest = rest.slice(slash + 1);
  }
  let ref = "latest";
  const at = rest.indexOf("@");
  if (at >= 0) {
    ref = rest.slice(at + 1);
    rest = rest.slice(0, at);
  } else {
    const colon = rest.lastIndexOf(":");
    if (colon > 0) {
      ref = rest.slice(colon + 1);
      rest = rest.slice(0, colon);
    }
  }
  if (rest === "" || ref === "")
    return `${JSON.stringify(text)} is not an image reference such as docker.io/library/busybox:latest`;
  const repo = registry === "docker.io" && !rest.includes("/") ? `library/${rest}` : rest;
  const full = `${registry}/${repo}${ref.includes(":") ? "@" : ":"}${ref}`;
  return { registry, repo, ref, full };
}
