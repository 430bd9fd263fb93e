/**
 * Everything one mirrored registry needs, in the order a pull needs it: DNS, TCP, TLS, the
 * `GET /v2/` challenge, the token realm (allowed, and issuing a token), one HEAD of a known
 * public manifest, and the host its blobs redirect to (allowed). The first failure skips what
 * depends on it, so the table points at the cause, not at its consequences.
 */
import { isIP } from "node:net";
import type { Runtime } from "../context.ts";
import { DialError } from "../errors.ts";
import { upstreamResponse } from "../mirror/upstream/as-response.ts";
import { findChallenge } from "../mirror/auth/challenge.ts";
import { MirrorError } from "../mirror/errors.ts";
import { readSmallBody } from "../mirror/small-body.ts";
import { TokenCache } from "../mirror/auth/token-cache.ts";
import { fetchToken } from "../mirror/auth/token-fetch.ts";
import { RegistryClient } from "../mirror/upstream/registry-client.ts";
import type { RegistryConfig } from "../config/registries.ts";
import { parseRateLimit } from "../mirror/upstream/quota.ts";
import { describeQuota } from "../status/quota.ts";
import { isDigest } from "../mirror/routes.ts";
import type { Report } from "./report.ts";
import { probeTls } from "./tls-probe.ts";

const MANIFEST_ACCEPT = [
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.v2+json",
].join(", ");
/** A manifest is small JSON; anything bigger is not read. */
const MANIFEST_LIMIT = 4 * 1024 * 1024;
/** Beyond this the upstream's clock (its Date header) disagrees with ours enough to break tokens. */
const MAX_SKEW_S = 300;

export interface RegistryProbeOptions {
  extraCa?: string;
  /** Row label instead of the registry's name: which upstream of several (`docker.io upstream 2`). */
  label?: string;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: Timer | undefined;
  return Promise.race([
    p,
    new Promise<never>(
      (_, rej) => (t = setTimeout(() => rej(new Error(`${what}: no answer within ${ms} ms`)), ms)),
    ),
  ]).finally(() => clearTimeout(t));
}

function tcpConnect(address: string, port: number, ms: number): Promise<void> {
  return withTimeout(
    Bun.connect({ hostname: address, port, socket: { data() {} } }).then((s) => void s.end()),
    ms,
    `TCP ${address}:${port}`,
  );
}

const why = (e: unknown): string => {
  if (e instanceof DialError || e instanceof MirrorError) return e.message;
  const c = (e as NodeJS.ErrnoException).code;
  return c
    ? `${c}${(e as Error).message && !(e as Error).message.includes(c) ? ` (${(e as Error).message})` : ""}`
    : (e as Error).message;
};

/** `host:port` of a URL, the default port written out. */
function hostPort(u: URL): [string, number] {
  return [
    u.hostname.replace(/^\[|\]$/g, ""),
    Number(u.port) || (u.protocol === "https:" ? 443 : 80),
  ];
}

