/**
 * Upstreams for mirror tests, written here so each registry behaviour crm must handle is one
 * visible rule: a registry that challenges (Bearer or Basic), a token service that counts its
 * calls, and a "CDN" that serves blobs on a signed URL and refuses requests carrying
 * Authorization. All are Bun.serve on 127.0.0.1:0, plain http; no public name is ever resolved.
 *
 * Behaviour of the fake registry by repository name (any other repository serves the content):
 *   cdn/...          blob GET/HEAD → 307 to the CDN (`cdnBase`), like registry-1.docker.io
 *   evil/...         blob GET → 307 to http://evil.invalid/... (must be refused, never dialled)
 *   loop/...         blob GET → 302 to itself, forever
 *   ratelimited/...  manifests → 429 + Retry-After + ratelimit-* + OCI error JSON
 *   slow/...         manifests → answers after `slowMs` (records aborts)
 *   big/...          blob GET/HEAD → 307 to `bigBase` (a BigBlobServer), any digest
 *   private/...      a valid token is never enough: 401 insufficient_scope
 * Content: manifest `v1` (and by digest) referencing CONFIG_BLOB and LAYER_BLOB; tags/list with
 * `n`/`last` pagination over TAGS.
 */
import { createHash, randomBytes } from "node:crypto";
import { pattern } from "./origins.ts";

export function digestOf(b: Uint8Array | string): string {
  return "sha256:" + createHash("sha256").update(b).digest("hex");
}

export const CONFIG_BLOB = new TextEncoder().encode(
  JSON.stringify({ architecture: "amd64", os: "linux", rootfs: { type: "layers", diff_ids: [] } }),
);
export const LAYER_BLOB = new Uint8Array(randomBytes(300 * 1024));
export const CONFIG_DIGEST = digestOf(CONFIG_BLOB);
export const LAYER_DIGEST = digestOf(LAYER_BLOB);
export const MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json";
export const MANIFEST = JSON.stringify({
  schemaVersion: 2,
  mediaType: MANIFEST_TYPE,
  config: {
    mediaType: "application/vnd.oci.image.config.v1+json",
    digest: CONFIG_DIGEST,
    size: CONFIG_BLOB.byteLength,
  },
  layers: [
    {
      mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
      digest: LAYER_DIGEST,
      size: LAYER_BLOB.byteLength,
    },
  ],
});
export const MANIFEST_DIGEST = digestOf(MANIFEST);
export const TAGS = ["a", "b", "c", "d", "e", "v1"];

export const BIG_SIZE = 64 * 1024 * 1024;
/** sha256 of pattern(size), in chunks so a test never holds the whole body. */
export function patternDigest(size: number): string {
  const h = createHash("sha256");
  const chunk = 4 * 1024 * 1024;
  for (let off = 0; off < size; off += chunk) h.update(pattern(Math.min(chunk, size - off), off));
  return "sha256:" + h.digest("hex");
}

const BLOBS = new Map<string, Uint8Array>([
  [CONFIG_DIGEST, CONFIG_BLOB],
  [LAYER_DIGEST, LAYER_BLOB],
]);

export interface Seen {
  method: string;
  /** Path and query as received. */
  url: string;
  headers: Record<string, string>;
}

const ociError = (
  status: number,
  code: string,
  message: string,
  headers: Record<string, string> = {},
): Response => Response.json({ errors: [{ code, message, detail: null }] }, { status, headers });

/** Serves a blob with Range (RFC 9110 §14) as registries and S3 do: one range, 206 or 416. */
function serveBlob(req: Request, blob: Uint8Array, extra: Record<string, string>): Response {
  const headers: Record<string, string> = {
    "content-type": "application/octet-stream",
    "accept-ranges": "bytes",
    ...extra,
  };
  const r = parseRange(req.headers.get("range"), blob.byteLength);
  if (r === "unsatisfiable")
    return new Response(null, {
      status: 416,
      headers: { ...headers, "content-range": `bytes */${blob.byteLength}` },
    });
  if (r !== null) headers["content-range"] = `bytes ${r.start}-${r.end - 1}/${blob.byteLength}`;
  const body = r === null ? blob : blob.subarray(r.start, r.end);
  headers["content-length"] = String(body.byteLength);
  return new Response(req.method === "HEAD" ? null : body, {
    status: r === null ? 200 : 206,
    headers,
  });
}

/** One `bytes=a-b` / `bytes=a-` range; null without a Range header. */
function parseRange(
  range: string | null,
  size: number,
): { start: number; end: number } | "unsatisfiable" | null {
  if (range === null) return null;
  const m = /^bytes=(\d+)-(\d*)$/.exec(range);
  if (!m) return "unsatisfiable";
  const start = Number(m[1]);
  const end = m[2] ? Math.min(Number(m[2]) + 1, size) : size;
  return start >= size || end <= start ? "unsatisfiable" : { start, end };
}

