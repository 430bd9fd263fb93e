/**
 * Which blob GETs share a download, and the client's answer when one does (the mirror's one call
 * into fan-out, from mirror/index.ts). A GET without Range starts a shared download, or joins the
 * one in flight for the same registry, account, repository and digest; a GET with a single
 * `bytes=` range to the blob's end (`N-` or a suffix) only joins (if the download still has or
 * will have its first byte; a range ending earlier would end before the digest is known). Everything
 * else (HEAD, conditional requests, multi-range, digests crm cannot hash, a download whose byte 0
 * has left the window, the budget spent) is answered by the caller's own request, as without
 * fan-out. Rules, auth, fair shares and bandwidth pacing all happened or happen per client around
 * this call: only the upstream bytes are shared.
 */
import { createHash } from "node:crypto";
import type { PullRoute } from "../routes.ts";
import type { FanoutRegistry, InFlight } from "./registry.ts";
import { discardBody, relayableStream, relayedBody, type RelaySource } from "../../http/relayed.ts";
import { SharedDownload, type OwnRequest } from "./shared-download.ts";
import { MAX_SKIP } from "../upstream/resume.ts";

export interface BlobRequest {
  route: PullRoute;
  method: "GET" | "HEAD";
  /** The request fields forwarded upstream (mirror/index.ts FORWARDED). */
  headers: Headers;
  /** Aborted when the client goes away. */
  signal: AbortSignal;
  logFields: Record<string, string | number>;
  /** The upstream's answer as the client would get it (status, passed fields, body) for these request fields. */
  answer(headers: Headers, signal: AbortSignal): Promise<Response>;
}

/** A client may send these; an answer to them is not the plain blob, so they are not shared. */
const CONDITIONAL = ["if-range", "if-none-match", "if-modified-since"];
const HASHED = new Set(["sha256", "sha512"]);

type RangeAsk = { from: number; to: number | null } | { suffix: number };

/** The answer for the client, or null when its request is not shared (the caller asks the upstream itself). */
export async function serveShared(fan: FanoutRegistry, req: BlobRequest): Promise<Response | null> {
  const { route } = req;
  if (
    !fan.config.enabled ||
    req.method !== "GET" ||
    route.resource !== "blobs" ||
    route.reference === null ||
    route.query.size > 0
  )
    return null;
  const colon = route.reference.indexOf(":");
  const algorithm = route.reference.slice(0, colon);
  if (!HASHED.has(algorithm)) return null;
  const digest = {
    algorithm: algorithm as "sha256" | "sha512",
    hex: route.reference.slice(colon + 1),
  };
  if (CONDITIONAL.some((h) => req.headers.has(h))) return null;
  const rangeHeader = req.headers.get("range");
  const range = rangeHeader === null ? null : parseRange(rangeHeader);
  if (range === "unsupported") return null;

  const key = [route.registry.name, accountOf(route), route.name, route.reference].join("\n");
  const existing = fan.find(key);
  if (existing) return join(fan, existing, range, req);
  // A range alone never starts a shared download: it is one client's part of the blob.
  if (range !== null) return null;
  return lead(fan, key, digest, req);
}

async function lead(
  fan: FanoutRegistry,
  key: string,
  digest: { algorithm: "sha256" | "sha512"; hex: string },
  req: BlobRequest,
): Promise<Response | null> {
  const entry = fan.open(key);
  if (entry === null) {
    req.logFields.fanout = "over budget";
    return null;
  }
  const done = wait(entry, req.signal);
  let res: Response;
  try {
    // The download outlives this client if others join: its own signal, aborted when no one waits or reads.
    res = await req.answer(identity(req.headers), entry.controller.signal);
  } catch (e) {
    done();
    entry.settle(null);
    throw e;
  }
  done();
  const length = contentLength(res);
  const encoding = res.headers.get("content-encoding");
  // The answer's body may be a relayed source with no stream (a resuming body, mirror/resume.ts).
  // An encoded answer (asked for identity, got something else) is not the blob's bytes: not shared.
  if (
    res.status !== 200 ||
    length === null ||
    (res.body === null && relayedBody(res) === null) ||
    req.signal.aborted ||
    (encoding !== null && encoding.trim().toLowerCase() !== "identity")
  ) {
    // Errors, redirects crm could not follow, bodies of unknown size: answered as without fan-out.
    entry.settle(null);
    return res;
  }
  // A blob smaller than the window never needs more of the budget than its own size.
  fan.shrink(entry, Math.max(1, Math.min(entry.reserved, length)));
  const download = new SharedDownload(
    res,
    length,
    digest,
    entry.reserved,
    {
      detached: () => {
        fan.detached();
        fan.log.info(
          "mirror fan-out: a reader fell behind the window and continues on its own range request",
          {
            registry: req.route.registry.name,
            repo: req.route.name,
            digest: req.route.reference ?? "",
          },
        );
      },
      mismatch: (expected, got) => {
        fan.mismatched();
        fan.log.error("mirror fan-out: blob bytes do not match their digest; every reader is cut", {
          registry: req.route.registry.name,
          repo: req.route.name,
          expected,
          got,
        });
      },
      unjoinable: () => fan.unlist(entry),
      disposed: () => fan.close(entry),
      waited: (ms) => fan.waited(ms),
    },
    fan.config.lagGraceMs,
  );
  entry.headers = res.headers;
  fan.started();
  const stream = download.join(0, length, req.signal, ownRequest(req, length));
  entry.settle(download);
  if (stream === null) return null;
  req.logFields.fanout = "lead";
  return answer(entry, stream, 0, length, false);
}

