/**
 * The fake Docker Hub of the tests (tests/support/fake-hub.ts) in its own process, for the
 * manifest rows of `npm run bench`: `bun scripts/bench/hub.ts LIFETIME_MS`. Prints
 * `{"port":N,"control":N,"index":"sha256:…","amd64":"sha256:…"}`; the control port answers
 * `/counts` with the manifest GETs and HEADs seen since the last `/reset`.
 */
import { startFakeHub } from "../../tests/support/fake-hub.ts";

const hub = startFakeHub({ limit: Number.MAX_SAFE_INTEGER });
const control = Bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  fetch(req) {
    const path = new URL(req.url).pathname;
    if (path === "/reset") hub.manifestRequests.length = 0;
    return Response.json({
      gets: hub.gets(),
      heads: hub.heads(),
      byPath: hub.manifestRequests.filter((r) => r.startsWith("GET ")).sort(),
    });
  },
});
const img = hub.image();
process.stdout.write(
  JSON.stringify({
    port: Number(new URL(hub.url).port),
    control: control.port,
    index: img.index.digest,
    amd64: img.platforms[0]?.digest,
  }) + "\n",
);
const stop = (): void => {
  hub.stop();
  void control.stop(true);
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
setTimeout(stop, Number(process.argv[2] ?? "600000"));