// ---------------------------------------------------------------------------------------------

export interface TokenServer {
  url: string;
  realm: string;
  service: string;
  calls(): number;
  callsFor(scope: string): number;
  log: Array<{
    scope: string;
    service: string | null;
    authorization: string | null;
    status: number;
  }>;
  /** token → scope and the revocation generation it was issued in. */
  issued: Map<string, { scope: string; generation: number }>;
  generation: number;
  stop(): void;
}

export interface TokenServerOptions {
  expiresIn?: number;
  /** Answer after this long, so concurrent requests really overlap the fetch. */
  delayMs?: number;
  /** When set, only these Basic credentials (or none) are accepted. */
  users?: Record<string, string>;
  /** How the realm names this server: "127.0.0.1" (the registry's own host) or "localhost". */
  realmHost?: string;
}

export function startTokenServer(opts: TokenServerOptions = {}): TokenServer {
  const log: TokenServer["log"] = [];
  const issued: TokenServer["issued"] = new Map();
  const service = "fake-registry";
  const state = { generation: 0 };
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req) {
      const url = new URL(req.url);
      const scope = url.searchParams.get("scope") ?? "";
      const authorization = req.headers.get("authorization");
      if (opts.delayMs) await Bun.sleep(opts.delayMs);
      let status = 200;
      if (opts.users && authorization !== null) {
        const [user, pass] = Buffer.from(authorization.replace(/^Basic /, ""), "base64")
          .toString()
          .split(":");
        if (opts.users[user ?? ""] !== pass) status = 401;
      }
      log.push({ scope, service: url.searchParams.get("service"), authorization, status });
      if (status !== 200) return Response.json({ details: "bad credentials" }, { status });
      const token = `tok-${randomBytes(12).toString("hex")}`;
      issued.set(token, { scope, generation: state.generation });
      return Response.json({
        token,
        expires_in: opts.expiresIn ?? 60,
        issued_at: new Date().toISOString(),
      });
    },
  });
  const url = `http://${opts.realmHost ?? "127.0.0.1"}:${server.port}`;
  return {
    url,
    realm: `${url}/token`,
    service,
    calls: () => log.length,
    callsFor: (scope) => log.filter((l) => l.scope === scope).length,
    log,
    issued,
    get generation() {
      return state.generation;
    },
    set generation(g: number) {
      state.generation = g;
    },
    stop: () => void server.stop(true),
  };
}

// ---------------------------------------------------------------------------------------------

export interface Cdn {
  url: string;
  seen: Seen[];
  stop(): void;
}

/** Serves `/blobs/<digest>?sig=...`; like a signed S3/CloudFront URL it refuses Authorization (400). */
export function startCdn(host = "localhost"): Cdn {
  const seen: Seen[] = [];
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req, srv) {
      srv.timeout(req, 0);
      const url = new URL(req.url);
      seen.push({
        method: req.method,
        url: url.pathname + url.search,
        headers: Object.fromEntries(req.headers),
      });
      if (req.headers.has("authorization")) {
        return new Response(
          "<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed</Message></Error>",
          {
            status: 400,
            headers: { "content-type": "application/xml" },
          },
        );
      }
      if (!url.searchParams.has("sig"))
        return new Response("<Error><Code>AccessDenied</Code></Error>", {
          status: 403,
          headers: { "content-type": "application/xml" },
        });
      const blob = BLOBS.get(url.pathname.replace(/^\/blobs\//, ""));
      if (!blob)
        return new Response("<Error><Code>NoSuchKey</Code></Error>", {
          status: 404,
          headers: { "content-type": "application/xml" },
        });
      // A CDN knows nothing of registry headers: no Docker-Content-Digest here.
      return serveBlob(req, blob, { etag: '"cdn-etag"' });
    },
  });
  return { url: `http://${host}:${server.port}`, seen, stop: () => void server.stop(true) };
}

// ---------------------------------------------------------------------------------------------

export type FakeAuth =
  | { kind: "bearer"; tokens: TokenServer }
  | { kind: "basic"; user: string; password: string }
  | { kind: "none" };

export interface FakeRegistry {
  url: string;
  port: number;
  seen: Seen[];
  /** Requests to slow/... whose client went away before the answer. */
  slowAborts(): number;
  stop(): void;
}

export interface FakeRegistryOptions {
  auth: FakeAuth;
  cdnBase?: string;
  bigBase?: string;
  slowMs?: number;
}

const PULL = /^\/v2\/(.+)\/(manifests|blobs|referrers)\/([^/]+)$/;
const TAGS_LIST = /^\/v2\/(.+)\/tags\/list$/;

