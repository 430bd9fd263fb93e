/**
 * The registries crm mirrors by default, each with the hosts its tokens and blobs really come
 * from: a blob GET answers 307 to a CDN, and the token realm may live on another host. Only
 * these hosts (plus the registry's own and allowed_hosts) are followed.
 */
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { ConfigError } from "../errors.ts";
import { buildRules, type ImageRules } from "../mirror/rules.ts";
import { buildUpstreamList } from "../mirror/upstream/failover-config.ts";
import { show, type Checker, type Obj } from "./checker.ts";

export interface RegistryConfig {
  /** As clients name it: docker.io, gcr.io, quay.io. */
  name: string;
  /** Where crm sends /v2/ requests: https://registry-1.docker.io */
  upstream: URL;
  /**
   * `upstreams`: every upstream in the order tried (mirror/upstream/failover.ts), `upstream` first;
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
  return {
    name,
    upstream: new URL(upstream),
    username: null,
    password: null,
    redirectHosts,
    operatorNamed: false,
  };
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
  reg("docker.elastic.co", "https://docker.elastic.co", [
    "docker-auth.elastic.co",
    String.raw`[a-z0-9]+\.cloudfront\.net`,
  ]),
  reg("ghcr.io", "https://ghcr.io", ["pkg-containers.githubusercontent.com"]),
  reg("quay.io", "https://quay.io", [
    String.raw`cdn\d*\.quay\.io`,
    String.raw`quayio-production-s3\.s3[a-z0-9.-]*\.amazonaws\.com`,
  ]),
];

const REGISTRY_NAME = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:\d+)?$/;

/** The upstreams of a registry in the order they are tried. */
export function upstreamsOf(reg: RegistryConfig): readonly URL[] {
  return reg.upstreams ?? [reg.upstream];
}

/** One `mirror.registries.<name>` entry: a URL string or a mapping with credentials and rules. */
export function buildRegistry(
  c: Checker,
  path: string,
  name: string,
  v: unknown,
  file: string,
): RegistryConfig | null {
  if (!REGISTRY_NAME.test(name)) {
    c.fail(path, name, "registry name must be a host name such as docker.io or quay.io");
    return null;
  }
  let o: Obj =
    typeof v === "string"
      ? { upstream: v }
      : (c.object(path, v, [
          "upstream",
          "upstreams",
          "username",
          "password",
          "password_file",
          "redirect_hosts",
          "rules",
        ]) ?? {});
  let upstreams: URL[] | null = null;
  if (o.upstreams !== undefined) {
    // Several upstreams, tried in order (mirror/upstream/failover.ts); the first is the registry's `upstream`.
    upstreams = buildUpstreamList(c, path, o.upstreams, o.upstream !== undefined);
    if (upstreams === null) return null;
    o = { ...o, upstream: (upstreams[0] as URL).href };
  }
  const upstreamText = c.string(`${path}.upstream`, o.upstream);
  if (upstreamText === null) {
    if (o.upstream === undefined)
      c.rule(`${path}.upstream`, "missing; it is required (an https:// URL)");
    return null;
  }
  let upstream: URL;
  try {
    upstream = new URL(upstreamText);
  } catch (cause) {
    c.errors.push(
      new ConfigError(`${path}.upstream`, `${show(upstreamText)} is not a URL`, { cause }),
    );
    return null;
  }
  if (upstream.protocol !== "https:" && upstream.protocol !== "http:") {
    c.fail(`${path}.upstream`, upstreamText, "must be an https:// (or http://) URL");
    return null;
  }
  if (upstream.username || upstream.password) {
    c.rule(
      `${path}.upstream`,
      "must not carry user:password (the URL is not shown); use username and password_file",
    );
    return null;
  }
  const username = c.string(`${path}.username`, o.username);
  let password = c.string(
    `${path}.password`,
    o.password === undefined ? undefined : String(o.password),
  );
  const passwordFile = c.string(`${path}.password_file`, o.password_file);
  if (passwordFile !== null) {
    const p = resolve(file, "..", passwordFile);
    try {
      password = readFileSync(p, "utf8").replace(/\r?\n$/, "");
    } catch (cause) {
      c.errors.push(
        new ConfigError(
          `${path}.password_file`,
          `cannot read ${p}: ${(cause as NodeJS.ErrnoException).code ?? (cause as Error).message}`,
          { cause },
        ),
      );
    }
  }
  if ((username === null) !== (password === null)) {
    c.rule(
      path,
      `username and password (or password_file) must be given together; ${username === null ? "username" : "password"} is missing`,
    );
  }
  const redirectHosts = c.hostPatterns(`${path}.redirect_hosts`, o.redirect_hosts) ?? [];
  return {
    name,
    upstream: new URL(upstream.origin + upstream.pathname.replace(/\/+$/, "")),
    username,
    password,
    redirectHosts,
    operatorNamed: true,
    rules: buildRules(c, `${path}.rules`, o.rules),
    ...(upstreams !== null && upstreams.length > 1 ? { upstreams } : {}),
  };
}