async function join(
  fan: FanoutRegistry,
  entry: InFlight,
  range: RangeAsk | null,
  req: BlobRequest,
): Promise<Response | null> {
  let download = entry.download;
  if (download === null) {
    const done = wait(entry, req.signal);
    download = await entry.head;
    done();
  }
  if (download === null || entry.headers === null || req.signal.aborted) return null;
  const total = download.total;
  let from = 0;
  let to = total - 1;
  if (range !== null) {
    if ("suffix" in range) from = Math.max(0, total - range.suffix);
    else {
      from = range.from;
      if (range.to !== null) to = Math.min(range.to, total - 1);
    }
    // Unsatisfiable (or empty): the upstream's own 416 is the answer.
    if (from > to || from >= total) return null;
  }
  // A range ending before the blob's end would end before the digest is known, one far ahead would
  // set the pace without reading; a download that failed or is gone has nothing to share.
  const why = download.refusal(from, to + 1);
  const stream =
    why === null ? download.join(from, to + 1, req.signal, ownRequest(req, total)) : null;
  if (stream === null) {
    fan.count(why ?? "late");
    req.logFields.fanout = why ?? "late";
    return null;
  }
  fan.joined();
  req.logFields.fanout = "joined";
  return answer(entry, stream, from, to + 1, range !== null);
}

/** Counts a request waiting for the head; when the last one waiting is gone, the upstream request is aborted. */
function wait(entry: InFlight, signal: AbortSignal): () => void {
  entry.waiting++;
  let counted = true;
  const drop = (): void => {
    if (!counted) return;
    counted = false;
    entry.waiting--;
    signal.removeEventListener("abort", drop);
    if (entry.waiting === 0 && entry.download === null && signal.aborted)
      entry.controller.abort(new Error("every client waiting for this blob left"));
  };
  signal.addEventListener("abort", drop, { once: true });
  return drop;
}

/** The reader's answer: its body relayed by the writer (or read as a stream by code that wraps it). */
function answer(
  entry: InFlight,
  body: RelaySource,
  from: number,
  end: number,
  ranged: boolean,
): Response {
  const headers = new Headers(entry.headers ?? undefined);
  const total = entry.download?.total ?? end;
  headers.set("content-length", String(end - from));
  if (ranged) headers.set("content-range", `bytes ${from}-${end - 1}/${total}`);
  else headers.delete("content-range");
  return new Response(relayableStream(body), { status: ranged ? 206 : 200, headers });
}

/**
 * A detached reader's own request for bytes [from, to]: the same upstream request as the
 * client's, with a Range. A 206 must start where asked; a 200 (no range support) is read past the
 * bytes the client already has.
 */
function ownRequest(req: BlobRequest, total: number): OwnRequest {
  return async (from, to, signal) => {
    const headers = identity(req.headers);
    headers.set("range", `bytes=${from}-${to}`);
    const res = await req.answer(headers, AbortSignal.any([req.signal, signal]));
    let skip = 0;
    if (res.status === 206) {
      const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers.get("content-range") ?? "");
      if (
        m === null ||
        Number(m[1]) !== from ||
        Number(m[2]) !== to ||
        (m[3] !== "*" && Number(m[3]) !== total)
      ) {
        await discardBody(res);
        throw new Error(
          `own range request for bytes ${from}-${to} answered Content-Range ${JSON.stringify(res.headers.get("content-range"))}`,
        );
      }
    } else if (res.status === 200 && contentLength(res) === total && from <= MAX_SKIP) skip = from;
    else {
      await discardBody(res);
      const why =
        res.status === 200 && from > MAX_SKIP
          ? `200 (no range support: ${from} bytes would have to be read and dropped, more than ${MAX_SKIP})`
          : String(res.status);
      throw new Error(`own range request for bytes ${from}-${to} answered ${why}`);
    }
    // A resuming answer (mirror/resume.ts) is a relayed source with no stream of its own.
    const stream = res.body ?? relayedBody(res)?.stream() ?? null;
    if (stream === null)
      throw new Error(`own range request for bytes ${from}-${to} answered without a body`);
    return { reader: stream.getReader(), skip };
  };
}

/**
 * The request fields for a shared download: `Accept-Encoding: identity`, since the sharing key
 * holds no encoding (every reader gets the blob's own bytes, which the digest checks).
 */
function identity(h: Headers): Headers {
  const out = new Headers(h);
  out.set("accept-encoding", "identity");
  return out;
}

function contentLength(res: Response): number | null {
  const v = res.headers.get("content-length");
  return v !== null && /^\d{1,15}$/.test(v) ? Number(v) : null;
}

/** One `bytes=` range; anything else (several ranges, other units) is not shared. */
export function parseRange(v: string): RangeAsk | "unsupported" {
  const m = /^\s*bytes\s*=\s*(\d{0,15})\s*-\s*(\d{0,15})\s*$/i.exec(v);
  if (m === null) return "unsupported";
  const [, a = "", b = ""] = m;
  if (a === "" && b === "") return "unsupported";
  if (a === "") return Number(b) > 0 ? { suffix: Number(b) } : "unsupported";
  const from = Number(a);
  const to = b === "" ? null : Number(b);
  if (to !== null && to < from) return "unsupported";
  return { from, to };
}

/** The upstream account a request is made as: the same credential shares, the password never kept. */
function accountOf(route: PullRoute): string {
  const r = route.registry;
  return r.username === null
    ? "anonymous"
    : createHash("sha256")
        .update(`${r.username}\0${r.password ?? ""}`)
        .digest("hex")
        .slice(0, 16);
}