export function startFakeRegistry(opts: FakeRegistryOptions): FakeRegistry {
  const seen: Seen[] = [];
  let slowAborts = 0;
  const api = { "docker-distribution-api-version": "registry/2.0" };

  const challenge = (name: string | null, error?: string): Response => {
    const a = opts.auth;
    let value: string;
    if (a.kind === "bearer") {
      value = `Bearer realm="${a.tokens.realm}",service="${a.tokens.service}"${name ? `,scope="repository:${name}:pull"` : ""}${error ? `,error="${error}"` : ""}`;
    } else value = `Basic realm="fake registry"`;
    return ociError(401, "UNAUTHORIZED", "authentication required", {
      ...api,
      "www-authenticate": value,
    });
  };

  /** null when the request may proceed, else the 401 to answer. */
  const authorize = (req: Request, name: string | null): Response | null => {
    const a = opts.auth;
    const h = req.headers.get("authorization");
    if (a.kind === "none") return null;
    if (a.kind === "basic") {
      return h === "Basic " + Buffer.from(`${a.user}:${a.password}`).toString("base64")
        ? null
        : challenge(name);
    }
    if (h === null || !h.startsWith("Bearer ")) return challenge(name);
    const t = a.tokens.issued.get(h.slice(7));
    if (!t || t.generation < a.tokens.generation) return challenge(name, "invalid_token");
    if (name !== null && (t.scope !== `repository:${name}:pull` || name.startsWith("private/")))
      return challenge(name, "insufficient_scope");
    return null;
  };

  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 60,
    async fetch(req, srv) {
      srv.timeout(req, 0);
      const url = new URL(req.url);
      seen.push({
        method: req.method,
        url: url.pathname + url.search,
        headers: Object.fromEntries(req.headers),
      });
      if (url.pathname === "/v2/")
        return authorize(req, null) ?? Response.json({}, { headers: api });
      const tags = TAGS_LIST.exec(url.pathname);
      const pull = PULL.exec(url.pathname);
      const name = tags?.[1] ?? pull?.[1] ?? null;
      if (name === null) return ociError(404, "UNSUPPORTED", "no such endpoint", api);
      const denied = authorize(req, name);
      if (denied) return denied;

      if (tags) {
        const n = Number(url.searchParams.get("n") ?? "1000");
        const last = url.searchParams.get("last");
        const from = last === null ? 0 : TAGS.indexOf(last) + 1;
        const page = TAGS.slice(from, from + n);
        const headers: Record<string, string> = { ...api };
        if (from + n < TAGS.length)
          headers.link = `</v2/${name}/tags/list?n=${n}&last=${page.at(-1)}>; rel="next"`;
        return Response.json({ name, tags: page }, { headers });
      }

      const [, , kind, ref = ""] = pull ?? [];
      if (kind === "manifests") {
        if (name.startsWith("ratelimited/")) {
          return ociError(429, "TOOMANYREQUESTS", "You have reached your pull rate limit.", {
            ...api,
            "retry-after": "7",
            "ratelimit-limit": "100;w=21600",
            "ratelimit-remaining": "0;w=21600",
          });
        }
        if (name.startsWith("slow/")) {
          let aborted = false;
          req.signal.addEventListener("abort", () => {
            aborted = true;
            slowAborts++;
          });
          await Bun.sleep(opts.slowMs ?? 2000);
          if (aborted) return new Response(null, { status: 499 });
        }
        if (ref !== "v1" && ref !== MANIFEST_DIGEST)
          return ociError(404, "MANIFEST_UNKNOWN", "manifest unknown", api);
        const etag = `"${MANIFEST_DIGEST}"`;
        const headers = {
          ...api,
          "docker-content-digest": MANIFEST_DIGEST,
          "content-type": MANIFEST_TYPE,
          etag,
          "x-internal-secret": "upstream-only",
        };
        if (req.headers.get("if-none-match") === etag)
          return new Response(null, { status: 304, headers });
        const body = new TextEncoder().encode(MANIFEST);
        const withLength = { ...headers, "content-length": String(body.byteLength) };
        return new Response(req.method === "HEAD" ? null : body, { headers: withLength });
      }
      if (kind === "referrers")
        return Response.json(
          { schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json", manifests: [] },
          { headers: api },
        );

      // blobs
      if (name.startsWith("evil/"))
        return new Response(null, {
          status: 307,
          headers: { ...api, location: `http://evil.invalid/blobs/${ref}?sig=x` },
        });
      if (name.startsWith("loop/"))
        return new Response(null, { status: 302, headers: { ...api, location: url.pathname } });
      // Like Docker Hub, the redirect comes before any existence check: the CDN answers 404.
      if (name.startsWith("cdn/") && opts.cdnBase) {
        return new Response(null, {
          status: 307,
          headers: {
            ...api,
            "docker-content-digest": ref,
            location: `${opts.cdnBase}/blobs/${ref}?sig=${randomBytes(8).toString("hex")}&expires=60`,
          },
        });
      }
      if (name.startsWith("big/") && opts.bigBase) {
        return new Response(null, {
          status: 307,
          headers: {
            ...api,
            "docker-content-digest": ref,
            location: `${opts.bigBase}/big/${ref}?sig=1`,
          },
        });
      }
      const blob = BLOBS.get(ref);
      if (!blob) return ociError(404, "BLOB_UNKNOWN", "blob unknown to registry", api);
      return serveBlob(req, blob, { ...api, "docker-content-digest": ref });
    },
  });
  return {
    url: `http://127.0.0.1:${server.port}`,
    port: server.port ?? 0,
    seen,
    slowAborts: () => slowAborts,
    stop: () => void server.stop(true),
  };
}

