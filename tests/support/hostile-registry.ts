/**
 * A raw-TCP registry on 127.0.0.1 that answers as a test's plan says, per request: any status and
 * fields, a body gated until gate(), cut after N bytes, chunked, paced. For the fan-out's hostile
 * upstream tests (corrupted bytes, wrong ranges) where a real registry cannot misbehave.
 */
import type { Socket } from "bun";
import { createHash } from "node:crypto";

export interface Req {
  method: string;
  path: string;
  range: string | null;
  n: number;
}
export interface Plan {
  status?: number;
  headers?: Record<string, string>;
  /** The bytes to send as the body (after the head). */
  body?: Uint8Array;
  /** Pause after this many body bytes until gate() is called. */
  gateAt?: number;
  /** Close the socket after this many body bytes. */
  cutAt?: number;
  chunked?: boolean;
  chunk?: number;
  delayMs?: number;
  headDelayMs?: number;
}
export interface Hostile {
  port: number;
  closed(): number;
  reqs: Req[];
  gate(): void;
  stop(): void;
}

export function startHostile(plan: (r: Req) => Plan): Hostile {
  const reqs: Req[] = [];
  let gates: Array<() => void> = [];
  let gateOpen = false;
  let closed = 0;
  const server = Bun.listen<{ buf: string; busy: boolean }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        s.data = { buf: "", busy: false };
      },
      data(s, d) {
        void handle(s, d).catch(() => s.terminate());
      },
      drain(s) {
        const w = (s as unknown as { w?: () => void }).w;
        (s as unknown as { w?: () => void }).w = undefined;
        w?.();
      },
      close(s) {
        closed++;
        const w = (s as unknown as { w?: () => void }).w;
        w?.();
      },
      error() {},
    },
  });
  async function handle(s: Socket<{ buf: string; busy: boolean }>, d: Uint8Array): Promise<void> {
    s.data.buf += Buffer.from(d).toString("latin1");
    const end = s.data.buf.indexOf("\r\n\r\n");
    if (end < 0 || s.data.busy) return;
    const head = s.data.buf.slice(0, end);
    s.data.buf = s.data.buf.slice(end + 4);
    s.data.busy = true;
    const [line, ...fields] = head.split("\r\n");
    const [method, path] = (line ?? "").split(" ");
    const range = fields.find((f) => /^range:/i.test(f))?.replace(/^range:\s*/i, "") ?? null;
    const req = { method: method ?? "", path: path ?? "", range, n: reqs.length };
    reqs.push(req);
    const p: Plan =
      path === "/v2/"
        ? { status: 200, body: Buffer.from("{}"), headers: { "content-type": "application/json" } }
        : plan(req);
    const body = p.body ?? new Uint8Array(0);
    if ((p as Plan).headDelayMs) await Bun.sleep((p as Plan).headDelayMs!);
    let h = `HTTP/1.1 ${p.status ?? 200} X\r\n`;
    for (const [k, v] of Object.entries(p.headers ?? {})) h += `${k}: ${v}\r\n`;
    if (p.chunked) h += "transfer-encoding: chunked\r\n";
    else if (!Object.keys(p.headers ?? {}).some((k) => k.toLowerCase() === "content-length"))
      h += `content-length: ${body.byteLength}\r\n`;
    h += "connection: close\r\n\r\n";
    await write(s, Buffer.from(h, "latin1"));
    if (method === "HEAD") {
      s.end();
      return;
    }
    const chunk = p.chunk ?? 64 * 1024;
    let off = 0;
    while (off < body.byteLength) {
      if (p.cutAt !== undefined && off >= p.cutAt) {
        s.terminate();
        return;
      }
      if (p.gateAt !== undefined && off >= p.gateAt && !gateOpen)
        await new Promise<void>((r) => gates.push(r));
      let n = Math.min(chunk, body.byteLength - off);
      if (p.cutAt !== undefined) n = Math.min(n, p.cutAt - off);
      if (p.gateAt !== undefined && !gateOpen && off < p.gateAt) n = Math.min(n, p.gateAt - off);
      const part = body.subarray(off, off + n);
      if (p.chunked)
        await write(
          s,
          Buffer.concat([Buffer.from(n.toString(16) + "\r\n"), part, Buffer.from("\r\n")]),
        );
      else await write(s, part);
      off += n;
      if (p.delayMs) await Bun.sleep(p.delayMs);
    }
    if (p.cutAt !== undefined && off >= p.cutAt) {
      s.terminate();
      return;
    }
    if (p.chunked) await write(s, Buffer.from("0\r\n\r\n"));
    s.end();
  }
  async function write(s: Socket<{ buf: string; busy: boolean }>, b: Uint8Array): Promise<void> {
    let off = 0;
    while (off < b.byteLength) {
      const n = s.write(b.subarray(off));
      if (n < 0) throw new Error("closed");
      off += n;
      if (off < b.byteLength)
        await new Promise<void>((r) => ((s as unknown as { w?: () => void }).w = r));
    }
  }
  return {
    port: server.port,
    reqs,
    closed: () => closed,
    gate() {
      gateOpen = true;
      const g = gates;
      gates = [];
      for (const f of g) f();
    },
    stop() {
      server.stop(true);
    },
  };
}

export function parseRangeHeader(v: string | null, total: number): [number, number] | null {
  const m = /^bytes=(\d+)-(\d*)$/.exec(v ?? "");
  if (!m) return null;
  return [Number(m[1]), m[2] === "" ? total - 1 : Math.min(Number(m[2]), total - 1)];
}
export const sha = (b: Uint8Array): string =>
  "sha256:" + createHash("sha256").update(b).digest("hex");
