/** Starts a real crm on 127.0.0.1:0 for a test and reads its log lines. */
import { buildConfig } from "../../src/config/load.ts";
import type { LogLevel } from "../../src/log.ts";
import type { Resolver } from "../../src/net/resolver.ts";
import { CrmServer } from "../../src/proxy/server.ts";

export interface TestCrm {
  server: CrmServer;
  port: number;
  url: string;
  logs: string[];
  /** Resolves with the first log line matching `re` (waits up to `ms`). */
  waitLog(re: RegExp, ms?: number): Promise<string>;
  stop(): Promise<void>;
}

export async function startCrm(
  raw: Record<string, unknown>,
  level: LogLevel = "debug",
  resolver?: Resolver,
): Promise<TestCrm> {
  // Every upstream in a test is on 127.0.0.1, which the SSRF guard refuses by default.
  const { config } = buildConfig(
    { listen: "127.0.0.1:0", log_level: level, allow_private_networks: true, ...raw },
    "test.yaml",
  );
  const logs: string[] = [];
  const server = await CrmServer.start(config, { sink: (line) => logs.push(line), resolver });
  const port = server.port;
  return {
    server,
    port,
    url: `http://127.0.0.1:${port}`,
    logs,
    async waitLog(re, ms = 3000) {
      const end = Date.now() + ms;
      for (;;) {
        const hit = logs.find((l) => re.test(l));
        if (hit) return hit;
        if (Date.now() > end)
          throw new Error(`no log line matching ${re} within ${ms} ms; got:\n${logs.join("\n")}`);
        await Bun.sleep(10);
      }
    },
    async stop() {
      server.stopNow();
    },
  };
}
