/**
 * `crm client-config RUNTIME --mirror URL ...`: the command line, checked before anything is
 * read or written, with a message that says what to type instead.
 */
import { DEFAULT_REGISTRIES } from "../config/registries.ts";

export const RUNTIMES = ["docker", "containerd", "podman"] as const;
export type RuntimeName = (typeof RUNTIMES)[number];

export interface ClientConfigOptions {
  runtime: RuntimeName;
  /** The mirror as clients reach it, path (mirror.path_prefix) kept, no trailing slash. */
  mirror: URL;
  registries: string[];
  write: boolean;
  check: boolean;
  /** Where the config goes: daemon.json, the certs.d directory, or a registries.conf file. */
  dest: string;
  /** The image `--check` pulls; null: the registry's default (image-ref.ts). */
  image: string | null;
}

export const DEFAULT_DEST: Record<RuntimeName, string> = {
  docker: "/etc/docker/daemon.json",
  containerd: "/etc/containerd/certs.d",
  // A drop-in: containers/image reads it after registries.conf, so nothing of the operator's is rewritten.
  podman: "/etc/containers/registries.conf.d/50-crm-mirror.conf",
};

export const CLIENT_CONFIG_USAGE = `usage: crm client-config docker|containerd|podman --mirror URL [--registries a,b] [--write] [--check] [--dest PATH] [--image REF]
  --mirror URL      how this node reaches crm, e.g. https://crm.example.com or http://10.0.0.5:8080/s3cret
  --registries a,b  registries to send through crm (default: ${DEFAULT_REGISTRIES.map((r) => r.name).join(",")}; docker: docker.io only)
  --write           install the config (the replaced file is kept as <file>.crm-backup-<time>)
  --check           pull a small image through the runtime and verify crm answered it
  --dest PATH       daemon.json, certs.d directory or registries.conf file (default: ${Object.values(DEFAULT_DEST).join(", ")})
  --image REF       the image --check pulls (default: docker.io/library/busybox:latest)
`;

const REGISTRY_NAME = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:\d+)?$/;

export type Parsed =
  { kind: "client-config"; options: ClientConfigOptions } | { kind: "error"; message: string };

export function parseClientConfigArgs(argv: readonly string[]): Parsed {
  const fail = (message: string): Parsed => ({
    kind: "error",
    message: `${message}\n${CLIENT_CONFIG_USAGE}`,
  });
  const runtime = argv[0];
  if (runtime === undefined || !(RUNTIMES as readonly string[]).includes(runtime))
    return fail(`crm client-config needs a runtime: ${RUNTIMES.join(", ")}`);
  let mirrorText: string | null = null;
  let registries: string[] | null = null;
  let write = false;
  let check = false;
  let dest: string | null = null;
  let image: string | null = null;
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i] as string;
    const eq = a.indexOf("=");
    const flag = (eq > 0 ? a.slice(0, eq) : a).replace(/^-(?=[a-z])/, "--");
    const value = (): string | null => (eq > 0 ? a.slice(eq + 1) : (argv[++i] ?? null));
    switch (flag) {
      case "--mirror":
        mirrorText = value();
        break;
      case "--registries": {
        const v = value();
        if (v === null) return fail("--registries needs a comma-separated list");
        registries = v
          .split(",")
          .map((s) => s.trim().toLowerCase())
          .filter((s) => s !== "");
        break;
      }
      case "--dest":
        dest = value();
        if (!dest) return fail("--dest needs a path");
        break;
      case "--image":
        image = value();
        if (!image) return fail("--image needs an image reference");
        break;
      case "--write":
        write = true;
        break;
      case "--check":
        check = true;
        break;
      default:
        return fail(`unknown argument ${JSON.stringify(a)} for crm client-config`);
    }
  }
  if (mirrorText === null || mirrorText === "")
    return fail("--mirror URL is required (how this node reaches crm)");
  let mirror: URL;
  try {
    mirror = new URL(mirrorText);
  } catch {
    return fail(
      `--mirror ${JSON.stringify(mirrorText)} is not a URL; write it as https://crm.example.com or http://HOST:PORT`,
    );
  }
  if (mirror.protocol !== "http:" && mirror.protocol !== "https:")
    return fail(`--mirror must be an http:// or https:// URL, not ${mirror.protocol}`);
  if (mirror.username || mirror.password)
    return fail(
      "--mirror must not carry user:password: runtimes do not send them from a mirror URL",
    );
  if (mirror.search || mirror.hash) return fail("--mirror must not have a query or fragment");
  mirror = new URL(mirror.origin + mirror.pathname.replace(/\/+$/, ""));
  registries ??= runtime === "docker" ? ["docker.io"] : DEFAULT_REGISTRIES.map((r) => r.name);
  const bad = registries.filter((r) => !REGISTRY_NAME.test(r));
  if (bad.length > 0)
    return fail(
      `--registries: ${bad.map((b) => JSON.stringify(b)).join(", ")} is not a registry host name such as docker.io`,
    );
  if (registries.length === 0) return fail("--registries names no registry");
  if (runtime === "docker" && !registries.includes("docker.io"))
    return fail(
      "docker's registry-mirrors serve docker.io only: include docker.io in --registries",
    );
  return {
    kind: "client-config",
    options: {
      runtime: runtime as RuntimeName,
      mirror,
      registries,
      write,
      check,
      dest: dest ?? DEFAULT_DEST[runtime as RuntimeName],
      image,
    },
  };
}

/** The mirror URL as written in configs: `http://host:port` or `https://host/prefix`. */
export function mirrorBase(u: URL): string {
  return u.origin + u.pathname.replace(/\/+$/, "");
}

/** `host:port/prefix` without a scheme, as registries.conf locations are written. */
export function mirrorLocation(u: URL): string {
  return u.host + u.pathname.replace(/\/+$/, "");
}

/** Where the registry itself lives (the fallback every runtime keeps): crm's built-in upstream or https://NAME. */
export function registryUpstream(name: string): URL {
  const known = DEFAULT_REGISTRIES.find((r) => r.name === name);
  return known ? new URL(known.upstream.href) : new URL(`https://${name}`);
}
