/** `crm doctor` command line, kept apart so `crm` parses it without loading the checks. */
export const DOCTOR_USAGE = "usage: crm doctor [-config PATH] [--json]\n";

export type DoctorCommand =
  { kind: "doctor"; configPath: string | null; json: boolean } | { kind: "error"; message: string };

export function parseDoctorArgs(argv: readonly string[]): DoctorCommand {
  let configPath: string | null = null;
  let json = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    const eq = a.indexOf("=");
    const flag = eq > 0 ? a.slice(0, eq) : a;
    if (flag === "-config" || flag === "--config" || flag === "-c") {
      const v = eq > 0 ? a.slice(eq + 1) : argv[++i];
      if (!v) return { kind: "error", message: `${flag} needs a file path\n${DOCTOR_USAGE}` };
      configPath = v;
    } else if (a === "--json" || a === "-json") json = true;
    else
      return {
        kind: "error",
        message: `unknown argument ${JSON.stringify(a)} for crm doctor\n${DOCTOR_USAGE}`,
      };
  }
  return { kind: "doctor", configPath, json };
}
