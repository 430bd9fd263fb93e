/**
 * A real container registry on loopback, for end-to-end tests.
 *
 * `startRegistry()` runs Debian's `docker-registry` (distribution 2.8) in a fresh temp dir,
 * optionally behind a real token service (a Bun.serve in this file that signs ES256 JWTs), and
 * pushes two small images into it with `skopeo`, so tests talk to the same code paths that
 * registry-1.docker.io-like upstreams exercise: Bearer challenges, scoped tokens, OCI + Docker
 * media types, a multi-arch index and a multi-MiB blob.
 *
 * Exported API
 * ------------
 *   interface TokenService {
 *     url: string;        // http(s)://127.0.0.1:PORT  (the token server's origin)
 *     realm: string;      // url + "/token", as named in the registry's Bearer challenge
 *     service: string;    // `service` of the challenge; also the JWT audience
 *     issuer: string;     // JWT `iss` the registry trusts
 *     calls(): number;    // token requests answered so far (any status)
 *     callLog: Array<{ scope: string[]; authorization: string | null; method: string; status: number }>;
 *     mint(scope: string[], opts?: { expiresIn?: number; subject?: string }): string;
 *                         // sign a token directly (no call counted), e.g. an expired one
 *     stop(): Promise<void>;
 *   }
 *   interface RegistryFixture {
 *     url: string;        // http://127.0.0.1:PORT, or https:// when tls
 *     host: string;       // 127.0.0.1:PORT
 *     token: TokenService | null;   // null when auth is "none"
 *     images: { multiLayer: SeededImage; index: SeededImage };
 *     caPem?: string;     // when tls: the CA that signed the registry's (and token service's) cert
 *     certDir?: string;   // when tls: a dir with ca.crt, for skopeo --cert-dir / --dest-cert-dir
 *     dir: string;        // the fixture's temp dir (removed by stop())
 *     users: Record<string, string>;
 *     logs(): string;     // registry stdout+stderr so far (tail), for failure messages
 *     stop(): Promise<void>;
 *   }
 *   interface SeededImage { repo; tag; digest; mediaType; size; layers; children }  (see below)
 *   startRegistry(opts?: StartRegistryOptions): Promise<RegistryFixture>
 *   getToken(fx, scope: string[], creds?: { user: string; password: string }): Promise<string>
 *   registryFetch(fx, path, init?: BunFetchRequestInit & { scope?: string[]; creds?: { user; password } }): Promise<Response>
 *                       // with `scope`, fetches a token first and sends it as Bearer
 *   runSkopeo(fx, args: string[], opts?: { timeoutMs?: number }): Promise<{ stdout: string; stderr: string }>
 *                       // hermetic skopeo (own policy, empty registries.conf, no auth file)
 *   MANIFEST_ACCEPT      // Accept value that gets any manifest kind back unconverted
 *   sha256Digest(data)   // "sha256:<hex>"
 *   types: StartRegistryOptions, SeededImage, Descriptor, TokenCall
 *
 * Images (repos are two-segment on purpose: mirror routing has to handle `ns/name`):
 *   images.multiLayer  library/multi:v1     Docker v2 schema2 manifest, 3 gzip layers, the middle
 *                                           one ~2.5 MiB of random bytes (does not compress).
 *   images.index       team/multiarch:v1    OCI image index, linux/amd64 + linux/arm64/v8, each an
 *                                           OCI image manifest with one small layer.
 * Content is random per fixture, so digests differ between runs and between fixtures.
 *
 * Notes for users of the fixture:
 * - distribution 2.8 accepts a token up to 60 s after its `exp` (and before `nbf`): to get
 *   `error="invalid_token"` use `token.mint(scope, { expiresIn: -120 })`, not a short expires_in.
 * - Anonymous pulls are granted unless `anonymousPull: false`; push/delete need a user from
 *   `users` when `users` is given (otherwise anyone may push).
 * - Everything binds 127.0.0.1 only; nothing resolves a public name.
 */

