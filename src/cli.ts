/**
 * Command-line parsing. Flags follow the Go style the issue asks for (`-config`, `-c`,
 * `--config`, `-t`), so operators coming from nginx or Go tools guess right.
 */
import { parseClientConfigArgs, type ClientConfigOptions } from "./client-config/options.ts";
import { parseDoctorArgs } from "./doctor/args.ts";

export type Command =
  | { kind: "run"; configPath: string | null; check: boolean }
  | { kind: "version" }
  | { kind: "help" }
  | { kind: "ca-init"; outDir: string; cn: string | null; days: number | null; force: boolean }
  | { kind: "passwd"; name: string }
  | { kind: "client-config"; options: ClientConfigOptions }
  | { kind: "doctor"; configPath: string | null; json: boolean }
  | { kind: "error"; message: string };

export const USAGE = `crm: a no-cache proxy and mirror for container registries

Usage:
  crm [-config PATH]        run (default config: ./config.yaml, ./config.yml, ./config.json)
  crm -t [-config PATH]     check the config, print what would run, exit 0 or 1
  crm ca init [--out DIR] [--cn NAME] [--days N] [--force]
                            create a CA for MITM debugging (ca.crt, ca.key)
  crm passwd NAME           read a password (stdin) and print an access.users entry
  crm doctor [-config PATH] [--json]
                            check, on the crm host, everything a pull needs (exit 0 or 1)
  crm client-config docker|containerd|podman --mirror URL [--registries a,b] [--write] [--check]
                            print (--write: install) a runtime's mirror config; --check proves
                            a pull goes through crm
  crm --version             print the version
  crm --help                this text

Flags:
  -config, -c, --config PATH   config file (YAML or JSON)
  -t, --check                  validate the config and exit
`;

export function parseArgs(argv: readonly string[]): Command {
  if (argv[0] === "ca") return parseCaArgs(argv.slice(1));
  if (argv[0] === "client-config") return parseClientConfigArgs(argv.slice(1));
  if (argv[0] === "doctor") return parseDoctorArgs(argv.slice(1));
  if (argv[0] === "passwd") {
    const name = argv[1];
    if (name === undefined || argv.length > 2 || !/^[A-Za-z0-9._-]{1,64}$/.test(name)) {
      return {
        kind: "error",
        message: "usage: crm passwd NAME (1-64 letters, digits, '.', '_' or '-')",
      };
    }
    return { kind: "passwd", name };
  }
  let configPath: string | null = null;
  let check = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    const eq = a.indexOf("=");
    const flag = eq > 0 && a.startsWith("-") ? a.slice(0, eq) : a;
    const inline = eq > 0 && a.startsWith("-") ? a.slice(eq + 1) : null;
    switch (flag) {
      case "-config":
      case "--config":
      case "-c": {
        const v = inline ?? argv[++i];
        if (v === undefined || v === "")
          return { kind: "error", message: `${flag} needs a file path` };
        configPath = v;
        break;
      }
      case "-t":
      case "--check":
      case "-check":
        check = true;
        break;
      case "-v":
      case "-version":
      case "--version":
        return { kind: "version" };
      case "-h":
      case "-help":
      case "--help":
        return { kind: "help" };
      default:
        return { kind: "error", message: `unknown argument ${JSON.stringify(a)}` };
    }
  }
  return { kind: "run", configPath, check };
}

function parseCaArgs(argv: readonly string[]): Command {
  if (argv[0] !== "init")
    return {
      kind: "error",
      message: `unknown ca command ${JSON.stringify(argv[0] ?? "")} (try: crm ca init)`,
    };
  let outDir = ".";
  let cn: string | null = null;
  let days: number | null = null;
  let force = false;
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i] as string;
    const next = (): string | undefined => argv[++i];
    if (a === "--force" || a === "-force") force = true;
    else if (a === "--out" || a === "-out") {
      const v = next();
      if (!v) return { kind: "error", message: "--out needs a directory" };
      outDir = v;
    } else if (a === "--cn" || a === "-cn") {
      const v = next();
      if (!v) return { kind: "error", message: "--cn needs a name" };
      cn = v;
    } else if (a === "--days" || a === "-days") {
      const v = next();
      if (!v || !/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 36500)
        return { kind: "error", message: "--days needs a whole number from 1 to 36500" };
      days = Number(v);
    } else
      return { kind: "error", message: `unknown argument ${JSON.stringify(a)} for crm ca init` };
  }
  return { kind: "ca-init", outDir, cn, days, force };
}
