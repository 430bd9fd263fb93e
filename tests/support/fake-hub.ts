/**
 * A fake Docker Hub for the manifest cache tests: it counts every manifest GET and HEAD, and
 * meters GETs like Docker Hub (`ratelimit-limit: N;w=21600`, `ratelimit-remaining`,
 * `docker-ratelimit-source` on every manifest answer, 429 TOOMANYREQUESTS past the quota; HEADs
 * and blob GETs are free). Bun.serve on 127.0.0.1:0, anonymous, no public name anywhere.
 *
 * Content: `library/multi:latest`, an OCI index of linux/amd64 and linux/arm64 image manifests,
 * each with a config and one layer. `moveTag()` rebuilds it (new layers, new digests) under the
 * same tag, as a push upstream does. Repositories with special behaviour:
 *   tampered/...   by digest: bytes that do not match the digest (HEAD by tag names the real one)
 *   liar/...       HEAD by tag names digest A; GET by digest A answers the bytes (and header) of B
 *   nohead/...     HEAD answers 405, as some registries do; GET works
 *   nodigest/...   HEAD answers 200 without Docker-Content-Digest; GET carries it
 *   fill/x:<n>-<k> a distinct manifest of <n> bytes for each <k> (size-bound tests); a <k> that
 *                  starts with "chunked" is sent without Content-Length
 */
import { createHash, randomBytes } from "node:crypto";

export const INDEX_TYPE = "application/vnd.oci.image.index.v1+json";
export const IMAGE_TYPE = "application/vnd.oci.image.manifest.v1+json";
export const HUB_ACCEPT = [
  INDEX_TYPE,
  IMAGE_TYPE,
  "application/vnd.docker.distribution.manifest.list.v2+json",
  "application/vnd.docker.distribution.manifest.v2+json",
].join(", ");

export function sha256(b: Uint8Array | string): string {
  return "sha256:" + createHash("sha256").update(b).digest("hex");
}

interface Doc {
  bytes: Uint8Array;
  digest: string;
  type: string;
}

export interface HubImage {
  index: Doc;
  /** amd64 then arm64. */
  platforms: Array<Doc & { arch: string; blobs: string[] }>;
}

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const doc = (body: string, type: string): Doc => {
  const bytes = enc(body);
  return { bytes, digest: sha256(bytes), type };
};

export interface FakeHub {
  url: string;
  image(): HubImage;
  /** Rebuilds library/multi:latest with new content; returns the new image. */
  moveTag(): HubImage;
  /** Manifest requests seen, as "METHOD /v2/<name>/manifests/<ref>". */
  manifestRequests: string[];
  gets(): number;
  heads(): number;
  /** Pulls left in the window; set to refill. */
  remaining: number;
  readonly limit: number;
  /** Retry-After sent with a 429, or null for none (Docker Hub often sends none). */
  retryAfter: string | null;
  stop(): void;
}