/** Hosts (and ports) a CONNECT pull of this registry needs, as learned from its answers. */
export async function checkRegistry(
  rt: Runtime,
  reg: RegistryConfig,
  image: string | null,
  report: Report,
  opts: RegistryProbeOptions,
): Promise<Array<[string, number]>> {
  const n = opts.label ?? reg.name;
  const url = reg.upstream;
  const host = url.hostname.replace(/^\[|\]$/g, "");
  const port = Number(url.port) || (url.protocol === "https:" ? 443 : 80);
  const hosts: Array<[string, number]> = [[host, port]];
  const key = `mirror.registries.${reg.name}`;
  const skipRest = (from: string[], cause: string): void =>
    from.forEach((c) => report.skip(`${n}: ${c}`, `${cause} failed`));
  const later = ["TCP", "TLS", "GET /v2/", "token realm", "manifest", "blob redirect"];

  // DNS
  let address: string;
  if (isIP(host)) {
    address = host;
    report.pass(`${n}: DNS`, `${host} is an IP address`);
  } else {
    try {
      address = await withTimeout(
        rt.resolveConfigured(host),
        rt.config.timeouts.connectMs,
        `DNS ${host}`,
      );
      report.pass(`${n}: DNS`, `${host} → ${address}`);
    } catch (e) {
      report.fail(
        `${n}: DNS`,
        `${host} does not resolve: ${why(e)}`,
        `check ${key}.upstream and this host's resolver (resolvectl query ${host}, /etc/resolv.conf)`,
      );
      skipRest(later, "DNS");
      return hosts;
    }
  }
  // TCP
  try {
    await tcpConnect(address, port, rt.config.timeouts.connectMs);
    report.pass(`${n}: TCP`, `connected to ${address}:${port}`);
  } catch (e) {
    report.fail(
      `${n}: TCP`,
      `cannot connect to ${address}:${port}: ${why(e)}`,
      `a firewall blocks outgoing port ${port}, or ${host} is down`,
    );
    skipRest(later.slice(1), "TCP");
    return hosts;
  }
  // TLS
  if (url.protocol === "https:") {
    const v = await probeTls(address, port, host, rt.config.timeouts.connectMs, opts.extraCa);
    if (v.ok) report.pass(`${n}: TLS`, v.detail);
    else if (rt.config.insecureTls)
      report.pass(`${n}: TLS`, `${v.detail} (insecure_tls is on: accepted)`);
    else {
      report.fail(`${n}: TLS`, v.detail, v.fix);
      skipRest(later.slice(2), "TLS");
      return hosts;
    }
  } else report.pass(`${n}: TLS`, "plain http upstream, no TLS");

  // GET /v2/ and its challenge
  const base = url.origin + url.pathname.replace(/\/+$/, "");
  let challengeHeader: string | null;
  // Whether /v2/ says it is the distribution API: then a 404 of the probe image is a registry's.
  let registryApi = false;
  try {
    const res = await upstreamResponse(
      rt,
      new URL(base + "/v2/"),
      { method: "GET", headers: { "user-agent": "crm-doctor" } },
      AbortSignal.timeout(rt.config.timeouts.upstreamHeaderMs * 2),
      rt.config.timeouts.upstreamHeaderMs,
      true,
    );
    await res.body?.cancel().catch(() => {});
    challengeHeader = res.headers.get("www-authenticate");
    registryApi = res.headers.has("docker-distribution-api-version");
    const date = Date.parse(res.headers.get("date") ?? "");
    if (Number.isFinite(date) && Math.abs(date - Date.now()) / 1000 > MAX_SKEW_S) {
      const skew = Math.round((Date.now() - date) / 1000);
      report.fail(
        `${n}: clock`,
        `this host's clock is ${Math.abs(skew)} s ${skew > 0 ? "ahead of" : "behind"} ${host}'s`,
        "tokens and certificates are judged by the clock: timedatectl set-ntp true",
      );
    }
    if (res.status === 200) report.pass(`${n}: GET /v2/`, "200, no authentication needed");
    else if (res.status === 401 && challengeHeader !== null)
      report.pass(
        `${n}: GET /v2/`,
        `401 with a ${challengeHeader.split(" ")[0]} challenge, as expected`,
      );
    else {
      report.fail(
        `${n}: GET /v2/`,
        `answered ${res.status}${res.status === 401 ? " without WWW-Authenticate" : ""}: not a registry API at ${base}`,
        `check ${key}.upstream (Docker Hub is https://registry-1.docker.io)`,
      );
      skipRest(later.slice(3), "GET /v2/");
      return hosts;
    }
  } catch (e) {
    report.fail(`${n}: GET /v2/`, why(e), `check ${key}.upstream`);
    skipRest(later.slice(3), "GET /v2/");
    return hosts;
  }

  const ref = image === null ? null : splitImage(image);
  const scope = `repository:${ref?.repo ?? "library/busybox"}:pull`;
  const client = new RegistryClient(rt, reg, new TokenCache());
  // Token realm
  const bearer = findChallenge(challengeHeader, "bearer");
  if (bearer?.params.realm) {
    let realm: URL | null = null;
    try {
      realm = new URL(bearer.params.realm);
    } catch {
      report.fail(
        `${n}: token realm`,
        `the challenge names an invalid realm ${JSON.stringify(bearer.params.realm.slice(0, 100))}`,
        "the upstream is misconfigured",
      );
    }
    if (realm !== null) {
      hosts.push(hostPort(realm));
      const allowed = client.trust.check(realm);
      if (!allowed.ok) {
        report.fail(
          `${n}: token realm`,
          `realm host ${allowed.host} is not allowed: ${allowed.reason}`,
          allowed.fix,
        );
        skipRest(["manifest", "blob redirect"], "token realm");
        return hosts;
      }
      try {
        await fetchToken(rt, reg, client.trust, bearer, scope);
        report.pass(
          `${n}: token realm`,
          `${realm.host} issued a token for ${scope}${reg.username ? ` as ${reg.username}` : " (anonymous)"}`,
        );
      } catch (e) {
        report.fail(
          `${n}: token realm`,
          why(e),
          reg.username
            ? `check ${key}.username and password_file`
            : `the realm must be reachable from this host (DNS, firewall); private images need ${key}.username and password_file`,
        );
        skipRest(["manifest", "blob redirect"], "token realm");
        return hosts;
      }
    }
  } else if (findChallenge(challengeHeader, "basic") && reg.username === null) {
    report.fail(
      `${n}: token realm`,
      "the registry asks for Basic credentials and none are configured",
      `set ${key}.username and password_file`,
    );
  } else report.pass(`${n}: token realm`, "no token needed");

  // One HEAD of a known public manifest
  if (ref === null) {
    report.skip(`${n}: manifest`, `no known public image for ${n}: set doctor.images.${n}`);
    report.skip(`${n}: blob redirect`, "no image to check with");
    return hosts;
  }
  const signal = AbortSignal.timeout(rt.config.timeouts.upstreamHeaderMs * 2);
  let digest: string;
  try {
    const r = await client.fetch({
      method: "HEAD",
      path: `/v2/${ref.repo}/manifests/${ref.ref}`,
      headers: new Headers({ accept: MANIFEST_ACCEPT, "user-agent": "crm-doctor" }),
      scope,
      signal,
    });
    await r.response.body?.cancel().catch(() => {});
    const quota = parseRateLimit(r.response.headers);
    if (quota !== null) {
      const left = `pulls left: ${describeQuota(quota)}`;
      if (quota.remaining === 0)
        report.fail(
          `${n}: quota`,
          `${left}: pulls are refused with 429 until the window turns`,
          `wait, or give ${key} a username and password_file (a higher limit)`,
        );
      else report.pass(`${n}: quota`, left);
    } else report.pass(`${n}: quota`, "the upstream reports no pull quota");
    const named = r.response.headers.get("docker-content-digest") ?? r.firstDigest;
    // The upstream's word: used in a request path and printed, so it must be a digest.
    if (named !== null && !isDigest(named)) {
      report.fail(
        `${n}: manifest`,
        `HEAD ${ref.repo}:${ref.ref} named a Docker-Content-Digest that is not a valid digest`,
        "the upstream is broken or hostile: check it",
      );
      report.skip(`${n}: blob redirect`, "manifest failed");
      return hosts;
    }
    const d = named;
    // Only a registry's 404 proves routing, TLS and tokens work: a web server that is not one
    // (a wrong vhost, a docs site) answers 404 to every path, and pulls through it all fail.
    if (
      r.response.status === 404 &&
      !(
        registryApi ||
        r.response.headers.has("docker-distribution-api-version") ||
        (await registry404(client, ref, scope, signal, rt.config.timeouts.upstreamHeaderMs))
      )
    ) {
      report.fail(
        `${n}: manifest`,
        `HEAD ${ref.repo}:${ref.ref} answered 404, and neither /v2/ nor the answer is a registry's (no Docker-Distribution-API-Version, no MANIFEST_UNKNOWN or NAME_UNKNOWN error)`,
        `check ${key}.upstream: it must be the registry's API endpoint (Docker Hub is https://registry-1.docker.io)`,
      );
      report.skip(`${n}: blob redirect`, "manifest failed");
      return hosts;
    }
    if (r.response.status === 404) {
      // The upstream does not hold the probe image (a private or partial registry under a
      // built-in name): routing, TLS and tokens worked to get this answer, so pulls can work.
      report.warn(
        `${n}: manifest`,
        `HEAD ${ref.repo}:${ref.ref} answered 404: ${n} does not hold this image, but it answered through routing, TLS and tokens`,
        `set doctor.images.${n} to an image ${n} holds, to check manifests and blobs too`,
      );
      report.skip(`${n}: blob redirect`, `no image to check with (doctor.images.${n})`);
      return hosts;
    }
    if (r.response.status !== 200 || d === null) {
      report.fail(
        `${n}: manifest`,
        `HEAD ${ref.repo}:${ref.ref} answered ${r.response.status}${d === null && r.response.status === 200 ? " without Docker-Content-Digest" : ""}`,
        `set doctor.images.${n} to a public image that exists`,
      );
      report.skip(`${n}: blob redirect`, "manifest failed");
      return hosts;
    }
    digest = d;
    report.pass(`${n}: manifest`, `HEAD ${ref.repo}:${ref.ref} → ${digest.slice(0, 19)}…`);
  } catch (e) {
    report.fail(`${n}: manifest`, why(e), `set doctor.images.${n} to a public image that exists`);
    report.skip(`${n}: blob redirect`, "manifest failed");
    return hosts;
  }

  // The blob redirect: the manifest names a blob, whose GET leads to the CDN.
  try {
    const blob = await firstBlob(
      client,
      ref.repo,
      digest,
      scope,
      signal,
      rt.config.timeouts.upstreamHeaderMs * 2,
    );
    const r = await client.fetch({
      method: "HEAD",
      path: `/v2/${ref.repo}/blobs/${blob}`,
      headers: new Headers({ "user-agent": "crm-doctor" }),
      scope,
      signal,
    });
    await r.response.body?.cancel().catch(() => {});
    // The final answer's URL names the address crm dialled, with the redirect target's port.
    if (r.redirectHost !== null)
      hosts.push([r.redirectHost, r.response.url ? hostPort(new URL(r.response.url))[1] : 443]);
    if (r.response.status >= 400)
      report.fail(
        `${n}: blob redirect`,
        `blob ${blob.slice(0, 19)}… answered ${r.response.status}${r.redirectHost ? ` at ${r.redirectHost}` : ""}`,
        "the blob host refuses crm: check the upstream",
      );
    else
      report.pass(
        `${n}: blob redirect`,
        r.redirectHost
          ? `blobs come from ${r.redirectHost} (allowed)`
          : `blobs come from ${host} itself`,
      );
  } catch (e) {
    const detailFix =
      e instanceof MirrorError ? (e.detail as { fix?: unknown } | undefined)?.fix : undefined;
    const fix = typeof detailFix === "string" ? detailFix : "check the upstream";
    report.fail(`${n}: blob redirect`, why(e), fix);
  }
  return hosts;
}

