/**
 * A reference point, not crm: the smallest fetch()-based HTTP proxy Bun can run. Bun.serve
 * answers every request by fetching the same path from one fixed origin (no policy, no header
 * rewriting, no logs), so it is the ceiling of the architecture crm's forward path uses
 * (a server in front, fetch() behind). `bun scripts/bench/ref-fetch.ts LIFETIME_MS HOST:PORT`
 * prints `{"port":N}`. The fixed origin is needed because Bun.serve rebuilds an absolute-form
 * target from the Host header (bun.md), and wrk's Host names the proxy.
 */
if (import.meta.main) {
  const lifetimeMs = Number(process.argv[2] ?? "600000");
  const origin = process.argv[3];
  if (!origin) throw new Error("usage: ref-fetch.ts LIFETIME_MS HOST:PORT");
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 120,
    fetch(req, srv) {
      srv.timeout(req, 0);
      const u = new URL(req.url);
      return fetch(`http://${origin}${u.pathname}${u.search}`, {
        decompress: false,
        proxy: false,
      } as RequestInit);
    },
  });
  process.stdout.write(JSON.stringify({ port: server.port }) + "\n");
  const stop = (): void => {
    void server.stop(true);
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  setTimeout(stop, lifetimeMs).unref();
}