import {
  createHash,
  createPrivateKey,
  randomBytes,
  randomUUID,
  sign as cryptoSign,
  type KeyObject,
} from "node:crypto";
import { rmSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { generate as generateCert } from "selfsigned";
import { freePorts, startOnFreePorts } from "./ports.ts";

// ---------------------------------------------------------------------------------------------
// Public types

export interface TokenCall {
  method: string;
  scope: string[];
  authorization: string | null;
  status: number;
}

export interface TokenService {
  url: string;
  realm: string;
  service: string;
  issuer: string;
  calls: () => number;
  callLog: TokenCall[];
  mint(scope: string[], opts?: { expiresIn?: number; subject?: string }): string;
  stop(): Promise<void>;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
}

export interface SeededImage {
  repo: string;
  tag: string;
  /** Manifest (or index) digest as the registry serves it. */
  digest: string;
  mediaType: string;
  /** Size in bytes of the manifest (or index). */
  size: number;
  /** Config + layer blobs of a single image; empty for an index. */
  layers: Descriptor[];
  config?: Descriptor;
  /** Platform manifests of an index; empty for a single image. */
  children: Array<
    Descriptor & { platform: { os: string; architecture: string; variant?: string } }
  >;
}

export interface RegistryFixture {
  url: string;
  host: string;
  token: TokenService | null;
  images: { multiLayer: SeededImage; index: SeededImage };
  caPem?: string;
  certDir?: string;
  dir: string;
  users: Record<string, string>;
  logs(): string;
  stop(): Promise<void>;
}

export interface StartRegistryOptions {
  /** "token" (default): Bearer auth via the fixture's token service. "none": open registry. */
  auth?: "token" | "none";
  /** Serve the registry and the token service over HTTPS with a fresh test CA. */
  tls?: boolean;
  /** `expires_in` of issued tokens and the JWT lifetime, in seconds (default 60). */
  tokenExpiresIn?: number;
  /** user -> password. When given, push/delete scopes need Basic auth with one of these. */
  users?: Record<string, string>;
  /** Grant pull to anonymous token requests (default true). */
  anonymousPull?: boolean;
}

// ---------------------------------------------------------------------------------------------
// Small helpers

const MT = {
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociLayerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerLayerGzip: "application/vnd.docker.image.rootfs.diff.tar.gzip",
} as const;

/** Accept header that makes distribution return any manifest kind unconverted. */
export const MANIFEST_ACCEPT = [MT.ociIndex, MT.dockerList, MT.ociManifest, MT.dockerManifest].join(
  ", ",
);

export function sha256Digest(data: Uint8Array | string): string {
  return "sha256:" + createHash("sha256").update(data).digest("hex");
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function b64url(data: Uint8Array | string): string {
  return Buffer.from(data).toString("base64url");
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Environment for child processes, minus variables that would silently reconfigure them. */
function childEnv(extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined) continue;
    // distribution maps REGISTRY_* onto its config; containers/image reads the others.
    if (k.startsWith("REGISTRY_") || k === "CONTAINERS_REGISTRIES_CONF" || k === "CONTAINERS_CONF")
      continue;
    env[k] = v;
  }
  return { ...env, ...extra };
}

/** Keeps the tail of a child's output so a failure message shows the relevant end. */
class LogTail {
  private chunks: string[] = [];
  private size = 0;
  constructor(private readonly limit = 256 * 1024) {}
  push(s: string): void {
    this.chunks.push(s);
    this.size += s.length;
    while (this.size > this.limit && this.chunks.length > 1)
      this.size -= this.chunks.shift()!.length;
  }
  text(): string {
    return this.chunks.join("");
  }
}

async function drainInto(stream: ReadableStream<Uint8Array>, tail: LogTail): Promise<void> {
  const decoder = new TextDecoder();
  try {
    for await (const chunk of stream) tail.push(decoder.decode(chunk, { stream: true }));
  } catch {
    // The process was killed mid-write; what we have is what there is.
  }
}

async function runCommand(
  cmd: string[],
  env: Record<string, string>,
  timeoutMs: number,
): Promise<{ stdout: string; stderr: string }> {
  const proc = Bun.spawn(cmd, { stdin: "ignore", stdout: "pipe", stderr: "pipe", env });
  const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]).finally(() => clearTimeout(timer));
  if (code !== 0) {
    const why = proc.signalCode
      ? `killed by ${proc.signalCode} (timeout ${timeoutMs} ms?)`
      : `exit code ${code}`;
    throw new Error(
      `${cmd.slice(0, 6).join(" ")} … failed: ${why}\n--- stderr ---\n${stderr.trim()}\n--- stdout ---\n${stdout.trim()}`,
    );
  }
  return { stdout, stderr };
}

// ---------------------------------------------------------------------------------------------
// Certificates

interface TestPki {
  caPem: string;
  leafCertPem: string;
  leafKeyPem: string;
}

/** A CA plus one leaf for 127.0.0.1/localhost; EC keys because RSA keygen costs ~70 ms each. */
async function makeTlsPki(): Promise<TestPki> {
  // Go checks validity to the second; backdating avoids "not yet valid" on a just-minted cert.
  const notBeforeDate = new Date(Date.now() - 3600_000);
  const notAfterDate = new Date(Date.now() + 7 * 86400_000);
  const ca = await generateCert([{ name: "commonName", value: "crm test CA" }], {
    keyType: "ec",
    algorithm: "sha256",
    notBeforeDate,
    notAfterDate,
    extensions: [
      { name: "basicConstraints", cA: true, critical: true },
      {
        name: "keyUsage",
        keyCertSign: true,
        cRLSign: true,
        digitalSignature: true,
        critical: true,
      },
    ],
  });
  const leaf = await generateCert([{ name: "commonName", value: "localhost" }], {
    keyType: "ec",
    algorithm: "sha256",
    notBeforeDate,
    notAfterDate,
    ca: { key: ca.private, cert: ca.cert },
    extensions: [
      { name: "basicConstraints", cA: false },
      { name: "keyUsage", digitalSignature: true, keyEncipherment: true, critical: true },
      { name: "extKeyUsage", serverAuth: true, clientAuth: true },
      {
        name: "subjectAltName",
        altNames: [
          { type: 2, value: "localhost" },
          { type: 7, ip: "127.0.0.1" },
        ],
      },
    ],
  });
  return { caPem: ca.cert, leafCertPem: leaf.cert, leafKeyPem: leaf.private };
}