/**
 * A HEAD's 404 has no body: the GET of the same manifest says whether it is a registry's "not
 * here" (OCI error codes MANIFEST_UNKNOWN or NAME_UNKNOWN, distribution-spec §error codes).
 */
async function registry404(
  client: RegistryClient,
  ref: { repo: string; ref: string },
  scope: string,
  signal: AbortSignal,
  timeoutMs: number,
): Promise<boolean> {
  try {
    const r = await client.fetch({
      method: "GET",
      path: `/v2/${ref.repo}/manifests/${ref.ref}`,
      headers: new Headers({ accept: MANIFEST_ACCEPT, "user-agent": "crm-doctor" }),
      scope,
      signal,
    });
    if (r.response.status !== 404) {
      await r.response.body?.cancel().catch(() => {});
      return false;
    }
    const { bytes, truncated } = await readSmallBody(r.response, 64 * 1024, timeoutMs);
    if (truncated) return false;
    const body = JSON.parse(new TextDecoder().decode(bytes)) as { errors?: unknown };
    return (
      Array.isArray(body.errors) &&
      body.errors.some(
        (e: unknown) =>
          typeof e === "object" &&
          e !== null &&
          ["MANIFEST_UNKNOWN", "NAME_UNKNOWN"].includes(String((e as { code?: unknown }).code)),
      )
    );
  } catch {
    return false;
  }
}

