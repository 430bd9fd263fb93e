/**
 * Load and faults against crm running as a child process (`bun src/main.ts -c <tmp config>`),
 * so its memory and file descriptors can be read from /proc/<pid>.
 *
 *   bun scripts/soak.ts            full: 5,000 idle CONNECT tunnels + 200 HTTP clients for 60 s
 *   bun scripts/soak.ts --short    CI:   1,000 tunnels + 50 clients for 10 s
 *   options: --tunnels N --clients N --duration SECONDS --fault-workers N
 *   SOAK_TRACE_RSS=1 prints crm's RSS every second for 30 s after the load (to see it settle).
 *
 * While the load runs, fault workers send requests to misbehaving upstreams
 * (tests/support/faulty-upstreams.ts) and play clients that vanish mid-upload and mid-download.
 * Afterwards it checks: crm alive (/healthz 200); no error delivered as a success (a cut
 * upstream body never arrives complete: fewer bytes than Content-Length and a close, or no
 * terminating 0-chunk, or for an HTTP/1.0 client of a body without length a reset rather than a
 * clean FIN; garbage → 502; stall → 504; an upload cut by its client never reaches the upstream
 * as complete; a download dropped by its client is cancelled upstream); every tunnel still works; RSS back near its baseline and open fds back
 * to baseline once the load is gone; a clean exit on SIGTERM. Prints a summary table; exits 1
 * if a check fails. Everything is on 127.0.0.1.
 */
import { createHash } from "node:crypto";
import {
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Socket } from "bun";
import {
  header,
  openRaw,
  parseResponses,
  startFaultyUpstream,
  waitUntil,
  type FaultyUpstream,
  type ParsedResponse,
  type RawConn,
} from "../tests/support/faulty-upstreams.ts";
import { startOrigin } from "../tests/support/origins.ts";

// ---------------------------------------------------------------------------------------------
// Options

const root = resolve(import.meta.dir, "..");
const argv = process.argv.slice(2);
const short = argv.includes("--short");
function opt(name: string, dflt: number): number {
  const i = argv.indexOf(`--${name}`);
  if (i < 0) return dflt;
  const v = Number(argv[i + 1]);
  if (!Number.isFinite(v) || v < 0) throw new Error(`--${name} needs a number`);
  return v;
}
const TUNNELS = opt("tunnels", short ? 1000 : 5000);
const CLIENTS = opt("clients", short ? 50 : 200);
const DURATION_MS = opt("duration", short ? 10 : 60) * 1000;
const FAULT_WORKERS = opt("fault-workers", short ? 4 : 8);
const UPSTREAM_HEADER_MS = 3000;
/** RSS after the load may exceed the baseline by this much (allocator and JIT keep some). */
const RSS_SLACK_BYTES = 48 * 1024 * 1024;
const FD_SLACK = 4;

const t0 = Date.now();
const elapsed = (): string => `${((Date.now() - t0) / 1000).toFixed(1)}s`;
const say = (msg: string): void => console.log(`[soak ${elapsed()}] ${msg}`);

// ---------------------------------------------------------------------------------------------
// Outcome bookkeeping

const counts = new Map<string, number>();
const unexpected: string[] = [];
function count(key: string, n = 1): void {
  counts.set(key, (counts.get(key) ?? 0) + n);
}
function surprise(kind: string, detail: string): void {
  count(`unexpected:${kind}`);
  if (unexpected.length < 40) unexpected.push(`${kind}: ${detail}`);
}

// ---------------------------------------------------------------------------------------------
// /proc readings

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) * 1024 : 0;
}
function fds(pid: number): { total: number; sockets: number } {
  let total = 0;
  let sockets = 0;
  for (const f of readdirSync(`/proc/${pid}/fd`)) {
    total++;
    try {
      if (readlinkSync(`/proc/${pid}/fd/${f}`).startsWith("socket:")) sockets++;
    } catch {
      /* closed meanwhile */
    }
  }
  return { total, sockets };
}
/** Just the count (cheap enough to sample during the load: no readlink per fd). */
function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}
const mib = (b: number): string => `${(b / 1024 / 1024).toFixed(1)} MiB`;

// ---------------------------------------------------------------------------------------------
// Upstreams in this process

/** Echoes bytes; closes its side when the client (crm) closes its. */
function startEcho(): { port: number; open: () => number; stop: () => void } {
  const socks = new Set<Socket<undefined>>();
  const l = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    socket: {
      open(s) {
        socks.add(s);
      },
      data(s, d) {
        s.write(d); // a few bytes at a time: always accepted whole
      },
      end(s) {
        s.end();
      },
      close(s) {
        socks.delete(s);
      },
      error() {},
    },
  });
  return {
    port: l.port,
    open: () => socks.size,
    stop() {
      for (const s of socks) s.terminate();
      l.stop(true);
    },
  };
}

type UploadState = "receiving" | "complete" | "aborted";