/**
 * The JWT signing identity. distribution finds the verification key through the `x5c` header and
 * only trusts it if the chain ends in `rootcertbundle`; a self-signed cert that is itself in the
 * bundle is the shortest chain that passes Go's x509 Verify (which also checks validity dates).
 */
async function makeSigningIdentity(): Promise<{
  certPem: string;
  certDerB64: string;
  key: KeyObject;
}> {
  const id = await generateCert([{ name: "commonName", value: "crm test token signer" }], {
    keyType: "ec",
    algorithm: "sha256",
    notBeforeDate: new Date(Date.now() - 3600_000),
    notAfterDate: new Date(Date.now() + 7 * 86400_000),
    extensions: [
      { name: "basicConstraints", cA: true },
      { name: "keyUsage", digitalSignature: true, keyCertSign: true },
    ],
  });
  const certDerB64 = id.cert.replace(/-----(BEGIN|END) CERTIFICATE-----/g, "").replace(/\s+/g, "");
  return { certPem: id.cert, certDerB64, key: createPrivateKey(id.private) };
}

// ---------------------------------------------------------------------------------------------
// Token service

interface ParsedScope {
  type: string;
  name: string;
  actions: string[];
}

/** `repository:team/app:pull,push`; the name may itself contain ':' (host:port/...), so split at both ends. */
function parseScope(scope: string): ParsedScope | null {
  const first = scope.indexOf(":");
  const last = scope.lastIndexOf(":");
  if (first <= 0 || last === first) return null;
  const actions = scope
    .slice(last + 1)
    .split(",")
    .filter(Boolean);
  return { type: scope.slice(0, first), name: scope.slice(first + 1, last), actions };
}

