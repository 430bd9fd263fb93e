#!/usr/bin/env bun
/** crm entry point: parse the command line, load the config, run until SIGTERM. */
import pkg from "../package.json" with { type: "json" };
import { parseArgs, USAGE } from "./cli.ts";
import { findConfigFile, loadConfigFile } from "./config/load.ts";
import { describeConfig } from "./config/describe.ts";
import { ConfigError, ConfigErrors } from "./errors.ts";
import { CrmServer } from "./proxy/server.ts";

function fail(message: string): never {
  process.stderr.write(`crm: ${message}\n`);
  process.exit(1);
}

async function main(argv: string[]): Promise<void> {
  const cmd = parseArgs(argv);
  switch (cmd.kind) {
    case "help":
      process.stdout.write(USAGE);
      return;
    case "version":
      process.stdout.write(`crm ${pkg.version} (bun ${Bun.version})\n`);
      return;
    case "error":
      fail(`${cmd.message}\n\n${USAGE}`);
    case "ca-init": {
      const { runCaInit } = await import("./pki/command.ts");
      process.exitCode = await runCaInit(cmd);
      return;
    }
    case "passwd": {
      const { runPasswd } = await import("./access/passwd.ts");
      process.exitCode = await runPasswd(cmd.name);
      return;
    }
    case "client-config": {
      const { runClientConfig } = await import("./client-config/index.ts");
      process.exitCode = await runClientConfig(cmd.options);
      return;
    }
    case "doctor": {
      const { runDoctor } = await import("./doctor/index.ts");
      process.exitCode = await runDoctor({ configPath: cmd.configPath, json: cmd.json });
      return;
    }
    case "run":
      break;
  }

  let loaded;
  try {
    loaded = loadConfigFile(findConfigFile(cmd.configPath, process.cwd()));
  } catch (e) {
    if (e instanceof ConfigError || e instanceof ConfigErrors) fail(e.message);
    throw e;
  }
  const { config, warnings } = loaded;
  for (const w of warnings) process.stderr.write(`crm: warning: ${w}\n`);
  if (cmd.check) {
    process.stdout.write(describeConfig(config) + "\nconfiguration OK\n");
    return;
  }

  let server: CrmServer;
  try {
    server = await CrmServer.start(config);
  } catch (e) {
    fail((e as Error).message);
  }
  let signals = 0;
  const onSignal = (sig: string): void => {
    if (++signals > 1) {
      server.rt.log.warn(`second ${sig}, exiting now`);
      process.exit(1);
    }
    server.rt.log.info(`${sig} received`);
    void server.shutdown().then(() => process.exit(0));
  };
  process.on("SIGHUP", () => {
    // An invalid new config is refused with an error line; the running one stays.
    try {
      const next = loadConfigFile(config.file);
      for (const w of next.warnings) server.rt.log.warn(`config: ${w}`);
      server.reload(next.config).catch((e: unknown) =>
        server.rt.log.error("reload refused; keeping the running configuration", {
          error: (e as Error).message,
        }),
      );
    } catch (e) {
      server.rt.log.error("reload refused; keeping the running configuration", {
        error: (e as Error).message,
      });
    }
  });
  process.on("SIGTERM", () => onSignal("SIGTERM"));
  process.on("SIGINT", () => onSignal("SIGINT"));
}

await main(process.argv.slice(2));