/** Upload sink and download source that record whether each transfer ended or was cut. */
function startRecorder(): {
  port: number;
  uploads: Map<string, { state: UploadState; bytes: number }>;
  downloads: Map<string, { state: "streaming" | "done" | "cancelled"; bytes: number }>;
  stop: () => void;
} {
  const uploads = new Map<string, { state: UploadState; bytes: number }>();
  const downloads = new Map<string, { state: "streaming" | "done" | "cancelled"; bytes: number }>();
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 60,
    maxRequestBodySize: 2 ** 40,
    async fetch(req, srv) {
      srv.timeout(req, 0);
      const url = new URL(req.url);
      const id = url.searchParams.get("id") ?? "?";
      if (url.pathname === "/upload") {
        const rec = { state: "receiving" as UploadState, bytes: 0 };
        uploads.set(id, rec);
        try {
          const reader = req.body?.getReader();
          if (reader) {
            for (;;) {
              const { done, value } = await reader.read();
              if (done) break;
              rec.bytes += value.byteLength;
            }
          }
          rec.state = "complete";
          return new Response(`got ${rec.bytes}\n`);
        } catch {
          rec.state = "aborted";
          return new Response("aborted\n", { status: 400 });
        }
      }
      if (url.pathname === "/download") {
        const total = Number(url.searchParams.get("n") ?? "0");
        const rec = { state: "streaming" as "streaming" | "done" | "cancelled", bytes: 0 };
        downloads.set(id, rec);
        const block = new Uint8Array(64 * 1024).fill(0x61);
        const body = new ReadableStream<Uint8Array>({
          pull(c) {
            const n = Math.min(block.byteLength, total - rec.bytes);
            if (n <= 0) {
              rec.state = "done";
              c.close();
              return;
            }
            rec.bytes += n;
            c.enqueue(n === block.byteLength ? block : block.subarray(0, n));
          },
          cancel() {
            rec.state = "cancelled";
          },
        });
        return new Response(body, { headers: { "content-length": String(total) } });
      }
      return new Response("recorder\n");
    },
    error() {
      return new Response("recorder error\n", { status: 500 });
    },
  });
  return { port: server.port as number, uploads, downloads, stop: () => server.stop(true) };
}

// ---------------------------------------------------------------------------------------------
// crm as a child process

interface Child {
  proc: ReturnType<typeof Bun.spawn>;
  pid: number;
  port: number;
  lines: { info: number; warn: number; error: number; other: number };
  lastProblems: string[];
  exited: Promise<number>;
}

async function startChild(configPath: string): Promise<Child> {
  const proc = Bun.spawn([process.execPath, join(root, "src/main.ts"), "-c", configPath], {
    cwd: root,
    stdout: "pipe",
    stderr: "pipe",
    stdin: "ignore",
    env: { ...process.env, NO_COLOR: "1" },
  });
  const lines = { info: 0, warn: 0, error: 0, other: 0 };
  const lastProblems: string[] = [];
  let resolvePort: (p: number) => void = () => {};
  let rejectPort: (e: Error) => void = () => {};
  const portP = new Promise<number>((res, rej) => {
    resolvePort = res;
    rejectPort = rej;
  });
  const early: string[] = [];
  const pumpStream = async (stream: ReadableStream<Uint8Array>): Promise<void> => {
    const dec = new TextDecoder();
    let carry = "";
    for await (const chunk of stream) {
      carry += dec.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = carry.indexOf("\n")) >= 0) {
        const line = carry.slice(0, nl);
        carry = carry.slice(nl + 1);
        if (early.length < 20) early.push(line);
        const m = / listening address=(?:127\.0\.0\.1|\[::1\]|[\w.]+):(\d+)/.exec(line);
        if (m) resolvePort(Number(m[1]));
        if (line.includes(" INFO ")) lines.info++;
        else if (line.includes(" WARN ")) lines.warn++;
        else if (line.includes(" ERROR ")) lines.error++;
        else lines.other++;
        if (
          (line.includes(" ERROR ") ||
            (!line.includes(" INFO ") && !line.includes(" WARN ") && !line.includes(" DEBUG "))) &&
          lastProblems.length < 30
        )
          lastProblems.push(line.slice(0, 400));
      }
    }
  };
  void pumpStream(proc.stderr as ReadableStream<Uint8Array>);
  void pumpStream(proc.stdout as ReadableStream<Uint8Array>);
  const exited = proc.exited;
  void exited.then((code) =>
    rejectPort(new Error(`crm exited with ${code} before listening:\n${early.join("\n")}`)),
  );
  const timer = setTimeout(
    () => rejectPort(new Error(`crm did not log "listening" within 15 s:\n${early.join("\n")}`)),
    15_000,
  );
  const port = await portP;
  clearTimeout(timer);
  return { proc, pid: proc.pid, port, lines, lastProblems, exited };
}

// ---------------------------------------------------------------------------------------------
// Clients