function parseBasic(header: string | null): { user: string; password: string } | null {
  if (!header || !/^basic /i.test(header)) return null;
  const decoded = Buffer.from(header.slice(6).trim(), "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  if (colon < 0) return null;
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

async function startTokenService(opts: {
  tls?: TestPki;
  expiresIn: number;
  users: Record<string, string> | undefined;
  anonymousPull: boolean;
}): Promise<TokenService & { certPem: string }> {
  const signer = await makeSigningIdentity();
  const service = "crm-test-registry";
  const issuer = "crm-test-token-issuer";
  const callLog: TokenCall[] = [];
  const users = opts.users;

  const mint = (scope: string[], o?: { expiresIn?: number; subject?: string }): string => {
    const now = Math.floor(Date.now() / 1000);
    const expiresIn = o?.expiresIn ?? opts.expiresIn;
    const access = scope
      .map(parseScope)
      .filter((s): s is ParsedScope => s !== null)
      .map((s) => ({ type: s.type, name: s.name, actions: s.actions }));
    const header = { typ: "JWT", alg: "ES256", x5c: [signer.certDerB64] };
    // distribution 2.8 checks iss, aud (a single string here), exp/nbf with 60 s leeway and the
    // signature; iat and jti are not checked but real issuers send them.
    const claims = {
      iss: issuer,
      sub: o?.subject ?? "",
      aud: service,
      exp: now + expiresIn,
      nbf: Math.min(now, now + expiresIn),
      iat: now,
      jti: randomUUID(),
      access,
    };
    const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    // JWS ES256 wants raw r||s, not the DER that node:crypto emits by default.
    const sig = cryptoSign("sha256", Buffer.from(signingInput), {
      key: signer.key,
      dsaEncoding: "ieee-p1363",
    });
    return `${signingInput}.${b64url(sig)}`;
  };

  /** Which of the requested actions this caller gets. Unknown callers get pull only. */
  const grant = (requested: ParsedScope, user: string | null): string[] => {
    const mayWrite = users === undefined || user !== null;
    const mayRead = opts.anonymousPull || user !== null;
    return requested.actions.filter((a) => {
      if (requested.type === "registry") return mayWrite; // catalog
      if (a === "pull") return mayRead;
      return mayWrite; // push, delete, *
    });
  };

  // Refresh tokens handed out for offline access (docker login stores them as identity tokens).
  const refreshTokens = new Map<string, string>();

  const unauthorized = () =>
    Response.json(
      { errors: [{ code: "UNAUTHORIZED", message: "bad credentials" }] },
      {
        status: 401,
        headers: { "WWW-Authenticate": `Basic realm="${service}"` },
      },
    );

  /** undefined: credentials were offered and are wrong. null: anonymous. */
  const authenticate = (
    creds: { user: string; password: string } | null,
  ): string | null | undefined => {
    if (!creds) return null;
    if (users === undefined) return creds.user; // open token service: any name is accepted
    return users[creds.user] === creds.password ? creds.user : undefined;
  };

  const answer = (scopes: string[], user: string | null, offline: boolean): Response => {
    const granted: string[] = [];
    for (const raw of scopes) {
      const parsed = parseScope(raw);
      if (!parsed) continue;
      // A scope with nothing granted is still listed (with no actions) like Docker Hub does,
      // so it is the registry that refuses, with its own 401/denied.
      granted.push(`${parsed.type}:${parsed.name}:${grant(parsed, user).join(",")}`);
    }
    const token = mint(granted, { subject: user ?? "" });
    const body: Record<string, unknown> = {
      token,
      access_token: token,
      expires_in: opts.expiresIn,
      issued_at: new Date().toISOString(),
    };
    if (offline && user !== null) {
      const refresh = randomUUID();
      refreshTokens.set(refresh, user);
      body.refresh_token = refresh;
    }
    return Response.json(body);
  };

  const handle = async (req: Request): Promise<Response> => {
    const url = new URL(req.url);
    if (url.pathname !== "/token") return new Response("not found\n", { status: 404 });
    const authorization = req.headers.get("authorization");
    let scopes: string[] = [];
    let res: Response;
    if (req.method === "GET") {
      // Clients either repeat `scope=` or put several space-separated scopes in one.
      scopes = url.searchParams
        .getAll("scope")
        .flatMap((s) => s.split(" "))
        .filter(Boolean);
      const user = authenticate(parseBasic(authorization));
      res =
        user === undefined
          ? unauthorized()
          : answer(scopes, user, url.searchParams.get("offline_token") === "true");
    } else if (req.method === "POST") {
      // OAuth2 form: docker with an identity token, containerd with a password.
      const form = new URLSearchParams(await req.text());
      scopes = (form.get("scope") ?? "").split(" ").filter(Boolean);
      let user: string | null | undefined;
      if (form.get("grant_type") === "refresh_token") {
        user = refreshTokens.get(form.get("refresh_token") ?? "");
      } else if (form.get("grant_type") === "password") {
        user = authenticate({
          user: form.get("username") ?? "",
          password: form.get("password") ?? "",
        });
      } else {
        user = authenticate(parseBasic(authorization));
      }
      res =
        user === undefined
          ? unauthorized()
          : answer(scopes, user, form.get("access_type") === "offline");
    } else {
      res = new Response("method not allowed\n", { status: 405 });
    }
    callLog.push({ method: req.method, scope: scopes, authorization, status: res.status });
    return res;
  };

  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    ...(opts.tls ? { tls: { cert: opts.tls.leafCertPem, key: opts.tls.leafKeyPem } } : {}),
    fetch: handle,
  });
  const origin = `${opts.tls ? "https" : "http"}://127.0.0.1:${server.port}`;
  return {
    url: origin,
    realm: `${origin}/token`,
    service,
    issuer,
    calls: () => callLog.length,
    callLog,
    mint,
    certPem: signer.certPem,
    async stop() {
      await server.stop(true);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// OCI image layouts built on disk

/** A minimal ustar archive: enough for any client that unpacks or hashes layers. */
function makeTar(files: Array<{ name: string; data: Uint8Array }>): Uint8Array {
  const blocks: Uint8Array[] = [];
  const enc = new TextEncoder();
  for (const file of files) {
    const h = new Uint8Array(512);
    const put = (offset: number, len: number, s: string) =>
      h.set(enc.encode(s).subarray(0, len), offset);
    const octal = (n: number, len: number) => n.toString(8).padStart(len - 1, "0") + "\0";
    put(0, 100, file.name);
    put(100, 8, octal(0o644, 8));
    put(108, 8, octal(0, 8));
    put(116, 8, octal(0, 8));
    put(124, 12, octal(file.data.length, 12));
    put(136, 12, octal(1_700_000_000, 12));
    put(148, 8, "        "); // checksum is computed with its own field as spaces
    put(156, 1, "0");
    put(257, 6, "ustar\0");
    put(263, 2, "00");
    put(265, 32, "root");
    put(297, 32, "root");
    let sum = 0;
    for (const b of h) sum += b;
    put(148, 8, sum.toString(8).padStart(6, "0") + "\0 ");
    blocks.push(h, file.data);
    const pad = (512 - (file.data.length % 512)) % 512;
    if (pad) blocks.push(new Uint8Array(pad));
  }
  blocks.push(new Uint8Array(1024));
  return Buffer.concat(blocks);
}

/**
 * An image on disk in a layout skopeo can read: an OCI image layout, or skopeo's own `dir:`
 * layout. Both exist because skopeo 1.9's `oci:` source only looks up refs whose descriptor is an
 * OCI manifest or index, so a Docker schema2 manifest can only be pushed unconverted from `dir:`.
 */
class ImageDir {
  private refs: Array<Descriptor & { annotations: Record<string, string> }> = [];
  constructor(
    readonly dir: string,
    readonly kind: "oci" | "dir",
  ) {}

  async init(): Promise<void> {
    if (this.kind === "oci") {
      await mkdir(join(this.dir, "blobs", "sha256"), { recursive: true });
      await writeFile(
        join(this.dir, "oci-layout"),
        JSON.stringify({ imageLayoutVersion: "1.0.0" }),
      );
    } else {
      await mkdir(this.dir, { recursive: true });
      await writeFile(join(this.dir, "version"), "Directory Transport Version: 1.1\n");
    }
  }

  async blob(data: Uint8Array | string, mediaType: string): Promise<Descriptor> {
    const bytes = typeof data === "string" ? Buffer.from(data) : data;
    const digest = sha256Digest(bytes);
    const hex = digest.slice("sha256:".length);
    await writeFile(
      this.kind === "oci" ? join(this.dir, "blobs", "sha256", hex) : join(this.dir, hex),
      bytes,
    );
    return { mediaType, digest, size: bytes.length };
  }

  /** A gzip layer from files; returns the blob descriptor and the uncompressed diff_id. */
  async layer(
    files: Array<{ name: string; data: Uint8Array }>,
    mediaType: string,
  ): Promise<{ desc: Descriptor; diffId: string }> {
    const tar = makeTar(files);
    return { desc: await this.blob(gzipSync(tar), mediaType), diffId: sha256Digest(tar) };
  }

  /** The manifest (or index) that `tag` names. A `dir:` layout holds exactly one. */
  async top(manifest: string, mediaType: string, tag: string): Promise<Descriptor> {
    if (this.kind === "dir") {
      await writeFile(join(this.dir, "manifest.json"), manifest);
      return { mediaType, digest: sha256Digest(manifest), size: Buffer.byteLength(manifest) };
    }
    const desc = await this.blob(manifest, mediaType);
    this.refs.push({ ...desc, annotations: { "org.opencontainers.image.ref.name": tag } });
    await writeFile(
      join(this.dir, "index.json"),
      JSON.stringify({ schemaVersion: 2, manifests: this.refs }),
    );
    return desc;
  }

  /** skopeo source reference. */
  ref(tag: string): string {
    return this.kind === "oci" ? `oci:${this.dir}:${tag}` : `dir:${this.dir}`;
  }
}

function imageConfig(arch: string, diffIds: string[], variant?: string): string {
  return JSON.stringify({
    created: "2024-01-01T00:00:00Z",
    architecture: arch,
    ...(variant ? { variant } : {}),
    os: "linux",
    config: { Env: ["PATH=/usr/local/bin:/usr/bin:/bin"], Cmd: ["/bin/sh"] },
    rootfs: { type: "layers", diff_ids: diffIds },
    history: diffIds.map((_, i) => ({
      created: "2024-01-01T00:00:00Z",
      created_by: `crm fixture layer ${i}`,
    })),
  });
}

const noteFile = (name: string, text: string) => ({ name, data: Buffer.from(text) });

/** library/multi: Docker schema2, three layers, the middle one big and incompressible. */
async function buildMultiLayer(layout: ImageDir, repo: string, tag: string): Promise<SeededImage> {
  const nonce = randomBytes(8).toString("hex");
  const l1 = await layout.layer(
    [noteFile("etc/crm-fixture/one.txt", `layer one ${nonce}\n`)],
    MT.dockerLayerGzip,
  );
  // Random bytes so gzip cannot shrink it: streaming code gets a real 2.5 MiB body.
  const l2 = await layout.layer(
    [{ name: "opt/crm-fixture/big.bin", data: randomBytes(2.5 * 1024 * 1024) }],
    MT.dockerLayerGzip,
  );
  const l3 = await layout.layer(
    [noteFile("etc/crm-fixture/three.txt", `layer three ${nonce}\n`)],
    MT.dockerLayerGzip,
  );
  const layers = [l1, l2, l3];
  const config = await layout.blob(
    imageConfig(
      "amd64",
      layers.map((l) => l.diffId),
    ),
    MT.dockerConfig,
  );
  const manifest = JSON.stringify({
    schemaVersion: 2,
    mediaType: MT.dockerManifest,
    config,
    layers: layers.map((l) => l.desc),
  });
  const desc = await layout.top(manifest, MT.dockerManifest, tag);
  return {
    repo,
    tag,
    digest: desc.digest,
    mediaType: desc.mediaType,
    size: desc.size,
    config,
    layers: layers.map((l) => l.desc),
    children: [],
  };
}

/** team/multiarch: an OCI index over two OCI image manifests. */
async function buildIndex(layout: ImageDir, repo: string, tag: string): Promise<SeededImage> {
  const platforms = [
    { os: "linux", architecture: "amd64" },
    { os: "linux", architecture: "arm64", variant: "v8" },
  ];
  const children: SeededImage["children"] = [];
  for (const platform of platforms) {
    const nonce = randomBytes(8).toString("hex");
    const layer = await layout.layer(
      [
        noteFile(
          `etc/crm-fixture/${platform.architecture}.txt`,
          `${platform.architecture} ${nonce}\n`,
        ),
      ],
      MT.ociLayerGzip,
    );
    const config = await layout.blob(
      imageConfig(platform.architecture, [layer.diffId], platform.variant),
      MT.ociConfig,
    );
    const manifest = JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.ociManifest,
      config,
      layers: [layer.desc],
    });
    const desc = await layout.blob(manifest, MT.ociManifest);
    children.push({ ...desc, platform });
  }
  const index = JSON.stringify({ schemaVersion: 2, mediaType: MT.ociIndex, manifests: children });
  const desc = await layout.top(index, MT.ociIndex, tag);
  return {
    repo,
    tag,
    digest: desc.digest,
    mediaType: desc.mediaType,
    size: desc.size,
    layers: [],
    children,
  };
}

// ---------------------------------------------------------------------------------------------
// Clients of the fixture

function fetchTls(fx: { caPem?: string }): Pick<BunFetchRequestInit, "tls" | "proxy"> {
  // proxy: false because Bun's fetch honours HTTP(S)_PROXY even for 127.0.0.1.
  return fx.caPem ? { tls: { ca: fx.caPem }, proxy: false } : { proxy: false };
}

/** A token for `scope` (e.g. `repository:library/multi:pull`) straight from the token service. */
export async function getToken(
  fx: Pick<RegistryFixture, "token" | "caPem">,
  scope: string[],
  creds?: { user: string; password: string },
): Promise<string> {
  if (!fx.token) throw new Error("getToken: this fixture runs without auth");
  const u = new URL(fx.token.realm);
  u.searchParams.set("service", fx.token.service);
  for (const s of scope) u.searchParams.append("scope", s);
  const headers: Record<string, string> = {};
  if (creds)
    headers.authorization =
      "Basic " + Buffer.from(`${creds.user}:${creds.password}`).toString("base64");
  const res = await fetch(u, { headers, ...fetchTls(fx) });
  if (!res.ok)
    throw new Error(
      `token service answered ${res.status} for ${scope.join(" ")}: ${await res.text()}`,
    );
  const body = (await res.json()) as { token?: unknown };
  if (typeof body.token !== "string") throw new Error("token service answer has no token");
  return body.token;
}

/**
 * fetch() against the registry. With `scope`, a token is fetched first (pull for anonymous,
 * or with `creds`), so tests need not implement the challenge dance when it is not the subject.
 */
export async function registryFetch(
  fx: Pick<RegistryFixture, "url" | "token" | "caPem">,
  path: string,
  init: BunFetchRequestInit & { scope?: string[]; creds?: { user: string; password: string } } = {},
): Promise<Response> {
  const { scope, creds, ...rest } = init;
  const headers = new Headers(rest.headers);
  if (scope && fx.token) headers.set("authorization", `Bearer ${await getToken(fx, scope, creds)}`);
  return fetch(fx.url + path, { ...rest, headers, ...fetchTls(fx) });
}

/**
 * Run skopeo hermetically: our own policy, no registries.conf mirrors, no auth file, and a temp
 * dir inside the fixture. Pass global flags before the subcommand yourself if needed.
 */
export async function runSkopeo(
  fx: Pick<RegistryFixture, "dir">,
  args: string[],
  opts: { timeoutMs?: number } = {},
): Promise<{ stdout: string; stderr: string }> {
  const base = join(fx.dir, "skopeo");
  const cmd = [
    "skopeo",
    "--policy",
    join(base, "policy.json"),
    "--registries.d",
    join(base, "registries.d"),
    "--tmpdir",
    join(base, "tmp"),
    ...args,
  ];
  const env = childEnv({
    CONTAINERS_REGISTRIES_CONF: join(base, "registries.conf"),
    REGISTRY_AUTH_FILE: join(base, "auth.json"),
  });
  return runCommand(cmd, env, opts.timeoutMs ?? 60_000);
}

export async function prepareSkopeo(dir: string): Promise<void> {
  const base = join(dir, "skopeo");
  await mkdir(join(base, "registries.d"), { recursive: true });
  await mkdir(join(base, "tmp"), { recursive: true });
  await writeFile(
    join(base, "policy.json"),
    JSON.stringify({ default: [{ type: "insecureAcceptAnything" }] }),
  );
  // Empty but present, so the host's registries.conf (mirrors, short names) never applies.
  await writeFile(join(base, "registries.conf"), "");
  await writeFile(join(base, "auth.json"), JSON.stringify({ auths: {} }));
}

// ---------------------------------------------------------------------------------------------
// The registry process

interface RegistryProcess {
  proc: Bun.Subprocess<"ignore", "pipe", "pipe">;
  port: number;
  tail: LogTail;
}

function registryConfig(o: {
  dir: string;
  port: number;
  pki?: TestPki;
  token?: { realm: string; service: string; issuer: string };
}): string {
  // JSON is valid YAML, and it spares us quoting rules for paths.
  const cfg: Record<string, unknown> = {
    version: 0.1,
    log: { level: "info", formatter: "text", accesslog: { disabled: true } },
    storage: {
      filesystem: { rootdirectory: join(o.dir, "storage") },
      delete: { enabled: true },
      // The filesystem driver cannot redirect anyway; disabling makes that explicit so blob GETs
      // are always served by the registry itself.
      redirect: { disable: true },
      // No background purge goroutine; uploads left over by a killed client simply stay.
      maintenance: { uploadpurging: { enabled: false }, readonly: { enabled: false } },
    },
    http: {
      addr: `127.0.0.1:${o.port}`,
      secret: randomBytes(16).toString("hex"),
      headers: { "X-Content-Type-Options": ["nosniff"] },
      ...(o.pki
        ? {
            tls: {
              certificate: join(o.dir, "pki", "leaf.crt"),
              key: join(o.dir, "pki", "leaf.key"),
            },
          }
        : {}),
    },
    health: { storagedriver: { enabled: false } },
  };
  if (o.token) {
    cfg.auth = {
      token: {
        realm: o.token.realm,
        service: o.token.service,
        issuer: o.token.issuer,
        rootcertbundle: join(o.dir, "pki", "token-signer.crt"),
      },
    };
  }
  return JSON.stringify(cfg, null, 2);
}

async function launchRegistry(
  configPath: string,
  port: number,
  url: string,
  caPem: string | undefined,
): Promise<RegistryProcess> {
  const proc = Bun.spawn(["docker-registry", "serve", configPath], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env: childEnv({}),
  });
  const tail = new LogTail();
  void drainInto(proc.stdout, tail);
  void drainInto(proc.stderr, tail);

  const deadline = Date.now() + 15_000;
  let lastError: unknown = null;
  // distribution logs this only once it holds the port. Until then an answer on the port may come
  // from another process, such as a fixture started at the same time and handed the same free port.
  const bound = `listening on 127.0.0.1:${port}`;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      await sleep(20); // let the drains catch the last lines
      throw new Error(
        `docker-registry exited (${proc.exitCode ?? proc.signalCode}) before answering /v2/\n${tail.text()}`,
      );
    }
    if (!tail.text().includes(bound)) {
      lastError = new Error(`no "${bound}" in its log yet`);
      await sleep(20);
      continue;
    }
    try {
      const res = await fetch(`${url}/v2/`, {
        signal: AbortSignal.timeout(1000),
        ...fetchTls({ caPem }),
      });
      await res.arrayBuffer();
      if (res.status === 200 || res.status === 401) return { proc, port, tail };
      lastError = new Error(`GET /v2/ answered ${res.status}`);
    } catch (err) {
      lastError = err;
    }
    await sleep(50);
  }
  proc.kill("SIGKILL");
  await proc.exited;
  throw new Error(
    `docker-registry did not answer ${url}/v2/ within 15 s (last: ${errorText(lastError)})\n${tail.text()}`,
    {
      cause: lastError,
    },
  );
}

