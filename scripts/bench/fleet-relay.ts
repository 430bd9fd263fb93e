/**
 * The fleet row's uplink: the pacing relay of the fan-out tests (tests/support/pacing-relay.ts)
 * in its own process, in front of the bench origin's registry port, capping what the origin
 * sends over all connections together. `bun scripts/bench/fleet-relay.ts ORIGIN_PORT RATE LIFETIME_MS`
 * prints `{"port":N,"control":N}`; the control port answers `/bytes` with the bytes the origin has
 * sent through the relay so far.
 */
import { startPacingRelay } from "../../tests/support/pacing-relay.ts";

const [origin = "0", rate = "0", lifetime = "600000"] = process.argv.slice(2);
const relay = startPacingRelay(Number(origin), { rate: Number(rate) });
const control = Bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  fetch: () => Response.json({ bytes: relay.upstreamBytes() }),
});
process.stdout.write(JSON.stringify({ port: relay.port, control: control.port }) + "\n");
const stop = (): void => {
  relay.stop();
  void control.stop(true);
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
setTimeout(stop, Number(lifetime));