/** Reads one response on `conn` (methods: what it answers); drops the consumed bytes. */
async function readResponse(
  conn: RawConn,
  method: string,
  ms: number,
): Promise<{ r: ParsedResponse | null; error: string | null; closed: boolean; timedOut: boolean }> {
  let last: ReturnType<typeof parseResponses> | null = null;
  const done = (): boolean => {
    last = parseResponses(conn.received(), [method], conn.closed);
    if (last.error) return true;
    const r = last.responses.find((x) => x.status >= 200);
    return (r !== undefined && r.complete) || conn.closed;
  };
  const ok = await waitUntil(conn, done, ms);
  done();
  const p = last as unknown as ReturnType<typeof parseResponses>;
  const r = p.responses.find((x) => x.status >= 200) ?? null;
  if (r !== null && r.complete && !p.error) {
    conn.chunks.length = 0;
    if (p.rest.length > 0) conn.chunks.push(Buffer.from(p.rest));
  }
  return { r, error: p.error, closed: conn.closed, timedOut: !ok };
}

function patternOk(body: Buffer): boolean {
  for (let i = 0; i < body.length; i++) if (body[i] !== i % 251) return false;
  return true;
}
function patternBytes(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = i % 251;
  return b;
}
const sha256 = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

/** One keep-alive HTTP client doing absolute-form requests through crm until `until`. */
async function httpClient(
  id: number,
  crmPort: number,
  originPort: number,
  until: number,
): Promise<void> {
  let conn: RawConn | null = null;
  let n = 0;
  const base = `http://127.0.0.1:${originPort}`;
  while (Date.now() < until) {
    n++;
    try {
      if (conn === null || conn.closed) {
        conn?.socket.terminate();
        conn = await openRaw(crmPort);
      }
      const kind = (id + n) % 3;
      let reqText: string;
      let body: Buffer | null = null;
      let size: number;
      if (kind === 0) {
        size = 1 + ((id * 7919 + n * 104729) % (64 * 1024));
        reqText = `GET ${base}/bytes?n=${size} HTTP/1.1\r\nHost: 127.0.0.1:${originPort}\r\n\r\n`;
      } else if (kind === 1) {
        size = 1 + ((id * 31 + n * 7877) % (48 * 1024));
        reqText = `GET ${base}/bytes?n=${size}&chunked HTTP/1.1\r\nHost: 127.0.0.1:${originPort}\r\n\r\n`;
      } else {
        size = (id * 131 + n * 4099) % (128 * 1024);
        body = patternBytes(size);
        reqText = `POST ${base}/echo?c=${id} HTTP/1.1\r\nHost: 127.0.0.1:${originPort}\r\nContent-Type: application/octet-stream\r\nContent-Length: ${size}\r\n\r\n`;
      }
      if (!(await conn.send(body ? Buffer.concat([Buffer.from(reqText), body]) : reqText))) {
        count("http:error:send-failed");
        conn.socket.terminate();
        conn = null;
        continue;
      }
      const { r, error, closed, timedOut } = await readResponse(
        conn,
        kind === 2 ? "POST" : "GET",
        15_000,
      );
      if (error) {
        surprise("http-bad-response", `client ${id}: ${error}`);
      } else if (r === null) {
        count(timedOut ? "http:error:timeout" : "http:error:closed-without-answer");
      } else if (!r.complete) {
        count(closed ? "http:error:truncated" : "http:error:timeout-mid-body");
      } else if (r.status !== 200) {
        count(`http:error:status-${r.status}`);
      } else if (kind === 2) {
        let j: { length?: number; sha256?: string } = {};
        try {
          j = JSON.parse(r.body.toString()) as typeof j;
        } catch {
          /* checked below */
        }
        if (j.length !== size || j.sha256 !== sha256(body as Buffer))
          surprise("http-wrong-echo", `client ${id}: sent ${size} bytes, origin saw ${j.length}`);
        else count("http:ok");
      } else if (r.body.length !== size || !patternOk(r.body)) {
        surprise(
          "http-wrong-body",
          `client ${id}: asked ${size} bytes, got ${r.body.length} (${r.framing}) marked complete`,
        );
      } else {
        // (Bun.serve may size a short stream itself, so `&chunked` can still arrive with a length.)
        if (kind === 1) count(`info:streamed-body-framed-by:${r.framing}`);
        count("http:ok");
      }
      if (
        r === null ||
        !r.complete ||
        error ||
        closed ||
        header(r, "connection")?.toLowerCase() === "close"
      ) {
        conn.socket.terminate();
        conn = null;
      }
    } catch (e) {
      count(`http:error:${(e as Error).name || "exception"}`);
      conn?.socket.terminate();
      conn = null;
      await Bun.sleep(50);
    }
  }
  conn?.socket.terminate();
}