async function stopProcess(proc: Bun.Subprocess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  proc.kill("SIGTERM");
  // distribution drains connections on SIGTERM; don't let a stuck client hold up afterAll.
  const done = await Promise.race([proc.exited.then(() => true), sleep(3000).then(() => false)]);
  if (!done) {
    proc.kill("SIGKILL");
    await proc.exited;
  }
}

// ---------------------------------------------------------------------------------------------
// startRegistry

/**
 * Fixtures not stopped yet. A hook timeout or Ctrl-C ends the test process without afterAll; bun
 * kills leftover children, but the temp dirs (several MiB each) would stay behind.
 */
const live = new Map<string, Bun.Subprocess | null>();
let exitHookInstalled = false;
function trackForExit(dir: string, proc: Bun.Subprocess | null): void {
  live.set(dir, proc);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once("exit", () => {
    for (const [d, p] of live) {
      try {
        p?.kill("SIGKILL");
        rmSync(d, { recursive: true, force: true });
      } catch {
        // Best effort while exiting.
      }
    }
  });
}

export async function startRegistry(opts: StartRegistryOptions = {}): Promise<RegistryFixture> {
  const authMode = opts.auth ?? "token";
  const users = opts.users ?? {};
  const dir = await mkdtemp(join(tmpdir(), "crm-registry-"));
  trackForExit(dir, null);
  const cleanups: Array<() => Promise<void>> = [
    async () => {
      await rm(dir, { recursive: true, force: true });
      live.delete(dir);
    },
  ];
  const cleanup = async () => {
    for (const fn of cleanups.splice(0).reverse()) await fn().catch(() => {});
  };

  try {
    await mkdir(join(dir, "pki"), { recursive: true });
    const pki = opts.tls ? await makeTlsPki() : undefined;
    let certDir: string | undefined;
    if (pki) {
      await writeFile(join(dir, "pki", "leaf.crt"), pki.leafCertPem);
      await writeFile(join(dir, "pki", "leaf.key"), pki.leafKeyPem);
      // containers/image treats every *.crt in a cert dir as a CA; ca.crt alone is enough.
      certDir = join(dir, "certs.d");
      await mkdir(certDir, { recursive: true });
      await writeFile(join(certDir, "ca.crt"), pki.caPem);
    }

    let token: (TokenService & { certPem: string }) | null = null;
    if (authMode === "token") {
      const t = await startTokenService({
        ...(pki ? { tls: pki } : {}),
        expiresIn: opts.tokenExpiresIn ?? 60,
        users: opts.users,
        anonymousPull: opts.anonymousPull ?? true,
      });
      token = t;
      cleanups.push(() => t.stop());
      await writeFile(join(dir, "pki", "token-signer.crt"), t.certPem);
    }

    const { running, url } = await startOnFreePorts("docker-registry", async (attempt) => {
      const port = freePorts(1)[0] as number;
      const url = `${pki ? "https" : "http"}://127.0.0.1:${port}`;
      const configPath = join(dir, `config-${attempt}.yml`);
      await writeFile(
        configPath,
        registryConfig({ dir, port, ...(pki ? { pki } : {}), ...(token ? { token } : {}) }),
      );
      return { running: await launchRegistry(configPath, port, url, pki?.caPem), url };
    });
    cleanups.push(() => stopProcess(running.proc));
    trackForExit(dir, running.proc);
    const host = `127.0.0.1:${running.port}`;

    const partial = {
      url,
      host,
      dir,
      token,
      ...(pki ? { caPem: pki.caPem } : {}),
    };
    const images = await seedImages(partial, users, certDir);

    return {
      ...partial,
      ...(certDir ? { certDir } : {}),
      token,
      images,
      users,
      logs: () => running.tail.text(),
      stop: cleanup,
    };
  } catch (err) {
    await cleanup();
    throw new Error(`startRegistry failed: ${errorText(err)}`, { cause: err });
  }
}