export function startFakeHub(opts: { limit?: number } = {}): FakeHub {
  const blobs = new Map<string, Uint8Array>();
  const manifests = new Map<string, Doc>();
  const limit = opts.limit ?? 100;
  let current: HubImage;

  const build = (): HubImage => {
    const platforms = ["amd64", "arm64"].map((arch) => {
      const config = enc(
        JSON.stringify({
          architecture: arch,
          os: "linux",
          rootfs: { type: "layers", diff_ids: [] },
          salt: randomBytes(4).toString("hex"),
        }),
      );
      const layer = new Uint8Array(randomBytes(32 * 1024));
      for (const b of [config, layer]) blobs.set(sha256(b), b);
      const m = doc(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: IMAGE_TYPE,
          config: {
            mediaType: "application/vnd.oci.image.config.v1+json",
            digest: sha256(config),
            size: config.byteLength,
          },
          layers: [
            {
              mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
              digest: sha256(layer),
              size: layer.byteLength,
            },
          ],
        }),
        IMAGE_TYPE,
      );
      manifests.set(m.digest, m);
      return { ...m, arch, blobs: [sha256(config), sha256(layer)] };
    });
    const index = doc(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: INDEX_TYPE,
        manifests: platforms.map((p) => ({
          mediaType: IMAGE_TYPE,
          digest: p.digest,
          size: p.bytes.byteLength,
          platform: { os: "linux", architecture: p.arch },
        })),
      }),
      INDEX_TYPE,
    );
    manifests.set(index.digest, index);
    return { index, platforms };
  };
  current = build();
  const other = build(); // what liar/ serves instead

  /** digest → tag of the fill/ manifests served so far (regenerated on demand, not kept). */
  const fills = new Map<string, string>();
  const fill = (ref: string): Doc | null => {
    const tag = fills.get(ref) ?? ref;
    const m = /^(\d{1,8})-(\w+)$/.exec(tag);
    if (!m) return null;
    const size = Number(m[1]);
    const head = JSON.stringify({
      schemaVersion: 2,
      mediaType: IMAGE_TYPE,
      annotations: { k: m[2], pad: "" },
    });
    const body = head.replace('"pad":""', `"pad":"${"x".repeat(Math.max(0, size - head.length))}"`);
    const d = doc(body, IMAGE_TYPE);
    fills.set(d.digest, tag);
    return d;
  };

  const hub: FakeHub = {
    url: "",
    image: () => current,
    moveTag() {
      current = build();
      return current;
    },
    manifestRequests: [],
    gets: () => hub.manifestRequests.filter((r) => r.startsWith("GET ")).length,
    heads: () => hub.manifestRequests.filter((r) => r.startsWith("HEAD ")).length,
    remaining: limit,
    limit,
    retryAfter: null,
    stop: () => void server.stop(true),
  };

  const api = { "docker-distribution-api-version": "registry/2.0" };
  const quota = (): Record<string, string> => ({
    "ratelimit-limit": `${limit};w=21600`,
    "ratelimit-remaining": `${Math.max(0, hub.remaining)};w=21600`,
    "docker-ratelimit-source": "127.0.0.1",
  });
  const error = (
    status: number,
    code: string,
    message: string,
    extra: Record<string, string> = {},
  ): Response =>
    Response.json(
      { errors: [{ code, message, detail: null }] },
      { status, headers: { ...api, ...extra } },
    );

  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const url = new URL(req.url);
      if (url.pathname === "/v2/" || url.pathname === "/v2")
        return Response.json({}, { headers: api });
      const blob = /^\/v2\/(.+)\/blobs\/(.+)$/.exec(url.pathname);
      if (blob) {
        const b = blobs.get(blob[2] ?? "");
        if (!b) return error(404, "BLOB_UNKNOWN", "blob unknown");
        return new Response(req.method === "HEAD" ? null : b, {
          headers: {
            ...api,
            "content-length": String(b.byteLength),
            "docker-content-digest": blob[2] ?? "",
          },
        });
      }
      const m = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(url.pathname);
      if (!m) return error(404, "UNSUPPORTED", "no such endpoint");
      const [, name = "", ref = ""] = m;
      hub.manifestRequests.push(`${req.method} ${url.pathname}`);
      if (name.startsWith("nohead/") && req.method === "HEAD")
        return new Response(null, { status: 405, headers: api });
      if (req.method === "GET") {
        // Docker Hub meters manifest GETs only.
        if (hub.remaining <= 0) {
          return error(429, "TOOMANYREQUESTS", "You have reached your pull rate limit.", {
            ...quota(),
            ...(hub.retryAfter !== null ? { "retry-after": hub.retryAfter } : {}),
          });
        }
        hub.remaining--;
      }
      let found: Doc | null | undefined;
      let headerDigest: string | null = null;
      if (name.startsWith("fill/")) found = fill(ref);
      else if (ref === "latest") found = current.index;
      else found = manifests.get(ref);
      if (!found) return error(404, "MANIFEST_UNKNOWN", "manifest unknown", quota());
      let bytes = found.bytes;
      headerDigest = found.digest;
      if (req.method === "GET" && ref.includes(":")) {
        if (name.startsWith("tampered/"))
          bytes = enc(
            new TextDecoder().decode(found.bytes).replace("schemaVersion", "schemaVersion "),
          );
        if (name.startsWith("liar/")) {
          const swap = found.digest === current.index.digest ? other.index : found;
          bytes = swap.bytes;
          headerDigest = swap.digest;
        }
      }
      const headers: Record<string, string> = {
        ...api,
        ...quota(),
        "content-type": found.type,
        "docker-content-digest": headerDigest,
        "content-length": String(bytes.byteLength),
        etag: `"${headerDigest}"`,
      };
      if (name.startsWith("nodigest/") && req.method === "HEAD")
        delete headers["docker-content-digest"];
      if (
        name.startsWith("fill/") &&
        (fills.get(ref) ?? ref).includes("-chunked") &&
        req.method === "GET"
      ) {
        delete headers["content-length"];
        const body = bytes;
        const stream = new ReadableStream<Uint8Array>({
          start(ctl) {
            for (let off = 0; off < body.byteLength; off += 1 << 20)
              ctl.enqueue(body.subarray(off, off + (1 << 20)));
            ctl.close();
          },
        });
        return new Response(stream, { headers });
      }
      return new Response(req.method === "HEAD" ? null : bytes, { headers });
    },
  });
  hub.url = `http://127.0.0.1:${server.port}`;
  return hub;
}