/** One request on a fresh connection; resolves with what came back by the deadline. */
async function oneShot(
  crmPort: number,
  request: string,
  method: string,
  ms: number,
): Promise<{
  r: ParsedResponse | null;
  error: string | null;
  closed: boolean;
  reset: boolean;
  timedOut: boolean;
  raw: string;
}> {
  const conn = await openRaw(crmPort);
  try {
    await conn.send(request);
    // Wait for the close too: a truncated body is judged with the close.
    await waitUntil(conn, () => conn.closed, ms);
    const p = parseResponses(conn.received(), [method], conn.closed);
    return {
      r: p.responses.find((x) => x.status >= 200) ?? null,
      error: p.error,
      closed: conn.closed,
      reset: conn.resetSeen,
      timedOut: !conn.closed,
      raw: conn.received().toString("latin1", 0, 200),
    };
  } finally {
    conn.socket.terminate();
  }
}

interface Upstreams {
  reset: FaultyUpstream;
  stall: FaultyUpstream;
  garbage: FaultyUpstream;
  cutBetween: FaultyUpstream;
  cutInside: FaultyUpstream;
  recorder: ReturnType<typeof startRecorder>;
}

const FAULTS = [
  "reset-mid-body",
  "stall",
  "garbage",
  "chunked-cut-between",
  "chunked-cut-inside",
  "chunked-cut-http10",
  "vanish-mid-upload",
  "vanish-mid-download",
] as const;
type Fault = (typeof FAULTS)[number];

let faultSeq = 0;
async function faultCase(kind: Fault, crmPort: number, u: Upstreams): Promise<void> {
  const get = (port: number, path = "/"): string =>
    `GET http://127.0.0.1:${port}${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`;
  const id = `${kind}-${++faultSeq}`;
  const wait = UPSTREAM_HEADER_MS + 4000;
  switch (kind) {
    case "reset-mid-body": {
      const x = await oneShot(crmPort, get(u.reset.port), "GET", wait);
      if (x.error) return surprise(kind, `bad response: ${x.error}`);
      if (x.r === null)
        return x.closed
          ? count(`fault:${kind}:closed-before-head`)
          : surprise(kind, "no answer, no close");
      if (x.r.status >= 500 && x.r.complete) return count(`fault:${kind}:${x.r.status}`);
      if (x.r.status === 200 && x.r.framing === "length" && !x.r.complete && x.closed)
        return count(`fault:${kind}:truncated-as-expected`);
      return surprise(
        kind,
        `status ${x.r.status} framing ${x.r.framing} complete=${x.r.complete} body ${x.r.body.length}/${x.r.declared} closed=${x.closed}`,
      );
    }
    case "stall": {
      const started = Date.now();
      const x = await oneShot(crmPort, get(u.stall.port), "GET", wait);
      if (x.r?.status === 504 && x.r.complete && x.closed)
        return count(`fault:${kind}:504-as-expected`);
      return surprise(
        kind,
        `expected 504 within ${wait} ms; got ${x.r?.status ?? "nothing"} after ${Date.now() - started} ms: ${JSON.stringify(x.raw)}`,
      );
    }
    case "garbage": {
      const x = await oneShot(crmPort, get(u.garbage.port), "GET", wait);
      if (x.r?.status === 502 && x.r.complete && x.closed)
        return count(`fault:${kind}:502-as-expected`);
      return surprise(
        kind,
        `expected 502; got ${x.r?.status ?? "nothing"}: ${JSON.stringify(x.raw)}`,
      );
    }
    case "chunked-cut-between":
    case "chunked-cut-inside": {
      const up = kind === "chunked-cut-between" ? u.cutBetween : u.cutInside;
      const x = await oneShot(crmPort, get(up.port), "GET", wait);
      if (x.error) return surprise(kind, `bad response: ${x.error}`);
      if (x.r === null)
        return x.closed
          ? count(`fault:${kind}:closed-before-head`)
          : surprise(kind, "no answer, no close");
      if (x.r.status >= 500 && x.r.complete) return count(`fault:${kind}:${x.r.status}`);
      if (x.r.status === 200 && x.r.framing === "chunked" && !x.r.complete && x.closed)
        return count(`fault:${kind}:no-last-chunk-as-expected`);
      return surprise(
        kind,
        `a cut chunked body arrived as status ${x.r.status} framing ${x.r.framing} complete=${x.r.complete} (${x.r.body.length} bytes) closed=${x.closed}`,
      );
    }
    case "chunked-cut-http10": {
      // An HTTP/1.0 client gets a body of unknown length delimited by the close: only a reset
      // (not a FIN) can tell it that the body was cut.
      const x = await oneShot(
        crmPort,
        `GET http://127.0.0.1:${u.cutInside.port}/ HTTP/1.0\r\nHost: 127.0.0.1:${u.cutInside.port}\r\n\r\n`,
        "GET",
        wait,
      );
      if (x.error) return surprise(kind, `bad response: ${x.error}`);
      if (x.r === null)
        return x.closed
          ? count(`fault:${kind}:closed-before-head`)
          : surprise(kind, "no answer, no close");
      if (x.r.status >= 500 && x.r.complete) return count(`fault:${kind}:${x.r.status}`);
      if (x.r.status === 200 && x.reset) return count(`fault:${kind}:reset-as-expected`);
      if (x.r.status === 200 && x.r.framing === "length" && !x.r.complete)
        return count(`fault:${kind}:short-length-as-expected`);
      return surprise(
        kind,
        `a cut body reached an HTTP/1.0 client as a whole one: status ${x.r.status}, framing ${x.r.framing}, ${x.r.body.length} bytes, ended by ${x.reset ? "reset" : x.closed ? "a clean FIN" : "nothing"}`,
      );
    }
    case "vanish-mid-upload": {
      const declared = 1024 * 1024;
      const conn = await openRaw(crmPort);
      try {
        await conn.send(
          `POST http://127.0.0.1:${u.recorder.port}/upload?id=${id} HTTP/1.1\r\nHost: 127.0.0.1:${u.recorder.port}\r\nContent-Type: application/octet-stream\r\nContent-Length: ${declared}\r\n\r\n`,
        );
        await conn.send(Buffer.alloc(declared / 2, 0x62));
        // Let the half body reach the upstream, then vanish.
        const end = Date.now() + 1000;
        while (Date.now() < end && (u.recorder.uploads.get(id)?.bytes ?? 0) < declared / 4)
          await Bun.sleep(5);
      } finally {
        conn.socket.terminate();
      }
      pendingUploads.push(id);
      return count(`fault:${kind}:sent`);
    }
    case "vanish-mid-download": {
      const conn = await openRaw(crmPort);
      try {
        await conn.send(get(u.recorder.port, `/download?id=${id}&n=${256 * 1024 * 1024}`));
        await waitUntil(conn, () => conn.bytes >= 1024 * 1024 || conn.closed, 5000);
        // Keep only a little: this client reads 1 MiB of 256 MiB and disappears.
        conn.chunks.length = 0;
      } finally {
        conn.socket.terminate();
      }
      pendingDownloads.push(id);
      return count(`fault:${kind}:sent`);
    }
  }
}
const pendingUploads: string[] = [];
const pendingDownloads: string[] = [];