function splitImage(image: string): { repo: string; ref: string } {
  const at = image.indexOf("@");
  if (at > 0) return { repo: image.slice(0, at), ref: image.slice(at + 1) };
  const colon = image.lastIndexOf(":");
  return colon > 0
    ? { repo: image.slice(0, colon), ref: image.slice(colon + 1) }
    : { repo: image, ref: "latest" };
}

/** The config blob of the image (of its linux/amd64 manifest when it is an index). */
async function firstBlob(
  client: RegistryClient,
  repo: string,
  digest: string,
  scope: string,
  signal: AbortSignal,
  timeoutMs: number,
): Promise<string> {
  const get = async (ref: string): Promise<Record<string, unknown>> => {
    const r = await client.fetch({
      method: "GET",
      path: `/v2/${repo}/manifests/${ref}`,
      headers: new Headers({ accept: MANIFEST_ACCEPT, "user-agent": "crm-doctor" }),
      scope,
      signal,
    });
    const len = Number(r.response.headers.get("content-length") ?? "0");
    if (r.response.status !== 200 || len > MANIFEST_LIMIT) {
      await r.response.body?.cancel().catch(() => {});
      throw new Error(`GET manifest ${ref.slice(0, 19)}… answered ${r.response.status}`);
    }
    // Content-Length may be absent (chunked): the cap is on the bytes read, not on the header.
    const body = await readSmallBody(r.response, MANIFEST_LIMIT, timeoutMs);
    if (body.truncated)
      throw new Error(
        `GET manifest ${ref.slice(0, 19)}… sent more than ${MANIFEST_LIMIT} bytes, or broke off: not a manifest`,
      );
    try {
      return JSON.parse(new TextDecoder().decode(body.bytes)) as Record<string, unknown>;
    } catch {
      throw new Error(`GET manifest ${ref.slice(0, 19)}… is not JSON`);
    }
  };
  let doc = await get(digest);
  const list = doc.manifests;
  if (Array.isArray(list)) {
    const items = list as Array<{
      digest?: string;
      platform?: { os?: string; architecture?: string };
    }>;
    const pick =
      items.find((m) => m.platform?.os === "linux" && m.platform.architecture === "amd64") ??
      items[0];
    if (!pick?.digest) throw new Error("the index names no manifest");
    doc = await get(checkedDigest(pick.digest, "the index"));
  }
  const config =
    (doc.config as { digest?: string } | undefined)?.digest ??
    (doc.layers as Array<{ digest?: string }> | undefined)?.[0]?.digest;
  if (!config) throw new Error("the manifest names no blob");
  return checkedDigest(config, "the manifest");
}

/**
 * A digest read from a manifest body goes into a request path and onto the screen: anything but
 * the digest grammar (a terminal escape, a path) is refused, and not repeated in the message.
 */
function checkedDigest(value: unknown, where: string): string {
  if (typeof value !== "string" || !isDigest(value))
    throw new Error(`${where} names a blob by something that is not a valid digest`);
  return value;
}
