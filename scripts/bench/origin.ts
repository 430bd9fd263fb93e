/**
 * The benchmark's origin, run as its own process so it does not share a JS thread with crm or
 * with the load generator: `bun scripts/bench/origin.ts SPEC.json`. It prints one JSON line
 * with its ports on stdout, then serves until SIGTERM (or its parent's deadline, see below).
 *
 * - http / https (same handler):
 *     /small                  2-byte body ("ok"), for the request-rate row
 *     /big?n=BYTES&mode=M     n bytes; M picks how the body is produced:
 *                             file   = Bun.file slice of a sparse file (sendfile on plain HTTP)
 *                             blob   = an in-memory Blob of n bytes (made once per size)
 *                             stream = ReadableStream enqueuing one pre-made 1 MiB chunk
 *                             direct = Bun's type:"direct" stream writing that chunk
 *                             Only file and blob keep Content-Length: Bun.serve sends a stream
 *                             body chunked even when the header is set (seen with Bun 1.4.5).
 *     /tcp-count              how many sockets the idle TCP server holds
 *     /set-blob-mode?mode=M   how the registry produces its blob from now on
 * - registry: a minimal anonymous registry: `/v2/` 200, one blob with Content-Length, and one
 *   small manifest (`library/big:latest`) for request-rate rows.
 * - tcp: accepts connections and holds them silently (idle tunnels' upstream).
 * Everything listens on 127.0.0.1 only.
 */
import type { Server } from "bun";

export interface OriginSpec {
  /** Sparse file of at least the largest size asked for. */
  file: string;
  tls: { cert: string; key: string };
  blob: { digest: string; size: number; mode: BodyMode };
  /** The origin exits by itself after this many ms (bounded even if the parent dies). */
  lifetimeMs: number;
}

export type BodyMode = "file" | "blob" | "stream" | "direct";

export interface OriginPorts {
  http: number;
  https: number;
  registry: number;
  tcp: number;
}

const CHUNK = new Uint8Array(1024 * 1024).fill(0x61);
/** A small OCI manifest (~400 bytes, like a real single-platform one) for the manifest-rate rows. */
const MANIFEST = new TextEncoder().encode(
  JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: {
      mediaType: "application/vnd.oci.image.config.v1+json",
      digest: `sha256:${"c".repeat(64)}`,
      size: 1234,
    },
    layers: [
      {
        mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
        digest: `sha256:${"d".repeat(64)}`,
        size: 31_415_926,
      },
    ],
  }),
);
const MANIFEST_DIGEST = "sha256:" + new Bun.CryptoHasher("sha256").update(MANIFEST).digest("hex");
/** In-memory bodies by size, made on first use (the largest is the bulk size, 1 GiB). */
const blobs = new Map<number, Blob>();

function blobOf(n: number): Blob {
  let b = blobs.get(n);
  if (!b) {
    const parts: Uint8Array[] = [];
    for (let left = n; left > 0; left -= CHUNK.byteLength)
      parts.push(left >= CHUNK.byteLength ? CHUNK : CHUNK.subarray(0, left));
    b = new Blob(parts);
    if (blobs.size > 4) blobs.clear();
    blobs.set(n, b);
  }
  return b;
}

function body(mode: BodyMode, n: number, file: string): Blob | ReadableStream<Uint8Array> {
  if (mode === "file") return Bun.file(file).slice(0, n);
  if (mode === "blob") return blobOf(n);
  if (mode === "direct") {
    let sent = 0;
    // Bun's direct stream: write() goes to the socket without a queue of chunks in between.
    const source = {
      type: "direct",
      async pull(c: {
        write(b: Uint8Array): void;
        flush(): Promise<unknown> | unknown;
        close(): void;
      }) {
        while (sent < n) {
          const k = Math.min(CHUNK.byteLength, n - sent);
          c.write(k === CHUNK.byteLength ? CHUNK : CHUNK.subarray(0, k));
          sent += k;
          await c.flush();
        }
        c.close();
      },
    };
    return new ReadableStream(
      source as unknown as ConstructorParameters<typeof ReadableStream<Uint8Array>>[0],
    );
  }
  let sent = 0;
  return new ReadableStream<Uint8Array>({
    pull(c) {
      if (sent >= n) return c.close();
      const k = Math.min(CHUNK.byteLength, n - sent);
      c.enqueue(k === CHUNK.byteLength ? CHUNK : CHUNK.subarray(0, k));
      sent += k;
    },
  });
}

