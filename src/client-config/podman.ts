/**
 * containers/image's registries.conf (podman, skopeo, buildah, CRI-O): one `[[registry]]` per
 * mirrored registry with crm as its `[[registry.mirror]]`. The block is marked so running again
 * replaces it; an entry of the operator's for the same prefix would make containers/image refuse
 * the whole file, so that is refused here first, by name.
 */
import { mirrorLocation, registryUpstream, type ClientConfigOptions } from "./options.ts";
import { PlanError, type Plan } from "./plan.ts";

const BEGIN = "# BEGIN crm client-config (written by crm; run it again to change this block)";
const END = "# END crm client-config";

export function registriesBlock(o: ClientConfigOptions): string {
  const base = mirrorLocation(o.mirror);
  const insecure = o.mirror.protocol === "http:";
  const entries = o.registries.map((r) =>
    [
      "[[registry]]",
      `prefix = "${r}"`,
      `location = "${registryUpstream(r).host}"`,
      "",
      "[[registry.mirror]]",
      // The registry as the first path segment: crm routes it whatever its default_registry is.
      `location = "${base}/${r}"`,
      ...(insecure ? ["insecure = true"] : []),
      "",
    ].join("\n"),
  );
  return [BEGIN, ...entries, END, ""].join("\n");
}

/**
 * The prefix of every `[[registry]]` table, as containers/image reads it: `prefix`, or, when
 * absent, `location` (its documented default). Keys under `[[registry.mirror]]` or any other
 * table belong to that table, not to the registry.
 */
export function registryPrefixes(toml: string): string[] {
  const out: string[] = [];
  let current: { prefix?: string; location?: string } | null = null;
  const flush = (): void => {
    const p = current?.prefix ?? current?.location;
    if (p !== undefined) out.push(p);
    current = null;
  };
  let inRegistry = false;
  for (const raw of toml.split(/\r?\n/)) {
    const line = raw.trim();
    const header = /^\[\[?\s*([^\]]+?)\s*\]\]?/.exec(line);
    if (header) {
      if (header[1] === "registry" && line.startsWith("[[")) {
        flush();
        current = {};
        inRegistry = true;
      } else inRegistry = false;
      continue;
    }
    if (!inRegistry || current === null) continue;
    const kv = /^(prefix|location)\s*=\s*(?:"([^"]*)"|'([^']*)')/.exec(line);
    if (kv) current[kv[1] as "prefix" | "location"] = kv[2] ?? kv[3];
  }
  flush();
  return out;
}

export function planPodman(o: ClientConfigOptions, existing: string | null): Plan {
  let rest = existing ?? "";
  const start = rest.indexOf(BEGIN);
  if (start >= 0) {
    const end = rest.indexOf(END, start);
    if (end < 0)
      throw new PlanError(
        `${o.dest}: the crm block has no "${END}" line; remove the block by hand and run again`,
      );
    rest = rest.slice(0, start) + rest.slice(end + END.length).replace(/^\r?\n/, "");
  }
  const taken = new Set(registryPrefixes(rest));
  const clash = o.registries.filter((r) => taken.has(r));
  if (clash.length > 0) {
    throw new PlanError(
      `${o.dest} already has [[registry]] entries for ${clash.join(", ")}: remove them, or leave them out with --registries, or write crm's block to its own file with --dest /etc/containers/registries.conf.d/50-crm-mirror.conf`,
    );
  }
  const sep = rest === "" || rest.endsWith("\n\n") ? "" : rest.endsWith("\n") ? "\n" : "\n\n";
  const notes = ["podman and skopeo read it on their next run; CRI-O needs systemctl reload crio"];
  if (o.mirror.protocol === "http:")
    notes.push("the mirror is plain http: its entries carry insecure = true");
  return { files: [{ path: o.dest, content: rest + sep + registriesBlock(o) }], notes };
}
