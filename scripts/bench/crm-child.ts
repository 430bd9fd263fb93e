/**
 * crm in its own process with a static resolver (names → 127.0.0.1), for the MITM rows, which
 * need many host names that no real DNS knows: `bun scripts/bench/crm-child.ts SPEC.json`.
 * Starts CrmServer exactly as src/main.ts does, prints `{"port":N,"pid":N}` on stdout, and runs
 * until SIGTERM/SIGINT (or `lifetimeMs`, so it cannot outlive a crashed benchmark for long).
 */
import { buildConfig } from "../../src/config/load.ts";
import { staticResolver } from "../../src/net/resolver.ts";
import { CrmServer } from "../../src/proxy/server.ts";

export interface CrmChildSpec {
  /** The raw config document (what a YAML/JSON file would hold). */
  config: Record<string, unknown>;
  /** Host name → address for the resolver. */
  names: Record<string, string>;
  lifetimeMs: number;
}

if (import.meta.main) {
  const specPath = process.argv[2];
  if (!specPath) throw new Error("usage: crm-child.ts SPEC.json");
  const spec = (await Bun.file(specPath).json()) as CrmChildSpec;
  const { config, warnings } = buildConfig(spec.config, specPath);
  for (const w of warnings) process.stderr.write(`crm: warning: ${w}\n`);
  const server = await CrmServer.start(config, { resolver: staticResolver(spec.names) });
  process.stdout.write(JSON.stringify({ port: server.port, pid: process.pid }) + "\n");
  const stop = (): void => {
    server.stopNow();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  setTimeout(stop, spec.lifetimeMs).unref();
}