function bytesResponse(
  mode: BodyMode,
  n: number,
  file: string,
  extra: Record<string, string> = {},
): Response {
  return new Response(body(mode, n, file), {
    headers: { "content-type": "application/octet-stream", "content-length": String(n), ...extra },
  });
}

if (import.meta.main) {
  const specPath = process.argv[2];
  if (!specPath) throw new Error("usage: origin.ts SPEC.json");
  const spec = (await Bun.file(specPath).json()) as OriginSpec;
  let held = 0;
  let blobMode: BodyMode = spec.blob.mode;

  const handler = (req: Request, srv: Server<undefined>): Response => {
    const url = new URL(req.url);
    srv.timeout(req, 0);
    switch (url.pathname) {
      case "/small":
        return new Response("ok");
      case "/big": {
        const n = Number(url.searchParams.get("n") ?? "0");
        const mode = (url.searchParams.get("mode") ?? "file") as BodyMode;
        return bytesResponse(mode, n, spec.file);
      }
      case "/tcp-count":
        return new Response(String(held));
      case "/set-blob-mode":
        blobMode = (url.searchParams.get("mode") ?? blobMode) as BodyMode;
        return new Response(blobMode);
      default:
        return new Response("not found", { status: 404 });
    }
  };

  const http = Bun.serve({ hostname: "127.0.0.1", port: 0, idleTimeout: 120, fetch: handler });
  const https = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 120,
    tls: spec.tls,
    fetch: handler,
  });
  const blobPath = `/v2/library/big/blobs/${spec.blob.digest}`;
  const registry = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 120,
    fetch(req, srv) {
      srv.timeout(req, 0);
      const path = new URL(req.url).pathname;
      const api = { "docker-distribution-api-version": "registry/2.0" };
      if (path === "/v2/" || path === "/v2") return Response.json({}, { headers: api });
      if (path === "/v2/library/big/manifests/latest") {
        const headers = {
          ...api,
          "content-type": "application/vnd.oci.image.manifest.v1+json",
          "content-length": String(MANIFEST.byteLength),
          "docker-content-digest": MANIFEST_DIGEST,
        };
        return new Response(req.method === "HEAD" ? null : MANIFEST, { headers });
      }
      if (path === blobPath) {
        const extra = { ...api, "docker-content-digest": spec.blob.digest };
        if (req.method === "HEAD")
          return new Response(null, {
            headers: { ...extra, "content-length": String(spec.blob.size) },
          });
        return bytesResponse(blobMode, spec.blob.size, spec.file, extra);
      }
      return Response.json(
        { errors: [{ code: "BLOB_UNKNOWN", message: "unknown" }] },
        { status: 404, headers: api },
      );
    },
  });
  const tcp = Bun.listen<undefined>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open() {
        held++;
      },
      data() {},
      close() {
        held--;
      },
      error() {},
    },
  });
  const ports: OriginPorts = {
    http: http.port ?? 0,
    https: https.port ?? 0,
    registry: registry.port ?? 0,
    tcp: tcp.port,
  };
  process.stdout.write(JSON.stringify(ports) + "\n");
  const stop = (): void => {
    void http.stop(true);
    void https.stop(true);
    void registry.stop(true);
    tcp.stop(true);
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  setTimeout(stop, spec.lifetimeMs).unref();
  // Keep the process alive until stopped (the servers do that already; the timer is unref'd).
}
