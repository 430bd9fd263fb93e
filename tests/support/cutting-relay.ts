/**
 * A TCP relay in front of a real upstream (the registry fixture) that breaks answers on purpose,
 * one request per connection (it asks the upstream for `Connection: close`), as a test decides
 * per request with a plan:
 *   pass                      relay the answer as it comes
 *   pass + cutAfter N         relay the head and N body bytes, then close the connection
 *   pass + chunked            re-frame the body as chunked (cutAfter then cuts inside a chunk)
 *   pass + stripRange         drop the request's Range: an upstream without range support (200)
 *   pass + stallAfter N       relay the head and N body bytes, then go silent with the connection open
 *   stall                     read the request, never answer (the connection stays open)
 *   status S                  answer S with a small OCI error body, never asking the upstream
 * Everything on 127.0.0.1; `requests` records what came in, in order.
 */
import type { Socket, TCPSocketListener } from "bun";

export interface RelayRequest {
  method: string;
  path: string;
  /** Lower-case names. */
  headers: Record<string, string>;
}

export type RelayPlan =
  | {
      kind: "pass";
      cutAfter?: number;
      stallAfter?: number;
      chunked?: boolean;
      stripRange?: boolean;
    }
  | { kind: "status"; status: number; headers?: Record<string, string> }
  | { kind: "stall" };

export interface CuttingRelay {
  url: string;
  port: number;
  requests: RelayRequest[];
  /** Replaceable at any time; called once per request. */
  plan: (r: RelayRequest, index: number) => RelayPlan;
  stop(): void;
}

interface Conn {
  buf: Buffer;
  upstream: Socket<UpConn> | null;
  /** The request head has been read (one request per connection). */
  asked: boolean;
  done: boolean;
  /** Bytes the socket did not take yet (Bun's write is partial under backpressure). */
  out: Buffer[];
  /** Reset the connection once `out` is flushed: the cut comes exactly after the planned bytes. */
  cutWhenFlushed: boolean;
  endWhenFlushed: boolean;
}

interface UpConn {
  client: Socket<Conn>;
  plan: RelayPlan & { kind: "pass" };
  pending: Buffer;
  headSent: boolean;
  /** Body bytes relayed so far. */
  body: number;
  chunked: boolean;
}

const END = Buffer.from("\r\n\r\n");