// ---------------------------------------------------------------------------------------------
// Tunnels

interface Tunnel {
  i: number;
  conn: RawConn;
}

async function openTunnel(i: number, crmPort: number, echoPort: number): Promise<Tunnel | string> {
  let conn: RawConn;
  try {
    conn = await openRaw(crmPort);
  } catch (e) {
    return `connect: ${(e as Error).message}`;
  }
  const established = "HTTP/1.1 200 Connection Established\r\n\r\n";
  await conn.send(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: 127.0.0.1:${echoPort}\r\n\r\n`);
  if (!(await waitUntil(conn, () => conn.bytes >= established.length || conn.closed, 10_000))) {
    conn.socket.terminate();
    return "no answer to CONNECT within 10 s";
  }
  const head = conn.received().toString("latin1");
  if (!head.startsWith(established)) {
    conn.socket.terminate();
    return `CONNECT answered ${JSON.stringify(head.slice(0, 60))}`;
  }
  const ping = `ping-${i}\n`;
  await conn.send(ping);
  const want = established + ping;
  if (
    !(await waitUntil(conn, () => conn.bytes >= want.length || conn.closed, 10_000)) ||
    conn.received().toString("latin1") !== want
  ) {
    conn.socket.terminate();
    return `echo: ${JSON.stringify(conn.received().toString("latin1").slice(established.length, 80))}`;
  }
  conn.chunks.length = 0;
  conn.bytes = 0;
  return { i, conn };
}

async function checkTunnel(t: Tunnel): Promise<string | null> {
  if (t.conn.closed) return "closed by crm while idle";
  const msg = `bye-${t.i}\n`;
  await t.conn.send(msg);
  if (!(await waitUntil(t.conn, () => t.conn.bytes >= msg.length || t.conn.closed, 10_000)))
    return "no echo within 10 s";
  const got = t.conn.received().toString("latin1");
  return got === msg ? null : `echo ${JSON.stringify(got.slice(0, 40))}`;
}

async function inBatches<T, R>(
  items: readonly T[],
  size: number,
  f: (x: T) => Promise<R>,
): Promise<R[]> {
  const out: R[] = [];
  for (let i = 0; i < items.length; i += size)
    out.push(...(await Promise.all(items.slice(i, i + size).map(f))));
  return out;
}

async function healthz(port: number): Promise<number> {
  try {
    const x = await oneShot(
      port,
      "GET /healthz HTTP/1.1\r\nHost: crm\r\nConnection: close\r\n\r\n",
      "GET",
      5000,
    );
    return x.r?.status ?? 0;
  } catch {
    return 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Main

async function main(): Promise<number> {
  say(
    `mode=${short ? "short" : "full"} tunnels=${TUNNELS} clients=${CLIENTS} duration=${DURATION_MS / 1000}s fault_workers=${FAULT_WORKERS}`,
  );
  const echo = startEcho();
  const origin = startOrigin();
  const warmOrigin = startOrigin();
  const u: Upstreams = {
    reset: startFaultyUpstream("reset-mid-body"),
    stall: startFaultyUpstream("stall"),
    garbage: startFaultyUpstream("garbage"),
    cutBetween: startFaultyUpstream("chunked-cut", { cut: "between" }),
    cutInside: startFaultyUpstream("chunked-cut", { cut: "inside" }),
    recorder: startRecorder(),
  };
  const ports = [
    echo.port,
    origin.port,
    warmOrigin.port,
    u.reset.port,
    u.stall.port,
    u.garbage.port,
    u.cutBetween.port,
    u.cutInside.port,
    u.recorder.port,
  ] as number[];
  const dir = mkdtempSync(join(tmpdir(), "crm-soak-"));
  const configPath = join(dir, "config.json");
  writeFileSync(
    configPath,
    JSON.stringify(
      {
        listen: "127.0.0.1:0",
        // Every upstream here is on 127.0.0.1, which the SSRF guard refuses by default.
        allow_private_networks: true,
        log_level: "info",
        allowed_hosts: ["127.0.0.1"],
        allowed_ports: ports,
        mirror: { enabled: false },
        limits: { max_connections: 19_000, max_connections_per_client: 19_000 },
        timeouts: {
          header: "5s",
          connect: "3s",
          idle: "300s",
          upstream_header: `${UPSTREAM_HEADER_MS}ms`,
          shutdown_grace: "3s",
        },
      },
      null,
      2,
    ),
  );

  const child = await startChild(configPath);
  say(`crm pid=${child.pid} listening on 127.0.0.1:${child.port}`);
  const checks: Array<{ name: string; ok: boolean; detail: string }> = [];
  const check = (name: string, ok: boolean, detail: string): void => {
    checks.push({ name, ok, detail });
    say(`${ok ? "PASS" : "FAIL"} ${name}: ${detail}`);
  };

  let peakRss = 0;
  let peakFds = 0;
  let sampler: Timer | null = null;
  try {
    const rssStart = rssBytes(child.pid);
    const fdsStart = fds(child.pid);

    // Warm-up: every code path once, against an origin that is then stopped (its pooled
    // upstream connections close), so lazily created state is in the baseline and no socket is.
    for (let i = 0; i < 20; i++)
      await oneShot(
        child.port,
        `GET http://127.0.0.1:${warmOrigin.port}/bytes?n=5000 HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n`,
        "GET",
        5000,
      );
    const warmTunnels = (
      await Promise.all(
        Array.from({ length: 20 }, (_, i) => openTunnel(-1 - i, child.port, echo.port)),
      )
    ).filter((t): t is Tunnel => typeof t !== "string");
    for (const t of warmTunnels) t.conn.socket.terminate();
    await faultCase("garbage", child.port, u);
    warmOrigin.stop(true);
    await Bun.sleep(1500);
    const rssBase = rssBytes(child.pid);
    const fdsBase = fds(child.pid);
    say(
      `baseline: RSS ${mib(rssBase)} (at start ${mib(rssStart)}), fds ${fdsBase.total} (sockets ${fdsBase.sockets}; at start ${fdsStart.total})`,
    );

    sampler = setInterval(() => {
      try {
        peakRss = Math.max(peakRss, rssBytes(child.pid));
        peakFds = Math.max(peakFds, fdCount(child.pid));
      } catch {
        /* child gone: reported below */
      }
    }, 1000);

    // 1. Tunnels, opened in batches, each exchanging a little data, then idle for the whole run.
    const rampStart = Date.now();
    const opened = await inBatches(
      Array.from({ length: TUNNELS }, (_, i) => i),
      250,
      (i) => openTunnel(i, child.port, echo.port),
    );
    const tunnels = opened.filter((t): t is Tunnel => typeof t !== "string");
    const tunnelFailures = opened.filter((t): t is string => typeof t === "string");
    for (const f of tunnelFailures)
      count(`tunnel:open-failed:${f.replace(/\d+/g, "N").slice(0, 60)}`);
    say(
      `${tunnels.length}/${TUNNELS} tunnels open in ${Date.now() - rampStart} ms; crm RSS ${mib(rssBytes(child.pid))}, fds ${fdCount(child.pid)}`,
    );

    // 2. HTTP clients and fault workers for the duration.
    const until = Date.now() + DURATION_MS;
    const faultLoop = async (w: number): Promise<void> => {
      let k = w;
      while (Date.now() < until) {
        const kind = FAULTS[k++ % FAULTS.length] as Fault;
        count(`tried:${kind}`);
        try {
          await faultCase(kind, child.port, u);
        } catch (e) {
          count(`fault:${kind}:exception`);
          surprise(`${kind}-exception`, (e as Error).message);
        }
      }
    };
    await Promise.all([
      ...Array.from({ length: CLIENTS }, (_, i) =>
        httpClient(i, child.port, origin.port as number, until),
      ),
      ...Array.from({ length: FAULT_WORKERS }, (_, w) => faultLoop(w)),
    ]);
    say(`load done: crm RSS ${mib(rssBytes(child.pid))}, fds ${fdCount(child.pid)}`);

    // 3. Every tunnel must still work after idling through the load; then close them all
    //    (half gracefully with FIN, half abruptly).
    const tunnelResults = await inBatches(tunnels, 500, checkTunnel);
    const deadTunnels = tunnelResults.filter((r) => r !== null);
    for (const d of deadTunnels)
      count(`tunnel:dead:${(d as string).replace(/\d+/g, "N").slice(0, 60)}`);
    await inBatches(tunnels, 500, async (t) => {
      if (t.i % 2 === 0) {
        t.conn.socket.end();
        await waitUntil(t.conn, () => t.conn.closed, 3000);
      }
      t.conn.socket.terminate();
    });

    // 4. crm alive?
    const hz = await healthz(child.port);
    check("crm alive: /healthz answers 200", hz === 200, `status ${hz}`);

    // 5. Let it settle with every upstream gone, then read memory and fds.
    echo.stop();
    origin.stop(true);
    for (const f of [u.reset, u.stall, u.garbage, u.cutBetween, u.cutInside]) f.stop();
    // JSC collects in steps; the allocator returns pages lazily: wait up to 15 s (20 s full) for it.
    const settleEnd = Date.now() + (short ? 15_000 : 20_000);
    let fdsAfter = fds(child.pid);
    let rssAfter = rssBytes(child.pid);
    if (process.env.SOAK_TRACE_RSS) {
      for (let i = 0; i < 30; i++) {
        say(`settle +${i}s: RSS ${mib(rssBytes(child.pid))}, fds ${fdCount(child.pid)}`);
        await Bun.sleep(1000);
      }
    }
    await Bun.sleep(5000);
    for (;;) {
      fdsAfter = fds(child.pid);
      rssAfter = rssBytes(child.pid);
      if (
        (fdsAfter.total <= fdsBase.total + FD_SLACK && rssAfter <= rssBase + RSS_SLACK_BYTES) ||
        Date.now() > settleEnd
      )
        break;
      await Bun.sleep(500);
    }
    if (sampler) clearInterval(sampler);
    sampler = null;

    // Uploads cut by their client must never have reached the upstream as complete, and
    // downloads whose client vanished must have been cancelled upstream.
    const uploadStates = pendingUploads.map(
      (id) => u.recorder.uploads.get(id)?.state ?? "never-arrived",
    );
    const downloadStates = pendingDownloads.map(
      (id) => u.recorder.downloads.get(id)?.state ?? "never-arrived",
    );
    for (const s of uploadStates) count(`upstream-saw:vanished-upload:${s}`);
    for (const s of downloadStates) count(`upstream-saw:vanished-download:${s}`);
    const completeUploads = uploadStates.filter((s) => s === "complete").length;
    if (completeUploads > 0)
      surprise(
        "vanish-mid-upload",
        `${completeUploads} uploads cut by their client reached the upstream as complete`,
      );
    u.recorder.stop();

    const httpOk = counts.get("http:ok") ?? 0;
    const httpErrors = [...counts]
      .filter(([k]) => k.startsWith("http:error:"))
      .reduce((a, [, v]) => a + v, 0);
    const unexpectedTotal = [...counts]
      .filter(([k]) => k.startsWith("unexpected:"))
      .reduce((a, [, v]) => a + v, 0);
    const faultsExpected = [...counts]
      .filter(([k]) => k.startsWith("fault:") && !k.endsWith(":sent"))
      .reduce((a, [, v]) => a + v, 0);

    check("tunnels: all opened", tunnelFailures.length === 0, `${tunnels.length}/${TUNNELS}`);
    check(
      "tunnels: all still echo after the load",
      deadTunnels.length === 0,
      `${tunnels.length - deadTunnels.length}/${tunnels.length}`,
    );
    check(
      "HTTP clients: requests done, none failed",
      httpOk > 0 && httpErrors === 0,
      `${httpOk} ok, ${httpErrors} errors`,
    );
    check(
      "no error answered as success (unexpected outcomes)",
      unexpectedTotal === 0,
      `${unexpectedTotal} unexpected`,
    );
    check(
      "every fault kind was exercised",
      FAULTS.every((f) => (counts.get(`tried:${f}`) ?? 0) > 0),
      FAULTS.map((f) => `${f}=${counts.get(`tried:${f}`) ?? 0}`).join(" "),
    );
    check(
      "vanished uploads never reached the upstream as complete",
      completeUploads === 0,
      `${uploadStates.length} cut uploads: ${summarize(uploadStates)}`,
    );
    check(
      "vanished downloads were cancelled upstream",
      downloadStates.every((s) => s !== "streaming"),
      `${downloadStates.length} cut downloads: ${summarize(downloadStates)}`,
    );
    check(
      "RSS back near baseline",
      rssAfter <= rssBase + RSS_SLACK_BYTES,
      `baseline ${mib(rssBase)}, peak ${mib(peakRss)}, after ${mib(rssAfter)} (allowed ≤ baseline + ${mib(RSS_SLACK_BYTES)})`,
    );
    check(
      "open fds back to baseline",
      fdsAfter.total <= fdsBase.total + FD_SLACK,
      `before ${fdsBase.total}, peak ${peakFds}, after ${fdsAfter.total} (sockets ${fdsBase.sockets} → ${fdsAfter.sockets})`,
    );
    check("crm logged no ERROR line", child.lines.error === 0, `${child.lines.error} ERROR lines`);

    // 6. Clean exit on SIGTERM.
    child.proc.kill("SIGTERM");
    const code = await Promise.race([child.exited, Bun.sleep(10_000).then(() => -1)]);
    check("crm exits 0 on SIGTERM", code === 0, `exit ${code}`);

    // Summary
    const rows: Array<[string, string]> = [
      [
        "mode",
        `${short ? "short" : "full"}: ${TUNNELS} tunnels, ${CLIENTS} HTTP clients, ${DURATION_MS / 1000}s, ${FAULT_WORKERS} fault workers`,
      ],
      ["crm RSS at start / baseline", `${mib(rssStart)} / ${mib(rssBase)}`],
      ["crm RSS peak", mib(peakRss)],
      ["crm RSS after (settled)", mib(rssAfter)],
      ["crm fds before / peak / after", `${fdsBase.total} / ${peakFds} / ${fdsAfter.total}`],
      [
        "tunnels opened / alive at end",
        `${tunnels.length} / ${tunnels.length - deadTunnels.length}`,
      ],
      ["HTTP requests ok / errors", `${httpOk} / ${httpErrors}`],
      ["fault cases with the expected outcome", String(faultsExpected)],
      [
        "crm log lines info / warn / error",
        `${child.lines.info} / ${child.lines.warn} / ${child.lines.error}`,
      ],
      ["unexpected outcomes", String(unexpectedTotal)],
      ["wall time", elapsed()],
    ];
    console.log("\n" + table(["metric", "value"], rows));
    console.log(
      "\n" +
        table(
          ["outcome", "count"],
          [...counts].sort((a, b) => a[0].localeCompare(b[0])).map(([k, v]) => [k, String(v)]),
        ),
    );
    if (unexpected.length > 0)
      console.log(
        `\nunexpected outcomes (first ${unexpected.length}):\n  - ${unexpected.slice(0, 10).join("\n  - ")}`,
      );
    if (child.lastProblems.length > 0)
      console.log(`\ncrm ERROR / unformatted stderr lines:\n  ${child.lastProblems.join("\n  ")}`);
    console.log(
      "\n" +
        table(
          ["check", "result", "detail"],
          checks.map((c) => [c.name, c.ok ? "PASS" : "FAIL", c.detail]),
        ),
    );
    const failed = checks.filter((c) => !c.ok);
    console.log(
      failed.length === 0
        ? "\nsoak: all checks passed"
        : `\nsoak: ${failed.length} check(s) failed`,
    );
    return failed.length === 0 ? 0 : 1;
  } finally {
    if (sampler) clearInterval(sampler);
    if (child.proc.exitCode === null) child.proc.kill("SIGKILL");
    echo.stop();
    origin.stop(true);
    warmOrigin.stop(true);
    for (const f of [u.reset, u.stall, u.garbage, u.cutBetween, u.cutInside]) f.stop();
    u.recorder.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

function summarize(states: string[]): string {
  const m = new Map<string, number>();
  for (const s of states) m.set(s, (m.get(s) ?? 0) + 1);
  return [...m].map(([k, v]) => `${k}=${v}`).join(" ") || "none";
}

function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]): string =>
    "| " + cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ") + " |";
  return [
    line(headers),
    "|" + widths.map((w) => "-".repeat(w + 2)).join("|") + "|",
    ...rows.map(line),
  ].join("\n");
}

if (import.meta.main) {
  // A hard bound on the whole run, whatever happens.
  const hardLimit = setTimeout(() => {
    console.error(`soak: still running after ${Math.round((Date.now() - t0) / 1000)} s, giving up`);
    process.exit(2);
  }, DURATION_MS + 150_000);
  hardLimit.unref();
  const code = await main().catch((e: unknown) => {
    console.error("soak failed:", e);
    return 1;
  });
  process.exit(code);
}