async function seedImages(
  fx: { url: string; host: string; dir: string; token: TokenService | null; caPem?: string },
  users: Record<string, string>,
  certDir: string | undefined,
): Promise<RegistryFixture["images"]> {
  await prepareSkopeo(fx.dir);
  const layoutMulti = new ImageDir(join(fx.dir, "images", "multi"), "dir");
  const layoutIndex = new ImageDir(join(fx.dir, "images", "multiarch"), "oci");
  await Promise.all([layoutMulti.init(), layoutIndex.init()]);
  const multiLayer = await buildMultiLayer(layoutMulti, "library/multi", "v1");
  const index = await buildIndex(layoutIndex, "team/multiarch", "v1");

  const [user, password] = Object.entries(users)[0] ?? [];
  const creds = user !== undefined ? { user, password: password ?? "" } : undefined;
  // --preserve-digests makes skopeo fail rather than silently re-encode a manifest: the digests
  // we computed locally are then the ones the registry serves.
  const push = (layout: ImageDir, img: SeededImage) =>
    runSkopeo(fx, [
      "copy",
      "--all",
      "--preserve-digests",
      "--quiet",
      ...(certDir ? ["--dest-cert-dir", certDir] : ["--dest-tls-verify=false"]),
      ...(creds ? ["--dest-creds", `${creds.user}:${creds.password}`] : ["--dest-no-creds"]),
      layout.ref(img.tag),
      `docker://${fx.host}/${img.repo}:${img.tag}`,
    ]);
  await Promise.all([push(layoutMulti, multiLayer), push(layoutIndex, index)]);

  // Read back over HTTP: proves the pull path works before any test relies on it.
  for (const img of [multiLayer, index]) {
    const res = await registryFetch(fx, `/v2/${img.repo}/manifests/${img.tag}`, {
      headers: { accept: MANIFEST_ACCEPT },
      scope: [`repository:${img.repo}:pull`],
      ...(creds ? { creds } : {}), // anonymousPull: false needs them
    });
    const body = new Uint8Array(await res.arrayBuffer());
    if (res.status !== 200)
      throw new Error(
        `seeded ${img.repo}:${img.tag} answers ${res.status}: ${Buffer.from(body).toString()}`,
      );
    const served = sha256Digest(body);
    const header = res.headers.get("docker-content-digest");
    if (served !== img.digest || header !== img.digest) {
      throw new Error(
        `seeded ${img.repo}:${img.tag}: built ${img.digest}, served body ${served}, header ${header}`,
      );
    }
  }
  return { multiLayer, index };
}
