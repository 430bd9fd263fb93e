/**
 * A reference point, not crm: the smallest MITM proxy Bun can run. A CONNECT is answered with
 * 200, the upstream TLS connection is opened at once (as crm's preconnect does), the client's
 * TLS is terminated with upgradeTLS and one certificate made beforehand (no issuing), and the
 * decrypted bytes are relayed as they are both ways (no HTTP parsing, policy, logs or metrics).
 * The benchmark runs it beside crm so the MITM first-request row can say how much of the gap to
 * "direct" is Bun's two TLS handshakes and how much is crm's.
 * `bun scripts/bench/ref-mitm.ts SPEC.json` prints `{"port":N}`; every CONNECT host is dialled
 * at 127.0.0.1 with its name as SNI, and the upstream certificate is not checked (the benchmark's
 * crm runs with insecure_tls too).
 */
import type { Socket } from "bun";
import { serveUntilStopped } from "./lib.ts";

export interface RefMitmSpec {
  /** Served to every client, whatever the CONNECT host: it must carry all the names used. */
  tls: { cert: string; key: string };
  lifetimeMs: number;
}

interface Side {
  peer: Socket<Side> | null;
  /** Bytes for this socket that arrived before its TLS was up. */
  early: Uint8Array[];
  /** Bytes from this socket that arrived before its peer existed. */
  orphans: Uint8Array[];
  up: boolean;
}

const side = (): Side => ({ peer: null, early: [], orphans: [], up: false });

// Small exchanges only (the first-request row): a short write ends the pair, nothing is queued.
function send(to: Socket<Side>, d: Uint8Array): void {
  if (!to.data.up) to.data.early.push(d);
  else if (to.write(d) < d.byteLength) to.end();
}

function handshake(s: Socket<Side>): void {
  s.data.up = true;
  for (const d of s.data.early.splice(0)) send(s, d);
}

const relay = {
  handshake,
  data(s: Socket<Side>, d: Buffer) {
    if (s.data.peer) send(s.data.peer, d);
    else s.data.orphans.push(d);
  },
  end(s: Socket<Side>) {
    s.data.peer?.end();
  },
  close(s: Socket<Side>) {
    s.data.peer?.end();
  },
  error() {},
};

if (import.meta.main) {
  const spec = (await Bun.file(process.argv[2] ?? "").json()) as RefMitmSpec;
  const alpn = Buffer.from("\x08http/1.1", "latin1");
  const l = Bun.listen<Side>({
    hostname: "127.0.0.1",
    port: 0,
    data: side(),
    socket: {
      open(s) {
        s.data = side();
      },
      data(s, d) {
        // After upgradeTLS the raw socket's handler still sees the ciphertext (bun.md): ignore it.
        if (s.data.up) return;
        // One CONNECT head per read: curl sends it in one segment and waits for the answer.
        const m = /^CONNECT ([^ :]+):(\d+) /.exec(d.toString("latin1"));
        if (!m || !d.toString("latin1").endsWith("\r\n\r\n"))
          return void s.end("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        s.write("HTTP/1.1 200 Connection Established\r\n\r\n");
        s.data.up = true;
        const [, tls] = s.upgradeTLS<Side>({
          data: side(),
          tls: { ...spec.tls, ALPNProtocols: alpn },
          socket: relay,
        });
        Bun.connect<Side>({
          hostname: "127.0.0.1",
          port: Number(m[2]),
          data: side(),
          tls: { serverName: m[1] as string, rejectUnauthorized: false, ALPNProtocols: "http/1.1" },
          socket: {
            ...relay,
            open(u) {
              u.data.peer = tls;
              tls.data.peer = u;
              for (const d of tls.data.orphans.splice(0)) send(u, d);
            },
          },
        }).catch(() => tls.end());
      },
      close() {},
      error() {},
    },
  });
  serveUntilStopped(l, spec.lifetimeMs);
}