/**
 * A loopback port nothing listens on, for the whole run. A port bound and released is only dead
 * until the next bind(0), in this process or another, is handed it (a crm started later in the
 * same file, which would then answer as the "dead" upstream or proxy). Port 1 is below the
 * ephemeral range, so neither bind(0) nor connect() is ever given it, and no test binds it.
 */
export function deadPort(): number {
  return 1;
}

// ---------------------------------------------------------------------------------------------

export interface BigBlobServer {
  url: string;
  /** Responses whose client went away before the last byte. */
  cancels(): number;
  /** Bytes the latest response has handed to its socket so far. */
  bytesWritten(): number;
  stop(): void;
}

/**
 * Serves BIG_SIZE bytes of pattern() (any path, Range honoured) generated as the socket drains,
 * with a Content-Length. Raw sockets because Bun.serve turns a streamed body into chunked
 * encoding and drops the Content-Length, which real registries and CDNs always send.
 */
export function startBigBlobServer(size = BIG_SIZE): BigBlobServer {
  let cancels = 0;
  let written = 0;
  interface Conn {
    head: string;
    off: number;
    end: number;
    pending: Uint8Array | null;
    responding: boolean;
  }
  const CHUNK = 256 * 1024;
  const pump = (s: import("bun").Socket<Conn>): void => {
    const c = s.data;
    for (;;) {
      if (c.pending === null) {
        if (c.off >= c.end) {
          c.responding = false;
          s.end();
          return;
        }
        const n = Math.min(CHUNK, c.end - c.off);
        c.pending = pattern(n, c.off);
        c.off += n;
      }
      const w = s.write(c.pending);
      if (w > 0) written += w;
      if (w < c.pending.byteLength) {
        // bun.md: write() drops what it does not accept; keep the rest for `drain`.
        c.pending = c.pending.subarray(Math.max(0, w));
        return;
      }
      c.pending = null;
    }
  };
  const listener = Bun.listen<Conn>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        s.data = { head: "", off: 0, end: 0, pending: null, responding: false };
      },
      data(s, d) {
        const c = s.data;
        if (c.responding) return;
        c.head += Buffer.from(d).toString("latin1");
        const endOfHead = c.head.indexOf("\r\n\r\n");
        if (endOfHead < 0) return;
        const lines = c.head.slice(0, endOfHead).split("\r\n");
        const method = (lines[0] ?? "").split(" ")[0];
        const range = lines.find((l) => /^range:/i.test(l))?.replace(/^range:\s*/i, "") ?? null;
        const r = parseRange(range, size);
        let head: string;
        if (r === "unsatisfiable") {
          head = `HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */${size}\r\ncontent-length: 0\r\n`;
          c.off = c.end = 0;
        } else {
          c.off = r?.start ?? 0;
          c.end = r?.end ?? size;
          head =
            r === null
              ? "HTTP/1.1 200 OK\r\n"
              : `HTTP/1.1 206 Partial Content\r\ncontent-range: bytes ${c.off}-${c.end - 1}/${size}\r\n`;
          head += `content-length: ${c.end - c.off}\r\ncontent-type: application/octet-stream\r\naccept-ranges: bytes\r\n`;
        }
        s.write(head + "connection: close\r\n\r\n");
        if (method === "HEAD") c.end = c.off;
        c.responding = true;
        written = 0;
        pump(s);
      },
      drain(s) {
        if (s.data.responding) pump(s);
      },
      close(s) {
        if (s.data.responding && (s.data.off < s.data.end || s.data.pending !== null)) cancels++;
        s.data.responding = false;
      },
      error() {},
    },
  });
  return {
    url: `http://127.0.0.1:${listener.port}`,
    cancels: () => cancels,
    bytesWritten: () => written,
    stop: () => listener.stop(true),
  };
}
