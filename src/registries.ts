/**
 * The registries crm mirrors by default, each with the hosts its tokens and blobs really come
 * from: a blob GET answers 307 to a CDN, and the token realm may live on another host. Only
 * these hosts (plus the registry's own and allowed_hosts) are followed.
 */
import type { ImageRules } from "./mirror/rules.ts";

export interface RegistryConfig {
  /** As clients name it: docker.io, gcr.io, quay.io. */
  name: string;
  /** Where crm sends /v2/ requests: https://registry-1.docker.io */
  upstream: URL;
  /**
   * `upstreams`: every upstream in the order tried (mirror/upstreams.ts), `upstream` first;
   * absent when only `upstream` is configured.
   */
  upstreams?: readonly URL[];
  username: string | null;
  /** Never logged, never printed by -t. */
  password: string | null;
  /** allow-list syntax; token realms and blob redirects may go here. */
  redirectHosts: readonly string[];
  /**
   * Named by the operator in mirror.registries, so its upstream may be on a private network (a
   * LAN registry). The built-in defaults stay behind the SSRF guard: a poisoned or pinned DNS
   * answer for registry-1.docker.io must not walk crm into the metadata address or the LAN.
   */
  operatorNamed: boolean;
  /** This registry's own image rules (mirror/rules.ts); absent or null: mirror.rules apply. */
  rules?: ImageRules | null;
}

const PKG_DEV = String.raw`[a-z0-9-]+-docker\.pkg\.dev`;

function reg(name: string, upstream: string, redirectHosts: string[]): RegistryConfig {
  return { name, upstream: new URL(upstream), username: null, password: null, redirectHosts, operatorNamed: false };
}

export const DEFAULT_REGISTRIES: readonly RegistryConfig[] = [
  reg("docker.io", "https://registry-1.docker.io", [
    "auth.docker.io",
    "production.cloudflare.docker.com",
    "production.cloudfront.docker.com",
    String.raw`docker-images-prod\.[a-z0-9]+\.r2\.cloudflarestorage\.com`,
  ]),
  reg("gcr.io", "https://gcr.io", ["storage.googleapis.com", PKG_DEV]),
  reg("registry.k8s.io", "https://registry.k8s.io", [
    PKG_DEV,
    String.raw`prod-registry-k8s-io-[a-z0-9-]+\.s3\.dualstack\.[a-z0-9-]+\.amazonaws\.com`,
    String.raw`prod-registry-k8s-io-[a-z0-9-]+\.s3\.[a-z0-9-]+\.amazonaws\.com`,
  ]),
  // k8s.gcr.io was frozen in 2023 and redirects to registry.k8s.io; serve its names from there.
  reg("k8s.gcr.io", "https://registry.k8s.io", [
    PKG_DEV,
    String.raw`prod-registry-k8s-io-[a-z0-9-]+\.s3\.dualstack\.[a-z0-9-]+\.amazonaws\.com`,
    String.raw`prod-registry-k8s-io-[a-z0-9-]+\.s3\.[a-z0-9-]+\.amazonaws\.com`,
  ]),
  reg("docker.elastic.co", "https://docker.elastic.co", ["docker-auth.elastic.co", String.raw`[a-z0-9]+\.cloudfront\.net`]),
  reg("ghcr.io", "https://ghcr.io", ["pkg-containers.githubusercontent.com"]),
  reg("quay.io", "https://quay.io", [String.raw`cdn\d*\.quay\.io`, String.raw`quayio-production-s3\.s3[a-z0-9.-]*\.amazonaws\.com`]),
];

/** The upstreams of a registry in the order they are tried. */
export function upstreamsOf(reg: RegistryConfig): readonly URL[] {
  return reg.upstreams ?? [reg.upstream];
}
