/**
 * containerd's hosts.toml, one per mirrored registry (`<certs.d>/<registry>/hosts.toml`): crm
 * first with pull and resolve, the registry itself as `server` (the fallback). containerd adds
 * `?ns=<registry>` itself, so one crm URL serves every registry. containerd only reads the
 * directory when its config names it in `config_path`; the notes say so, and `--check` looks.
 */
import { join } from "node:path";
import { mirrorBase, registryUpstream, type ClientConfigOptions } from "./options.ts";
import type { Plan } from "./plan.ts";

export const HOSTS_HEADER =
  "# written by crm client-config: pulls go to crm first, then to the registry itself";

export function hostsToml(registry: string, mirror: URL): string {
  const upstream = registryUpstream(registry);
  return [
    HOSTS_HEADER,
    `server = "${upstream.origin}"`,
    "",
    `[host."${mirrorBase(mirror)}"]`,
    '  capabilities = ["pull", "resolve"]',
    "",
  ].join("\n");
}

export function planContainerd(o: ClientConfigOptions): Plan {
  return {
    files: o.registries.map((r) => ({
      path: join(o.dest, r, "hosts.toml"),
      content: hostsToml(r, o.mirror),
    })),
    notes: [
      `containerd reads these only with config_path = "${o.dest}" in /etc/containerd/config.toml: ` +
        `[plugins."io.containerd.grpc.v1.cri".registry] (config version 2) or [plugins."io.containerd.cri.v1.images".registry] (version 3), then systemctl restart containerd`,
      `ctr needs --hosts-dir ${o.dest} (ctr images pull --hosts-dir ${o.dest} docker.io/library/busybox:latest)`,
    ],
  };
}
