/**
 * `crm client-config`: prints (or with --write installs) the exact runtime config that sends
 * pulls through crm, and with --check proves they really do. Runs on the node, not on crm's host.
 */
import { runCheck } from "./check.ts";
import { installFiles } from "./install.ts";
import type { ClientConfigOptions } from "./options.ts";
import { PlanError, readIfExists, type Plan } from "./plan.ts";

export { CLIENT_CONFIG_USAGE, parseClientConfigArgs, type ClientConfigOptions } from "./options.ts";

export interface Io {
  out(s: string): void;
  err(s: string): void;
}

const stdio: Io = { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) };

/** Exit code: 0 when everything asked for worked. */
export async function runClientConfig(o: ClientConfigOptions, io: Io = stdio): Promise<number> {
  let plan;
  try {
    plan = await planFor(o);
  } catch (e) {
    if (!(e instanceof PlanError)) throw e;
    io.err(`crm client-config: ${e.message}\n`);
    return 1;
  }
  if (o.write) {
    try {
      for (const f of installFiles(plan.files)) {
        io.out(
          `${f.state === "unchanged" ? "unchanged" : f.state === "created" ? "wrote" : "replaced"} ${f.path}${f.backup ? ` (previous file kept as ${f.backup})` : ""}\n`,
        );
      }
    } catch (e) {
      io.err(`crm client-config: cannot write: ${(e as Error).message}\n`);
      return 1;
    }
  } else if (!o.check) {
    for (const f of plan.files) io.out(`# ${f.path}\n${f.content}\n`);
  }
  if (!o.check || o.write) for (const n of plan.notes) io.err(`note: ${n}\n`);
  if (!o.check) return 0;
  const report = await runCheck(o);
  for (const l of report.lines) io.out(l + "\n");
  return report.ok ? 0 : 1;
}

/** Each runtime's planner is loaded only when asked for (plan.ts is the leaf they share). */
async function planFor(o: ClientConfigOptions): Promise<Plan> {
  switch (o.runtime) {
    case "docker":
      return (await import("./docker.ts")).planDocker(o, readIfExists(o.dest));
    case "containerd":
      return (await import("./containerd.ts")).planContainerd(o);
    case "podman":
      return (await import("./podman.ts")).planPodman(o, readIfExists(o.dest));
  }
}
