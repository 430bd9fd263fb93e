// `crm ca init`: the only place in src/pki that prints; everything else returns values or throws.

import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import type { Command } from "../cli.ts";
import { CaError } from "./errors.ts";
import { DEFAULT_CA_CN, initCa, trustInstructions } from "./init.ts";

export async function runCaInit(cmd: Extract<Command, { kind: "ca-init" }>): Promise<number> {
  try {
    const cn = cmd.cn ?? DEFAULT_CA_CN;
    const { certPath, keyPath } = await initCa({
      outDir: cmd.outDir,
      cn,
      days: cmd.days ?? undefined,
      force: cmd.force,
    });
    const cert = new X509Certificate(readFileSync(certPath));
    process.stdout.write(
      `created ${certPath} and ${keyPath} (mode 0600)\n` +
        `  subject ${cert.subject}, valid until ${cert.validTo}\n` +
        `  SHA-256 ${cert.fingerprint256}\n\n` +
        `Point mitm.ca_cert_path and mitm.ca_key_path at these files.\n\n` +
        trustInstructions(certPath, { cn }),
    );
    return 0;
  } catch (err) {
    // Anything but our own errors is a bug or an environment problem worth a stack trace.
    if (!(err instanceof CaError) && !isFsError(err)) throw err;
    process.stderr.write(`crm: ${(err as Error).message}\n`);
    return 1;
  }
}

function isFsError(err: unknown): err is NodeJS.ErrnoException {
  return (
    err instanceof Error &&
    typeof (err as NodeJS.ErrnoException).code === "string" &&
    typeof (err as NodeJS.ErrnoException).syscall === "string"
  );
}