function parseHead(text: string): RelayRequest {
  const lines = text.split("\r\n");
  const [method = "", path = ""] = (lines[0] ?? "").split(" ");
  const headers: Record<string, string> = {};
  for (const l of lines.slice(1)) {
    const i = l.indexOf(":");
    if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  return { method, path, headers };
}

function send(c: Socket<Conn>, b: Buffer | string): void {
  const buf = typeof b === "string" ? Buffer.from(b, "latin1") : b;
  if (buf.length === 0) return;
  if (c.data.out.length > 0) {
    c.data.out.push(buf);
    return;
  }
  const n = c.write(buf);
  if (n < buf.length) c.data.out.push(buf.subarray(Math.max(0, n)));
}

function flush(c: Socket<Conn>): void {
  const q = c.data.out;
  while (q.length > 0) {
    const b = q[0] as Buffer;
    const n = c.write(b);
    if (n < b.length) {
      q[0] = b.subarray(Math.max(0, n));
      return;
    }
    q.shift();
  }
  // A cut is a close before the framing's end (FIN, not RST: a reset would drop bytes still in
  // the kernel's send buffer, and the cut would no longer be where the plan put it).
  if (c.data.cutWhenFlushed || c.data.endWhenFlushed) c.end();
}

function finish(c: Socket<Conn>, how: "cut" | "end"): void {
  if (how === "cut") c.data.cutWhenFlushed = true;
  else c.data.endWhenFlushed = true;
  if (c.data.out.length === 0) flush(c);
}

export async function startCuttingRelay(
  target: { host: string; port: number },
  plan: CuttingRelay["plan"] = () => ({ kind: "pass" }),
): Promise<CuttingRelay> {
  const requests: RelayRequest[] = [];
  const relay: CuttingRelay = { url: "", port: 0, requests, plan, stop: () => {} };

  const onUpstreamData = (u: Socket<UpConn>, data: Buffer): void => {
    const st = u.data;
    const c = st.client;
    if (c.data.done) return;
    let bytes = data;
    if (!st.headSent) {
      // Collect the head first: a chunked re-framing rewrites it.
      const all = Buffer.concat([st.pending, bytes]);
      const end = all.indexOf(END);
      if (end < 0) {
        st.pending = all;
        return;
      }
      let head = all.subarray(0, end + 4).toString("latin1");
      bytes = all.subarray(end + 4);
      const status = Number(head.split(" ")[1]);
      st.chunked = st.plan.chunked === true && status === 200;
      if (st.chunked)
        head = head
          .replace(/\r\ncontent-length:[^\r]*/i, "")
          .replace(/\r\n\r\n$/, "\r\nTransfer-Encoding: chunked\r\n\r\n");
      st.headSent = true;
      send(c, head);
    }
    if (bytes.length === 0) return;
    const cut = st.plan.cutAfter ?? st.plan.stallAfter;
    let part = bytes;
    let cutNow = false;
    if (cut !== undefined && st.body + bytes.length >= cut) {
      part = bytes.subarray(0, Math.max(0, cut - st.body));
      cutNow = true;
    }
    if (st.chunked) {
      // Announce the whole piece, send only part of it when cutting: the cut is inside a chunk.
      send(c, `${bytes.length.toString(16)}\r\n`);
      send(c, part);
      if (!cutNow) send(c, "\r\n");
    } else send(c, part);
    st.body += part.length;
    if (cutNow) {
      c.data.done = true;
      u.terminate();
      // Silent: the client's side stays open until the client closes it.
      if (st.plan.stallAfter === undefined) finish(c, "cut");
    }
  };

  const server: TCPSocketListener<Conn> = Bun.listen<Conn>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        s.data = {
          buf: Buffer.alloc(0),
          upstream: null,
          asked: false,
          done: false,
          out: [],
          cutWhenFlushed: false,
          endWhenFlushed: false,
        };
      },
      data(s, chunk) {
        const st = s.data;
        if (st.asked || st.done) return;
        st.buf = Buffer.concat([st.buf, chunk]);
        const end = st.buf.indexOf(END);
        if (end < 0) return;
        st.asked = true;
        const headText = st.buf.subarray(0, end).toString("latin1");
        const req = parseHead(headText);
        const index = requests.length;
        requests.push(req);
        const p = relay.plan(req, index);
        if (p.kind === "stall") {
          st.done = true;
          return;
        }
        if (p.kind === "status") {
          const body = JSON.stringify({
            errors: [
              {
                code: p.status === 429 ? "TOOMANYREQUESTS" : "UNAVAILABLE",
                message: `relay answers ${p.status}`,
                detail: null,
              },
            ],
          });
          let head = `HTTP/1.1 ${p.status} Relay\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n`;
          for (const [k, v] of Object.entries(p.headers ?? {})) head += `${k}: ${v}\r\n`;
          st.done = true;
          send(s, head + "\r\n" + (req.method === "HEAD" ? "" : body));
          finish(s, "end");
          return;
        }
        const lines = headText
          .split("\r\n")
          .filter(
            (l, i) =>
              i === 0 ||
              (!/^(connection|keep-alive)\s*:/i.test(l) &&
                !(p.stripRange === true && /^(range|if-range)\s*:/i.test(l))),
          );
        const out = lines.join("\r\n") + "\r\nConnection: close\r\n\r\n";
        const rest = st.buf.subarray(end + 4);
        void Bun.connect<UpConn>({
          hostname: target.host,
          port: target.port,
          data: {
            client: s,
            plan: p,
            pending: Buffer.alloc(0),
            headSent: false,
            body: 0,
            chunked: false,
          },
          socket: {
            open(u) {
              st.upstream = u;
              u.write(out);
              if (rest.length > 0) u.write(rest);
            },
            data: onUpstreamData,
            close(u) {
              if (s.data.done) return;
              s.data.done = true;
              if (u.data.chunked && u.data.headSent) send(s, "0\r\n\r\n");
              finish(s, "end");
            },
            error() {
              s.terminate();
            },
          },
        }).catch(() => s.terminate());
      },
      drain(s) {
        flush(s);
      },
      close(s) {
        s.data.upstream?.terminate();
      },
    },
  });
  relay.port = server.port;
  relay.url = `http://127.0.0.1:${server.port}`;
  relay.stop = () => server.stop(true);
  return relay;
}
